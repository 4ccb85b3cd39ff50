//! Providers configured as a district would: `tidings serve` sends SMS through the
//! Twilio adapter to `tidings sandbox`, a separate process speaking Twilio's API.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{
    codes_sent_to, codes_taken, first_guardian_with_sms, free_port, sandbox, sandbox_calling_back,
    tidings, twilio_env, twilio_env_calling_back, District, ACCOUNT,
};
use tidings_core::testing::TestDatabase;

tidings_core::on_both_stores! {
    databases:
    twilio_status_callbacks_move_deliveries_to_delivered,
    stop_help_and_start_by_sms_are_honoured,
    guardians_acknowledge_and_unsubscribe_by_link_and_scanners_change_nothing,
    the_guardian_app_signs_in_by_code_acknowledges_and_registers_a_device,
    the_guardian_app_is_pushed_to_by_web_push_until_its_subscription_is_gone,
    one_message_is_traced_from_the_request_to_delivered,
}

/// Posts a message as the district's administrator; its answer (201 asserted).
async fn post_message(d: &District, body: Value) -> Value {
    let (status, sent) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    sent
}

/// No delivery of the message is waiting to be sent.
fn nothing_waiting(counts: &BTreeMap<String, u64>) -> bool {
    ["CREATED", "QUEUED"]
        .iter()
        .all(|s| !counts.contains_key(*s))
}

/// The message's counts once `done` holds of them (polled; a liveness bound, not a
/// measurement), or the last ones after a minute.
async fn counts_when(
    d: &District,
    id: &str,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    let mut now = d.counts(id).await;
    for _ in 0..600 {
        if done(&now) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = d.counts(id).await;
    }
    now
}

