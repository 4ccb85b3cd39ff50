//! Sending a message over the API: audience, scope, idempotency and the report counts.

mod support;

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{tidings, token_for, District};
use tidings_core::testing::TestDatabase;

impl District {
    async fn send(&self, token: &str, key: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.call_with(
            reqwest::Method::POST,
            "/api/v1/messages",
            token,
            Some(body),
            &headers,
        )
        .await
    }

    async fn sends_recorded(&self) -> usize {
        let store = tidings_core::store::connect(&self.db.url, &Default::default())
            .await
            .unwrap();
        let district = store.districts().await.unwrap()[0].id;
        store
            .audit_entries(district, 1000)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.action == "message.send")
            .count()
    }

    /// Messages the district has, whoever sent them.
    async fn messages_stored(&self) -> usize {
        let store = tidings_core::store::connect(&self.db.url, &Default::default())
            .await
            .unwrap();
        let district = store.districts().await.unwrap()[0].id;
        store
            .messages(
                &tidings_core::store::MessageScope::District(district),
                None,
                1000,
            )
            .await
            .unwrap()
            .len()
    }
}

fn closure(audience: Value) -> Value {
    json!({
        "audience": audience,
        "channels": ["sms", "email"],
        "kind": "emergency",
        "subject": "Early dismissal",
        "body": "A water main broke. Students will be dismissed at 12:30.",
        "translations": {"es": {"subject": "Salida temprana", "body": "Salida a las 12:30."}},
        "requires_ack": true
    })
}

