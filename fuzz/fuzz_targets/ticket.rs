//! Fuzzes a pasted ticket (`shoal_resources::Ticket::parse`); the checks live in `shoal_node::fuzzing::ticket`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::ticket(data));
