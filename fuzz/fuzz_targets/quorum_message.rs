//! Fuzzes a message of the quorum protocol (`/shoal/quorum/1`: requests, replies, a member's saved state); the checks live in `shoal_node::fuzzing::quorum_message`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::quorum_message(data));
