#![no_main]
//! See `tidings::fuzzing::sendgrid_events`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidings::fuzzing::sendgrid_events(data);
});
