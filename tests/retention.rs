//! Retention and purging as a district's IT team uses them: `tidings district retention`
//! and `tidings purge` from the command line, `serve`'s scheduled purge, and the API's
//! `/api/v1/settings/retention`, on both stores. Records a hundred days old are written
//! straight to the database (nothing sent over HTTP can be that old).

mod support;

use chrono::Duration;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tidings_core::delivery::Actor;
use tidings_core::testing::{delivery_ids, message_to, seed, Seed, TestDatabase};
use tidings_core::time::now;
use tidings_core::{Channel, DeliveryEvent, DeliveryId};

use support::{cli, tidings, District, Server};

tidings_core::on_both_stores! {
    databases: retention_is_set_and_what_is_older_is_purged_by_the_cli_the_schedule_and_the_api,
}

/// A message of the seed's district written 100 days ago and delivered then.
async fn old_message(store: &dyn tidings_core::store::Store, seed: &Seed) -> Vec<DeliveryId> {
    let long_ago = now() - Duration::days(100);
    let message = message_to(seed, &[Channel::Sms]);
    store.create_message(&message, long_ago).await.unwrap();
    let provider = Actor::provider("twilio", "x");
    for id in delivery_ids(&message) {
        tidings_core::store::apply_event(
            store,
            id,
            DeliveryEvent::Delivered,
            &provider,
            None,
            long_ago,
        )
        .await
        .unwrap();
    }
    delivery_ids(&message)
}

async fn retention_is_set_and_what_is_older_is_purged_by_the_cli_the_schedule_and_the_api(
    db: TestDatabase,
) {
    let store = db.store().await;
    let seed = seed(store.as_ref(), 2).await;
    let first = old_message(store.as_ref(), &seed).await;

    // The command line: the defaults, a value under its minimum refused, one set.
    let shown = cli(&db.url, &["district", "retention"]).await.unwrap();
    assert!(
        shown.contains("messages_days  400 days (the default)"),
        "{shown}"
    );
    let refused = cli(&db.url, &["district", "retention", "--messages-days", "10"])
        .await
        .unwrap_err();
    assert!(
        refused.contains("messages_days must be at least 30 days"),
        "{refused}"
    );
    let set = cli(&db.url, &["district", "retention", "--messages-days", "60"])
        .await
        .unwrap();
    assert!(set.contains("messages_days  60 days;"), "{set}");
    let refused = cli(&db.url, &["district", "retention", "--callbacks-days", "3"])
        .await
        .unwrap_err();
    assert!(
        refused.contains("callbacks_days must be at least 7 days"),
        "{refused}"
    );
    // A dry run counts the old message and its deliveries and takes nothing.
    let planned = cli(&db.url, &["purge", "--dry-run"]).await.unwrap();
    let planned: serde_json::Value = serde_json::from_str(planned.trim()).unwrap();
    assert_eq!(planned["dry_run"], true);
    assert_eq!(planned["purged"]["messages"], 1, "{planned}");
    assert_eq!(planned["purged"]["deliveries"], first.len(), "{planned}");
    assert_eq!(planned["retention"]["messages_days"], 60, "{planned}");
    assert!(store.delivery(first[0]).await.unwrap().is_some());

    // `serve` purges at start.
    let mut command = tidings(&db.url);
    let server = Server::start(&mut command).await;
    for id in &first {
        while store.delivery(*id).await.unwrap().is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let admin = support::token_for(&db.url, seed.staff.email.as_str()).await;
    let d = District {
        db,
        server,
        client: reqwest::Client::new(),
        admin,
    };

    // The API: as the command line set it; a value under its minimum is a problem.
    let (status, view) = d.get("/api/v1/settings/retention", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["messages_days"]["days"], 60);
    assert_eq!(view["messages_days"]["set"], 60);
    assert_eq!(view["audit_days"]["days"], 730);
    assert_eq!(view["audit_days"]["minimum_days"], 180);
    assert_eq!(view["callbacks_days"]["days"], 30);
    assert_eq!(view["callbacks_days"]["minimum_days"], 7);
    let path = "/api/v1/settings/retention";
    let (status, problem) = d
        .call(Method::PUT, path, &d.admin, Some(json!({"audit_days": 90})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("audit_days must be at least 180 days"));
    let (status, problem) = d
        .call(
            Method::PUT,
            path,
            &d.admin,
            Some(json!({"message_days": 90})),
        )
        .await;
    assert!(status.is_client_error(), "an unknown setting: {problem}");
    let (status, view) = d
        .call(
            Method::PUT,
            path,
            &d.admin,
            Some(json!({"messages_days": null, "audit_days": 400})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["messages_days"]["days"], 400);
    assert_eq!(view["messages_days"]["set"], serde_json::Value::Null);
    assert_eq!(view["audit_days"]["days"], 400);

    // A purge on request: dry run, then for real.
    let second = old_message(store.as_ref(), &seed).await;
    let purge = "/api/v1/settings/retention/purge";
    let (status, dry) = d
        .call(
            Method::POST,
            purge,
            &d.admin,
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(
        dry["purged"]["messages"], 0,
        "100 days is within 400: {dry}"
    );
    d.call(
        Method::PUT,
        path,
        &d.admin,
        Some(json!({"messages_days": 30})),
    )
    .await;
    let (status, done) = d.call(Method::POST, purge, &d.admin, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["purged"]["messages"], 1, "{done}");
    assert_eq!(done["purged"]["deliveries"], second.len(), "{done}");
    assert!(done["batches"].as_u64() >= Some(1), "{done}");
    for id in &second {
        assert!(store.delivery(*id).await.unwrap().is_none());
    }
    // Every change and purge is in the audit log.
    let audit = store
        .audit_entries(seed.staff.district_id, 100)
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "district.retention")
            .count(),
        3,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "district.purge").count(),
        2,
        "at start and on request: {actions:?}"
    );
    assert!(d.server.terminate().await.success());
}
