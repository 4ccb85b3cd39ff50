//! `tidings import oneroster` and `tidings serve --demo`, run as a district's IT person
//! runs them.

mod support;

use std::path::Path;

use support::{demo_zip_with, one_line_error, tidings, Server};
use tidings_core::testing::TestDatabase;

/// `tidings import oneroster PATH`: its stdout, after checking it succeeded.
async fn import(db: &TestDatabase, path: &Path) -> String {
    let output = tidings(&db.url)
        .args(["import", "oneroster"])
        .arg(path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn a_zip_with_a_bad_row_imports_the_rest_and_names_the_row() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roster.zip");
    // One student pointed at a school that does not exist.
    std::fs::write(
        &path,
        demo_zip_with(Some(("users.csv", "school-0,student", "school-99,student"))),
    )
    .unwrap();

    let stdout = import(&db, &path).await;
    let students = stdout
        .lines()
        .find(|l| l.starts_with("students"))
        .expect("a students row");
    let cells: Vec<&str> = students.split_whitespace().collect();
    assert_eq!(
        cells,
        ["students", "299", "0", "0", "0", "1", "0"],
        "{stdout}"
    );
    let rejected: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("rejected"))
        .collect();
    assert_eq!(
        rejected.len(),
        2,
        "the student, and then its enrollment: {stdout}"
    );
    assert!(rejected[0].starts_with("rejected users.csv:"), "{stdout}");
    assert!(rejected[0].contains("unknown reference"), "{stdout}");
    assert!(
        stdout.contains("Sign in as:"),
        "an empty database gets its first administrator"
    );

    // The same bundle again: nothing created, nothing deleted.
    let stdout = import(&db, &path).await;
    let students = stdout.lines().find(|l| l.starts_with("students")).unwrap();
    assert_eq!(
        students.split_whitespace().collect::<Vec<_>>(),
        ["students", "0", "0", "0", "299", "1", "0"]
    );
}

#[tokio::test]
async fn a_path_that_is_not_a_bundle_is_one_clear_line() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "not a zip").unwrap();
    let output = tidings(&db.url)
        .args(["import", "oneroster"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stderr = one_line_error(&output);
    assert!(
        stderr.starts_with("error: not a directory or a zip file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_demo_loads_the_demo_district_once() {
    let db = TestDatabase::postgres_empty().await;
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let banner = server.banner.join("\n");
    assert!(
        banner.contains("Loaded the demo district: 300 students"),
        "{banner}"
    );
    assert!(server.terminate().await.success());
    let again = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    assert!(
        !again.banner.join("\n").contains("Loaded the demo district"),
        "loaded only into an empty directory"
    );
    assert!(again.terminate().await.success());
}

/// The benchmarks run end to end and their last line is the JSON object they promise.
#[tokio::test]
async fn the_benchmarks_print_their_figures_as_json() {
    let last_json = |output: std::process::Output| -> serde_json::Value {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    };
    let import = last_json(
        support::tidings("sqlite://unused.db")
            .args(["bench", "import", "--students", "200"])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(import["suite"], "import");
    assert_eq!(import["rejected"], 0);
    assert_eq!(
        import["reimport_unchanged_rows"], import["rows"],
        "an unchanged roster re-imports as unchanged"
    );
    assert!(import["rows_per_s"].as_f64().unwrap() > 0.0);

    let db = TestDatabase::postgres_empty().await;
    let fanout = last_json(
        support::tidings("sqlite://unused.db")
            .args([
                "bench",
                "fanout",
                "--students",
                "200",
                "--channels",
                "2",
                "--database-url",
                &db.url,
            ])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(fanout["store"], "postgres");
    assert_eq!(
        fanout["deliveries"].as_u64().unwrap(),
        2 * fanout["guardians"].as_u64().unwrap()
    );

    // `--store postgres` makes its own scratch database on the server, and drops it.
    let server = std::env::var("TIDINGS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let scratch_databases = || async {
        let pool = sqlx::PgPool::connect(&server).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'tidings\\_bench\\_%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        n
    };
    let before = scratch_databases().await;
    let dispatch = last_json(
        support::tidings("sqlite://unused.db")
            .env("TIDINGS_BENCH_POSTGRES_URL", &server)
            .args([
                "bench",
                "dispatch",
                "--deliveries",
                "200",
                "--store",
                "postgres",
            ])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(dispatch["store"], "postgres");
    assert_eq!(dispatch["duplicates"], 0);
    assert_eq!(dispatch["lag_after"], 0, "{dispatch}");
    assert!(dispatch["deliveries_per_s"].as_f64().unwrap() > 0.0);
    assert!(dispatch["pickup_ms_p99"].as_f64().unwrap() > 0.0);
    assert_eq!(
        scratch_databases().await,
        before,
        "the scratch database is dropped"
    );
}
