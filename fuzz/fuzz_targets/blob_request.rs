//! Fuzzes a blob request frame body from a downloader (`shoal_node::files::decode_request`); the checks live in `shoal_node::fuzzing::blob_request`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::blob_request(data));
