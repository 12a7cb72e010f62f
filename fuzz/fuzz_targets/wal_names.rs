#![no_main]
//! See `lifeboat_fuzz::wal_names` (fuzz/harness.rs).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lifeboat_fuzz::wal_names(data));
