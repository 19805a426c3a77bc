//! Fuzzes the value of a slot offer record (`shoal_resources::compute::SlotOffer::decode`); the checks live in `shoal_node::fuzzing::slot_offer`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_node::fuzzing::slot_offer(data));
