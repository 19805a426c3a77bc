//! Fuzzes what a remote peer sends in the private-swarm admission handshake (`shoal_node::admission`); the checks live in `shoal_node::fuzzing::admission`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::admission(data));
