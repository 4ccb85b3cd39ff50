#![no_main]
//! See `tidings::fuzzing::kannel_dlr`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidings::fuzzing::kannel_dlr(data);
});
