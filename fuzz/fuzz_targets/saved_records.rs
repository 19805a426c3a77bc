//! Fuzzes the contents of `records.cbor` (`shoal_node::saved`); the checks live in `shoal_node::fuzzing::saved_records`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::saved_records(data));
