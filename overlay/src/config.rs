//! Settings of one overlay core.

use std::time::Duration;

use crate::Mode;
use crate::record::{StoreLimits, Successor, Verifier};

/// Bucket size and the number of peers a lookup must hear from: k = 20.
pub const K: usize = 20;
/// Requests a lookup keeps in flight: α = 3.
pub const ALPHA: usize = 3;
/// Size of a key's home: the `r` closest live peers hold its records.
pub const REPLICATION: usize = 3;

const _: () = assert!(ALPHA <= K, "a lookup cannot have more requests in flight than results");
const _: () = assert!(REPLICATION <= K, "a home is found by a lookup for the k closest peers");
const _: () = assert!(
    K <= crate::wire::MAX_PEERS_PER_MESSAGE,
    "a response must be able to list k peers"
);

/// How one core behaves. [`Config::new`] gives what is right for a LAN peer; the
/// simulator tunes timeouts to its network model.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bucket size and lookup result size (k).
    pub k: usize,
    /// Requests in flight per lookup (α).
    pub alpha: usize,
    /// Home size (r): how many of the closest peers keep each record.
    pub replication: usize,
    /// Disjoint lookup paths (S/Kademlia); 1 turns the feature off.
    pub disjoint_paths: usize,
    /// How long to wait for an answer before counting a request as failed.
    pub request_timeout: Duration,
    /// Consecutive failures after which a peer is replaced (or marked stale).
    pub max_failures: u8,
    /// Peers kept waiting per full bucket.
    pub replacement_cache: usize,
    /// A newcomer to a full bucket waits in the replacement cache; the
    /// bucket's oldest entry is pinged (and replaced if it does not answer)
    /// only once it has missed a request and been quiet this long.
    pub recently_seen: Duration,
    /// How often maintenance runs: expiry, replication, refresh, stale pings.
    pub maintenance_interval: Duration,
    /// A bucket with no lookup or new peer for this long is refreshed.
    pub refresh_interval: Duration,
    /// How often each home member makes sure the rest of the home has a record.
    pub replicate_interval: Duration,
    /// How often a publisher re-signs and re-puts its own records.
    pub republish_interval: Duration,
    /// Lifetime given to records this peer signs.
    pub record_ttl: Duration,
    /// The longest lifetime a value record may be signed for
    /// ([`Overlay::put_value_for`](crate::Overlay::put_value_for), used for
    /// pins that must outlive their publisher); peers refuse value records
    /// that expire later than this plus `clock_skew_tolerance`.
    pub max_value_lifetime: Duration,
    /// How far peers' clocks may disagree; records expiring later than
    /// `record_ttl` plus this are refused.
    pub clock_skew_tolerance: Duration,
    /// Bounds on the record store.
    pub store: StoreLimits,
    /// A value lookup ends once this many valid records came back.
    pub value_quorum: usize,
    /// A provider lookup ends once this many providers are known.
    pub max_providers: usize,
    /// Most queries (lookups, puts) running at once.
    pub max_queries: usize,
    /// Whether this peer serves the overlay or only uses it.
    pub mode: Mode,
    /// Checks record signatures.
    pub verifier: Verifier,
    /// Which new versions of a value record may replace the one held
    /// (none: any newer one from its publisher).
    pub successor: Option<Successor>,
}

impl Config {
    /// The defaults, with the signature check the driver uses.
    pub fn new(verifier: Verifier) -> Self {
        Config {
            k: K,
            alpha: ALPHA,
            replication: REPLICATION,
            disjoint_paths: 1,
            request_timeout: Duration::from_secs(5),
            max_failures: 2,
            replacement_cache: 3,
            recently_seen: Duration::from_secs(5 * 60),
            maintenance_interval: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(10 * 60),
            replicate_interval: Duration::from_secs(5 * 60),
            republish_interval: Duration::from_secs(60 * 60),
            record_ttl: Duration::from_secs(24 * 60 * 60),
            max_value_lifetime: Duration::from_secs(400 * 24 * 60 * 60),
            clock_skew_tolerance: Duration::from_secs(5 * 60),
            store: StoreLimits::default(),
            value_quorum: 1,
            max_providers: 20,
            max_queries: 256,
            mode: Mode::Server,
            verifier,
            successor: None,
        }
    }

    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |what: &'static str| Err(ConfigError(what));
        if self.k == 0 || self.k > crate::wire::MAX_PEERS_PER_MESSAGE {
            return fail("k must be between 1 and MAX_PEERS_PER_MESSAGE");
        }
        if self.alpha == 0 || self.alpha > self.k {
            return fail("alpha must be between 1 and k");
        }
        if self.replication == 0 || self.replication > self.k {
            return fail("replication must be between 1 and k");
        }
        if self.disjoint_paths == 0 || self.disjoint_paths > self.alpha {
            return fail("disjoint_paths must be between 1 and alpha");
        }
        if self.max_failures == 0 {
            return fail("max_failures must be at least 1");
        }
        if self.request_timeout.is_zero() || self.maintenance_interval.is_zero() {
            return fail("request_timeout and maintenance_interval must be positive");
        }
        if self.republish_interval >= self.record_ttl {
            return fail("republish_interval must be shorter than record_ttl, or records lapse");
        }
        if self.max_queries == 0 || self.value_quorum == 0 {
            return fail("max_queries and value_quorum must be at least 1");
        }
        Ok(())
    }
}

/// A [`Config`] whose settings contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid overlay config: {0}")]
pub struct ConfigError(pub &'static str);
