//! Fuzzes the text of a swarm key file (`shoal_node::admission::SwarmKey::parse`); the checks live in `shoal_node::fuzzing::swarm_key`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::swarm_key(data));
