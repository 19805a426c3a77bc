//! `shoal-simnet`: a deterministic discrete-event simulator that runs
//! shoal's overlay cores — the very code the real node runs — at 10^5–10^6
//! peers in virtual time.
//!
//! # What this crate never does
//!
//! It never reads the wall clock to decide anything (wall time is only
//! measured for the report), never uses a global random generator, and
//! never depends on the node, tokio or libp2p. One seed reproduces a run bit
//! for bit; the [`Sim::trace_hash`] of a run proves it.
//!
//! # How it works
//!
//! [`Sim`] holds a slot per peer (its key, its coordinates, its clock drift
//! and, while it runs, its [`Overlay`](shoal_overlay::Overlay) core) and a
//! priority queue of events: message deliveries and core wake-ups, ordered
//! by virtual time and then by insertion. Delivering a request calls the
//! receiver's `handle_request` and sends the answer back through the
//! network model; after every input the simulator drains the core's
//! transmits and events and schedules its next wake-up, converted from the
//! peer's drifting clock. The network model draws latency from synthetic
//! coordinates (LAN and WAN presets), adds jitter, loses and duplicates
//! messages, and applies symmetric or one-way partitions. Churn comes from
//! session lengths drawn from exponential, Weibull or Pareto distributions.
//! Invariants of sampled cores are checked as the run goes; a violation
//! stops it with the seed that reproduces it.
//!
//! ```
//! use shoal_simnet::scenario::{self, Swarm};
//! let report = scenario::lookups(&Swarm::new(60, 7), 100, 100.0).unwrap();
//! assert_eq!(report.lookups, 100);
//! assert!(report.success_rate > 0.95);
//! ```
//!
//! # Layout
//!
//! - `sim`: [`Sim`], the engine, and the truth it checks lookups against;
//!   `sim/files.rs` models disks and links and drives each peer's
//!   [`PinDuties`](shoal_resources::pin::PinDuties), the node's own pin
//!   decisions.
//! - `net`: the network model and clock drift.
//! - `churn`: session length distributions.
//! - [`scenario`]: `lookups`, `churn`, `partition` and `durability`, one
//!   file each.
//! - [`checkpoint`]: a long run saved to disk and resumed.
//! - [`report`]: the JSON report and its human summary; [`svg`]: its plots.

pub mod checkpoint;
mod churn;
mod net;
pub mod report;
pub mod scenario;
mod sim;
pub mod svg;
mod trace;

pub use churn::SessionDist;
pub use net::{NetConfig, Partition, Preset};
pub use report::Report;
pub use sim::{
    Counters, FileCounters, FilesConfig, GetOutcome, LookupOutcome, PeerIndex, PeerState, Sim, SimConfig, Violation,
    sim_verifier,
};
