//! Fuzzes a message of the jobs protocol (`/shoal/jobs/1`: requests and events); the checks live in `shoal_node::fuzzing::jobs_message`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::jobs_message(data));
