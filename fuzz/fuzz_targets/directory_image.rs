//! Fuzz target `directory_image`: the body is [`cohort::fuzzing::directory_image`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort::fuzzing::directory_image(data));
