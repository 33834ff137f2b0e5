//! A recording (`detrace ... --record`) as `detrace replay` reads it.
#![no_main]

use detrace::live::record::Recording;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Recording::read(data);
});
