//! The domain — what a delivery may do (`delivery`), who a message reaches (`fanout`,
//! `audience`), what a message is (`message`) and the signed links (`link`) — is plain
//! Rust that knows nothing of storage: the store depends on it, never the other way. This
//! test reads the domain's sources and fails, naming file and line, on any path into the
//! store.

use std::path::{Path, PathBuf};

/// The domain's modules, under `core/src`.
const DOMAIN: [&str; 5] = [
    "delivery",
    "fanout.rs",
    "audience.rs",
    "message.rs",
    "link.rs",
];

/// Paths that reach the store from inside the crate.
const INTO_STORE: [&str; 3] = ["crate::store", "super::store", "tidings_core::store"];

fn sources(at: &Path, found: &mut Vec<PathBuf>) {
    if at.is_dir() {
        for entry in std::fs::read_dir(at).unwrap() {
            sources(&entry.unwrap().path(), found);
        }
    } else if at.extension().is_some_and(|e| e == "rs") {
        found.push(at.to_path_buf());
    }
}

/// `(file, line, text)` of every line of `files` that names a path into the store, doc
/// comments included (an intra-doc link is a dependency too).
fn paths_into_store(files: &[PathBuf]) -> Vec<(String, usize, String)> {
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            if INTO_STORE.iter().any(|p| names(line, p)) {
                found.push((file.display().to_string(), i + 1, line.trim().to_owned()));
            }
        }
    }
    found
}

/// Whether `line` names the path `path` itself, not a longer name it begins
/// (`crate::stored_enum` is not `crate::store`).
fn names(line: &str, path: &str) -> bool {
    line.match_indices(path).any(|(at, _)| {
        line[at + path.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

#[test]
fn the_domain_imports_nothing_of_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for module in DOMAIN {
        sources(&src.join(module), &mut files);
    }
    assert!(
        files.len() >= DOMAIN.len(),
        "the domain's sources moved: {files:?}"
    );
    let found = paths_into_store(&files);
    assert!(
        found.is_empty(),
        "the domain reaches into the store: {found:#?}"
    );
}

#[test]
fn a_path_into_the_store_is_found() {
    let dir = std::env::temp_dir().join(format!("layering-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("domain.rs");
    std::fs::write(
        &file,
        "use crate::stored_enum::stored_enum;\nuse crate::store::StoreError;\n",
    )
    .unwrap();
    let found = paths_into_store(&[file]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, 2);
}
