//! The node's errors: [`NodeError`] for every operation of a
//! [`Client`](crate::Client), [`PinError`] for what only pins refuse and
//! [`FetchError`] for downloads.

use libp2p::Multiaddr;
use shoal_overlay::Key;

use shoal_resources::store::StoreError;

use crate::identity;

/// Why a node or one of its operations failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The transport could not be built.
    #[error("cannot set up the network transport: {0}")]
    Transport(String),
    /// Listening on an address failed (in use, not local, ...).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// Another node (in this process or another) runs on the data
    /// directory: two would share one identity and one store.
    #[error(
        "a shoal daemon is already running for {0} (it holds the lock on {0}/lock); stop it first (`shoal down --data-dir {0}`) or pick another --data-dir"
    )]
    DataDirInUse(String),
    /// The data directory cannot be created or locked.
    #[error("cannot use the data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// A bootstrap address lacks its `/p2p/PEER_ID` suffix.
    #[error("bootstrap address {0} must end in /p2p/PEER_ID")]
    BootstrapWithoutPeer(Multiaddr),
    /// The overlay refused the command.
    #[error(transparent)]
    Command(#[from] shoal_overlay::CommandError),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] shoal_resources::store::StoreError),
    /// A download failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A pin was refused.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// A task of the daemon's own failed (a bug: its log says more).
    #[error("the daemon failed inside ({0}); see its log")]
    Task(String),
}

/// Why a pin was refused.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// No replicas, or more than the overlay keeps records at.
    #[error("--replicas must be between 1 and {max} in this swarm (its records live at the {max} closest peers)")]
    ReplicasOutOfRange {
        /// The overlay's replication factor.
        max: usize,
    },
    /// The pin record reached no home member.
    #[error("the pin of {0} reached no home member")]
    NotStored(Key),
    /// Another peer pinned the blob: only it may change or remove the pin.
    #[error(
        "{id} is pinned by another peer ({publisher}); only that peer can change or remove its pin, until the pin lapses"
    )]
    PinnedByAnother {
        /// The blob.
        id: Key,
        /// The key of the peer whose pin record holds the blob's key.
        publisher: Key,
    },
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nobody to ask.
    #[error("no provider of {0} found")]
    NoProvider(Key),
    /// No provider proved the blob's size (by sending its last group,
    /// which verifies only at the true size), so nothing was fetched.
    #[error(
        "no provider of {id} could prove its size ({lying} sent a size that does not verify, {unreachable} unreachable or without it)"
    )]
    SizeUnproven {
        /// The blob.
        id: Key,
        /// Providers whose size did not verify.
        lying: usize,
        /// Providers that did not answer or do not hold it.
        unreachable: usize,
    },
    /// Every provider failed or was dropped.
    #[error("no provider of {id} could deliver it ({lying} sent bad data, {unreachable} unreachable or without it)")]
    ProvidersFailed {
        /// The blob.
        id: Key,
        /// Providers dropped for bad data.
        lying: usize,
        /// Providers dropped as unreachable or not holding it.
        unreachable: usize,
    },
    /// The local store failed (disk full, permissions).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local I/O failed.
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// An error and its sources on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if text.is_empty() {
            text = part;
        } else if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
