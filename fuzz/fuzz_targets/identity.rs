//! Fuzzes the contents of `identity.key` (`shoal_node::identity`); the checks live in `shoal_node::fuzzing::identity`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::identity(data));
