//! Fuzzes the value of a job record (`shoal_resources::compute::JobRecord::decode`); the checks live in `shoal_node::fuzzing::job_record`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::job_record(data));
