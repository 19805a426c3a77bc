//! Fuzzes a size such as `10G` (`shoal_node::settings::parse_size`); the checks live in `shoal_node::fuzzing::size`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::size(data));
