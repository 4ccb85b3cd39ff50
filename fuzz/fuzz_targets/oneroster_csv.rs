#![no_main]
//! See `tidings::fuzzing::oneroster_csv`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tidings::fuzzing::oneroster_csv(data);
});
