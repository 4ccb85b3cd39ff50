//! A guardian's data requests as a district handles them, on both stores: everything
//! held about a guardian exported from the API and the command line; the guardian erased
//! (refused while a message to them still waits), nothing of them left but a hash of the
//! number that texted STOP; the roster bringing the number back, and the number still
//! never texted — until it texts START.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tidings_core::delivery::Actor;
use tidings_core::store::{InboundSms, SmsKeyword};
use tidings_core::testing::TestDatabase;
use tidings_core::time::now;

use support::{cli, demo_zip, District};

tidings_core::on_both_stores! {
    databases: a_guardian_is_exported_and_erased_and_their_stop_outlives_them,
}

/// The demo's guardian-0, Sami Brooks: (202) 555-0145, three children.
const NUMBER: &str = "+12025550145";

/// A message to guardian-0 alone; the answer to `POST /api/v1/messages`.
async fn message(d: &District, channels: &[&str], extra: Value) -> Value {
    let mut body = json!({
        "audience": {"guardians": ["guardian-0"]},
        "channels": channels,
        "kind": "general",
        "subject": "Picture day",
        "body": "Picture day is on Friday.",
        "requires_ack": true,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, sent) = d
        .call(Method::POST, "/api/v1/messages", &d.admin, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    sent
}

/// Waits until no delivery of message `id` waits to be sent.
async fn sent(d: &District, id: &str) {
    for _ in 0..600 {
        let counts = d.counts(id).await;
        if !counts.contains_key("CREATED") && !counts.contains_key("QUEUED") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("message {id} was not sent within a minute");
}

/// guardian-0 texts `body` (a keyword, or a reply).
async fn text(
    store: &dyn tidings_core::store::Store,
    id: &str,
    body: &str,
    keyword: Option<SmsKeyword>,
) {
    let sms = InboundSms {
        provider: "twilio".into(),
        provider_message_id: id.into(),
        from: NUMBER.into(),
        to: "+15555550100".into(),
        body: body.into(),
        keyword,
    };
    store
        .take_inbound(&sms, &Actor::guardian("sms"), now())
        .await
        .unwrap();
}

async fn a_guardian_is_exported_and_erased_and_their_stop_outlives_them(db: TestDatabase) {
    let d = District::with_demo_env(db, &[("TIDINGS_SANDBOX", "true")]).await;
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    let first = message(&d, &["sms", "email"], json!({})).await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    sent(&d, &first_id).await;
    text(store.as_ref(), "SM-reply", "Thank you!", None).await;
    text(store.as_ref(), "SM-stop", "STOP", Some(SmsKeyword::Stop)).await;

    // Exported through the API: everything about them, nothing about anyone else.
    let (status, export) = d.get("/api/v1/guardians/guardian-0/export", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{export}");
    let guardian = &export["guardian"];
    assert_eq!(guardian["sourced_id"], "guardian-0");
    assert_eq!(
        guardian["students"].as_array().unwrap().len(),
        3,
        "{export}"
    );
    let addresses: Vec<&str> = guardian["contact_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert!(addresses.contains(&NUMBER), "{addresses:?}");
    assert!(
        addresses.contains(&"sami.brooks0@example.com"),
        "{addresses:?}"
    );
    assert_eq!(
        export["opt_out_history"][0]["source"], "carrier",
        "{export}"
    );
    let messages = export["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{export}");
    assert_eq!(messages[0]["message_id"], first_id.as_str());
    assert_eq!(messages[0]["ack_state"], "pending");
    let deliveries = messages[0]["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{export}");
    for delivery in deliveries {
        assert_ne!(delivery["state"], "CREATED", "{delivery}");
        assert!(
            !delivery["events"].as_array().unwrap().is_empty(),
            "{delivery}"
        );
        assert_eq!(delivery["attempts"][0]["outcome"], "sent", "{delivery}");
    }
    let replies: Vec<&str> = export["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    assert_eq!(replies, ["Thank you!", "STOP"]);

    // Only district administrators make data requests.
    let (teacher, _) = support::demo_teacher();
    let teacher = support::token_for(&d.db.url, &teacher).await;
    let (status, problem) = d.get("/api/v1/guardians/guardian-0/export", &teacher).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    let (status, problem) = d
        .call(
            Method::POST,
            "/api/v1/guardians/guardian-0/erase",
            &teacher,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");

    // The command line prints the same.
    let printed = cli(&d.db.url, &["guardian", "export", "guardian-0"])
        .await
        .unwrap();
    let printed: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(printed["guardian"], export["guardian"]);
    assert_eq!(printed["messages"], export["messages"]);

    // Not while a message to them still waits (scheduled for tomorrow): cancelled, it
    // no longer holds the erasure back.
    let tomorrow = (now() + chrono::Duration::days(1)).to_rfc3339();
    let waiting = message(&d, &["email"], json!({"scheduled_at": tomorrow})).await;
    let erase = "/api/v1/guardians/guardian-0/erase";
    let (status, problem) = d.call(Method::POST, erase, &d.admin, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("still wait to be sent"),
        "{problem}"
    );
    let cancel = format!(
        "/api/v1/messages/{}/cancel",
        waiting["id"].as_str().unwrap()
    );
    let (status, cancelled) = d.call(Method::POST, &cancel, &d.admin, None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let (status, erased) = d.call(Method::POST, erase, &d.admin, None).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["contact_points"], 2, "{erased}");
    assert_eq!(erased["children"], 3, "{erased}");
    assert_eq!(erased["deliveries"], 3, "{erased}");
    assert_eq!(erased["recipients"], 2, "{erased}");
    assert_eq!(erased["replies"], 2, "{erased}");
    assert_eq!(erased["stops_kept"], 1, "{erased}");

    // Nothing of them is left: not the guardian, not their number anywhere.
    let (status, _) = d.get("/api/v1/guardians/guardian-0", &d.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = d.call(Method::POST, erase, &d.admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (table, column) in [
        ("contact_points", "address"),
        ("deliveries", "address"),
        ("inbound_messages", "from_address"),
        ("opt_outs", "address"),
    ] {
        let sql = format!("SELECT count(*) AS n FROM {table} WHERE {column} = '{NUMBER}'");
        assert_eq!(support::count(&d.db.url, &sql).await.unwrap(), 0, "{table}");
    }
    // The audit has the requests, with ids and counts only.
    let district = store.districts().await.unwrap()[0].id;
    let audit = store.audit_entries(district, 100).await.unwrap();
    let requests: Vec<&tidings_core::store::AuditEntry> = audit
        .iter()
        .filter(|e| e.action.starts_with("guardian."))
        .collect();
    assert_eq!(
        requests
            .iter()
            .filter(|e| e.action == "guardian.export")
            .count(),
        2
    );
    let erasure = requests
        .iter()
        .find(|e| e.action == "guardian.erase")
        .unwrap();
    assert_eq!(erasure.detail["stops_kept"], 1);
    assert!(
        !erasure.detail.to_string().contains("555"),
        "{}",
        erasure.detail
    );

    // The next roster import brings Sami back with the same number: SMS stays
    // suppressed as a carrier STOP, email goes.
    let imported = d
        .client
        .post(d.server.url("/api/v1/imports/oneroster"))
        .bearer_auth(&d.admin)
        .body(demo_zip())
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), StatusCode::CREATED);
    let (status, back) = d.get("/api/v1/guardians/guardian-0", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(back["opt_outs"], json!([]), "a new guardian: {back}");
    let again = message(&d, &["sms", "email"], json!({})).await;
    assert_eq!(again["suppressed"]["carrier_stop"], 1, "{again}");
    assert_eq!(again["deliveries"], 2, "{again}");

    // Until the number texts START.
    text(store.as_ref(), "SM-start", "START", Some(SmsKeyword::Start)).await;
    let after = message(&d, &["sms"], json!({})).await;
    assert_eq!(support::suppressed_total(&after), 0, "{after}");
    assert!(d.server.terminate().await.success());
}
