//! Fuzzes an overlay response as a peer sends it (`shoal_overlay::wire::decode_response` with `NodeAddr`); the checks live in `shoal_node::fuzzing::wire_response`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::wire_response(data));
