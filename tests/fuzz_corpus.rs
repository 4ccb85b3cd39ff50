//! The fuzz targets' seeds, and every input a fuzzer found a fault with
//! (`fuzz/regressions/<target>/`), run through the same readers as the targets: none
//! panics, and each target's seeds hold both inputs it accepts and inputs it refuses, so
//! a fuzzer starts from both sides of every check.

use std::path::{Path, PathBuf};

fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_found_fault_is_read_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, read) in tidings::fuzzing::TARGETS {
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{target}.rs"
        );
        let seeds = inputs(&fuzz.join("corpus").join(target));
        assert!(seeds.len() >= 3, "{target}: seeds in fuzz/corpus/{target}");
        let accepted = seeds
            .iter()
            .filter(|seed| read(&std::fs::read(seed).expect("a readable seed")))
            .count();
        assert!(accepted > 0, "{target}: no seed is accepted");
        assert!(accepted < seeds.len(), "{target}: no seed is refused");
        for found in inputs(&fuzz.join("regressions").join(target)) {
            read(&std::fs::read(&found).expect("a readable input"));
        }
    }
}

#[test]
fn the_targets_match_the_fuzz_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml");
    let bins = manifest.matches("[[bin]]").count();
    assert_eq!(bins, tidings::fuzzing::TARGETS.len());
    for (target, _) in tidings::fuzzing::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "{target}"
        );
    }
}
