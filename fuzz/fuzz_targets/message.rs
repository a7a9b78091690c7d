//! Fuzz target `message`: the body is [`cohort::fuzzing::message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort::fuzzing::message(data));
