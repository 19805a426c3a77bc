//! Files between real peers on loopback (mDNS off): share on one peer,
//! fetch on another from several providers at once, verified; a provider
//! whose copy is corrupted is caught and bypassed (`transfer`). Pins: the
//! home keeps its copies through crashes, leaves, declines and edits
//! (`pins`). `common` holds the swarms and the waiting both use.

#![allow(clippy::unwrap_used)]

// The tests' modules live beside this file (a test crate's modules live
// next to its root, so each path is given): one test binary for all.
#[path = "files/common.rs"]
mod common;
#[path = "files/pins.rs"]
mod pins;
#[path = "files/transfer.rs"]
mod transfer;
