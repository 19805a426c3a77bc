//! Fuzzes an overlay request as a peer sends it (`shoal_overlay::wire::decode_request` with `NodeAddr`); the checks live in `shoal_node::fuzzing::wire_request`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::wire_request(data));
