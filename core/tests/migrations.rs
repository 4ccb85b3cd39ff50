//! Migrations that rebuild a table keep every row and every reference to it: they run
//! here on a database holding rows from before them, not only on an empty one.

use sqlx::{Connection as _, Row as _};

/// A contact point as the test reads it back: id, push platform, source, active and why
/// not.
type Point = (String, Option<String>, String, bool, Option<String>);

/// A SQLite database at `url` migrated up to (but not including) `before`.
async fn sqlite_migrated_before(url: &str, before: i64) -> sqlx::SqliteConnection {
    let dir = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version < before {
            std::fs::copy(&path, dir.path().join(name)).unwrap();
        }
    }
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    conn
}

/// Migration 27 rebuilds `contact_points` on SQLite (to allow Web Push devices): the
/// contact points and the deliveries that refer to them come through whole, the rules
/// of the table still hold, and a delivery's contact point still cannot be deleted.
#[tokio::test]
async fn rebuilding_contact_points_for_web_push_keeps_them_and_what_refers_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let mut db = sqlite_migrated_before(&url, 20261210000027).await;
    // Rows as an earlier Tidings wrote them (their other parents left out: the checks are
    // off while they go in, and only the contact points' own references are checked).
    for sql in [
        "PRAGMA foreign_keys = OFF",
        "INSERT INTO guardians (id, district_id, given_name, family_name, created_at, updated_at) \
         VALUES ('g1', 'd1', 'Ana', 'Ruiz', 't', 't')",
        "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, push_platform, \
         created_at, updated_at, source, active, inactive_reason) VALUES \
         ('cp1', 'd1', 'g1', 'push', 'a1b2c3', 'apns', 't', 't', 'app', 1, NULL), \
         ('cp2', 'd1', 'g1', 'sms', '+15551230001', NULL, 't', 't', 'roster', 0, 'invalid')",
        "INSERT INTO deliveries (id, district_id, message_id, recipient_id, guardian_id, channel, \
         state, idempotency_key, created_at, updated_at, contact_point_id) VALUES \
         ('del1', 'd1', 'm1', 'r1', 'g1', 'push', 'SENT', 'k1', 't', 't', 'cp1'), \
         ('del2', 'd1', 'm1', 'r1', 'g1', 'sms', 'FAILED', 'k2', 't', 't', 'cp2')",
        "PRAGMA foreign_keys = ON",
    ] {
        sqlx::query(sql).execute(&mut db).await.unwrap();
    }

    tidings_core::store::sqlite::MIGRATOR
        .run(&mut db)
        .await
        .unwrap();

    let points: Vec<Point> = sqlx::query(
        "SELECT id, push_platform, source, active, inactive_reason FROM contact_points ORDER BY id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect();
    assert_eq!(
        points,
        vec![
            ("cp1".into(), Some("apns".into()), "app".into(), true, None),
            (
                "cp2".into(),
                None,
                "roster".into(),
                false,
                Some("invalid".into())
            ),
        ]
    );
    let broken: Vec<sqlx::sqlite::SqliteRow> = sqlx::query("PRAGMA foreign_key_check(deliveries)")
        .fetch_all(&mut db)
        .await
        .unwrap();
    let broken_contact_points = broken
        .iter()
        .filter(|r| r.get::<String, _>(2) == "contact_points")
        .count();
    assert_eq!(broken_contact_points, 0);
    let deleted = sqlx::query("DELETE FROM contact_points WHERE id = 'cp1'")
        .execute(&mut db)
        .await;
    assert!(
        deleted.is_err(),
        "a delivery's contact point cannot be deleted"
    );
    sqlx::query(
        "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, push_platform, \
         created_at, updated_at) VALUES ('cp3', 'd1', 'g1', 'push', 'https://push.example/x#k', 'webpush', 't', 't')",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let other = sqlx::query(
        "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, push_platform, \
         created_at, updated_at) VALUES ('cp4', 'd1', 'g1', 'push', 'y', 'other', 't', 't')",
    )
    .execute(&mut db)
    .await;
    assert!(other.is_err(), "push_platform is still checked");
    let duplicate = sqlx::query(
        "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, push_platform, \
         created_at, updated_at) VALUES ('cp5', 'd1', 'g1', 'push', 'a1b2c3', 'apns', 't', 't')",
    )
    .execute(&mut db)
    .await;
    assert!(
        duplicate.is_err(),
        "an address is still unique per guardian"
    );
    let indexed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'contact_points_address'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(indexed, 1);
}
