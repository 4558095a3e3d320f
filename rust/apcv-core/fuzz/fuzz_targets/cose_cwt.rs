//! cargo-fuzz target: apcv_core_fuzz::cose_cwt (src/lib.rs says what it covers and checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| apcv_core_fuzz::cose_cwt(data));
