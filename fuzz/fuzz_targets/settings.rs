//! Fuzzes the text of `shoal.toml` (`shoal_node::settings::FileSettings::parse`); the checks live in `shoal_node::fuzzing::settings`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::settings(data));
