//! Fuzzes the value of a pin record (`shoal_resources::pin::Pin::decode`); the checks live in `shoal_node::fuzzing::pin`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::pin(data));
