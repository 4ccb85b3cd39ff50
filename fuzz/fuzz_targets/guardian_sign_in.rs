#![no_main]
//! See `tidings::fuzzing::guardian_sign_in`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidings::fuzzing::guardian_sign_in(data);
});
