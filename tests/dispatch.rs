//! Sending for real: `tidings serve` with the sandbox delivers what it accepts, and
//! several `tidings dispatch` processes on one PostgreSQL finish a broadcast even when one
//! of them is killed mid-way.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{tidings, District};
use tidings_core::testing::TestDatabase;

tidings_core::on_both_stores! {
    databases: twenty_kills_lose_nothing,
}

fn alert() -> Value {
    json!({
        "audience": {"district": true},
        "channels": ["sms", "email"],
        "kind": "emergency",
        "subject": "Lockdown",
        "body": "All schools are in lockdown. Students are safe. Do not come to the school.",
        "requires_ack": true
    })
}

/// Sends [`alert`]: its id, and how many of its deliveries are to be sent (not suppressed).
async fn send_alert(d: &District) -> (String, u64) {
    let (status, sent) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(alert()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let suppressed: u64 = support::suppressed_total(&sent);
    let to_send = sent["deliveries"].as_u64().unwrap() - suppressed;
    (sent["id"].as_str().unwrap().to_owned(), to_send)
}

fn unfinished(counts: &BTreeMap<String, u64>) -> u64 {
    ["CREATED", "QUEUED"]
        .iter()
        .filter_map(|s| counts.get(*s))
        .sum()
}

/// Polls until `done` holds; a liveness bound, not a measurement.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1_200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within two minutes");
}

