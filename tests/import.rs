//! `tidings import oneroster` and `tidings serve --demo`, run as a district's IT person
//! runs them.

mod support;

use std::path::Path;

use support::{demo_zip, demo_zip_with, one_line_error, tidings, District, Server};
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
        ["students", "299", "0", "0", "0", "1", "0", "0"],
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
        ["students", "0", "0", "0", "299", "1", "0", "0"]
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
    let import = support::bench(&["import", "--students", "200"]).await;
    assert_eq!(import["suite"], "import");
    assert_eq!(import["rejected"], 0);
    assert_eq!(
        import["reimport_unchanged_rows"], import["rows"],
        "an unchanged roster re-imports as unchanged"
    );
    assert!(import["rows_per_s"].as_f64().unwrap() > 0.0);

    let db = TestDatabase::postgres_empty().await;
    let fanout = support::bench(&[
        "fanout",
        "--guardians",
        "200",
        "--channels",
        "2",
        "--database-url",
        &db.url,
    ])
    .await;
    assert_eq!(fanout["store"], "postgres");
    assert_eq!(fanout["guardians"], 200, "--guardians N writes exactly N");
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
    let dispatch =
        support::bench(&["dispatch", "--deliveries", "200", "--store", "postgres"]).await;
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

    // Every web admin page renders for a district administrator of a synthetic district,
    // on PostgreSQL, and its server time is reported.
    let pages = support::bench(&[
        "pages",
        "--students",
        "100",
        "--samples",
        "2",
        "--store",
        "postgres",
    ])
    .await;
    // The whole pipeline over HTTP, with a flaky provider that enforces its rate: every
    // delivery reaches the provider, none goes over the rate, every report is applied.
    let pipeline = support::bench(&[
        "pipeline",
        "--guardians",
        "300",
        "--faults",
        "flaky",
        "--provider-rate",
        "200",
    ])
    .await;
    assert_eq!(pipeline["suite"], "pipeline");
    assert_eq!(pipeline["lost"], 0, "{pipeline}");
    assert_eq!(pipeline["provider_429s"], 0, "{pipeline}");
    let deliveries = pipeline["deliveries"].as_u64().unwrap();
    let state = |s: &str| pipeline["states"][s].as_u64().unwrap();
    assert_eq!(state("SENT"), 0, "every report applied: {pipeline}");
    assert_eq!(
        state("DELIVERED") + state("ACKED") + state("FAILED"),
        deliveries,
        "{pipeline}"
    );
    assert!(state("ACKED") > 0 && state("FAILED") > 0, "{pipeline}");
    for stage in ["created_to_sent", "sent_to_delivered", "delivered_to_acked"] {
        assert!(
            pipeline["stage_ms"][stage]["n"].as_u64().unwrap() > 0,
            "{pipeline}"
        );
    }

    // A purge of old broadcasts while a new one drains: all of them taken, the new one
    // sent whole and once, on both stores.
    for store in ["sqlite", "postgres"] {
        let purge = support::bench(&[
            "purge",
            "--guardians",
            "300",
            "--old-broadcasts",
            "2",
            "--store",
            store,
        ])
        .await;
        assert_eq!(purge["suite"], "purge");
        assert_eq!(
            purge["purge"]["purged"]["deliveries"], purge["old_deliveries"],
            "{purge}"
        );
        assert_eq!(purge["purge"]["purged"]["messages"], 2, "{purge}");
        assert_eq!(purge["duplicates"], 0, "{purge}");
        assert_eq!(
            purge["broadcast_beside_purge"]["deliveries"], purge["broadcast_alone"]["deliveries"],
            "{purge}"
        );
        assert!(purge["broadcast_alone"]["deliveries"].as_u64() > Some(0));
    }

    assert_eq!(pages["suite"], "pages");
    let listed = pages["pages"].as_array().unwrap();
    assert!(listed.len() >= 20, "{pages}");
    for page in listed {
        assert_eq!(page["status"], 200, "{page}");
        assert!(page["bytes"].as_u64().unwrap() > 500, "{page}");
        assert!(page["p95_ms"].as_f64().unwrap() > 0.0, "{page}");
    }
}

