//! Fuzz target `segment`: the body is [`cohort::fuzzing::segment`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort::fuzzing::segment(data));
