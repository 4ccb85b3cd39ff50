//! Backups and their restore, as the README tells a district's IT team to make them: an
//! SQLite database copied with `tidings backup` while `tidings serve` runs, and a
//! PostgreSQL database dumped with `pg_dump` and restored with `pg_restore` into a new
//! one; Tidings started on each copy finds every message, guardian and token, and sends.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tidings_core::testing::TestDatabase;

use support::{tidings, District, Server};

fn notice() -> Value {
    json!({
        "audience": {"district": true},
        "channels": ["sms", "email"],
        "kind": "general",
        "subject": "Early dismissal",
        "body": "School closes at noon on Friday.",
    })
}

/// Sends [`notice`]; the message's id.
async fn send(d: &District) -> String {
    let (status, sent) = d
        .call(Method::POST, "/api/v1/messages", &d.admin, Some(notice()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    sent["id"].as_str().unwrap().to_owned()
}

/// What a restored copy must answer as the original did: the message's report and the
/// guardians.
async fn looked_at(d: &District, message: &str) -> (Value, Value) {
    let (status, report) = d
        .get(&format!("/api/v1/messages/{message}"), &d.admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let (status, guardians) = d.get("/api/v1/guardians?limit=500", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{guardians}");
    (report, guardians)
}

/// The server started on the copy `db`, with the original's admin token.
async fn on_copy(db: TestDatabase, admin: String) -> District {
    let server = Server::start(&mut tidings(&db.url)).await;
    District {
        db,
        server,
        client: reqwest::Client::new(),
        admin,
    }
}

#[tokio::test]
async fn an_sqlite_backup_made_while_serving_restores() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    let message = send(&d).await;
    let before = looked_at(&d, &message).await;
    let copy_db = TestDatabase::sqlite();
    let copy = std::path::PathBuf::from(copy_db.url.trim_start_matches("sqlite://"));

    // Made while the server runs.
    let output = tidings(&d.db.url)
        .arg("backup")
        .arg(&copy)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("backed up"), "{printed}");
    // Never over an existing file.
    let again = tidings(&d.db.url)
        .arg("backup")
        .arg(&copy)
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let admin = d.admin.clone();
    assert!(d.server.terminate().await.success());

    // Restored: the copy in the database's place.
    let url = copy_db.url.clone();
    let restored = on_copy(copy_db, admin).await;
    assert_eq!(looked_at(&restored, &message).await, before);
    send(&restored).await;
    assert!(restored.server.terminate().await.success());
    assert_eq!(support::sqlite_integrity(&url).await, "ok");
}

#[tokio::test]
async fn a_pg_dump_restores_into_a_new_database() {
    let d = District::with_demo(TestDatabase::postgres().await).await;
    let message = send(&d).await;
    let before = looked_at(&d, &message).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("tidings.dump");
    let bin = support::pg_bin();

    // As the README says: pg_dump's custom format, then pg_restore into a new database.
    let dumped = std::process::Command::new(bin.join("pg_dump"))
        .args(["--format=custom", "--no-owner", "--file"])
        .arg(&dump)
        .arg(&d.db.url)
        .status()
        .unwrap();
    assert!(dumped.success());
    assert!(
        tidings(&d.db.url)
            .arg("backup")
            .arg(dir.path().join("no.db"))
            .output()
            .await
            .unwrap()
            .stderr
            .windows(7)
            .any(|w| w == b"pg_dump"),
        "tidings backup points PostgreSQL at pg_dump"
    );
    let admin = d.admin.clone();
    assert!(d.server.terminate().await.success());
    let target = TestDatabase::postgres_empty().await;
    let restored = std::process::Command::new(bin.join("pg_restore"))
        .args(["--no-owner", "--exit-on-error", "--dbname"])
        .arg(&target.url)
        .arg(&dump)
        .status()
        .unwrap();
    assert!(restored.success());

    let restored = on_copy(target, admin).await;
    assert_eq!(looked_at(&restored, &message).await, before);
    send(&restored).await;
    assert!(restored.server.terminate().await.success());
}