#[tokio::test]
async fn a_school_wide_message_reaches_each_guardian_once_on_each_channel() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    let (status, sent) = d
        .send(&d.admin, None, &closure(json!({"schools": ["school-0"]})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let recipients = sent["recipients"].as_u64().unwrap();
    assert!(recipients > 50, "{sent}");
    assert_eq!(
        sent["deliveries"].as_u64().unwrap(),
        2 * recipients,
        "one per guardian and channel"
    );

    let (status, summary) = d
        .get(
            &format!("/api/v1/messages/{}", sent["id"].as_str().unwrap()),
            &d.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["recipients"].as_u64(), Some(recipients));
    let counts = summary["counts"].as_array().unwrap();
    let total: u64 = counts.iter().map(|c| c["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 2 * recipients);
    let suppressed: u64 = counts
        .iter()
        .filter(|c| c["state"] == "SUPPRESSED")
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    let reported: u64 = support::suppressed_total(&sent);
    assert_eq!(
        suppressed, reported,
        "the demo has guardians without a phone or email"
    );
    assert!(suppressed > 0 && suppressed < total);
    assert!(counts
        .iter()
        .all(|c| c["state"] == "CREATED" || c["state"] == "SUPPRESSED"));

    // Nothing has been sent yet, so a recall cancels every delivery that was to be sent,
    // and everyone is still to acknowledge.
    let id = sent["id"].as_str().unwrap();
    let (status, pending) = d
        .get(
            &format!("/api/v1/messages/{id}/recipients?acked=false&limit=1000"),
            &d.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        pending["items"].as_array().unwrap().len() as u64,
        recipients
    );
    let (status, outcome) = d
        .post(&format!("/api/v1/messages/{id}/cancel"), &d.admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(outcome["cancelled"].as_u64(), Some(total - suppressed));
    assert_eq!(outcome["already_sent"].as_u64(), Some(0));
    let (_, summary) = d.get(&format!("/api/v1/messages/{id}"), &d.admin).await;
    let states: HashSet<&str> = summary["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, HashSet::from(["CANCELLED", "SUPPRESSED"]));

    // The whole district reaches more guardians than one school, each still once.
    let (_, all) = d
        .send(&d.admin, None, &closure(json!({"district": true})))
        .await;
    assert!(all["recipients"].as_u64().unwrap() > recipients);
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn the_same_idempotency_key_replays_and_a_different_body_is_refused() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    let body = closure(json!({"classes": ["class-0"]}));
    let (first_status, first) = d.send(&d.admin, Some("snow-day-1"), &body).await;
    assert_eq!(first_status, StatusCode::CREATED);
    let (again_status, again) = d.send(&d.admin, Some("snow-day-1"), &body).await;
    assert_eq!(
        (again_status, &again),
        (StatusCode::CREATED, &first),
        "the first answer, replayed"
    );
    assert_eq!(d.sends_recorded().await, 1, "and no second message");

    let mut changed = body.clone();
    changed["subject"] = json!("Something else");
    let (status, problem) = d.send(&d.admin, Some("snow-day-1"), &changed).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/idempotency-key-reused")
        )
    );

    // A refused request is replayed as refused, and keys are per staff member.
    let bad = closure(json!({"classes": ["class-999"]}));
    let (status, problem) = d.send(&d.admin, Some("typo"), &bad).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/unknown-audience")
        )
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("classes:class-999"),
        "{problem}"
    );
    let (status, replay) = d.send(&d.admin, Some("typo"), &bad).await;
    assert_eq!(
        (status, &replay),
        (StatusCode::UNPROCESSABLE_ENTITY, &problem)
    );
    assert_eq!(d.sends_recorded().await, 1);
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn concurrent_requests_with_one_key_send_one_message_on_postgres() {
    let d = District::with_demo(TestDatabase::postgres().await).await;
    let body = closure(json!({"schools": ["school-1"]}));
    let mut requests = tokio::task::JoinSet::new();
    let d = std::sync::Arc::new(d);
    for _ in 0..8 {
        let (d, body) = (d.clone(), body.clone());
        requests.spawn(async move { d.send(&d.admin, Some("lockdown-drill"), &body).await });
    }
    let mut ids = HashSet::new();
    while let Some(result) = requests.join_next().await {
        let (status, answer) = result.unwrap();
        match status {
            StatusCode::CREATED => {
                ids.insert(answer["id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => {
                assert_eq!(answer["type"], "/problems/idempotency-key-in-flight")
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert_eq!(ids.len(), 1, "every success names the same message");
    assert_eq!(d.sends_recorded().await, 1, "exactly one message was sent");
}

#[tokio::test]
async fn a_teacher_messages_their_class_and_nothing_beyond() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    let (email, class) = support::demo_teacher();
    let teacher = token_for(&d.db.url, &email).await;

    let (status, sent) = d
        .send(&teacher, None, &closure(json!({"classes": [class]})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let (status, problem) = d
        .send(
            &teacher,
            None,
            &closure(json!({"classes": ["class-1", "class-2"]})),
        )
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::FORBIDDEN, Some("/problems/forbidden-audience"))
    );
    let (status, problem) = d
        .send(&teacher, None, &closure(json!({"district": true})))
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::FORBIDDEN, Some("/problems/forbidden-audience"))
    );

    // Teachers read their own messages, not the district's.
    let (status, _) = d
        .get(
            &format!("/api/v1/messages/{}", sent["id"].as_str().unwrap()),
            &teacher,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, admins) = d
        .send(&d.admin, None, &closure(json!({"schools": ["school-0"]})))
        .await;
    let (status, _) = d
        .get(
            &format!("/api/v1/messages/{}", admins["id"].as_str().unwrap()),
            &teacher,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn fallback_adds_a_standby_email_behind_each_text_that_can_have_one() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    let mut body = closure(json!({"schools": ["school-0"]}));
    body["channels"] = json!(["sms"]);
    body["fallback_after_minutes"] = json!(5);
    let (status, sent) = d.send(&d.admin, None, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let recipients = sent["recipients"].as_u64().unwrap();
    let standby = sent["standby"].as_u64().unwrap();
    assert_eq!(sent["deliveries"].as_u64().unwrap(), recipients + standby);
    // The demo has guardians without an email address: no standby for them.
    assert!(standby > 0 && standby < recipients, "{sent}");
    assert_eq!(sent["deferred"], 0, "standbys are not counted as deferred");
    let id = sent["id"].as_str().unwrap();
    let (_, summary) = d.get(&format!("/api/v1/messages/{id}"), &d.admin).await;
    let emails: u64 = summary["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["channel"] == "email")
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(emails, standby, "{summary}");
    assert_eq!(summary["fallback_after_minutes"], 5);
    assert_eq!(
        summary["suppressed"], sent["suppressed"],
        "the report gives the reasons"
    );
    // A recall takes the standbys with it.
    let (status, outcome) = d
        .post(&format!("/api/v1/messages/{id}/cancel"), &d.admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    let suppressed: u64 = support::suppressed_total(&sent);
    assert_eq!(
        outcome["cancelled"].as_u64(),
        Some(recipients + standby - suppressed)
    );
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn invalid_messages_are_refused_with_the_reason() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    let cases = [
        (json!({"channels": []}), "channels is empty"),
        (json!({"channels": ["fax"]}), "unknown channel"),
        (json!({"kind": "gossip"}), "unknown message kind"),
        (json!({"subject": "  "}), "subject is empty"),
        (
            json!({"body": "x".repeat(1601)}),
            "body is longer than 1600",
        ),
        (json!({"audience": {}}), "audience names no one"),
        (
            json!({"scheduled_at": "2020-01-01T07:00:00Z"}),
            "scheduled_at is in the past",
        ),
        (
            json!({"ack_deadline": "2020-01-01T07:00:00Z"}),
            "before the message goes out",
        ),
        (
            json!({"audience": {"clases": ["class-0"]}}),
            "unknown field",
        ),
        (
            json!({"fallback_after_minutes": 0}),
            "fallback_after_minutes must be between 1 and 1440",
        ),
    ];
    for (change, reason) in cases {
        let mut body = closure(json!({"classes": ["class-0"]}));
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, problem) = d.send(&d.admin, None, &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{change}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(reason),
            "{change}: {problem}"
        );
    }
    assert_eq!(d.sends_recorded().await, 0);
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn district_quotas_hold_back_newsletters_but_never_an_emergency() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    let set = tidings(&d.db.url)
        .args([
            "district",
            "quotas",
            "--max-recipients-per-message",
            "10",
            "--max-messages-per-hour",
            "1",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(set.stdout).unwrap();
    assert!(
        set.status.success() && stdout.contains("max recipients per message: 10"),
        "{stdout}"
    );

    let mut newsletter = closure(json!({"schools": ["school-0"]}));
    newsletter["kind"] = json!("general");
    let (status, problem) = d.send(&d.admin, None, &newsletter).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            Some("/problems/quota-exceeded")
        )
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("allows 10 per message"),
        "{problem}"
    );

    let mut small = closure(json!({"guardians": ["guardian-0"]}));
    small["kind"] = json!("general");
    assert_eq!(d.send(&d.admin, None, &small).await.0, StatusCode::CREATED);
    let (status, problem) = d.send(&d.admin, None, &small).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "one general message per hour: {problem}"
    );

    let (status, sent) = d
        .send(&d.admin, None, &closure(json!({"district": true})))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "an emergency goes out whatever the quotas: {sent}"
    );
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn renotify_reminds_only_those_who_have_not_acknowledged_once_per_key() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    let (_, sent) = d
        .send(&d.admin, None, &closure(json!({"classes": ["class-0"]})))
        .await;
    let id = sent["id"].as_str().unwrap();
    let renotify = |key: &'static str, body: Value| {
        let request = d
            .client
            .post(d.server.url(&format!("/api/v1/messages/{id}/renotify")))
            .bearer_auth(&d.admin)
            .header("Idempotency-Key", key)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    // No one can acknowledge yet, so everyone is reminded, here by email only.
    let (status, reminder) = renotify("remind-1", json!({"channels": ["email"]})).await;
    assert_eq!(status, StatusCode::CREATED, "{reminder}");
    assert_eq!(reminder["recipients"], sent["recipients"]);
    assert_eq!(
        reminder["deliveries"], sent["recipients"],
        "one channel this time"
    );
    assert_ne!(reminder["id"], sent["id"]);
    let (status, again) = renotify("remind-1", json!({"channels": ["email"]})).await;
    assert_eq!(
        (status, &again),
        (StatusCode::CREATED, &reminder),
        "a double click reminds once"
    );
    assert_eq!(d.sends_recorded().await, 2);

    let mut no_ack = closure(json!({"classes": ["class-0"]}));
    no_ack["requires_ack"] = json!(false);
    let (_, plain) = d.send(&d.admin, None, &no_ack).await;
    let response = d
        .client
        .post(d.server.url(&format!(
            "/api/v1/messages/{}/renotify",
            plain["id"].as_str().unwrap()
        )))
        .bearer_auth(&d.admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn quiet_hours_and_schedules_defer_deliveries_but_never_an_emergency() {
    let d = District::with_demo(TestDatabase::sqlite()).await;
    // A window around the current minute, in UTC, so that "now" is inside it.
    let now = chrono::Utc::now();
    let minute = |offset: i64| {
        let m = (i64::from(chrono::Timelike::hour(&now)) * 60
            + i64::from(chrono::Timelike::minute(&now))
            + offset)
            .rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    let set = tidings(&d.db.url)
        .args([
            "school",
            "quiet-hours",
            "school-0",
            "--start",
            &minute(-60),
            "--end",
            &minute(60),
            "--timezone",
            "UTC",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    let mut general = closure(json!({"schools": ["school-0"]}));
    general["kind"] = json!("general");
    let (status, sent) = d.send(&d.admin, None, &general).await;
    assert_eq!(status, StatusCode::CREATED);
    let suppressed: u64 = support::suppressed_total(&sent);
    assert_eq!(
        sent["deferred"].as_u64().unwrap(),
        sent["deliveries"].as_u64().unwrap() - suppressed,
        "{sent}"
    );

    let (_, emergency) = d
        .send(&d.admin, None, &closure(json!({"schools": ["school-0"]})))
        .await;
    assert_eq!(emergency["deferred"], 0, "emergencies ignore quiet hours");

    let tomorrow = (now + chrono::Duration::days(1)).to_rfc3339();
    let mut scheduled = closure(json!({"schools": ["school-1"]}));
    scheduled["scheduled_at"] = json!(tomorrow);
    let (status, later) = d.send(&d.admin, None, &scheduled).await;
    assert_eq!(status, StatusCode::CREATED, "{later}");
    let suppressed: u64 = later["suppressed"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        later["deferred"].as_u64().unwrap(),
        later["deliveries"].as_u64().unwrap() - suppressed
    );
    let (_, summary) = d
        .get(
            &format!("/api/v1/messages/{}", later["id"].as_str().unwrap()),
            &d.admin,
        )
        .await;
    assert!(summary["scheduled_at"].is_string(), "{summary}");

    let off = tidings(&d.db.url)
        .args(["school", "quiet-hours", "no-such-school", "--off"])
        .output()
        .await
        .unwrap();
    assert!(!off.status.success());
    assert!(String::from_utf8_lossy(&off.stderr).contains("no school \"no-such-school\""));
    assert!(d.server.terminate().await.success());
}

/// A send fails after its deliveries were written — the audit row, then the idempotency
/// record, cannot be written — and the client retries with the same key: the failed
/// attempt left nothing (no message, no key stuck in flight), the retry sends exactly
/// once, and a retry after a lost answer replays it.
async fn a_failure_after_the_send_leaves_nothing_and_the_retry_sends_once(db: TestDatabase) {
    let d = District::with_demo(db).await;
    let body = closure(json!({"classes": ["class-0"]}));
    for (table, operation) in [("audit_log", "INSERT"), ("idempotency_keys", "UPDATE")] {
        let before = d.messages_stored().await;
        let key = format!("broken-{table}");
        d.db.break_writes(table, operation).await;
        let (status, problem) = d.send(&d.admin, Some(&key), &body).await;
        assert_eq!(
            (status, problem["type"].as_str()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("/problems/internal")
            ),
            "{table}: {problem}"
        );
        assert_eq!(d.messages_stored().await, before, "{table}: no message");
        d.db.heal(table, operation).await;

        let (status, sent) = d.send(&d.admin, Some(&key), &body).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{table}: the retry is not stuck: {sent}"
        );
        let (status, again) = d.send(&d.admin, Some(&key), &body).await;
        assert_eq!(
            (status, &again),
            (StatusCode::CREATED, &sent),
            "{table}: the answer, replayed"
        );
        assert_eq!(d.messages_stored().await, before + 1, "{table}: sent once");
    }
    assert_eq!(d.sends_recorded().await, 2, "each send audited once");
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn a_failure_after_the_send_leaves_nothing_and_the_retry_sends_once_on_sqlite() {
    a_failure_after_the_send_leaves_nothing_and_the_retry_sends_once(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn a_failure_after_the_send_leaves_nothing_and_the_retry_sends_once_on_postgres() {
    a_failure_after_the_send_leaves_nothing_and_the_retry_sends_once(
        TestDatabase::postgres().await,
    )
    .await;
}