#[tokio::test]
async fn a_sandboxed_server_sends_every_delivery_it_accepts() {
    let d = District::with_demo_env(TestDatabase::sqlite(), &[("TIDINGS_SANDBOX", "true")]).await;
    let (status, sent) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(alert()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    eventually("sending every delivery", || async {
        unfinished(&d.counts(&id).await) == 0
    })
    .await;
    let counts = d.counts(&id).await;
    let suppressed = counts.get("SUPPRESSED").copied().unwrap_or(0);
    assert_eq!(
        counts.get("SENT").copied(),
        Some(sent["deliveries"].as_u64().unwrap() - suppressed),
        "{counts:?}"
    );
    // One delivery's trail shows the dispatcher's steps.
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        store.attempt_outcomes().await.unwrap(),
        BTreeMap::from([("sent".to_owned(), counts["SENT"] as i64)])
    );
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn dispatchers_share_postgres_and_finish_a_broadcast_when_one_is_killed() {
    // The server only accepts (no provider configured): three dispatchers do the sending.
    let d = District::with_demo(TestDatabase::postgres().await).await;
    let mut ids = Vec::new();
    let mut expected = 0;
    for _ in 0..5 {
        let (id, to_send) = send_alert(&d).await;
        ids.push(id);
        expected += to_send;
    }
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    let sent_attempts = || async {
        store
            .attempt_outcomes()
            .await
            .unwrap()
            .get("sent")
            .copied()
            .unwrap_or(0)
    };

    let mut dispatchers: Vec<_> = (0..3)
        .map(|_| {
            tidings(&d.db.url)
                .env("TIDINGS_SANDBOX", "true")
                .env("TIDINGS_LEASE_SECONDS", "2")
                .env("TIDINGS_DISPATCH_BATCH", "20")
                .arg("dispatch")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    eventually("the first sends", || async { sent_attempts().await >= 200 }).await;
    let mut victim = dispatchers.remove(0);
    victim.start_kill().unwrap(); // SIGKILL: no goodbye, leases left to expire
    victim.wait().await.unwrap();
    let at_kill = sent_attempts().await as u64;

    eventually("the survivors finishing the broadcast", || async {
        let mut left = 0;
        for id in &ids {
            left += unfinished(&d.counts(id).await);
        }
        left == 0
    })
    .await;
    let mut sent = 0;
    for id in &ids {
        let counts = d.counts(id).await;
        assert_eq!(counts.get("FAILED"), None, "{counts:?}");
        sent += counts.get("SENT").copied().unwrap_or(0);
    }
    assert_eq!(sent, expected, "every delivery sent");
    let outcomes = store.attempt_outcomes().await.unwrap();
    assert_eq!(
        outcomes["sent"] as u64, expected,
        "each recorded sent exactly once: {outcomes:?}"
    );
    assert_eq!(
        outcomes.get("in_flight"),
        None,
        "no attempt left open: {outcomes:?}"
    );
    assert!(
        at_kill < expected,
        "the kill came after the broadcast was done"
    );
    // Every partition's offset reached its head: the victim's partitions were taken over.
    for (lane, partition, heads) in store.partition_heads().await.unwrap() {
        let committed = store
            .committed_offset(tidings_dispatcher::CONSUMER_GROUP, lane, partition)
            .await
            .unwrap();
        assert_eq!(committed, Some(heads.last), "{lane} {partition}");
    }
    for mut survivor in dispatchers {
        let pid = survivor.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), survivor.wait())
            .await
            .expect("a dispatcher did not stop within 30 s of SIGTERM")
            .unwrap();
        assert!(status.success());
    }
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn staff_see_dead_letters_with_their_trail_and_replay_them() {
    let faults = "{permanent=0.5,seed=3}";
    let d = District::with_demo_env(
        TestDatabase::sqlite(),
        &[
            ("TIDINGS_SANDBOX", "true"),
            ("TIDINGS_SANDBOX_FAULTS", faults),
        ],
    )
    .await;
    let (status, sent) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(alert()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let id = sent["id"].as_str().unwrap().to_owned();
    eventually("every delivery ending", || async {
        unfinished(&d.counts(&id).await) == 0
    })
    .await;
    let failed = d.counts(&id).await["FAILED"];
    assert!(failed > 0);

    let (status, page) = d.get("/api/v1/dead-letters?limit=500", &d.admin).await;
    assert_eq!(status, StatusCode::OK);
    let dead = page["items"].as_array().unwrap();
    assert_eq!(dead.len() as u64, failed);
    let first = dead[0]["id"].as_str().unwrap();
    assert_eq!(dead[0]["state"], "FAILED");
    assert!(dead[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("invalid recipient"));

    let (status, detail) = d
        .get(&format!("/api/v1/deliveries/{first}"), &d.admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    let steps: Vec<(&str, &str)> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("CREATED", "QUEUED"), ("QUEUED", "FAILED")]);
    assert_eq!(detail["attempts"][0]["outcome"], "permanent");
    assert_eq!(detail["attempts"][0]["provider"], "sandbox");

    // Replay: back in the queue, audited; the sandbox decides its fate again.
    let replay = format!("/api/v1/dead-letters/{first}/replay");
    let (status, requeued) = d.call(reqwest::Method::POST, &replay, &d.admin, None).await;
    assert_eq!(status, StatusCode::OK, "{requeued}");
    assert_eq!(requeued["state"], "QUEUED");
    let path = format!("/api/v1/deliveries/{first}");
    eventually("the replayed delivery ending", || async {
        let (_, detail) = d.get(&path, &d.admin).await;
        detail["state"] == "SENT"
            || (detail["state"] == "FAILED" && detail["attempts"].as_array().unwrap().len() == 2)
    })
    .await;

    // Replaying again: a delivery that was sent cannot be, one that failed again can.
    let (_, detail) = d.get(&path, &d.admin).await;
    let (status, _) = d.call(reqwest::Method::POST, &replay, &d.admin, None).await;
    let expected = if detail["state"] == "SENT" {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    assert_eq!(status, expected, "{detail}");
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    let replays = store
        .audit_entries(district, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == "delivery.replay")
        .count();
    let replayed_twice = usize::from(status == StatusCode::OK);
    assert_eq!(
        replays,
        1 + replayed_twice,
        "each replay is in the audit log"
    );
    let (status, problem) = d
        .post(
            &format!("/api/v1/dead-letters/{}/replay", uuid_v7()),
            &d.admin,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert!(d.server.terminate().await.success());
}

fn uuid_v7() -> String {
    tidings_core::DeliveryId::new().to_string()
}

/// A dispatcher is killed with SIGKILL mid-broadcast twenty times over; each time a new
/// one takes its partitions over once the leases expire (aged by the test, not waited
/// for). Nothing is lost, each delivery
/// is recorded sent once, and the provider saw a delivery twice only where an attempt was
/// left in doubt.
async fn twenty_kills_lose_nothing(db: TestDatabase) {
    let d = District::with_demo(db).await;
    let mut ids = Vec::new();
    let mut expected = 0;
    for _ in 0..8 {
        let (id, to_send) = send_alert(&d).await;
        ids.push(id);
        expected += to_send;
    }
    let scratch = tempfile::tempdir().unwrap();
    let journal = scratch.path().join("received");
    let received = || {
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let dispatch = || {
        tidings(&d.db.url)
            .env("TIDINGS_SANDBOX", "true")
            .env("TIDINGS_SANDBOX_JOURNAL", &journal)
            .env("TIDINGS_LEASE_SECONDS", "2")
            .env("TIDINGS_DISPATCH_BATCH", "5")
            .arg("dispatch")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut kills = 0;
    for _ in 0..20 {
        let before = received().len();
        let mut dispatcher = dispatch();
        // Killed as soon as it has sent something: mid-batch as often as not.
        for _ in 0..6_000 {
            if received().len() >= before + 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pid = dispatcher.id().unwrap();
        dispatcher.start_kill().unwrap();
        dispatcher.wait().await.unwrap();
        kills += 1;
        // The dead one's leases expire now rather than two seconds from now: the next
        // dispatcher takes them over as it would after waiting out their time.
        for table in ["partition_leases", "dispatchers"] {
            support::execute(
                &d.db.url,
                &format!(
                    "UPDATE {table} SET expires_at = '1970-01-01 00:00:00+00:00' \
                     WHERE owner LIKE 'dispatch-{pid}-%'"
                ),
            )
            .await
            .unwrap();
        }
    }
    assert!(
        (received().len() as u64) < expected,
        "the broadcast ended before the last kill"
    );
    let mut last = dispatch();
    eventually("the last dispatcher finishing the broadcast", || async {
        let mut left = 0;
        for id in &ids {
            left += unfinished(&d.counts(id).await);
        }
        left == 0
    })
    .await;
    let pid = last.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(last.wait().await.unwrap().success());

    let mut sent = 0;
    for id in &ids {
        let counts = d.counts(id).await;
        assert_eq!(counts.get("FAILED"), None, "{counts:?}");
        sent += counts.get("SENT").copied().unwrap_or(0);
    }
    assert_eq!(sent, expected, "every delivery sent, after {kills} kills");
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    let outcomes = store.attempt_outcomes().await.unwrap();
    assert_eq!(
        outcomes["sent"] as u64, expected,
        "recorded sent once each: {outcomes:?}"
    );
    assert_eq!(outcomes.get("in_flight"), None, "{outcomes:?}");
    let lines = received();
    let unique: std::collections::HashSet<&String> = lines.iter().collect();
    let odd: Vec<&String> = lines.iter().filter(|l| l.len() != lines[0].len()).collect();
    assert_eq!(
        unique.len() as u64,
        expected,
        "the provider got every delivery (lines unlike the first: {odd:?})"
    );
    let duplicates = (lines.len() - unique.len()) as i64;
    let in_doubt = outcomes.get("in_doubt").copied().unwrap_or(0);
    assert!(
        duplicates <= in_doubt,
        "{duplicates} duplicates but only {in_doubt} attempts in doubt"
    );
    assert!(d.server.terminate().await.success());
}
