//! Arbitrary bytes as a CIFAR-10 binary batch file (`data_batch_N.bin`, `test_batch.bin`) through the
//! reader and the resize the split loader applies (`Record::fitted`); the first byte chooses the
//! number of classes (0..=11).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipe::data::cifar::{parse_batch, CIFAR_SIZE, RECORD_BYTES};
use pipe::data::{ImageSpec, ResizePolicy};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&classes, bytes)) = data.split_first() else {
        return;
    };
    let classes = usize::from(classes % 12);
    if let Ok(records) = parse_batch(Path::new("fuzz_batch.bin"), bytes, classes) {
        assert_eq!(records.len() * RECORD_BYTES, bytes.len());
        for r in &records {
            assert!(r.label < classes);
            assert_eq!(r.pixels.len(), CIFAR_SIZE * CIFAR_SIZE * 3);
        }
        if let Some(r) = records.first() {
            let spec = ImageSpec::new(64, ResizePolicy::Squash);
            let big = r.fitted(Path::new("fuzz_batch.bin"), &spec).expect("a parsed record fits");
            assert_eq!(big.len(), 64 * 64 * 3);
        }
    }
});