/// The demo district served with `env`.
async fn demo_district(db: TestDatabase, env: &[(&'static str, String)]) -> District {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    District::with_demo_env(db, &env).await
}

/// A guardian's text from `number` to the district, through the sandbox at `base` as
/// Twilio's signed inbound webhook: what Tidings answered (null for nothing).
async fn text(base: &str, number: &str, body: &str) -> Value {
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/_sandbox/sms-replies"))
        .json(&json!({
            "from": number, "to": "+15005550006", "body": body,
            "url": "https://tidings.example.org/callbacks/twilio/inbound",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    answer["reply"].clone()
}

/// The demo district on a free port, its SMS through a `tidings sandbox` (with `faults`)
/// that calls it back; `env` adds settings.
struct CalledBack {
    d: District,
    /// The sandbox's base URL, and its process.
    base: String,
    sandbox: tokio::process::Child,
    /// The server's own URL.
    serve_at: String,
}

async fn called_back(db: TestDatabase, faults: &str, env: &[(&'static str, String)]) -> CalledBack {
    let port = free_port();
    let serve_at = format!("http://127.0.0.1:{port}");
    let (base, sandbox) = sandbox_calling_back(faults, Some(&serve_at)).await;
    let mut all = twilio_env_calling_back(&base, port);
    all.extend(env.iter().cloned());
    let d = demo_district(db, &all).await;
    CalledBack {
        d,
        base,
        sandbox,
        serve_at,
    }
}

impl CalledBack {
    async fn stop(mut self) {
        assert!(self.d.server.terminate().await.success());
        self.sandbox.kill().await.unwrap();
    }
}

/// Asks one guardian, on `channels`, to acknowledge `subject`/`body`: the message's id.
async fn ask_ack(
    d: &District,
    guardian: &str,
    channels: &[&str],
    kind: &str,
    subject: &str,
    body: &str,
) -> String {
    let sent = post_message(
        d,
        json!({
            "audience": {"guardians": [guardian]},
            "channels": channels,
            "kind": kind,
            "subject": subject,
            "body": body,
            "requires_ack": true,
        }),
    )
    .await;
    sent["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sms_goes_through_twilio_and_every_duplicate_is_an_attempt_counted_in_doubt() {
    // One send in five fails with a 5xx or a 429, one in ten is taken and never answered:
    // retried until every one is taken.
    let (base, mut sandbox) = sandbox("{transient=0.1,throttled=0.1,in_doubt=0.1,seed=3}").await;
    let env = twilio_env(&base);
    let d = demo_district(TestDatabase::sqlite(), &env).await;
    let sent = post_message(
        &d,
        json!({
            "audience": {"district": true},
            "channels": ["sms"],
            "kind": "emergency",
            "subject": "Lockdown",
            "body": "All schools are in lockdown. Students are safe.",
        }),
    )
    .await;
    let id = sent["id"].as_str().unwrap().to_owned();
    let done = counts_when(&d, &id, nothing_waiting).await;
    let to_send =
        sent["deliveries"].as_u64().unwrap() - done.get("SUPPRESSED").copied().unwrap_or(0);
    assert!(to_send > 0);
    assert_eq!(done.get("SENT").copied(), Some(to_send), "{done:?}");

    let received: Value = reqwest::get(format!("{base}/_sandbox/received"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = received["items"].as_array().unwrap();
    // Twilio got every delivery, and a second copy exactly for each attempt the
    // dispatcher recorded as in doubt: no duplicate goes uncounted.
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    let outcomes = store.attempt_outcomes().await.unwrap();
    let in_doubt = outcomes.get("in_doubt").copied().unwrap_or(0) as u64;
    assert!(in_doubt > 0, "in-doubt sends were injected: {outcomes:?}");
    assert_eq!(received["duplicates"], in_doubt, "{outcomes:?}");
    assert_eq!(items.len() as u64, to_send + in_doubt);
    let distinct: std::collections::BTreeSet<&str> = items
        .iter()
        .map(|r| r["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        distinct.len() as u64,
        to_send,
        "every delivery reached Twilio"
    );
    assert!(
        received["sends"].as_u64().unwrap() > to_send + in_doubt,
        "faults were injected"
    );
    assert!(items.iter().all(|r| r["provider"] == "twilio"
        && r["body"] == "All schools are in lockdown. Students are safe."));

    // The delivery's record names Twilio's message sid (of the copy that was answered).
    let first = items
        .iter()
        .find(|r| {
            items
                .iter()
                .filter(|o| o["delivery_id"] == r["delivery_id"])
                .count()
                == 1
        })
        .unwrap();
    let (status, delivery) = d
        .get(
            &format!(
                "/api/v1/deliveries/{}",
                first["delivery_id"].as_str().unwrap()
            ),
            &d.admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{delivery}");
    assert_eq!(
        delivery["provider_ref"], first["provider_ref"],
        "{delivery}"
    );
    assert!(first["provider_ref"].as_str().unwrap().starts_with("SM"));
    let attempts = delivery["attempts"].as_array().unwrap();
    assert!(
        attempts.iter().all(|a| a["provider"] == "twilio"),
        "{delivery}"
    );
    assert_eq!(attempts.last().unwrap()["outcome"], "sent");
    assert!(d.server.terminate().await.success());
    sandbox.kill().await.unwrap();
}

#[tokio::test]
async fn email_goes_through_the_smtp_relay_once_per_delivery() {
    let relay = tidings_channel_adapters::testing::SmtpServer::start(&[]).await;
    let port = relay.port.to_string();
    let env = [
        ("TIDINGS_SMTP__HOST", "127.0.0.1"),
        ("TIDINGS_SMTP__PORT", port.as_str()),
        ("TIDINGS_SMTP__SECURITY", "none"),
        (
            "TIDINGS_SMTP__FROM",
            "Demo District <alerts@district.example.org>",
        ),
    ];
    let d = District::with_demo_env(TestDatabase::sqlite(), &env).await;
    let sent = post_message(
        &d,
        json!({
            "audience": {"district": true},
            "channels": ["email"],
            "kind": "general",
            "subject": "Snow day",
            "body": "Schools are closed on Friday.",
        }),
    )
    .await;
    let id = sent["id"].as_str().unwrap().to_owned();
    let done = counts_when(&d, &id, nothing_waiting).await;
    let to_send =
        sent["deliveries"].as_u64().unwrap() - done.get("SUPPRESSED").copied().unwrap_or(0);
    assert!(to_send > 0);
    assert_eq!(done.get("SENT").copied(), Some(to_send), "{done:?}");
    let messages = relay.messages();
    assert_eq!(
        messages.len() as u64,
        to_send,
        "each delivery reached the relay once"
    );
    // Each message carries its delivery's id as its Message-ID, and every id is distinct.
    let ids: std::collections::BTreeSet<String> = messages
        .iter()
        .map(|m| {
            let line = m.lines().find(|l| l.starts_with("Message-ID: <")).unwrap();
            line["Message-ID: <".len()..line.find('@').unwrap()].to_owned()
        })
        .collect();
    assert_eq!(ids.len() as u64, to_send);
    let one = ids.iter().next().unwrap();
    let (status, delivery) = d.get(&format!("/api/v1/deliveries/{one}"), &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{delivery}");
    assert_eq!(delivery["state"], "SENT");
    assert_eq!(
        delivery["provider_ref"],
        format!("<{one}@district.example.org>")
    );
    assert!(d.server.terminate().await.success());
}

#[tokio::test]
async fn sms_goes_through_kannel_and_smpp_and_its_reports_come_back() {
    let gateway = tidings_channel_adapters::testing::KannelGateway::start().await;
    // Kannel calls Tidings back directly: the public URL is the server's own address.
    let port = free_port();
    let serve_at = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("TIDINGS_KANNEL__SENDSMS_URL", gateway.sendsms_url.as_str()),
        ("TIDINGS_KANNEL__USERNAME", gateway.username.as_str()),
        ("TIDINGS_KANNEL_PASSWORD", gateway.password.as_str()),
        ("TIDINGS_PUBLIC_URL", serve_at.as_str()),
        ("TIDINGS_LISTEN", listen.as_str()),
        ("TIDINGS_KANNEL_DLR_SECRET", "a-long-enough-report-secret"),
    ];
    let d = District::with_demo_env(TestDatabase::sqlite(), &env).await;
    let sent = post_message(
        &d,
        json!({
            "audience": {"district": true},
            "channels": ["sms"],
            "kind": "emergency",
            "subject": "Lockdown",
            "body": "Lockdown: students are safe – do not come to school.",
        }),
    )
    .await;
    let id = sent["id"].as_str().unwrap().to_owned();
    let done = counts_when(&d, &id, nothing_waiting).await;
    let to_send =
        sent["deliveries"].as_u64().unwrap() - done.get("SUPPRESSED").copied().unwrap_or(0);
    assert!(to_send > 0);
    let sent_or_further: u64 = ["SENT", "DELIVERED"]
        .iter()
        .filter_map(|s| done.get(*s))
        .sum();
    assert_eq!(sent_or_further, to_send, "{done:?}");
    // Kannel queues before it submits: wait for the SMSC to have them all.
    let mut submitted = Vec::new();
    for _ in 0..300 {
        submitted = gateway.submitted();
        if submitted.len() as u64 >= to_send {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        submitted.len() as u64,
        to_send,
        "each delivery reached the SMSC once"
    );
    // The en dash is outside the GSM alphabet: sent as UCS-2, and arrived intact.
    assert!(submitted.iter().all(|s| s["data_coding"] == 8
        && s["text"] == "Lockdown: students are safe – do not come to school."));
    // The SMSC's receipts come back through Kannel as delivery reports: all delivered.
    let done = counts_when(&d, &id, |c| c.get("DELIVERED") == Some(&to_send)).await;
    assert_eq!(done.get("DELIVERED"), Some(&to_send), "{done:?}");
    assert!(d.server.terminate().await.success());
}

async fn twilio_status_callbacks_move_deliveries_to_delivered(db: TestDatabase) {
    // Callbacks arrive duplicated and out of order half the time; one in five reports
    // the message undelivered.
    let called = called_back(
        db,
        "{callback_duplicate=0.5,callback_reorder=0.5,undelivered=0.2,seed=11}",
        &[],
    )
    .await;
    let (d, serve_at) = (&called.d, called.serve_at.clone());
    let sent = post_message(
        d,
        json!({
            "audience": {"district": true},
            "channels": ["sms"],
            "kind": "emergency",
            "subject": "Lockdown",
            "body": "Lockdown: students are safe.",
        }),
    )
    .await;
    let id = sent["id"].as_str().unwrap().to_owned();
    let to_send = sent["deliveries"].as_u64().unwrap();
    let done = counts_when(d, &id, |c| {
        let settled: u64 = ["DELIVERED", "FAILED", "SUPPRESSED"]
            .iter()
            .filter_map(|s| c.get(*s))
            .sum();
        settled == to_send
    })
    .await;
    let delivered = done.get("DELIVERED").copied().unwrap_or(0);
    let failed = done.get("FAILED").copied().unwrap_or(0);
    let suppressed = done.get("SUPPRESSED").copied().unwrap_or(0);
    assert_eq!(delivered + failed + suppressed, to_send, "{done:?}");
    assert!(
        delivered > 0 && failed > 0,
        "both reports were applied: {done:?}"
    );

    // Every report was kept before it was answered; duplicates were recognised, stale
    // ones (sent after delivered) ignored.
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    // A report that found its delivery moved (a late "sent" after "delivered") stays
    // pending until the next round decides it again, at most a second later.
    let mut inbox = store.inbox_counts().await.unwrap();
    for _ in 0..100 {
        if !inbox.contains_key("pending") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        inbox = store.inbox_counts().await.unwrap();
    }
    assert_eq!(inbox.get("pending"), None, "{inbox:?}");
    assert_eq!(inbox.get("rejected"), None, "{inbox:?}");
    assert!(
        inbox.get("applied").copied().unwrap_or(0) >= (to_send - suppressed) as i64,
        "{inbox:?}"
    );
    assert!(
        inbox.get("ignored").copied().unwrap_or(0) > 0,
        "reordered reports are ignored: {inbox:?}"
    );

    // A forged report is refused with the reason, recorded, and changes nothing.
    let forged = reqwest::Client::new()
        .post(format!(
            "{serve_at}/callbacks/twilio/status?delivery=00000000-0000-0000-0000-000000000000"
        ))
        .header("X-Twilio-Signature", "Zm9yZ2Vk")
        .form(&[
            ("MessageSid", "SM00000000000000000000000000000000"),
            ("MessageStatus", "failed"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let body: Value = forged.json().await.unwrap();
    assert_eq!(body["error"], "X-Twilio-Signature does not match");
    assert_eq!(
        store.inbox_counts().await.unwrap().get("rejected"),
        Some(&1)
    );
    assert_eq!(d.counts(&id).await, done);
    // And all of it is visible to monitoring.
    let metrics = reqwest::get(format!("{serve_at}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tidings_callbacks_total{result=\"rejected\"} 1",
        "tidings_callback_inbox{status=\"pending\"} 0",
        "tidings_callback_inbox{status=\"rejected\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // Sends the dispatcher recorded as SENT itself; a report that overtook the provider's
    // answer already moved the others past SENT.
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidings_dispatch_total{outcome=\"sent\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent > 0 && sent <= to_send - suppressed, "{metrics}");
    // Everything on the log was taken: no partition lags.
    let lags: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tidings_consumer_lag{"))
        .collect();
    assert!(!lags.is_empty(), "{metrics}");
    assert!(lags.iter().all(|l| l.ends_with(" 0")), "{lags:?}");
    // Recorded where they happened: the moves into each state, the stages' times, the
    // provider calls, what the callbacks refused and recognised, the requests.
    let district = store.districts().await.unwrap()[0].id.to_string();
    let moved = |state| {
        sample(
            &metrics,
            "tidings_delivery_moves_total",
            &[
                ("state", state),
                ("channel", "sms"),
                ("district", &district),
            ],
        )
    };
    assert_eq!(moved("DELIVERED"), delivered as f64, "{metrics}");
    assert_eq!(moved("FAILED"), failed as f64, "{metrics}");
    let stage = |name| {
        sample(
            &metrics,
            "tidings_delivery_stage_seconds_count",
            &[("stage", name), ("channel", "sms")],
        )
    };
    assert!(stage("created_to_sent") >= sent as f64, "{metrics}");
    // A report that overtook the provider's answer moved its delivery from QUEUED, with
    // no time sent to time.
    let timed = stage("sent_to_delivered");
    assert!(timed > 0.0 && timed <= delivered as f64, "{metrics}");
    let calls = sample(
        &metrics,
        "tidings_attempts_total",
        &[
            ("channel", "sms"),
            ("lane", "emergency"),
            ("outcome", "sent"),
        ],
    );
    assert_eq!(calls, (to_send - suppressed) as f64, "{metrics}");
    let unverified = [("provider", "twilio"), ("reason", "unverified")];
    assert_eq!(
        sample(&metrics, "tidings_callback_rejects_total", &unverified),
        1.0
    );
    for kind in ["provider_event", "stale_event"] {
        let n = sample(
            &metrics,
            "tidings_duplicates_suppressed_total",
            &[("kind", kind)],
        );
        assert!(n > 0.0, "{kind}: {metrics}");
    }
    let posted = [
        ("route", "/api/v1/messages"),
        ("method", "POST"),
        ("status", "201"),
    ];
    assert_eq!(
        sample(&metrics, "tidings_http_request_seconds_count", &posted),
        1.0,
        "{metrics}"
    );
    // Read at the scrape: the report's failures are dead letters of the district, no
    // partition waits, and none is left without a dispatcher.
    assert_eq!(
        sample(&metrics, "tidings_dead_letters", &[("district", &district)]),
        failed as f64
    );
    assert_eq!(
        sample(&metrics, "tidings_consumer_lag_seconds", &[]),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "tidings_partitions_unheld", &[]),
        0.0,
        "{metrics}"
    );
    called.stop().await;
}

/// The sum of the samples of `name` (exactly) carrying every label of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (metric == name && all).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn stop_help_and_start_by_sms_are_honoured(db: TestDatabase) {
    let env = [("TIDINGS_DISTRICT_NAME", "Lincoln USD".to_owned())];
    let called = called_back(db, "{}", &env).await;
    let (d, base) = (&called.d, called.base.clone());
    let (guardian, number) = first_guardian_with_sms(d).await;
    let text = |body: &'static str| {
        let (base, number) = (base.clone(), number.clone());
        async move { text(&base, &number, body).await }
    };
    let carrier_opt_outs = || async {
        let (_, detail) = d
            .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
            .await;
        detail["opt_outs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["channel"] == "sms" && o["source"] == "carrier")
            .count()
    };
    // STOP, however typed, opts out at once (Twilio itself confirms it to the guardian).
    assert_eq!(text("  Stop. ").await, Value::Null);
    assert_eq!(carrier_opt_outs().await, 1);
    let reply = text("help").await;
    assert!(
        reply
            .as_str()
            .unwrap()
            .starts_with("Lincoln USD: school notifications."),
        "{reply}"
    );
    let sms_to_guardian = || async {
        let sent = post_message(
            d,
            json!({
                "audience": {"guardians": [guardian]},
                "channels": ["sms"],
                "kind": "emergency",
                "subject": "Lockdown",
                "body": "Lockdown: students are safe.",
            }),
        )
        .await;
        sent
    };
    // Even an emergency respects a carrier STOP.
    let sent = sms_to_guardian().await;
    assert_eq!(sent["suppressed"]["carrier_stop"], 1, "{sent}");
    // START undoes it; a plain reply changes nothing.
    assert_eq!(text("thanks, on my way").await, Value::Null);
    assert_eq!(carrier_opt_outs().await, 1);
    text("START").await;
    assert_eq!(carrier_opt_outs().await, 0);
    let sent = sms_to_guardian().await;
    assert!(sent["suppressed"].get("carrier_stop").is_none(), "{sent}");
    // Staff see every text, newest first, with what it was.
    let (status, replies) = d.get("/api/v1/replies", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{replies}");
    let seen: Vec<(String, Value)> = replies["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["guardian_id"], guardian.as_str());
            (r["body"].as_str().unwrap().to_owned(), r["keyword"].clone())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("START".to_owned(), json!("start")),
            ("thanks, on my way".to_owned(), Value::Null),
            ("help".to_owned(), json!("help")),
            ("  Stop. ".to_owned(), json!("stop")),
        ]
    );
    called.stop().await;
}

#[tokio::test]
async fn a_guardian_acknowledges_by_texting_the_keyword() {
    let env = [
        ("TIDINGS_DISTRICT_NAME", "Lincoln USD".to_owned()),
        ("TIDINGS_SMS_ACK_KEYWORD", "1".to_owned()),
    ];
    let called = called_back(TestDatabase::sqlite(), "{}", &env).await;
    let (d, base) = (&called.d, called.base.clone());
    let (guardian, number) = first_guardian_with_sms(d).await;
    let text = |body: &'static str| {
        let (base, number) = (base.clone(), number.clone());
        async move {
            text(&base, &number, body)
                .await
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    // Nothing waits for an acknowledgment yet.
    assert!(text("1").await.contains("no message is waiting"));
    let id = ask_ack(
        d,
        &guardian,
        &["sms"],
        "emergency",
        "Early dismissal",
        "Early dismissal at noon today. Reply 1 to confirm you have read this.",
    )
    .await;
    // Sent, and Twilio's report says delivered.
    assert_eq!(
        counts_when(d, &id, |c| c.get("DELIVERED") == Some(&1)).await,
        BTreeMap::from([("DELIVERED".to_owned(), 1)])
    );
    assert_eq!(
        text(" 1 ").await,
        "Lincoln USD: thank you, your acknowledgment is recorded."
    );
    assert_eq!(
        d.counts(&id).await,
        BTreeMap::from([("ACKED".to_owned(), 1)])
    );
    let (_, acked) = d
        .get(
            &format!("/api/v1/messages/{id}/recipients?acked=true"),
            &d.admin,
        )
        .await;
    let acked = acked["items"].as_array().unwrap();
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0]["guardian_id"], guardian.as_str());
    assert_eq!(acked[0]["ack_via"], "sms");
    // Twice is once.
    assert!(text("1").await.contains("no message is waiting"));
    called.stop().await;
}

/// Gives `guardian` only the SMS number `number`.
async fn only_number(d: &District, guardian: &str, number: &str) {
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
        .await;
    for cp in detail["contact_points"].as_array().unwrap() {
        if cp["kind"] == "sms" && cp["active"] == true {
            let path = format!(
                "/api/v1/guardians/{guardian}/contact-points/{}",
                cp["id"].as_str().unwrap()
            );
            let (status, _) = d
                .call(
                    reqwest::Method::PATCH,
                    &path,
                    &d.admin,
                    Some(json!({"active": false})),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    let (status, added) = d
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/guardians/{guardian}/contact-points"),
            &d.admin,
            Some(json!({"kind": "sms", "address": number})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
}

#[tokio::test]
async fn a_carrier_stop_suppresses_and_an_invalid_number_is_retired() {
    let (base, mut sandbox) = sandbox("{}").await;
    let env = twilio_env(&base);
    let d = demo_district(TestDatabase::sqlite(), &env).await;
    let guardians = d.all("/api/v1/guardians", &d.admin).await;
    let (stopped, invalid) = (
        guardians[0]["id"].as_str().unwrap().to_owned(),
        guardians[1]["id"].as_str().unwrap().to_owned(),
    );
    // Twilio's test numbers: +15005550004 has replied STOP, +15005550001 is invalid.
    only_number(&d, &stopped, "+15005550004").await;
    only_number(&d, &invalid, "+15005550001").await;
    let send = || async {
        let sent = post_message(
            &d,
            json!({
                "audience": {"guardians": [stopped, invalid]},
                "channels": ["sms"],
                "kind": "emergency",
                "subject": "Lockdown",
                "body": "Lockdown: students are safe.",
            }),
        )
        .await;
        sent["id"].as_str().unwrap().to_owned()
    };
    let first = send().await;
    let done = counts_when(&d, &first, |c| {
        c.get("SUPPRESSED") == Some(&1) && c.get("FAILED") == Some(&1)
    })
    .await;
    assert_eq!(
        done,
        BTreeMap::from([("FAILED".to_owned(), 1), ("SUPPRESSED".to_owned(), 1)])
    );
    let (_, dead) = d.get("/api/v1/dead-letters", &d.admin).await;
    let dead = dead["items"].as_array().unwrap();
    assert_eq!(
        dead.len(),
        1,
        "only the invalid number is a dead letter: {dead:?}"
    );
    assert!(dead[0]["last_error"]
        .as_str()
        .unwrap()
        .starts_with("invalid: twilio 400 error 21211"));
    // The STOP is the guardian's opt-out now; the invalid number is out of use.
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{stopped}"), &d.admin)
        .await;
    let opt_outs = detail["opt_outs"].as_array().unwrap();
    assert!(
        opt_outs
            .iter()
            .any(|o| o["channel"] == "sms" && o["source"] == "carrier"),
        "{detail}"
    );
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{invalid}"), &d.admin)
        .await;
    let retired = detail["contact_points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "+15005550001")
        .unwrap()
        .clone();
    assert_eq!(
        (
            retired["active"].as_bool(),
            retired["inactive_reason"].as_str()
        ),
        (Some(false), Some("invalid")),
        "{detail}"
    );

    // The next message does not try either again: both suppressed before sending.
    let sends_before: Value = reqwest::get(format!("{base}/_sandbox/received"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second = send().await;
    let counts_now = d.counts(&second).await;
    assert_eq!(
        counts_now,
        BTreeMap::from([("SUPPRESSED".to_owned(), 2)]),
        "suppressed at fan-out"
    );
    // Once the dispatcher has read past the message, whatever it would send is sent.
    dispatched_all(&d.server.base).await;
    let sends_after: Value = reqwest::get(format!("{base}/_sandbox/received"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sends_after["sends"], sends_before["sends"]);
    assert!(d.server.terminate().await.success());
    sandbox.kill().await.unwrap();
}

#[tokio::test]
async fn twilio_without_its_auth_token_is_refused_at_start() {
    let db = TestDatabase::sqlite();
    let migrated = tidings(&db.url).arg("migrate").output().await.unwrap();
    assert!(migrated.status.success());
    let output = tidings(&db.url)
        .arg("dispatch")
        .env("TIDINGS_TWILIO__ACCOUNT_SID", ACCOUNT)
        .env("TIDINGS_TWILIO__FROM", "+15005550006")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TIDINGS_TWILIO_AUTH_TOKEN"),
        "the error says where the token goes: {stderr}"
    );
}

const PUBLIC: &str = "https://tidings.example.org";

/// The first `{PUBLIC}{prefix}…` link in `text`: its path.
fn link_path(text: &str, prefix: &str) -> String {
    let start = text
        .find(&format!("{PUBLIC}{prefix}"))
        .unwrap_or_else(|| panic!("no {prefix} link in {text}"));
    let rest = &text[start + PUBLIC.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "/-_".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].to_owned()
}

async fn guardians_acknowledge_and_unsubscribe_by_link_and_scanners_change_nothing(
    db: TestDatabase,
) {
    let relay = tidings_channel_adapters::testing::SmtpServer::start(&[]).await;
    let env = [
        ("TIDINGS_SMS_ACK_KEYWORD", "1".to_owned()),
        ("TIDINGS_SMTP__HOST", "127.0.0.1".to_owned()),
        ("TIDINGS_SMTP__PORT", relay.port.to_string()),
        ("TIDINGS_SMTP__SECURITY", "none".to_owned()),
        (
            "TIDINGS_SMTP__FROM",
            "alerts@district.example.org".to_owned(),
        ),
    ];
    let called = called_back(db, "{}", &env).await;
    let (d, base, serve_at) = (&called.d, called.base.clone(), called.serve_at.clone());
    let (guardian, _) = first_guardian_with_sms(d).await;
    let id = ask_ack(
        d,
        &guardian,
        &["sms", "email"],
        "general",
        "Zoo trip",
        "Permission for the zoo trip on Friday.\nPlease bring a packed lunch.",
    )
    .await;
    let delivered =
        |c: &BTreeMap<String, u64>| c.get("DELIVERED") == Some(&1) && c.get("SENT") == Some(&1);
    assert!(delivered(&counts_when(d, &id, delivered).await));

    // The SMS as the guardian got it: the body, how to reply, the link.
    let received: Value = reqwest::get(format!("{base}/_sandbox/received"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sms = received["items"][0]["body"].as_str().unwrap();
    let sms_link = link_path(sms, "/a/");
    assert_eq!(
        sms,
        format!("Permission for the zoo trip on Friday.\nPlease bring a packed lunch.\nReply 1 to acknowledge.\nAcknowledge: {PUBLIC}{sms_link}")
    );
    // The email has its own link in both parts, and one-click unsubscribe.
    // Headers unfolded, the quoted-printable parts' soft breaks and `=3D` undone.
    let mail = relay.messages().pop().unwrap();
    let mail = mail.replace("\r\n ", " ").replace("\n ", " ");
    let mail = mail
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    let email_link = link_path(&mail, "/a/");
    assert_ne!(email_link, sms_link, "each link names its channel");
    assert_eq!(
        mail.matches(&format!("{PUBLIC}{email_link}")).count(),
        2,
        "{mail}"
    );
    assert!(
        mail.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{mail}"
    );
    let unsubscribe_line = mail
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe:"))
        .unwrap();
    let unsubscribe = link_path(unsubscribe_line, "/u/");
    assert!(unsubscribe_line.contains("<mailto:alerts@district.example.org?subject=unsubscribe>"));

    let client = reqwest::Client::new();
    let at = |path: &str| format!("{serve_at}{path}");
    // Scanners and link previews fetch every link: nothing changes.
    for path in [&sms_link, &email_link, &unsubscribe] {
        let page = client.get(at(path)).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()["cache-control"], "no-store");
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        let html = page.text().await.unwrap();
        assert!(html.contains("<form method=\"post\">"), "{html}");
        let head = client.head(at(path)).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
    }
    let page = client
        .get(at(&sms_link))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<h1>Zoo trip</h1><p>Permission for the zoo trip on Friday.<br>Please bring a packed lunch.</p>"), "{page}");
    assert!(page.contains(">Acknowledge</button>"));
    assert!(delivered(&d.counts(&id).await));
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
        .await;
    assert_eq!(detail["opt_outs"], json!([]));

    // The guardian presses the button in the email.
    let pressed = client.post(at(&email_link)).send().await.unwrap();
    assert_eq!(pressed.status(), StatusCode::OK);
    let html = pressed.text().await.unwrap();
    assert!(
        html.contains("Thank you. Your acknowledgment has been recorded."),
        "{html}"
    );
    assert_eq!(
        d.counts(&id).await,
        BTreeMap::from([("ACKED".to_owned(), 1), ("DELIVERED".to_owned(), 1)]),
        "the email is acknowledged; the SMS, delivered already, stays as it was"
    );
    let (_, acked) = d
        .get(
            &format!("/api/v1/messages/{id}/recipients?acked=true"),
            &d.admin,
        )
        .await;
    assert_eq!(acked["items"][0]["ack_via"], "email");
    // Twice is once, from either link.
    for path in [&email_link, &sms_link] {
        let again = client
            .post(at(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            again.contains("This message has already been acknowledged."),
            "{again}"
        );
    }
    assert_eq!(d.counts(&id).await.get("ACKED"), Some(&1));

    // A garbled link, a link of the wrong kind and an expired one get a page that says so.
    let mut garbled = sms_link.clone();
    let last = garbled.pop().unwrap();
    garbled.push(if last == 'A' { 'B' } else { 'A' });
    let token = |path: &str| path.rsplit('/').next().unwrap().to_owned();
    for (path, status, says) in [
        (garbled, StatusCode::NOT_FOUND, "This link is not valid."),
        (
            format!("/u/{}", token(&sms_link)),
            StatusCode::NOT_FOUND,
            "This link is not valid.",
        ),
        (
            "/a/nonsense".to_owned(),
            StatusCode::NOT_FOUND,
            "This link is not valid.",
        ),
    ] {
        let page = client.post(at(&path)).send().await.unwrap();
        assert_eq!(page.status(), status, "{path}");
        assert!(page.text().await.unwrap().contains(says), "{path}");
    }
    let keys = support::link_keys();
    let mut claims = keys
        .verify(&token(&sms_link), tidings_core::time::now())
        .unwrap();
    claims.expires = tidings_core::time::now() - chrono::Duration::hours(1);
    let expired = client
        .get(at(&format!("/a/{}", keys.sign(&claims))))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), StatusCode::GONE);
    assert!(expired
        .text()
        .await
        .unwrap()
        .contains("This link has expired."));

    // One click in the mail client stops email (RFC 8058).
    let stopped = client
        .post(at(&unsubscribe))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), StatusCode::OK);
    assert!(stopped
        .text()
        .await
        .unwrap()
        .contains("You will no longer receive email from"));
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
        .await;
    let opt_outs = detail["opt_outs"].as_array().unwrap();
    assert_eq!(opt_outs.len(), 1, "{opt_outs:?}");
    assert_eq!(
        (
            opt_outs[0]["channel"].as_str(),
            opt_outs[0]["source"].as_str()
        ),
        (Some("email"), Some("guardian"))
    );
    // Audited as the guardian's, with the opt-out it made.
    let store = d.db.store().await;
    let district = store.districts().await.unwrap()[0].id;
    let audit = store.audit_entries(district, 20).await.unwrap();
    let by_link: Vec<_> = audit.iter().filter(|e| e.action == "opt_out.add").collect();
    assert_eq!(by_link.len(), 1, "{audit:?}");
    assert_eq!(by_link[0].staff_id, None);
    assert_eq!(by_link[0].detail["opt_out_id"], opt_outs[0]["id"]);
    called.stop().await;
}

async fn the_guardian_app_signs_in_by_code_acknowledges_and_registers_a_device(db: TestDatabase) {
    let env = [("TIDINGS_DISTRICT_NAME", "Lincoln USD".to_owned())];
    let called = called_back(db, "{}", &env).await;
    let (d, base, serve_at) = (&called.d, called.base.clone(), called.serve_at.clone());
    let (guardian, number) = first_guardian_with_sms(d).await;
    let id = ask_ack(
        d,
        &guardian,
        &["sms"],
        "general",
        "Picture day",
        "Picture day is on Tuesday.",
    )
    .await;
    counts_when(d, &id, |c| c.get("DELIVERED") == Some(&1)).await;

    let client = reqwest::Client::new();
    let app = |path: &str| format!("{serve_at}/api/v1/guardian{path}");
    // Each sign-in request from an address of its own, so that the bound per client
    // (tests/edges.rs) does not hide the bound per destination tested here.
    let next_address = std::sync::atomic::AtomicU8::new(1);
    let post = |path: &str, body: Value| {
        let last = next_address.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 2, last]))
            .build()
            .unwrap()
            .post(app(path))
            .json(&body)
            .send()
    };
    let problem = |r: reqwest::Response| async move {
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let status = r.status();
        (
            status,
            r.json::<Value>().await.unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    let unauthorized = client.get(app("/messages")).send().await.unwrap();
    assert_eq!(
        problem(unauthorized).await,
        (StatusCode::UNAUTHORIZED, "/problems/unauthorized".into())
    );
    let staff_token = client
        .get(app("/messages"))
        .bearer_auth(&d.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        staff_token.status(),
        StatusCode::UNAUTHORIZED,
        "a staff token is not a guardian's"
    );

    // A number on file and one that is not get the same answer; only the first gets a code.
    let unknown = "+15005550199";
    for address in [number.as_str(), unknown] {
        let asked = post("/sign-in", json!({"address": address})).await.unwrap();
        assert_eq!(asked.status(), StatusCode::ACCEPTED);
        assert_eq!(
            asked.json::<Value>().await.unwrap(),
            json!({"channel": "sms", "expires_in_seconds": 600})
        );
    }
    let bad = post("/sign-in", json!({"address": "not a number"}))
        .await
        .unwrap();
    assert_eq!(
        problem(bad).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-body".into()
        )
    );
    let codes = codes_sent_to(&base, &number, 1).await;
    assert!(codes_taken(&base, unknown).await.is_empty());
    assert_eq!(codes.len(), 1, "{codes:?}");
    let code = codes[0].clone();
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let refused = post("/sessions", json!({"address": number, "code": wrong}))
        .await
        .unwrap();
    assert_eq!(
        problem(refused).await,
        (StatusCode::UNAUTHORIZED, "/problems/invalid-code".into())
    );
    let signed_in = post("/sessions", json!({"address": number, "code": code}))
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::CREATED);
    let session: Value = signed_in.json().await.unwrap();
    assert!(session["guardian_ids"]
        .as_array()
        .unwrap()
        .contains(&json!(guardian)));
    let token = session["token"].as_str().unwrap().to_owned();
    let again = post("/sessions", json!({"address": number, "code": code}))
        .await
        .unwrap();
    assert_eq!(
        problem(again).await,
        (StatusCode::UNAUTHORIZED, "/problems/invalid-code".into()),
        "a code works once"
    );

    // My messages, in my language, and acknowledging one.
    let mine: Value = client
        .get(app("/messages"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["message_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (first["subject"].as_str(), first["ack_state"].as_str()),
        (Some("Picture day"), Some("pending"))
    );
    assert_eq!(first["district_name"], "Lincoln USD");
    let one = client
        .get(app(&format!("/messages/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    let other = client
        .get(app(&format!("/messages/{}", uuid_like())))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(other).await,
        (StatusCode::NOT_FOUND, "/problems/not-found".into())
    );
    for expected in ["acked", "already_acked"] {
        let acked: Value = client
            .post(app(&format!("/messages/{id}/ack")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let results = acked["results"].as_array().unwrap();
        assert!(
            results.contains(&json!({"guardian_id": guardian, "result": expected})),
            "{acked}"
        );
    }
    let (_, staff_view) = d
        .get(
            &format!("/api/v1/messages/{id}/recipients?acked=true"),
            &d.admin,
        )
        .await;
    assert_eq!(staff_view["items"][0]["ack_via"], "push");
    assert_eq!(
        d.counts(&id).await,
        BTreeMap::from([("DELIVERED".to_owned(), 1)]),
        "the SMS had gone: it stays delivered"
    );

    // The app registers its device for push, and takes it back.
    let device = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2";
    let registered = client
        .post(app("/devices"))
        .bearer_auth(&token)
        .json(&json!({"platform": "apns", "token": device}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let push_points = || async {
        let (_, detail) = d
            .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
            .await;
        detail["contact_points"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == "push")
            .map(|c| {
                (
                    c["address"].as_str().unwrap().to_owned(),
                    c["active"].as_bool().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(push_points().await, vec![(device.to_owned(), true)]);
    let bad_device = client
        .post(app("/devices"))
        .bearer_auth(&token)
        .json(&json!({"platform": "apns", "token": "a b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(bad_device).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-body".into()
        )
    );
    let removed = client
        .delete(app(&format!("/devices/apns/{device}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    assert_eq!(push_points().await, vec![(device.to_owned(), false)]);

    // Signing out ends the token.
    let out = client
        .delete(app("/sessions/current"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let after = client
        .get(app("/messages"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // Five codes an hour per address, known or not; the sixth is refused alike.
    for address in [number.as_str(), unknown] {
        for n in 2..=5 {
            let asked = post("/sign-in", json!({"address": address})).await.unwrap();
            assert_eq!(asked.status(), StatusCode::ACCEPTED);
            if address == number {
                // In order: the last code to arrive is the newest.
                assert_eq!(codes_sent_to(&base, &number, n).await.len(), n);
            }
        }
        let sixth = post("/sign-in", json!({"address": address})).await.unwrap();
        assert_eq!(
            problem(sixth).await,
            (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/too-many-codes".into()
            )
        );
    }
    // Only the newest code works: each new one replaced the one before.
    let codes = codes_sent_to(&base, &number, 5).await;
    assert_eq!(codes.len(), 5);
    if codes[3] != codes[4] {
        let older = post("/sessions", json!({"address": number, "code": codes[3]}))
            .await
            .unwrap();
        assert_eq!(older.status(), StatusCode::UNAUTHORIZED);
    }
    let newest = post("/sessions", json!({"address": number, "code": codes[4]}))
        .await
        .unwrap();
    assert_eq!(newest.status(), StatusCode::CREATED);
    called.stop().await;
}

/// A browser subscribed at the sandbox's Web Push service: the app registers the
/// subscription, an emergency reaches it encrypted and decrypts to the message (urgent),
/// and once the browser unsubscribes the push service's 410 retires it.
async fn the_guardian_app_is_pushed_to_by_web_push_until_its_subscription_is_gone(
    db: TestDatabase,
) {
    let port = free_port();
    let serve_at = format!("http://127.0.0.1:{port}");
    let (base, sandbox) = sandbox_calling_back("{}", Some(&serve_at)).await;
    let mut env = twilio_env_calling_back(&base, port);
    env.push(("TIDINGS_WEB_PUSH__ALLOWED_ORIGINS", format!("[\"{base}\"]")));
    let d = demo_district(db, &env).await;
    let called = CalledBack {
        d,
        base: base.clone(),
        sandbox,
        serve_at: serve_at.clone(),
    };
    let d = &called.d;
    let (guardian, number) = first_guardian_with_sms(d).await;
    let client = reqwest::Client::new();
    let app = |path: &str| format!("{serve_at}/api/v1/guardian{path}");

    let asked = client
        .post(app("/sign-in"))
        .json(&json!({"address": number}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    let code = codes_sent_to(&base, &number, 1)
        .await
        .pop()
        .expect("a code");
    let session: Value = client
        .post(app("/sessions"))
        .json(&json!({"address": number, "code": code}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["token"].as_str().unwrap().to_owned();

    // The app asks for the key to subscribe with, and the browser subscribes with it.
    let key: Value = client
        .get(app("/web-push"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_key = key["public_key"].as_str().unwrap();
    assert_eq!(
        public_key.len(),
        87,
        "a P-256 point in URL-safe base64: {key}"
    );
    let subscription: Value = client
        .post(format!("{base}/_sandbox/web-push/subscriptions"))
        .json(&json!({"application_server_key": public_key}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut broken = subscription.clone();
    broken["keys"]["auth"] = json!("c2hvcnQ");
    let refused = client
        .post(app("/devices"))
        .bearer_auth(&token)
        .json(&json!({"platform": "webpush", "subscription": broken}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.text().await.unwrap().contains("keys.auth"));
    let registered = client
        .post(app("/devices"))
        .bearer_auth(&token)
        .json(&json!({"platform": "webpush", "subscription": subscription}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let device: Value = registered.json().await.unwrap();
    let device_token = device["token"].as_str().unwrap().to_owned();
    assert!(device_token.starts_with(&format!(
        "{}#p256dh=",
        subscription["endpoint"].as_str().unwrap()
    )));

    let id = ask_ack(
        d,
        &guardian,
        &["push"],
        "emergency",
        "Lockdown",
        "All schools are in lockdown. Students are safe.",
    )
    .await;
    counts_when(d, &id, |c| c.get("SENT") == Some(&1)).await;
    let service: Value = reqwest::get(format!("{base}/_sandbox/web-push"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pushed = service["pushed"].as_array().unwrap();
    assert_eq!(pushed.len(), 1, "{service}");
    assert_eq!(pushed[0]["subscription"], subscription["id"]);
    assert_eq!(pushed[0]["urgency"], "high");
    assert_eq!(pushed[0]["subject"], "https://tidings.example.org");
    let payload: Value = serde_json::from_str(pushed[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["title"], "Lockdown");
    assert_eq!(
        payload["body"],
        "All schools are in lockdown. Students are safe."
    );
    assert_eq!(payload["message_id"], id.as_str());
    assert_eq!(
        payload["url"],
        format!("https://tidings.example.org/app/messages/{id}")
    );

    // The browser unsubscribes; the next push is answered 410 and the device retired.
    let gone = client
        .delete(format!(
            "{base}/_sandbox/web-push/subscriptions/{}",
            subscription["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let second = ask_ack(
        d,
        &guardian,
        &["push"],
        "general",
        "Picture day",
        "Tuesday.",
    )
    .await;
    let counts = counts_when(d, &second, |c| c.get("FAILED") == Some(&1)).await;
    assert_eq!(counts, BTreeMap::from([("FAILED".to_owned(), 1)]));
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
        .await;
    let points: Vec<&Value> = detail["contact_points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "push")
        .collect();
    assert_eq!(points.len(), 1, "{detail}");
    assert_eq!(points[0]["address"], device_token.as_str());
    assert_eq!(points[0]["active"], false);
    assert_eq!(points[0]["inactive_reason"], "unregistered");

    // Another process of the install with another Web Push key refuses to start: the
    // browsers subscribed with this one, and would refuse its pushes.
    let starting = tidings(&d.db.url)
        .envs(twilio_env_calling_back(&base, free_port()))
        .env(
            "TIDINGS_VAPID_KEY",
            tidings_channel_adapters::webpush::VapidKey::generate_pem(),
        )
        .arg("dispatch")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("a dispatcher with another Web Push key started")
        .unwrap();
    assert!(!output.status.success());
    let said = support::one_line_error(&output);
    assert!(said.contains("Web Push key"), "{said}");
    called.stop().await;
}

/// A message id nobody sent.
fn uuid_like() -> String {
    tidings_core::MessageId::new().to_string()
}

/// Waits until the dispatcher has committed every entry of the log (each partition's
/// consumer lag, as `/metrics` reads it at the scrape, is 0).
async fn dispatched_all(serve_at: &str) {
    for _ in 0..1_200 {
        let metrics = reqwest::get(format!("{serve_at}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lags: Vec<&str> = metrics
            .lines()
            .filter(|line| line.starts_with("tidings_consumer_lag{"))
            .collect();
        if !lags.is_empty() && lags.iter().all(|line| line.ends_with(" 0")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the dispatcher did not catch up with the log within a minute");
}

/// A local OpenTelemetry collector: it takes OTLP/HTTP (protobuf) exports and keeps their
/// spans.
struct Collector {
    endpoint: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
}

impl Collector {
    async fn start() -> Self {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let export = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
                let mut kept = kept.lock().unwrap();
                for resource in export.resource_spans {
                    for scope in resource.scope_spans {
                        kept.extend(scope.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { endpoint, spans }
    }

    fn spans(&self) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// A span's attribute, as text.
fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// With a collector configured, one message's spans run from the staff's request (the
/// child of the caller's own span, by its `traceparent`) through the service call and the
/// fan-out, to each delivery's provider call (inside its dispatch batch, linked to the
/// request) and each provider report that moved it to DELIVERED.
async fn one_message_is_traced_from_the_request_to_delivered(db: TestDatabase) {
    let collector = Collector::start().await;
    let env = [
        ("TIDINGS_OTLP_ENDPOINT", collector.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let called = called_back(db, "{}", &env).await;
    let d = &called.d;
    let (caller_trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let answer = d
        .client
        .post(d.server.url("/api/v1/messages"))
        .bearer_auth(&d.admin)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({
            "audience": {"district": true},
            "channels": ["sms"],
            "kind": "emergency",
            "subject": "Early dismissal",
            "body": "School closes at noon today.",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let sent: Value = answer.json().await.unwrap();
    let id = sent["id"].as_str().unwrap().to_owned();
    let to_send = sent["deliveries"].as_u64().unwrap();
    // Guardians without a number are suppressed at the fan-out; the others delivered.
    let settled = |c: &BTreeMap<String, u64>| {
        c.get("DELIVERED").unwrap_or(&0) + c.get("SUPPRESSED").unwrap_or(&0) == to_send
    };
    let done = counts_when(d, &id, settled).await;
    assert!(settled(&done), "{done:?}");
    let to_send = done["DELIVERED"];
    // The last spans leave with the process.
    called.stop().await;

    let spans = collector.spans();
    let named = |name: &str| -> Vec<_> { spans.iter().filter(|s| s.name == name).collect() };
    let of_message = |name: &str| -> Vec<_> {
        named(name)
            .into_iter()
            .filter(|s| attribute(s, "message_id").as_deref() == Some(id.as_str()))
            .collect()
    };
    // The request, continuing the caller's trace.
    let requests: Vec<_> = named("POST /api/v1/messages");
    assert_eq!(
        requests.len(),
        1,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let request = requests[0];
    assert_eq!(hex(&request.trace_id), caller_trace);
    assert_eq!(hex(&request.parent_span_id), caller_span);
    assert_eq!(
        attribute(request, "http.response.status_code").as_deref(),
        Some("201")
    );
    // The service call inside it, and the fan-out inside that.
    let service = of_message("send_message");
    assert_eq!(service.len(), 1);
    assert_eq!(service[0].parent_span_id, request.span_id);
    let chunks = of_message("fanout_chunk");
    assert!(!chunks.is_empty());
    assert!(chunks
        .iter()
        .all(|c| c.parent_span_id == service[0].span_id));
    // Each delivery's provider call, inside a dispatch batch, linked to the service call
    // that wrote the message.
    let calls = of_message("provider_call");
    let delivered: std::collections::BTreeSet<String> = calls
        .iter()
        .map(|c| attribute(c, "delivery_id").unwrap())
        .collect();
    assert_eq!(delivered.len() as u64, to_send);
    for call in &calls {
        assert!(
            call.links
                .iter()
                .any(|l| hex(&l.trace_id) == caller_trace && l.span_id == service[0].span_id),
            "{call:?}"
        );
        let batch = spans
            .iter()
            .find(|s| s.span_id == call.parent_span_id)
            .expect("the call's batch span");
        assert_eq!(batch.name, "dispatch_batch");
        assert_eq!(attribute(batch, "lane").as_deref(), Some("emergency"));
    }
    // Each report that moved a delivery to DELIVERED, named by delivery and message.
    let reports = of_message("provider_event");
    let reported: std::collections::BTreeSet<String> = reports
        .iter()
        .filter(|r| attribute(r, "event").as_deref() == Some("Delivered"))
        .map(|r| attribute(r, "delivery_id").unwrap())
        .collect();
    assert_eq!(reported, delivered);
    // And the provider's callbacks themselves, as requests.
    assert!(!named("POST /callbacks/twilio/status").is_empty());
}
