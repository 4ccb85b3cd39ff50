//! Schemathesis, an API fuzzer, walks every operation of the served OpenAPI document with
//! generated requests (valid and not) against a district with the demo roster, on both
//! stores: no answer may be a server error, and every answer must match the document
//! (status, content type, schema). Bounded and seeded, so a run takes seconds and a
//! failure can be replayed.

mod support;

use support::District;
use tidings_core::testing::TestDatabase;

tidings_core::on_both_stores! {
    databases: every_operation_answers_as_documented_without_a_server_error,
}

async fn every_operation_answers_as_documented_without_a_server_error(db: TestDatabase) {
    let d = District::with_demo(db).await;
    let schemathesis = tidings_core::testing::test_tool("schemathesis");
    let output = tokio::process::Command::new(schemathesis)
        .arg("run")
        .arg(d.server.url("/api/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {}", d.admin)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "25", "--seed", "20261205", "--workers", "1"])
        // A roster zip is not something it can generate; tests/import.rs covers it.
        .args(["--exclude-path", "/api/v1/imports/oneroster"])
        .args(["--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    let summary = said
        .rsplit_once("SUMMARY")
        .map_or(said.as_ref(), |(_, rest)| rest);
    assert!(
        output.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It did test: every operation but the excluded one, a good many cases, all passing.
    let doc: serde_json::Value = d
        .client
        .get(d.server.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert!(
        summary.contains(&format!("Tested: {}", operations - 1)),
        "{operations} operations: {summary}"
    );
    // "Test cases: N generated, N passed" — no "failed" or "errored" part.
    let cases = summary
        .split_once("Test cases:")
        .and_then(|(_, rest)| rest.trim().lines().next())
        .unwrap_or_default();
    let counts: Vec<&str> = cases.split(", ").collect();
    assert!(
        counts.len() == 2 && counts[1].ends_with(" passed"),
        "{summary}"
    );
    let passed: u64 = counts[1].trim_end_matches(" passed").parse().unwrap();
    assert!(passed > 500, "{summary}");
    assert!(!said.contains("FAILURES"), "{said}");
    assert!(d.server.terminate().await.success());
}
