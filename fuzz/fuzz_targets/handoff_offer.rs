//! Fuzzes a hand-off offer from a leaving peer (`shoal_node::handoff`); the checks live in `shoal_node::fuzzing::handoff_offer`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::handoff_offer(data));
