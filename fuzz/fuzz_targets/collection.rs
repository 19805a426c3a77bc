//! Fuzzes a directory listing from a peer (`shoal_resources::collection::decode`); the checks live in `shoal_node::fuzzing::collection`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::collection(data));
