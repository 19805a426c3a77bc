//! Fuzzes the overlay's length-prefixed frames (`shoal_node::codec`); the checks live in `shoal_node::fuzzing::frame`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::frame(data));
