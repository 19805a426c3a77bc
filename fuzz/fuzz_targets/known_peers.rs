//! Fuzzes the text of `known-peers` (`shoal_node::known`); the checks live in `shoal_node::fuzzing::known_peers`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::known_peers(data));
