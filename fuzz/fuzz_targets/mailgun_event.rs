#![no_main]
//! See `tidings::fuzzing::mailgun_event`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidings::fuzzing::mailgun_event(data);
});
