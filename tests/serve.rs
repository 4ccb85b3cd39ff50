//! `tidings serve`, `migrate` and `token create`, run as a user runs them.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use support::{first_login, one_line_error, tidings, Server};
use tidings_core::testing::TestDatabase;

async fn get(url: &str, token: Option<&str>) -> (StatusCode, Option<String>, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, content_type, body)
}

#[tokio::test]
async fn first_start_on_sqlite_prints_the_login_once_and_is_ready() {
    let db = TestDatabase::sqlite();
    let server = Server::start(&mut tidings(&db.url)).await;
    let (email, password) = first_login(&server.banner).expect("a first login is printed");
    assert_eq!(email, "admin@tidings.local");
    assert_eq!(password.len(), 20);

    let (status, _, body) = get(&server.url("/healthz"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, _, body) = get(&server.url("/readyz"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["backend"], "sqlite");

    let exit = server.terminate().await;
    assert!(exit.success(), "SIGTERM is a clean shutdown, got {exit:?}");

    // The second start finds the administrator and prints no password.
    let again = Server::start(&mut tidings(&db.url)).await;
    assert_eq!(first_login(&again.banner), None, "{:?}", again.banner);
    assert!(again.terminate().await.success());
}

#[tokio::test]
async fn serve_on_an_empty_postgres_database_migrates_and_is_ready() {
    let db = TestDatabase::postgres_empty().await;
    let server = Server::start(&mut tidings(&db.url)).await;
    assert!(first_login(&server.banner).is_some());
    let (status, _, body) = get(&server.url("/readyz"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["backend"], "postgres");
    assert!(body["migrations"].as_u64().unwrap() >= 1);
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn without_migrations_serve_refuses_to_start_and_says_what_to_run() {
    let db = TestDatabase::postgres_empty().await;
    let output = tidings(&db.url)
        .env("TIDINGS_MIGRATE_ON_START", "false")
        .arg("serve")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("run `tidings migrate` first"), "{stderr}");

    let migrated = tidings(&db.url).arg("migrate").output().await.unwrap();
    assert!(migrated.status.success());
    let server = Server::start(tidings(&db.url).env("TIDINGS_MIGRATE_ON_START", "false")).await;
    assert_eq!(get(&server.url("/readyz"), None).await.0, StatusCode::OK);
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_created_token_authenticates_and_a_forged_one_does_not() {
    let db = TestDatabase::sqlite();
    let server =
        Server::start(tidings(&db.url).env("TIDINGS_FIRST_ADMIN_EMAIL", "it@district.example.org"))
            .await;
    let output = tidings(&db.url)
        .args(["token", "create", "--email", "IT@district.example.org"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout
        .lines()
        .last()
        .expect("the token is the last line")
        .to_owned();

    let (status, _, me) = get(&server.url("/api/v1/me"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["email"], "it@district.example.org");
    assert_eq!(me["role"], "district_admin");

    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'x' { 'y' } else { 'x' });
    for bad in [Some(forged.as_str()), Some("tid_garbage"), None] {
        let (status, content_type, problem) = get(&server.url("/api/v1/me"), bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(content_type.as_deref(), Some("application/problem+json"));
        assert_eq!(problem["type"], "/problems/unauthorized");
        assert_eq!(problem["status"], 401);
    }
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn token_create_for_an_unknown_email_fails_clearly() {
    let db = TestDatabase::sqlite();
    let output = tidings(&db.url)
        .args(["token", "create", "--email", "nobody@example.org"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "error: no enabled staff member signs in as nobody@example.org"
    );
}

#[tokio::test]
async fn unknown_routes_are_problem_json_and_the_openapi_document_lists_the_routes() {
    let db = TestDatabase::sqlite();
    let server = Server::start(&mut tidings(&db.url)).await;
    let (status, content_type, problem) = get(&server.url("/api/v1/nothing-here"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(problem["type"], "/problems/not-found");

    let (status, _, doc) = get(&server.url("/api/v1/openapi.json"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/healthz", "/readyz", "/api/v1/me"] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_bad_config_value_is_one_clear_line_and_a_failure_exit() {
    let db = TestDatabase::sqlite();
    let output = tidings(&db.url)
        .env("TIDINGS_LISTEN", "not-an-address")
        .arg("serve")
        .output()
        .await
        .unwrap();
    let stderr = one_line_error(&output);
    assert!(
        stderr.starts_with("error: invalid configuration"),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("listen"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_database_is_one_clear_line_without_the_password() {
    let output = tidings("postgres://tidings:hunter2@127.0.0.1:1/tidings")
        .arg("serve")
        .output()
        .await
        .unwrap();
    let stderr = one_line_error(&output);
    assert!(
        stderr.starts_with(
            "error: cannot open the database at postgres://tidings:***@127.0.0.1:1/tidings"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"));
}

#[tokio::test]
async fn a_config_file_is_read_and_the_environment_overrides_it() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tidings.toml");
    std::fs::write(
        &file,
        "database_url = \"sqlite:///nonexistent/ignored.db\"\n\
         district_name = \"Hill Valley\"\n\
         first_admin_email = \"boss@hill-valley.example.org\"\n",
    )
    .unwrap();
    let mut command = tidings(&db.url);
    command.arg("--config").arg(&file);
    let server = Server::start(&mut command).await;
    let banner = server.banner.join("\n");
    assert!(banner.contains("\"Hill Valley\""), "{banner}");
    assert_eq!(
        first_login(&server.banner).unwrap().0,
        "boss@hill-valley.example.org"
    );
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn a_process_signing_links_with_another_key_is_refused_and_rotation_keeps_old_links() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("link-keys");
    let file = file.to_str().unwrap();
    // The first start creates the keys file, readable by its owner only, and records the
    // key's fingerprint.
    let first = Server::start(tidings(&db.url).env("TIDINGS_LINK_KEYS_FILE", file)).await;
    assert!(first.terminate().await.success());
    let created = std::fs::read_to_string(file).unwrap();
    let keys = tidings_core::link::LinkKeys::parse(&created).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    // A dispatcher given its own key of the same id would send links nobody can open.
    let other = tidings_core::link::LinkKeys::generate().to_file_text();
    let refused = tidings(&db.url)
        .arg("dispatch")
        .env("TIDINGS_LINK_KEYS", &other)
        .env("TIDINGS_SANDBOX", "true")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        one_line_error(&refused).contains("link key [1] differs"),
        "{}",
        one_line_error(&refused)
    );
    // Rotation adds key 2 and keeps key 1: links already sent still verify.
    let rotated = tidings(&db.url)
        .args(["link-keys", "rotate"])
        .env("TIDINGS_LINK_KEYS_FILE", file)
        .output()
        .await
        .unwrap();
    assert!(rotated.status.success(), "{}", one_line_error(&rotated));
    let after =
        tidings_core::link::LinkKeys::parse(&std::fs::read_to_string(file).unwrap()).unwrap();
    let fingerprints = after.fingerprints();
    assert_eq!(fingerprints.len(), 2);
    assert_eq!(fingerprints[0], keys.fingerprints()[0]);
    let again = Server::start(tidings(&db.url).env("TIDINGS_LINK_KEYS_FILE", file)).await;
    assert!(again.terminate().await.success());
}

/// Without any provider no dispatcher runs: the log says that messages wait, not that
/// they become dead letters, and a log written to a file has no colour codes.
#[tokio::test]
async fn without_providers_the_log_says_messages_wait_in_plain_text() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.log");
    let log = std::fs::File::create(&path).unwrap();
    let server = Server::start_logging_to(&mut tidings(&db.url), &[], log.into()).await;
    assert!(server.terminate().await.success());
    let said = std::fs::read_to_string(&path).unwrap();
    assert!(said.contains("wait on the log"), "{said}");
    assert!(!said.contains("dead letters"), "{said}");
    assert!(
        !said.contains('\x1b'),
        "colour codes in a log file: {said:?}"
    );
}

/// `serve --demo` closes the loop with no provider: the acknowledgment link in a text the
/// sandbox took points at this server, the sandbox outbox shows it to the district's
/// administrator (and no one else), and opening it acknowledges.
#[tokio::test]
async fn in_demo_mode_the_outbox_shows_a_working_acknowledgment_link() {
    let db = TestDatabase::sqlite();
    let mut command = tidings(&db.url);
    command.env("TIDINGS_FIRST_ADMIN_EMAIL", support::ADMIN);
    let server = Server::start_with(&mut command, &["--demo"]).await;
    let admin = support::token_for(&db.url, support::ADMIN).await;
    let client = reqwest::Client::new();
    let sent: Value = client
        .post(server.url("/api/v1/messages"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({
            "audience": {"classes": ["class-0"]}, "channels": ["sms"], "kind": "general",
            "subject": "Field trip", "body": "Please confirm the field trip.", "requires_ack": true
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message = sent["id"].as_str().unwrap().to_owned();
    // Wait (with a deadline) until no delivery is left to send.
    for _ in 0..600 {
        let (_, _, report) = get(
            &server.url(&format!("/api/v1/messages/{message}")),
            Some(&admin),
        )
        .await;
        let waiting = report["counts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["state"] == "CREATED" || c["state"] == "QUEUED");
        if !waiting {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let outbox: Value = client
        .get(server.url("/_sandbox/received"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = outbox["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{outbox}");
    let text = items[0]["body"].as_str().unwrap();
    let at = format!("{}/a/", server.base);
    let start = text
        .find(&at)
        .unwrap_or_else(|| panic!("no link to {at} in {text:?}"));
    let link: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let page = client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let acked = client.post(&link).send().await.unwrap();
    assert!(acked.status().is_success(), "{}", acked.status());
    let (_, _, report) = get(
        &server.url(&format!("/api/v1/messages/{message}")),
        Some(&admin),
    )
    .await;
    let acked: u64 = report["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "ACKED")
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(acked, 1, "{report}");
    // Only the district's administrator sees the outbox.
    let (status, _, _) = get(&server.url("/_sandbox/received"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let teacher = support::token_for(&db.url, "gabe.nakamura0@staff.example.org").await;
    let (status, _, _) = get(&server.url("/_sandbox/received"), Some(&teacher)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(server.terminate().await.success());
}

/// `/metrics` is not open to the internet: on the public listener it answers only a
/// scraper on this machine connecting directly (not a request a proxy forwards), and with
/// `metrics_listen` it moves to an operator listener of its own.
#[tokio::test]
async fn metrics_answer_only_a_local_scraper_or_the_operator_listener() {
    let db = TestDatabase::sqlite();
    let server = Server::start(&mut tidings(&db.url)).await;
    let scrape = |url: String, forwarded: bool| async move {
        let mut request = reqwest::Client::new().get(url);
        if forwarded {
            request = request.header("X-Forwarded-For", "203.0.113.9");
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    };
    let (status, body) = scrape(server.url("/metrics"), false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("tidings_callback_inbox"), "{body}");
    let (status, body) = scrape(server.url("/metrics"), true).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "through a proxy: {body}");
    assert!(!body.contains("tidings_"), "{body}");
    assert!(server.terminate().await.success());

    let operator = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut command = tidings(&db.url);
    command.env("TIDINGS_METRICS_LISTEN", operator.to_string());
    let server = Server::start(&mut command).await;
    let (status, _) = scrape(server.url("/metrics"), false).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not on the public listener");
    let (status, body) = scrape(format!("http://{operator}/metrics"), false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("tidings_callback_inbox"), "{body}");
    assert!(server.terminate().await.success(), "both listeners stop");
}
