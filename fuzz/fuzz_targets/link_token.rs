#![no_main]
//! See `tidings::fuzzing::link_token`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidings::fuzzing::link_token(data);
});
