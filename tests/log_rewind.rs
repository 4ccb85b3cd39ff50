//! Rewinding a partition of the delivery log as an operator does it, on both stores:
//! `tidings log status` to see where the dispatchers are, `tidings log rewind` and
//! `POST /api/v1/log/rewind` to read a partition again while `tidings serve` sends. What
//! was sent is read again and not sent again; a second rewind of the partition within
//! ten minutes is refused; only operators may rewind.

mod support;

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tidings_core::testing::TestDatabase;

use support::{tidings, District};

tidings_core::on_both_stores! {
    databases: an_operator_rewinds_a_partition_from_the_cli_and_the_api,
}

/// `tidings log status`: a JSON object per partition with entries.
async fn status(url: &str) -> Vec<Value> {
    let output = tidings(url).args(["log", "status"]).output().await.unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Waits until every partition is consumed to its last entry; the partitions.
async fn consumed(url: &str) -> Vec<Value> {
    for _ in 0..1_200 {
        let partitions = status(url).await;
        if partitions.iter().all(|p| p["unread"] == 0) {
            return partitions;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the log was not consumed within two minutes");
}

async fn an_operator_rewinds_a_partition_from_the_cli_and_the_api(db: TestDatabase) {
    let d = District::with_demo_env(db, &[("TIDINGS_SANDBOX", "true")]).await;
    let alert = json!({
        "audience": {"district": true},
        "channels": ["sms", "email"],
        "kind": "emergency",
        "subject": "Lockdown",
        "body": "All schools are in lockdown.",
    });
    let (status_code, sent) = d
        .call(Method::POST, "/api/v1/messages", &d.admin, Some(alert))
        .await;
    assert_eq!(status_code, StatusCode::CREATED, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    let partitions = consumed(&d.db.url).await;
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    // Every provider call made, by outcome: a send made again would add one.
    let before: BTreeMap<String, i64> = store.attempt_outcomes().await.unwrap();
    assert_eq!(
        before.values().sum::<i64>() as u64,
        sent["deliveries"].as_u64().unwrap() - support::suppressed_total(&sent)
    );
    assert!(partitions.len() >= 2, "{partitions:?}");
    let (first, second) = (&partitions[0], &partitions[1]);

    // The command line: the first partition read again from its start.
    let output = tidings(&d.db.url)
        .args(["log", "rewind", "--lane"])
        .arg(first["lane"].as_str().unwrap())
        .arg("--partition")
        .arg(first["partition"].to_string())
        .args(["--from", "0"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let rewound: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        rewound["entries"],
        first["last_offset"].as_u64().unwrap() + 1
    );
    assert_eq!(rewound["was_committed"], first["last_offset"]);
    assert_eq!(rewound["waiting"], 0, "everything was sent: {rewound}");
    let after = status(&d.db.url).await;
    let unread = after
        .iter()
        .find(|p| p["lane"] == first["lane"] && p["partition"] == first["partition"])
        .unwrap()["unread"]
        .as_i64()
        .unwrap();
    assert!(unread > 0, "the partition is to be read again: {after:?}");
    // Read again by the running server, and nothing sent twice.
    consumed(&d.db.url).await;
    assert_eq!(store.attempt_outcomes().await.unwrap(), before);

    // The API: the same partition again is too soon; another one goes.
    let body =
        |p: &Value| json!({"lane": p["lane"], "partition": p["partition"], "from_offset": 0});
    let (code, problem) = d
        .call(
            Method::POST,
            "/api/v1/log/rewind",
            &d.admin,
            Some(body(first)),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("rewound less than 10 minutes ago"),
        "{problem}"
    );
    let (code, rewound) = d
        .call(
            Method::POST,
            "/api/v1/log/rewind",
            &d.admin,
            Some(body(second)),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{rewound}");
    assert_eq!(
        rewound["entries"],
        second["last_offset"].as_u64().unwrap() + 1
    );
    let (code, problem) = d
        .call(
            Method::POST,
            "/api/v1/log/rewind",
            &d.admin,
            Some(json!({"lane": "sideways", "partition": 0, "from_offset": 0})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (teacher, _) = support::demo_teacher();
    let teacher = support::token_for(&d.db.url, &teacher).await;
    let (code, problem) = d
        .call(
            Method::POST,
            "/api/v1/log/rewind",
            &teacher,
            Some(body(second)),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{problem}");
    consumed(&d.db.url).await;
    assert_eq!(store.attempt_outcomes().await.unwrap(), before);
    let counts = d.counts(&id).await;
    assert!(
        !counts.contains_key("CREATED") && !counts.contains_key("QUEUED"),
        "{counts:?}"
    );
    assert!(d.server.terminate().await.success());
}
