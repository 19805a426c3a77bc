//! Queries the core runs on behalf of its user, and the events that end them.

use std::time::Duration;

use crate::lookup::Lookup;
use crate::{Key, PeerInfo, ProviderRecord, ValueRecord};

/// Names a query (a lookup, a put, a bootstrap); comes back in its event.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub struct QueryId(pub u64);

/// Names one request to a peer; the driver hands it back with the answer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize)]
pub struct RequestId(pub u64);

/// What a query cost and how it went.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct QueryStats {
    /// Requests sent.
    pub requests: u32,
    /// Answers received.
    pub responses: u32,
    /// Requests that failed or timed out.
    pub failures: u32,
    /// Length of the chain of responses through which the lookup first
    /// learned the closest peer it found (0: it was in the local table).
    pub hops: u8,
    /// From start to end on the core's clock.
    pub duration: Duration,
}

/// Something the user of the core should know; drained with `poll_event`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub enum Event<A> {
    /// Joining finished: the self-lookup and the bucket refreshes are done.
    Bootstrapped {
        /// The bootstrap query.
        query: QueryId,
        /// Peers now in the routing table.
        peers: usize,
        /// Cost of the self-lookup.
        stats: QueryStats,
    },
    /// A `find_node` lookup ended.
    FoundNodes {
        /// The query.
        query: QueryId,
        /// The key looked up.
        target: Key,
        /// The closest peers that answered, closest first (at most k).
        peers: Vec<PeerInfo<A>>,
        /// Cost.
        stats: QueryStats,
    },
    /// A `get_value` lookup ended.
    GotValue {
        /// The query.
        query: QueryId,
        /// The key looked up.
        key: Key,
        /// The newest valid record found, if any.
        record: Option<ValueRecord>,
        /// Cost.
        stats: QueryStats,
    },
    /// A `get_providers` lookup ended.
    GotProviders {
        /// The query.
        query: QueryId,
        /// The key looked up.
        key: Key,
        /// Valid provider records found.
        providers: Vec<ProviderRecord<A>>,
        /// Cost.
        stats: QueryStats,
    },
    /// A `put_value` or `start_providing` ended.
    Put {
        /// The query.
        query: QueryId,
        /// The record's key.
        key: Key,
        /// Home members that confirmed they store it (the local peer counts
        /// when it is one of them).
        stored: usize,
        /// Cost.
        stats: QueryStats,
    },
    /// A `provide_many` batch ended.
    ProvidedMany {
        /// The batch.
        query: QueryId,
        /// Keys announced.
        keys: usize,
        /// Keys that every home member confirmed (the local peer counts
        /// when it is one of them).
        stored_everywhere: usize,
        /// Keys no home member confirmed.
        unconfirmed: usize,
        /// Lookups it took to place every key at its home.
        lookups: u32,
        /// Store messages sent (each carries many keys).
        stores: u32,
        /// From start to end on the core's clock.
        duration: Duration,
    },
    /// `leave` finished handing records to their new homes.
    Left {
        /// The leave query.
        query: QueryId,
        /// Records the new homes confirmed.
        handed_off: usize,
        /// Hand-offs that failed.
        failed: usize,
    },
    /// A query was dropped unfinished because the peer is leaving.
    Aborted {
        /// The query.
        query: QueryId,
    },
    /// A peer entered the routing table (the node remembers it for restarts).
    PeerAdded {
        /// The peer.
        peer: PeerInfo<A>,
    },
    /// A peer left the routing table.
    PeerRemoved {
        /// The peer.
        peer: PeerInfo<A>,
    },
}

/// Why a command could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// As many queries as allowed are running.
    #[error("too many queries in flight ({max}); wait for some to finish")]
    TooManyQueries {
        /// The limit.
        max: usize,
    },
    /// A value is larger than a record may carry.
    #[error("value for {key} is {bytes} bytes; a record carries at most {max}")]
    ValueTooLarge {
        /// The key.
        key: Key,
        /// The value's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The peer is leaving and takes no new work.
    #[error("the peer is leaving the overlay")]
    Leaving,
    /// A record lifetime of zero or beyond `max_value_lifetime`.
    #[error("a record at {key} cannot live {secs} s; the most is {max_secs} s")]
    BadLifetime {
        /// The key.
        key: Key,
        /// The lifetime asked for.
        secs: u64,
        /// The limit.
        max_secs: u64,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub(crate) enum QueryKind<A> {
    FindNode,
    Bootstrap,
    Refresh {
        bootstrap: Option<QueryId>,
    },
    GetValue {
        found: Option<ValueRecord>,
        valid: usize,
    },
    GetProviders {
        found: Vec<ProviderRecord<A>>,
    },
    PutValue {
        record: ValueRecord,
    },
    AddProvider {
        record: ProviderRecord<A>,
    },
    /// A lookup for the first unplaced key of a [`provide_many`] batch.
    ///
    /// [`provide_many`]: crate::Overlay::provide_many
    BatchLookup {
        batch: QueryId,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound = "A: crate::Addr")]
pub(crate) struct Query<A> {
    pub(crate) kind: QueryKind<A>,
    pub(crate) lookup: Lookup<A>,
    pub(crate) started: crate::Instant,
    pub(crate) stats: QueryStats,
    /// In the store phase of a put: acks still awaited, and stores confirmed.
    pub(crate) storing: Option<(usize, usize)>,
}
