//! The edges that face the internet, tried as a hostile client would: text no store can
//! keep, bodies too large or too slow, connections that never finish a header, scripts
//! that ask for sign-in codes in bulk, and audiences that reach beyond the caller or no
//! one at all. Every answer must be a problem+json error, never a 5xx.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{token_for, District};
use tidings_core::testing::TestDatabase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sign-in codes one client address gets at once.
const SHARE: usize = tidings_api::guardian::SIGN_INS_PER_CLIENT_PER_MINUTE as usize;

tidings_core::on_both_stores! {
    databases:
    text_no_store_can_keep_is_refused_with_a_problem,
    a_teacher_naming_a_grade_is_refused_and_told_what_is_out_of_scope,
    a_message_that_reaches_no_guardian_is_refused,
}

fn message(audience: Value) -> Value {
    json!({
        "audience": audience,
        "channels": ["sms"],
        "kind": "general",
        "subject": "Picture day",
        "body": "Picture day is on Friday.",
    })
}

/// A raw request and the whole answer, as (status, content type, body).
async fn raw(
    d: &District,
    method: Method,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &[u8])],
) -> (StatusCode, String, String) {
    let mut request = d
        .client
        .request(method, d.server.url(path))
        .bearer_auth(&d.admin);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    for (name, value) in headers {
        request = request.header(
            *name,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

fn problem_type(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["type"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn text_no_store_can_keep_is_refused_with_a_problem(db: TestDatabase) {
    let d = District::with_demo(db).await;
    let nul = "Picture\u{0}day";
    let with_nul = [
        json!({"audience": {"schools": ["school-0"]}, "channels": ["sms"], "kind": "general", "subject": nul, "body": "b"}),
        json!({"audience": {"schools": ["school-0"]}, "channels": ["sms"], "kind": "general", "subject": "s", "body": nul}),
        json!({"audience": {"schools": ["school-0"]}, "channels": ["sms"], "kind": "general", "subject": "s", "body": "b",
               "translations": {"es": {"subject": "s", "body": nul}}}),
        json!({"audience": {"schools": ["school-0"]}, "channels": ["sms"], "kind": "general", "subject": "s", "body": "b",
               "translations": {nul: {"subject": "s", "body": "b"}}}),
        json!({"audience": {"schools": [nul]}, "channels": ["sms"], "kind": "general", "subject": "s", "body": "b"}),
        json!({"audience": {"grades": [nul]}, "channels": ["sms"], "kind": "general", "subject": "s", "body": "b"}),
    ];
    for body in &with_nul {
        let (status, content_type, answer) = raw(
            &d,
            Method::POST,
            "/api/v1/messages",
            Some(&body.to_string()),
            &[],
        )
        .await;
        assert_eq!(
            (
                status,
                content_type.as_str(),
                problem_type(&answer).as_str()
            ),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "application/problem+json",
                "/problems/invalid-body"
            ),
            "{body}: {answer}"
        );
    }
    // An escaped backslash before `u0000` is text, not a NUL: it is sent.
    let literal = r#"{"audience": {"schools": ["school-0"]}, "channels": ["sms"], "kind": "general", "subject": "a \\u0000 b", "body": "b"}"#;
    let (status, _, answer) = raw(&d, Method::POST, "/api/v1/messages", Some(literal), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    for path in [
        "/api/v1/guardians?q=a%00b",
        "/api/v1/students?q=%00",
        &format!("/api/v1/guardians?q={}", "x".repeat(50_001)),
    ] {
        let (status, content_type, answer) = raw(&d, Method::GET, path, None, &[]).await;
        assert_eq!(
            (
                status,
                content_type.as_str(),
                problem_type(&answer).as_str()
            ),
            (
                StatusCode::BAD_REQUEST,
                "application/problem+json",
                "/problems/invalid-query"
            ),
            "{}: {answer}",
            &path[..path.len().min(40)]
        );
    }
    // A search at the limit still works.
    let (status, _, answer) = raw(
        &d,
        Method::GET,
        &format!("/api/v1/guardians?q={}", "x".repeat(200)),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Over the body limit, on a JSON route and on the send (which reads raw bytes).
    for path in [
        "/api/v1/messages",
        "/api/v1/messages/0190a0a0-0000-7000-8000-000000000000/renotify",
    ] {
        let answer = support::send_oversized(&d.server, path, &d.admin).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(
            answer.contains("content-type: application/problem+json")
                && answer.contains("/problems/payload-too-large"),
            "{path}: {answer}"
        );
    }

    // An Idempotency-Key that is not ASCII text.
    let body = message(json!({"schools": ["school-0"]})).to_string();
    let (status, content_type, answer) = raw(
        &d,
        Method::POST,
        "/api/v1/messages",
        Some(&body),
        &[("idempotency-key", "clé-é".as_bytes())],
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(content_type, "application/problem+json", "{answer}");
    assert!(problem_type(&answer).starts_with("/problems/"), "{answer}");

    // A method the route does not have.
    let (status, content_type, answer) = raw(&d, Method::PUT, "/api/v1/messages", None, &[]).await;
    assert_eq!(
        (
            status,
            content_type.as_str(),
            problem_type(&answer).as_str()
        ),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "application/problem+json",
            "/problems/method-not-allowed"
        ),
    );
    assert!(d.server.terminate().await.success());
}

/// The teacher of the demo's first class (a token), and that class's sourcedId.
async fn first_teacher(d: &District) -> (String, String) {
    let (email, class) = support::demo_teacher();
    (token_for(&d.db.url, &email).await, class)
}

async fn a_teacher_naming_a_grade_is_refused_and_told_what_is_out_of_scope(db: TestDatabase) {
    let d = District::with_demo(db).await;
    let (teacher, class) = first_teacher(&d).await;
    let send = |token: String, audience: Value| {
        let d = &d;
        async move {
            d.call(
                Method::POST,
                "/api/v1/messages",
                &token,
                Some(message(audience)),
            )
            .await
        }
    };
    // Before: 201, reaching only the teacher's own students of that grade.
    let (status, problem) = send(teacher.clone(), json!({"grades": ["01"]})).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::FORBIDDEN, Some("/problems/forbidden-audience")),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("grades:01"),
        "{problem}"
    );
    // The rest of what was asked for is named too, each reference once.
    let (status, problem) = send(
        teacher.clone(),
        json!({"grades": ["01"], "schools": ["school-0"], "classes": [class]}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("grades:01") && detail.contains("schools:school-0"),
        "{detail}"
    );
    assert!(
        !detail.contains(&class),
        "their own class is not out of scope: {detail}"
    );
    // Their own class goes.
    let (status, sent) = send(teacher.clone(), json!({"classes": [class]})).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    // An administrator may name the grade; a grade no student is in is unknown.
    let (status, sent) = send(d.admin.clone(), json!({"grades": ["01"]})).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert!(sent["recipients"].as_u64().unwrap() > 0);
    let (status, problem) = send(d.admin.clone(), json!({"grades": ["99"]})).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/unknown-audience")
        ),
        "{problem}"
    );
    assert!(d.server.terminate().await.success());
}

async fn a_message_that_reaches_no_guardian_is_refused(db: TestDatabase) {
    // A district whose directory is empty, as after a failed import.
    let d = District::start(db).await;
    let mut emergency = message(json!({"district": true}));
    emergency["kind"] = json!("emergency");
    let (status, problem) = d
        .call(Method::POST, "/api/v1/messages", &d.admin, Some(emergency))
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/empty-audience")
        ),
        "{problem}"
    );
    let (status, listed) = d.get("/api/v1/messages", &d.admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was written: {listed}"
    );
    assert!(d.server.terminate().await.success());
}

/// A client on its own loopback address (Linux routes all of 127/8 to loopback).
fn client_at(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn ask_code(
    client: &reqwest::Client,
    d: &District,
    address: &str,
    forwarded: Option<&str>,
) -> (StatusCode, String) {
    let mut request = client
        .post(d.server.url("/api/v1/guardian/sign-in"))
        .json(&json!({ "address": address }));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    let body = answer.text().await.unwrap();
    (
        status,
        if status.is_success() {
            String::new()
        } else {
            problem_type(&body)
        },
    )
}

#[tokio::test]
async fn a_script_asking_for_codes_does_not_keep_guardians_out() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    // The script: 200 requests at once from one address, for numbers not on file.
    let script = client_at("127.0.0.2");
    let mut asked = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (script, url) = (script.clone(), d.server.url("/api/v1/guardian/sign-in"));
        asked.spawn(async move {
            let answer = script
                .post(url)
                .json(&json!({ "address": format!("+1202555{i:04}") }))
                .send()
                .await
                .unwrap();
            answer.status()
        });
    }
    let statuses = asked.join_all().await;
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, SHARE, "{statuses:?}");
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::TOO_MANY_REQUESTS));
    // Meanwhile a guardian on another address still gets a code.
    let (status, kind) = ask_code(&client_at("127.0.0.3"), &d, "+12025550100", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{kind}");
    // One destination gets at most 5 codes an hour, whoever asks.
    let mut answers = Vec::new();
    for i in 0..7 {
        answers.push(
            ask_code(
                &client_at(&format!("127.0.1.{}", i + 1)),
                &d,
                "+12025550111",
                None,
            )
            .await,
        );
    }
    assert!(
        answers[..5].iter().all(|(s, _)| *s == StatusCode::ACCEPTED),
        "{answers:?}"
    );
    assert_eq!(
        answers[5],
        (
            StatusCode::TOO_MANY_REQUESTS,
            "/problems/too-many-codes".to_owned()
        )
    );
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_share() {
    let d = District::start_env(
        TestDatabase::sqlite(),
        &[("TIDINGS_TRUSTED_PROXIES", "[\"127.0.0.5\"]")],
    )
    .await;
    let proxy = client_at("127.0.0.5");
    // Five clients behind the proxy, one code each (the process allows 20 a second).
    for i in 0..5 {
        let (status, kind) = ask_code(
            &proxy,
            &d,
            &format!("+120255503{i}0"),
            Some(&format!("198.51.100.{i}")),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{kind}");
    }
    // One of them beyond its share is held back: a forged first hop does not help.
    let mut statuses = Vec::new();
    for j in 0..SHARE {
        statuses.push(
            ask_code(
                &proxy,
                &d,
                &format!("+120255504{j:02}"),
                Some(&format!("10.{j}.0.1, 198.51.100.1")),
            )
            .await
            .0,
        );
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        SHARE - 1,
        "{statuses:?}"
    );
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let d = District::start_env(
        TestDatabase::sqlite(),
        &[("TIDINGS_TRUSTED_PROXIES", "[\"127.0.0.5\"]")],
    )
    .await;
    // One address, one share, whatever it claims to forward.
    let other = client_at("127.0.0.4");
    let mut from_other = Vec::new();
    for i in 0..SHARE + 2 {
        from_other.push(
            ask_code(
                &other,
                &d,
                &format!("+120255502{i:02}"),
                Some(&format!("198.51.100.{}", 50 + i)),
            )
            .await
            .0,
        );
    }
    assert_eq!(
        from_other
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        SHARE,
        "{from_other:?}"
    );
    assert!(d.server.terminate().await.success());
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    // A bound against hanging, far above the timeouts the server is given.
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .expect("the server held the connection open")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_client_that_stops_halfway_is_let_go() {
    let d = District::start_env(
        TestDatabase::sqlite(),
        &[
            ("TIDINGS_HTTP_HEADER_TIMEOUT_SECONDS", "1"),
            ("TIDINGS_HTTP_BODY_TIMEOUT_SECONDS", "1"),
        ],
    )
    .await;
    let address = d.server.base.trim_start_matches("http://").to_owned();
    // Half a header.
    let mut half = tokio::net::TcpStream::connect(&address).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    read_to_close(&mut half).await;
    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    read_to_close(&mut silent).await;
    // A kept-alive connection left idle after its answer.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_to_close(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // A body that stops arriving: 408, as problem+json.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = b"POST /api/v1/guardian/sign-in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"address\"";
    slow.write_all(head).await.unwrap();
    let answered = read_to_close(&mut slow).await;
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    assert!(
        answered.contains("application/problem+json")
            && answered.contains("/problems/request-timeout"),
        "{answered}"
    );
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.log");
    let log = std::fs::File::create(&path).unwrap();
    let mut command = support::tidings(&db.url);
    command.envs([
        ("TIDINGS_HTTP_MAX_CONNECTIONS", "3"),
        ("TIDINGS_HTTP_HEADER_TIMEOUT_SECONDS", "600"),
    ]);
    let server = support::Server::start_logging_to(&mut command, &[], log.into()).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        held.push(stream);
    }
    // With the three open the server stops accepting, and says so: a fourth is taken by
    // the kernel and waits in its queue, not in the server's memory.
    let said = support::logged(&path, "every connection is in use").await;
    assert!(said.contains("max_connections=3"), "{said}");
    let mut fourth = tokio::net::TcpStream::connect(&address).await.unwrap();
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    drop(held.pop());
    let answered = read_to_close(&mut fourth).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    drop(held);
    assert!(server.terminate().await.success());
    // Said once for the time it was full.
    let said = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        said.matches("every connection is in use").count(),
        1,
        "{said}"
    );
}
