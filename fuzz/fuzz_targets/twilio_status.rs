#![no_main]
//! See `tidings::fuzzing::twilio_status`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidings::fuzzing::twilio_status(data);
});
