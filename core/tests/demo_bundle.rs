//! The demo district shipped in `demo/`: made by the synthetic generator, and importable
//! without a single rejected row on both stores.

use std::path::Path;

use tidings_core::roster::synthetic::{write_bundle, SyntheticDistrict};
use tidings_core::roster::{self, Bundle, ImportOptions};
use tidings_core::store::FirstAdmin;
use tidings_core::testing::TestDatabase;
use tidings_core::{secret, EmailAddress};

tidings_core::on_both_stores! {
    databases: the_demo_bundle_imports_cleanly,
}

/// The demo district: 300 students over three schools.
pub const DEMO: SyntheticDistrict = SyntheticDistrict {
    students: 300,
    schools: 3,
    seed: 2026,
};

fn demo_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../demo"))
}

#[test]
fn the_committed_demo_bundle_is_what_the_generator_makes() {
    let fresh = tempfile::tempdir().unwrap();
    write_bundle(fresh.path(), &DEMO).unwrap();
    if std::env::var_os("TIDINGS_REGENERATE_DEMO").is_some() {
        for entry in std::fs::read_dir(fresh.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), demo_dir().join(entry.file_name())).unwrap();
        }
    }
    for entry in std::fs::read_dir(fresh.path()).unwrap() {
        let entry = entry.unwrap();
        let committed =
            std::fs::read_to_string(demo_dir().join(entry.file_name())).unwrap_or_else(|e| {
                panic!(
                    "demo/{:?}: {e} (TIDINGS_REGENERATE_DEMO=1 rewrites demo/)",
                    entry.file_name()
                )
            });
        assert_eq!(
            committed,
            std::fs::read_to_string(entry.path()).unwrap(),
            "demo/{:?} differs from the generator's output; TIDINGS_REGENERATE_DEMO=1 rewrites demo/",
            entry.file_name()
        );
    }
}

async fn the_demo_bundle_imports_cleanly(db: TestDatabase) {
    let store = db.store().await;
    let first = FirstAdmin {
        district_name: "Demo".into(),
        email: EmailAddress::parse("admin@demo.example.org").unwrap(),
        display_name: "Admin".into(),
        password_hash: secret::hash_password("x").unwrap(),
    };
    let district = store
        .bootstrap(&first, tidings_core::time::now())
        .await
        .unwrap()
        .unwrap()
        .0
        .id;
    let bundle = Bundle::open(demo_dir()).unwrap();
    let report = roster::import(
        store.as_ref(),
        district,
        &bundle,
        &ImportOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let counts = store.directory_counts(district).await.unwrap();
    assert_eq!(counts.students, 300);
    assert_eq!(counts.schools, 3);
    assert!(counts.guardians > 250, "{counts:?}");
    assert!(
        counts.guardian_links > counts.guardians,
        "siblings share guardians: {counts:?}"
    );
}