/// The demo bundle zipped, with `users.csv` replaced by `users`.
fn demo_zip_with_users(users: &str) -> Vec<u8> {
    use std::io::Write;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/demo");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let body = if name == "users.csv" {
            users.to_owned()
        } else {
            std::fs::read_to_string(entry.path()).unwrap()
        };
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(body.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// What a failed SIS export looks like: users.csv with its header and no rows.
fn header_only_users_zip() -> Vec<u8> {
    let users = include_str!("../demo/users.csv");
    demo_zip_with_users(&format!("{}\n", users.lines().next().unwrap()))
}

#[tokio::test]
async fn a_header_only_users_export_is_held_back_until_forced() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.zip");
    std::fs::write(&good, demo_zip()).unwrap();
    import(&db, &good).await;
    let store = db.store().await;
    let district = store.districts().await.unwrap()[0].id;
    let before = store.directory_counts(district).await.unwrap();
    assert_eq!((before.students, before.guardians), (300, 297));

    let bad = dir.path().join("bad.zip");
    std::fs::write(&bad, header_only_users_zip()).unwrap();
    let run = |args: &'static [&'static str]| {
        let bad = bad.clone();
        let url = db.url.clone();
        async move {
            tidings(&url)
                .args(["import", "oneroster"])
                .arg(&bad)
                .args(args)
                .output()
                .await
                .unwrap()
        }
    };
    let held = run(&[]).await;
    let stderr = one_line_error(&held);
    assert!(
        stderr.contains("import held back, nothing was changed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("300 of 300 students, 297 of 297 guardians, 14 of 15 staff"),
        "{stderr}"
    );
    assert!(stderr.contains("more than 10%"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(store.directory_counts(district).await.unwrap(), before);

    // A dry run says what would happen, succeeds, and changes nothing.
    let dry = run(&["--dry-run"]).await;
    let stdout = String::from_utf8(dry.stdout).unwrap();
    assert!(dry.status.success(), "{stdout}");
    let students = stdout.lines().find(|l| l.starts_with("students")).unwrap();
    assert_eq!(
        students.split_whitespace().collect::<Vec<_>>(),
        ["students", "0", "0", "300", "0", "0", "0", "0"],
        "{stdout}"
    );
    assert!(
        stdout.contains("dry run, nothing was changed")
            && stdout.contains("without --force this import would be held back"),
        "{stdout}"
    );
    assert_eq!(store.directory_counts(district).await.unwrap(), before);

    let forced = run(&["--force"]).await;
    let stdout = String::from_utf8(forced.stdout).unwrap();
    assert!(forced.status.success(), "{stdout}");
    assert!(
        stdout.contains("forced: it would delete 300 of 300 students"),
        "{stdout}"
    );
    assert_eq!(store.directory_counts(district).await.unwrap().students, 0);
    let audit: Vec<String> = store
        .audit_entries(district, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} forced={}", e.action, e.detail["forced"]))
        .collect();
    assert_eq!(
        &audit[..3],
        [
            "roster.import forced=true",
            "roster.import.dry_run forced=null",
            "roster.import.held_back forced=null"
        ]
    );
}

#[tokio::test]
async fn the_api_holds_back_a_wiping_upload_and_takes_force_and_dry_run() {
    let api = District::with_demo(TestDatabase::sqlite()).await;
    let upload = |query: &'static str, zip: Vec<u8>| {
        api.client
            .post(api.server.url(&format!("/api/v1/imports/oneroster{query}")))
            .bearer_auth(&api.admin)
            .header("content-type", "application/zip")
            .body(zip)
            .send()
    };
    let held = upload("", header_only_users_zip()).await.unwrap();
    assert_eq!(held.status(), reqwest::StatusCode::CONFLICT);
    assert_eq!(held.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = held.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/import-held-back");
    assert_eq!(
        problem["over_delete_limit"]["entities"][0],
        serde_json::json!({"entity": "students", "before": 300, "deleted": 300})
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("force=true"),
        "{problem}"
    );

    let dry = upload("?dry_run=true", header_only_users_zip())
        .await
        .unwrap();
    assert_eq!(dry.status(), reqwest::StatusCode::OK);
    let dry: serde_json::Value = dry.json().await.unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["report"]["entities"]["guardians"]["deleted"], 297);
    assert_eq!(dry["report"]["over_delete_limit"]["max_delete_percent"], 10);
    let (_, guardians) = api.get("/api/v1/guardians?limit=1", &api.admin).await;
    assert_eq!(
        guardians["items"].as_array().unwrap().len(),
        1,
        "nothing deleted"
    );

    let forced = upload("?force=true", header_only_users_zip())
        .await
        .unwrap();
    assert_eq!(forced.status(), reqwest::StatusCode::CREATED);
    let forced: serde_json::Value = forced.json().await.unwrap();
    assert_eq!(forced["report"]["forced"], true);
    assert_eq!(forced["report"]["entities"]["students"]["deleted"], 300);
}

/// A 400 MB field zips to about 400 KB: refused while unpacking, with the file and line,
/// and a normal bundle still imports afterwards.
#[tokio::test]
async fn an_upload_that_unpacks_to_a_huge_field_is_refused_with_its_file_and_line() {
    let api = District::start(TestDatabase::sqlite()).await;
    let users = include_str!("../demo/users.csv");
    let mut lines = users.lines();
    let mut bomb = format!("{}\n{}\n", lines.next().unwrap(), lines.next().unwrap());
    bomb.push_str("student-bomb,active,2026-08-01T00:00:00Z,true,school-0,student,,,");
    bomb.push_str(&"A".repeat(40 * 1024 * 1024));
    bomb.push_str(",Bomb,,,,,,,03,\n");
    let zip = demo_zip_with_users(&bomb);
    assert!(zip.len() < 200 * 1024, "{} bytes", zip.len());
    let post = |zip: Vec<u8>| {
        api.client
            .post(api.server.url("/api/v1/imports/oneroster"))
            .bearer_auth(&api.admin)
            .header("content-type", "application/zip")
            .body(zip)
            .send()
    };
    let refused = post(zip).await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/invalid-roster");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("users.csv line 3: unpacks to more than 100 times its compressed size"),
        "{detail}"
    );

    let imported = post(demo_zip()).await.unwrap();
    assert_eq!(imported.status(), reqwest::StatusCode::CREATED);
}

/// The API holds uploads to the configured share, like the command line.
#[tokio::test]
async fn the_api_holds_uploads_to_the_configured_share() {
    let api = support::District::with_demo_env(
        TestDatabase::sqlite(),
        &[("TIDINGS_ROSTER_MAX_DELETE_PERCENT", "100")],
    )
    .await;
    let answer = api
        .client
        .post(api.server.url("/api/v1/imports/oneroster?dry_run=true"))
        .bearer_auth(&api.admin)
        .header("content-type", "application/zip")
        .body(header_only_users_zip())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let dry: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(dry["report"]["entities"]["students"]["deleted"], 300);
    assert!(dry["report"]["over_delete_limit"].is_null(), "{dry}");
    assert!(api.server.terminate().await.success());
}
