#![no_main]
//! See `tidings::fuzzing::message_body`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidings::fuzzing::message_body(data);
});
