//! Fuzzes a whole blob response from a provider (`shoal_node::files::read_response`); the checks live in `shoal_node::fuzzing::blob_response`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::blob_response(data));
