//! The store conformance suite: written once, run against SQLite and PostgreSQL. Every
//! behaviour the rest of Tidings relies on from a `Store` is pinned here.

use std::sync::Arc;

use chrono::Duration;
use tidings_core::delivery::{Actor, ActorKind, Applied, Ignored, Transition};
use tidings_core::log::PartitionId;
use tidings_core::secret::ApiToken;
use tidings_core::store::{
    CasOutcome, FirstAdmin, MessageScope, NewDelivery, NewMessage, NewRecipient, NewStaff,
    PageRequest, SmsKeyword, Store, StoreError,
};
use tidings_core::testing::{
    add_contact, delivery_ids, detail_of, message_to, seed, seed_district, Seed, TestDatabase,
};
use tidings_core::time::now;
use tidings_core::*;
use tokio::sync::Barrier;

// One test per backend for each suite function.
tidings_core::on_both_stores! {
    a_migrated_store_is_ready,
    bootstrap_creates_the_first_admin_only_on_an_empty_database,
    staff_emails_are_unique,
    staff_are_listed_a_page_at_a_time_by_email_and_searched,
    api_tokens_resolve_to_their_enabled_owner,
    a_message_is_written_with_every_delivery_exactly_once,
    a_failed_fan_out_leaves_nothing_behind,
    a_transition_is_a_compare_and_swap_with_an_event_row,
    apply_follows_the_state_machine_and_records_the_actor,
    stale_and_duplicate_events_are_ignored_without_a_write,
    racing_writers_have_exactly_one_winner_per_step,
    audit_entries_must_belong_to_a_district,
    fan_out_puts_every_delivery_to_send_on_the_log_once,
    a_partition_is_read_district_by_district,
    concurrent_fan_outs_never_let_a_reader_skip_an_entry,
    a_recall_cancels_what_was_not_sent_and_reports_the_rest,
    idempotency_keys_claim_replay_mismatch_and_expire,
    the_hourly_quota_is_reserved_by_concurrent_sends,
    a_message_sent_in_chunks_reaches_everyone_once_with_a_gapless_log,
    registered_devices_are_addressed_by_platform,
    an_acknowledgment_acks_its_channel_and_cancels_what_has_not_gone_out,
    a_sign_in_code_allows_few_tries_expires_and_is_redeemed_once,
    link_key_fingerprints_are_recorded_once_and_differences_reported,
    an_acknowledgment_covers_the_message_and_its_re_notifications,
    due_counts_list_each_district_and_lane_with_deliveries_due,
    retrying_lists_a_guardians_unfinished_deliveries_of_the_lane_and_more_urgent_ones,
    the_callback_inbox_is_pruned_by_age_in_bounded_rounds,
    a_webhook_token_is_good_for_one_event,
    sent_through_lists_each_deliverys_channel_reference_and_providers,
    provider_events_apply_with_their_effects_and_are_marked_in_one_round,
    a_guardians_text_is_taken_with_what_it_asks_once,
    a_purge_takes_what_is_past_retention_in_bounded_batches,
    the_log_keeps_what_a_dispatcher_has_not_finished_with;
    databases: a_send_writes_its_deliveries_partition_by_partition,
    broken_schema_rules_are_classified_and_named_alike,
    maintenance_and_measurement_leave_nothing_behind,
}

/// A summary's counts by channel and state.
fn tally(
    counts: &[tidings_core::store::DeliveryCount],
) -> std::collections::BTreeMap<(Channel, DeliveryState), i64> {
    counts
        .iter()
        .map(|c| ((c.channel, c.state), c.count))
        .collect()
}

/// The deliveries of `message` by channel and state, each one read.
async fn tally_by_reading(
    store: &dyn Store,
    message: &NewMessage,
) -> std::collections::BTreeMap<(Channel, DeliveryState), i64> {
    let mut counts = std::collections::BTreeMap::new();
    for id in delivery_ids(message) {
        let d = store.delivery(id).await.unwrap().unwrap();
        *counts.entry((d.channel, d.state)).or_insert(0) += 1;
    }
    counts
}

async fn one_delivery(store: &dyn Store) -> (Seed, DeliveryId) {
    let seed = seed(store, 1).await;
    let message = message_to(&seed, &[Channel::Sms]);
    store.create_message(&message, now()).await.unwrap();
    let id = delivery_ids(&message)[0];
    (seed, id)
}

async fn a_migrated_store_is_ready(store: Arc<dyn Store>) {
    let readiness = store.readiness().await.unwrap();
    assert!(readiness.expected_migrations > 0);
    assert!(readiness.is_ready(), "{readiness:?}");
    // Migrating again is a no-op.
    store.migrate().await.unwrap();
    assert!(store.readiness().await.unwrap().is_ready());
}

async fn bootstrap_creates_the_first_admin_only_on_an_empty_database(store: Arc<dyn Store>) {
    let first = FirstAdmin {
        district_name: "Lakeside".into(),
        email: EmailAddress::parse("Admin@Lakeside.example.org").unwrap(),
        display_name: "Administrator".into(),
        password_hash: secret::hash_password("pw").unwrap(),
    };
    let (district, admin) = store
        .bootstrap(&first, now())
        .await
        .unwrap()
        .expect("created");
    assert_eq!(district.name, "Lakeside");
    assert_eq!(
        store.district(district.id).await.unwrap(),
        Some(district.clone())
    );
    assert_eq!(store.district(DistrictId::new()).await.unwrap(), None);
    assert_eq!(admin.role, Role::DistrictAdmin);
    assert_eq!(admin.district_id, district.id);
    assert_eq!(admin.email.as_str(), "admin@lakeside.example.org");

    let again = FirstAdmin {
        email: EmailAddress::parse("other@x.example.org").unwrap(),
        ..first
    };
    assert!(
        store.bootstrap(&again, now()).await.unwrap().is_none(),
        "second bootstrap is a no-op"
    );
    assert!(store.staff_by_email(&again.email).await.unwrap().is_none());
    assert_eq!(
        store.staff_by_email(&admin.email).await.unwrap(),
        Some(admin)
    );
}

async fn staff_emails_are_unique(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 0).await;
    let teacher = NewStaff {
        district_id: seed.staff.district_id,
        email: EmailAddress::parse("teacher@riverside.example.org").unwrap(),
        display_name: "T. Eacher".into(),
        role: Role::Teacher,
        password_hash: None,
    };
    let created = store.create_staff(&teacher, now()).await.unwrap();
    assert_eq!(created.role, Role::Teacher);
    let duplicate = store.create_staff(&teacher, now()).await.unwrap_err();
    assert!(
        matches!(duplicate, StoreError::AlreadyExists(_)),
        "{duplicate:?}"
    );
    // Named alike on both stores, so that a front end can say what is wrong.
    let StoreError::AlreadyExists(constraint) = duplicate else {
        unreachable!()
    };
    assert_eq!(
        tidings_core::store::constraint::describe(&constraint),
        Some("a staff member with this email address already exists"),
        "{constraint}"
    );
}

async fn staff_are_listed_a_page_at_a_time_by_email_and_searched(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 0).await;
    let district = seed.staff.district_id;
    for (email, name) in [
        ("b.teacher@riverside.example.org", "Bea Teacher"),
        ("c.viewer@riverside.example.org", "Cal 100% Viewer"),
        ("a.teacher@riverside.example.org", "Ana Teacher"),
    ] {
        let member = NewStaff {
            district_id: district,
            email: EmailAddress::parse(email).unwrap(),
            display_name: name.into(),
            role: Role::Teacher,
            password_hash: None,
        };
        store.create_staff(&member, now()).await.unwrap();
    }
    let all: Vec<String> = store
        .staff_members(district)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.staff.email.as_str().to_owned())
        .collect();
    assert_eq!(all.len(), 4, "{all:?}");
    // Two at a time, in email order, each page after the last member of the one before.
    let mut paged = Vec::new();
    let mut request = PageRequest {
        limit: 2,
        ..PageRequest::default()
    };
    loop {
        let page = store.staff_page(district, &request).await.unwrap();
        paged.extend(page.iter().map(|m| m.staff.email.as_str().to_owned()));
        match page.last() {
            Some(last) if page.len() == 2 => request.after = Some(*last.staff.id.as_uuid()),
            _ => break,
        }
    }
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(paged, sorted);
    assert_eq!(all, sorted, "all of them by email too");
    // Searched by name or email, case aside; LIKE's wildcards are plain characters.
    let found = |search: &str| {
        let request = PageRequest {
            limit: 10,
            search: Some(search.into()),
            ..PageRequest::default()
        };
        let store = store.clone();
        async move {
            store
                .staff_page(district, &request)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.staff.display_name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(found("TEACHER").await, ["Ana Teacher", "Bea Teacher"]);
    assert_eq!(found("c.viewer@").await, ["Cal 100% Viewer"]);
    assert_eq!(found("100%").await, ["Cal 100% Viewer"]);
    assert!(found("1%0").await.is_empty());
    // One member by id; none of another district.
    let only = store
        .staff_page(district, &PageRequest::only(*seed.staff.id.as_uuid()))
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].staff.id, seed.staff.id);
    let elsewhere = store
        .staff_page(
            DistrictId::new(),
            &PageRequest::only(*seed.staff.id.as_uuid()),
        )
        .await
        .unwrap();
    assert!(elsewhere.is_empty());
}

async fn api_tokens_resolve_to_their_enabled_owner(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 0).await;
    let token = ApiToken::generate();
    let mut tx = store.begin().await.unwrap();
    tx.create_token(
        token.id,
        &seed.staff,
        "cli",
        &token.secret_hash(),
        now(),
        None,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let record = store.api_token(token.id).await.unwrap().expect("stored");
    assert_eq!(record.staff, seed.staff);
    assert!(token.matches(&record.secret_hash));
    assert_eq!(record.revoked_at, None);
    assert!(store.api_token(ApiTokenId::new()).await.unwrap().is_none());
}

async fn a_message_is_written_with_every_delivery_exactly_once(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 3).await;
    let mut message = message_to(&seed, &[Channel::Sms, Channel::Email]);
    message.recipients[2].deliveries[1].address = None;
    message.recipients[2].deliveries[1].suppressed_reason = Some("no_address".into());
    let at = now();
    let morning = at + Duration::hours(9);
    message.recipients[0].deliveries[0].not_before = Some(morning);
    store.create_message(&message, at).await.unwrap();

    for recipient in &message.recipients {
        for planned in &recipient.deliveries {
            let stored = store
                .delivery(planned.id)
                .await
                .unwrap()
                .expect("delivery stored");
            assert_eq!(stored.message_id, message.id);
            assert_eq!(stored.recipient_id, recipient.id);
            assert_eq!(stored.guardian_id, recipient.guardian_id);
            assert_eq!(stored.channel, planned.channel);
            assert_eq!(stored.address, planned.address);
            assert_eq!(stored.version, 0);
            assert_eq!(stored.created_at, at);
            assert_eq!(stored.idempotency_key, planned.id.to_string());
            let expected = if planned.suppressed_reason.is_some() {
                DeliveryState::Suppressed
            } else {
                DeliveryState::Created
            };
            assert_eq!(stored.state, expected);
            assert_eq!(stored.suppressed_reason, planned.suppressed_reason);
            assert_eq!(
                stored.next_attempt_at, planned.not_before,
                "deferred until quiet hours end"
            );
        }
    }

    // Its summary counts what was written, the suppressed one apart.
    let summary = store
        .message_summary(&MessageScope::District(seed.staff.district_id), message.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        tally(&summary.counts),
        std::collections::BTreeMap::from([
            ((Channel::Email, DeliveryState::Created), 2),
            ((Channel::Email, DeliveryState::Suppressed), 1),
            ((Channel::Sms, DeliveryState::Created), 3),
        ])
    );

    // The same message again is refused by the database, not duplicated.
    let again = store.create_message(&message, now()).await.unwrap_err();
    assert!(matches!(again, StoreError::AlreadyExists(_)), "{again:?}");
}

async fn a_failed_fan_out_leaves_nothing_behind(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 2).await;
    let mut message = message_to(&seed, &[Channel::Sms]);
    // The second recipient repeats the first guardian: one recipient per guardian is a
    // rule of the schema, and breaking it must fail the whole message.
    message.recipients[1].guardian_id = message.recipients[0].guardian_id;
    let err = store.create_message(&message, now()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    for id in delivery_ids(&message) {
        assert!(
            store.delivery(id).await.unwrap().is_none(),
            "no delivery may survive"
        );
    }
    assert!(
        whole_log(store.as_ref(), Lane::Emergency, 4)
            .await
            .is_empty(),
        "no log entry either"
    );
    // And the message id is free: nothing of it was committed.
    let mut fixed = message_to(&seed, &[Channel::Sms]);
    fixed.id = message.id;
    store.create_message(&fixed, now()).await.unwrap();
}

async fn a_transition_is_a_compare_and_swap_with_an_event_row(store: Arc<dyn Store>) {
    let (_, id) = one_delivery(store.as_ref()).await;
    let at = now() + Duration::seconds(1);
    let queue = Transition {
        delivery_id: id,
        from: DeliveryState::Created,
        seen_version: 0,
        to: DeliveryState::Queued,
        actor: Actor::dispatcher("dispatcher-1"),
        detail: None,
        at,
        since: at,
    };
    let CasOutcome::Applied(moved) = store.transition(&queue).await.unwrap() else {
        panic!("first swap applies");
    };
    assert_eq!(
        (moved.state, moved.version, moved.updated_at),
        (DeliveryState::Queued, 1, at)
    );

    // The same swap again finds version 1, not 0: it changes nothing and says why.
    let CasOutcome::Conflict(current) = store.transition(&queue).await.unwrap() else {
        panic!("a stale version must conflict");
    };
    assert_eq!(current, moved);

    // A right version with a wrong state is refused too.
    let wrong_state = Transition {
        from: DeliveryState::Sent,
        seen_version: 1,
        ..queue.clone()
    };
    assert!(matches!(
        store.transition(&wrong_state).await.unwrap(),
        CasOutcome::Conflict(_)
    ));

    let missing = Transition {
        delivery_id: DeliveryId::new(),
        ..queue
    };
    assert_eq!(
        store.transition(&missing).await.unwrap(),
        CasOutcome::NotFound
    );

    let events = store.delivery_events(id).await.unwrap();
    assert_eq!(events.len(), 1, "only the applied swap is recorded");
    assert_eq!(events[0].from, DeliveryState::Created);
    assert_eq!(events[0].to, DeliveryState::Queued);
    assert_eq!(events[0].version, 1);
    assert_eq!(events[0].at, at);
    assert_eq!(events[0].actor, Actor::dispatcher("dispatcher-1"));
}

async fn apply_follows_the_state_machine_and_records_the_actor(store: Arc<dyn Store>) {
    let (seed, id) = one_delivery(store.as_ref()).await;
    let s = store.as_ref();
    let twilio = Actor::provider("twilio", "SM123:delivered");
    tidings_core::store::apply_event(
        s,
        id,
        DeliveryEvent::Enqueue,
        &Actor::dispatcher("d1"),
        None,
        now(),
    )
    .await
    .unwrap();
    // DELIVERED before SENT was recorded: the delivery moves forward, skipping SENT.
    let delivered =
        tidings_core::store::apply_event(s, id, DeliveryEvent::Delivered, &twilio, None, now())
            .await
            .unwrap();
    assert!(matches!(
        delivered,
        Applied::Moved { from: DeliveryState::Queued, ref delivery } if delivery.state == DeliveryState::Delivered
    ));
    tidings_core::store::apply_event(
        s,
        id,
        DeliveryEvent::Acknowledged,
        &Actor::guardian("link"),
        None,
        now(),
    )
    .await
    .unwrap();
    let staff = Actor::staff(seed.staff.id);
    let late = tidings_core::store::apply_event(
        s,
        id,
        DeliveryEvent::Failed,
        &staff,
        Some("late bounce"),
        now(),
    )
    .await
    .unwrap();
    assert!(matches!(
        late,
        Applied::Ignored {
            reason: Ignored::Final,
            ..
        }
    ));

    let events = store.delivery_events(id).await.unwrap();
    let path: Vec<_> = events
        .iter()
        .map(|e| (e.from, e.to, e.version, e.actor.kind))
        .collect();
    assert_eq!(
        path,
        [
            (
                DeliveryState::Created,
                DeliveryState::Queued,
                1,
                ActorKind::Dispatcher
            ),
            (
                DeliveryState::Queued,
                DeliveryState::Delivered,
                2,
                ActorKind::Provider
            ),
            (
                DeliveryState::Delivered,
                DeliveryState::Acked,
                3,
                ActorKind::Guardian
            ),
        ]
    );
    assert_eq!(events[1].actor.reference, "twilio:SM123:delivered");
    let stored = store.delivery(id).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.version), (DeliveryState::Acked, 3));
}

async fn stale_and_duplicate_events_are_ignored_without_a_write(store: Arc<dyn Store>) {
    let (_, id) = one_delivery(store.as_ref()).await;
    let s = store.as_ref();
    let provider = Actor::provider("kannel", "dlr-1");
    for event in [
        DeliveryEvent::Enqueue,
        DeliveryEvent::Accepted,
        DeliveryEvent::Delivered,
    ] {
        tidings_core::store::apply_event(s, id, event, &provider, None, now())
            .await
            .unwrap();
    }
    let stale =
        tidings_core::store::apply_event(s, id, DeliveryEvent::Accepted, &provider, None, now())
            .await
            .unwrap();
    assert!(matches!(
        stale,
        Applied::Ignored {
            reason: Ignored::Stale,
            ..
        }
    ));
    let duplicate =
        tidings_core::store::apply_event(s, id, DeliveryEvent::Delivered, &provider, None, now())
            .await
            .unwrap();
    assert!(matches!(
        duplicate,
        Applied::Ignored {
            reason: Ignored::Duplicate,
            ..
        }
    ));
    let too_late =
        tidings_core::store::apply_event(s, id, DeliveryEvent::Cancel, &provider, None, now())
            .await
            .unwrap();
    assert!(matches!(
        too_late,
        Applied::Ignored {
            reason: Ignored::AlreadySent,
            ..
        }
    ));

    let stored = store.delivery(id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.version),
        (DeliveryState::Delivered, 3)
    );
    assert_eq!(store.delivery_events(id).await.unwrap().len(), 3);
}

async fn racing_writers_have_exactly_one_winner_per_step(store: Arc<dyn Store>) {
    const WRITERS: usize = 8;
    const DELIVERIES: usize = 6;
    let steps = [
        DeliveryState::Queued,
        DeliveryState::Sent,
        DeliveryState::Delivered,
        DeliveryState::Acked,
    ];
    let seed = seed(store.as_ref(), DELIVERIES).await;
    let message = message_to(&seed, &[Channel::Push]);
    store.create_message(&message, now()).await.unwrap();
    let ids = delivery_ids(&message);

    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let (store, barrier, ids) = (store.clone(), barrier.clone(), ids.clone());
        writers.spawn(async move {
            let mut wins = Vec::new();
            for &id in &ids {
                for to in steps {
                    // Everyone reads the same version, then everyone tries to swap it.
                    barrier.wait().await;
                    let seen = store.delivery(id).await.unwrap().unwrap();
                    barrier.wait().await;
                    let attempt = Transition {
                        delivery_id: id,
                        from: seen.state,
                        seen_version: seen.version,
                        to,
                        actor: Actor::dispatcher(format!("writer-{writer}")),
                        detail: None,
                        at: now(),
                        since: seen.updated_at,
                    };
                    match store.transition(&attempt).await.unwrap() {
                        CasOutcome::Applied(_) => wins.push((id, to)),
                        CasOutcome::Conflict(current) => assert!(current.version > seen.version),
                        CasOutcome::NotFound => panic!("delivery vanished"),
                    }
                }
            }
            wins
        });
    }
    let mut wins = Vec::new();
    while let Some(result) = writers.join_next().await {
        wins.extend(result.unwrap());
    }
    wins.sort();
    let mut expected: Vec<_> = ids
        .iter()
        .flat_map(|&id| steps.map(|to| (id, to)))
        .collect();
    expected.sort();
    assert_eq!(
        wins, expected,
        "exactly one writer wins each step of each delivery"
    );

    for id in ids {
        let events = store.delivery_events(id).await.unwrap();
        let versions: Vec<_> = events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            [1, 2, 3, 4],
            "one event row per step, none lost, none doubled"
        );
        let to: Vec<_> = events.iter().map(|e| e.to).collect();
        assert_eq!(to, steps);
        assert_eq!(store.delivery(id).await.unwrap().unwrap().version, 4);
    }
}

async fn audit_entries_must_belong_to_a_district(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 0).await;
    let district = seed.staff.district_id;
    let detail = serde_json::json!({"name": "cli"});
    store
        .audit(
            district,
            &Actor::staff(seed.staff.id),
            "token.create",
            detail,
            now(),
        )
        .await
        .unwrap();
    store
        .audit(
            district,
            &Actor::system("bootstrap"),
            "staff.bootstrap",
            serde_json::json!({}),
            now(),
        )
        .await
        .unwrap();
    let unknown = store
        .audit(
            DistrictId::new(),
            &Actor::system("x"),
            "nothing",
            serde_json::json!({}),
            now(),
        )
        .await;
    assert!(
        unknown.is_err(),
        "an audit entry must belong to an existing district"
    );
}

#[tokio::test]
async fn an_unmigrated_sqlite_database_is_not_ready() {
    let db = TestDatabase::sqlite();
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let readiness = store.readiness().await.unwrap();
    assert_eq!(readiness.applied_migrations, 0);
    assert!(!readiness.is_ready());
}

#[tokio::test]
async fn an_unmigrated_postgres_database_is_not_ready() {
    let db = TestDatabase::postgres_empty().await;
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let readiness = store.readiness().await.unwrap();
    assert_eq!(readiness.applied_migrations, 0);
    assert!(!readiness.is_ready());
}

#[tokio::test]
async fn an_unknown_database_scheme_is_refused_with_the_expected_forms() {
    let Err(err) =
        tidings_core::store::connect("mysql://root@localhost/x", &Default::default()).await
    else {
        panic!("mysql is not supported");
    };
    assert!(
        err.to_string()
            .contains("expected sqlite://PATH or postgres://"),
        "{err}"
    );
}

/// Every entry of a lane, partition by partition.
async fn whole_log(
    store: &dyn Store,
    lane: Lane,
    partitions: u32,
) -> Vec<tidings_core::log::LogEntry> {
    let mut entries = Vec::new();
    for p in 0..partitions {
        entries.extend(
            store
                .read_log(lane, PartitionId::new(p), None, 100_000)
                .await
                .unwrap(),
        );
    }
    entries
}

async fn fan_out_puts_every_delivery_to_send_on_the_log_once(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 12).await;
    let mut first = message_to(&seed, &[Channel::Sms, Channel::Email]);
    first.recipients[0].deliveries[1].suppressed_reason = Some("opted_out".into());
    store.create_message(&first, now()).await.unwrap();
    let second = message_to(&seed, &[Channel::Push]);
    store.create_message(&second, now()).await.unwrap();

    let entries = whole_log(store.as_ref(), Lane::Emergency, 4).await;
    let mut logged: Vec<DeliveryId> = entries.iter().map(|e| e.delivery_id).collect();
    logged.sort();
    let mut expected: Vec<DeliveryId> = [&first, &second]
        .iter()
        .flat_map(|m| m.recipients.iter().flat_map(|r| r.deliveries.iter()))
        .filter(|d| d.suppressed_reason.is_none())
        .map(|d| d.id)
        .collect();
    expected.sort();
    assert_eq!(
        logged, expected,
        "every delivery to send once, the suppressed one not at all"
    );

    for p in 0..4 {
        let offsets: Vec<i64> = entries
            .iter()
            .filter(|e| e.partition.get() == p)
            .map(|e| e.offset)
            .collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {p}: offsets 0, 1, 2, …"
        );
    }
    for recipient in first.recipients.iter().chain(&second.recipients) {
        let partition = PartitionId::of(recipient.guardian_id, 4);
        for delivery in &recipient.deliveries {
            if let Some(entry) = entries.iter().find(|e| e.delivery_id == delivery.id) {
                assert_eq!(
                    entry.partition, partition,
                    "a guardian's deliveries share a partition"
                );
            }
        }
    }
    // A guardian's second message comes after their first within the partition.
    let g = &first.recipients[1];
    let offset_of = |id| entries.iter().find(|e| e.delivery_id == id).unwrap().offset;
    let later = second
        .recipients
        .iter()
        .find(|r| r.guardian_id == g.guardian_id)
        .unwrap();
    assert!(offset_of(later.deliveries[0].id) > offset_of(g.deliveries[0].id));
    let page = store
        .read_log(Lane::Emergency, PartitionId::new(0), Some(0), 2)
        .await
        .unwrap();
    assert!(
        page.iter().all(|e| e.offset > 0) && page.len() <= 2,
        "reads after the cursor, at most the limit"
    );
    assert!(
        whole_log(store.as_ref(), Lane::Bulk, 4).await.is_empty(),
        "lanes are separate"
    );
}

async fn a_partition_is_read_district_by_district(store: Arc<dyn Store>) {
    let a = seed(store.as_ref(), 12).await;
    let b = seed_district(store.as_ref(), "Hillcrest Schools", 8).await;
    for message in [
        message_to(&a, &[Channel::Sms]),
        message_to(&b, &[Channel::Sms, Channel::Email]),
        message_to(&a, &[Channel::Email]),
    ] {
        store.create_message(&message, now()).await.unwrap();
    }
    let (da, db) = (a.staff.district_id, b.staff.district_id);
    let all_heads = store.partition_heads().await.unwrap();
    let mut seen_b = 0;
    for p in 0..4 {
        let partition = PartitionId::new(p);
        let entries = store
            .read_log(Lane::Emergency, partition, None, 1_000)
            .await
            .unwrap();
        let Some((_, _, heads)) = all_heads
            .iter()
            .find(|(lane, p, _)| (*lane, *p) == (Lane::Emergency, partition))
        else {
            assert!(entries.is_empty(), "partition {p} has entries but no head");
            continue;
        };
        assert_eq!(heads.last, entries.last().map_or(-1, |e| e.offset));
        let of = |d: DistrictId| -> Vec<&tidings_core::log::LogEntry> {
            entries.iter().filter(|e| e.district_id == d).collect()
        };
        let mut districts = heads.districts.clone();
        districts.sort();
        let mut expected: Vec<(DistrictId, i64)> = [da, db]
            .into_iter()
            .filter_map(|d| Some((d, of(d).last()?.offset)))
            .collect();
        expected.sort();
        assert_eq!(
            districts, expected,
            "partition {p}: each district's last entry"
        );

        // Two of each district's entries after its own offset, in offset order.
        let b_after = of(db).first().map_or(-1, |e| e.offset);
        let read = store
            .read_outbound_of_districts(
                Lane::Emergency,
                partition,
                heads.last,
                &[(da, -1), (db, b_after)],
                2,
            )
            .await
            .unwrap();
        let got = |d: DistrictId| -> Vec<(i64, DeliveryId)> {
            read.iter()
                .filter(|o| o.delivery.district_id == d)
                .map(|o| (o.offset.unwrap(), o.delivery.id))
                .collect()
        };
        let want = |d: DistrictId, after: i64| -> Vec<(i64, DeliveryId)> {
            of(d)
                .iter()
                .filter(|e| e.offset > after)
                .take(2)
                .map(|e| (e.offset, e.delivery_id))
                .collect()
        };
        assert_eq!(got(da), want(da, -1), "partition {p}: district A");
        assert_eq!(got(db), want(db, b_after), "partition {p}: district B");
        assert_eq!(read.len(), got(da).len() + got(db).len());
        seen_b += of(db).len();

        // Nothing past `through`.
        let through = entries.get(entries.len() / 2).map_or(-1, |e| e.offset);
        let read = store
            .read_outbound_of_districts(
                Lane::Emergency,
                partition,
                through,
                &[(da, -1), (db, -1)],
                1_000,
            )
            .await
            .unwrap();
        let mut offsets: Vec<i64> = read.iter().map(|o| o.offset.unwrap()).collect();
        offsets.sort();
        assert_eq!(
            offsets,
            (0..=through).collect::<Vec<_>>(),
            "partition {p}: up to {through}"
        );
    }
    assert_eq!(seen_b, 16, "district B's 8 guardians × 2 channels");
    // Only the emergency lane was written to.
    assert!(
        !all_heads.is_empty()
            && all_heads
                .iter()
                .all(|(lane, _, _)| *lane == Lane::Emergency)
    );
}

/// Writers fan out concurrently into the same two partitions while a reader follows each
/// partition with a cursor. An entry that committed late would show up as a gap: the
/// reader would see offset k + 1 before k, and move its cursor past k for good.
async fn concurrent_fan_outs_never_let_a_reader_skip_an_entry(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const MESSAGES: usize = 8;
    let seed = Arc::new(seed(store.as_ref(), 10).await);
    let message_to_two = |s: &Seed| {
        let mut m = message_to(s, &[Channel::Sms]);
        m.partitions = 2;
        m
    };
    let messages: Vec<Vec<NewMessage>> = (0..WRITERS)
        .map(|_| (0..MESSAGES).map(|_| message_to_two(&seed)).collect())
        .collect();
    let total = WRITERS * MESSAGES * 10;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut cursors = [None::<i64>; 2];
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                for (p, cursor) in cursors.iter_mut().enumerate() {
                    for entry in store
                        .read_log(Lane::Emergency, PartitionId::new(p as u32), *cursor, 7)
                        .await
                        .unwrap()
                    {
                        let expected = cursor.map_or(0, |c| c + 1);
                        assert_eq!(
                            entry.offset, expected,
                            "partition {p}: a gap means an entry was skipped"
                        );
                        *cursor = Some(entry.offset);
                        seen.push(entry.delivery_id);
                    }
                }
                if finished && seen.len() >= total {
                    return seen;
                }
                if finished && seen.len() < total {
                    // Drain what committed just before `done`.
                    continue;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for batch in messages.iter().cloned() {
        let store = store.clone();
        writers.spawn(async move {
            for message in batch {
                store.create_message(&message, now()).await.unwrap();
            }
        });
    }
    while let Some(result) = writers.join_next().await {
        result.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = reader.await.unwrap();
    assert_eq!(seen.len(), total);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "every entry exactly once");
}

async fn a_recall_cancels_what_was_not_sent_and_reports_the_rest(store: Arc<dyn Store>) {
    use tidings_core::store::MessageScope;
    let seed = seed(store.as_ref(), 4).await;
    let message = message_to(&seed, &[Channel::Sms]);
    store.create_message(&message, now()).await.unwrap();
    let ids = delivery_ids(&message);
    let s = store.as_ref();
    let provider = Actor::provider("twilio", "x");
    tidings_core::store::apply_event(s, ids[0], DeliveryEvent::Enqueue, &provider, None, now())
        .await
        .unwrap();
    tidings_core::store::apply_event(s, ids[1], DeliveryEvent::Accepted, &provider, None, now())
        .await
        .unwrap();
    tidings_core::store::apply_event(s, ids[2], DeliveryEvent::Delivered, &provider, None, now())
        .await
        .unwrap();

    let district = seed.staff.district_id;
    let someone_else = MessageScope::Author(district, StaffId::new());
    let staff = Actor::staff(seed.staff.id);
    assert_eq!(
        s.cancel_message(&someone_else, message.id, &staff, now())
            .await
            .unwrap(),
        None,
        "not theirs"
    );

    let scope = MessageScope::Author(district, seed.staff.id);
    let outcome = s
        .cancel_message(&scope, message.id, &staff, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((outcome.cancelled, outcome.already_sent), (2, 2));
    let states: Vec<_> = states_of(s, &ids).await;
    assert_eq!(
        states,
        [
            DeliveryState::Cancelled,
            DeliveryState::Sent,
            DeliveryState::Delivered,
            DeliveryState::Cancelled
        ]
    );
    let events = s.delivery_events(ids[0]).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.from, last.to, last.version),
        (DeliveryState::Queued, DeliveryState::Cancelled, 2)
    );
    assert_eq!(last.actor, staff);
    let again = s
        .cancel_message(&scope, message.id, &staff, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.cancelled, again.already_sent),
        (0, 2),
        "a second recall changes nothing"
    );

    let listed = s
        .messages(&MessageScope::District(district), None, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].cancelled_at.is_some());
    let pending = s
        .recipients(&scope, message.id, Some(false), None, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.len(), 4);
    assert!(s
        .recipients(&scope, message.id, Some(true), None, 100)
        .await
        .unwrap()
        .unwrap()
        .is_empty());
    assert_eq!(
        s.recipients(&someone_else, message.id, None, None, 100)
            .await
            .unwrap(),
        None
    );
}

async fn states_of(store: &dyn Store, ids: &[DeliveryId]) -> Vec<DeliveryState> {
    let mut states = Vec::new();
    for id in ids {
        states.push(store.delivery(*id).await.unwrap().unwrap().state);
    }
    states
}

async fn maintenance_and_measurement_leave_nothing_behind(db: TestDatabase) {
    let store = db.store().await;
    seed(store.as_ref(), 3).await;
    store.refresh_directory_statistics().await.unwrap();
    store.settle().await.unwrap();
    let raw = tidings_core::store::raw_speed::connect(&db.url)
        .await
        .unwrap();
    // Twice: the scratch tables of the first run must be gone for the second.
    for _ in 0..2 {
        assert!(raw.measure_raw_insert(500).await.unwrap() > 0.0);
        assert!(raw.measure_raw_cas(50).await.unwrap() > 0.0);
    }
    for table in ["bench_raw_rows", "bench_cas"] {
        assert!(
            db.try_execute(&format!("SELECT 1 FROM {table}"))
                .await
                .is_err(),
            "{table} was left behind"
        );
    }
    assert!(store.readiness().await.unwrap().is_ready());
}

async fn idempotency_keys_claim_replay_mismatch_and_expire(store: Arc<dyn Store>) {
    use tidings_core::store::IdempotencyClaim;
    let keep = Duration::hours(24);
    let at = now();
    // Each claim in a transaction of its own, rolled back unless `then` completes it.
    let claim = |scope: &'static str, hash: &'static [u8], at, complete: bool| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let claim = tx
                .claim_idempotency_key(scope, "k", hash, keep, at)
                .await
                .unwrap();
            if complete {
                tx.complete_idempotency_key(scope, "k", 201, b"{\"id\":1}")
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            claim
        }
    };
    assert_eq!(
        claim("staff:1", b"one", at, false).await,
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        claim("staff:1", b"one", at, true).await,
        IdempotencyClaim::Claimed,
        "a claim rolled back with its transaction leaves the key free"
    );
    assert_eq!(
        claim("staff:1", b"one", at, false).await,
        IdempotencyClaim::Replay {
            status: 201,
            body: b"{\"id\":1}".to_vec()
        }
    );
    assert_eq!(
        claim("staff:1", b"two", at, false).await,
        IdempotencyClaim::Mismatch
    );
    // Another scope is another key space; a key older than `keep` is forgotten.
    assert_eq!(
        claim("staff:2", b"one", at, false).await,
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        claim("staff:1", b"other", at + Duration::hours(25), false).await,
        IdempotencyClaim::Claimed
    );
    if store.backend() == tidings_core::store::Backend::Postgres {
        // Two transactions with one key: the second is told the first is in flight
        // instead of waiting for its whole send (on SQLite one writer at a time).
        let mut first = store.begin().await.unwrap();
        assert_eq!(
            first
                .claim_idempotency_key("staff:3", "k", b"one", keep, at)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
        let mut second = store.begin().await.unwrap();
        assert_eq!(
            second
                .claim_idempotency_key("staff:3", "k", b"one", keep, at)
                .await
                .unwrap(),
            IdempotencyClaim::InFlight
        );
        drop(second);
        first
            .complete_idempotency_key("staff:3", "k", 201, b"{}")
            .await
            .unwrap();
        first.commit().await.unwrap();
        assert_eq!(
            claim("staff:3", b"one", at, false).await,
            IdempotencyClaim::Replay {
                status: 201,
                body: b"{}".to_vec()
            }
        );
    }
}

async fn the_hourly_quota_is_reserved_by_concurrent_sends(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 2).await;
    let newsletter = |quota| NewMessage {
        kind: MessageKind::General,
        lane: Lane::Bulk,
        hourly_quota: Some(quota),
        ..message_to(&seed, &[Channel::Email])
    };
    // Quota 2, one already sent: of eight concurrent sends exactly one more may pass.
    store.create_message(&newsletter(2), now()).await.unwrap();
    let sends: Vec<_> = (0..8)
        .map(|_| {
            let (store, message) = (store.clone(), newsletter(2));
            tokio::spawn(async move { store.create_message(&message, now()).await })
        })
        .collect();
    let mut passed = 0;
    for send in sends {
        match send.await.unwrap() {
            Ok(()) => passed += 1,
            Err(StoreError::HourlyQuota { sent, max }) => assert_eq!((sent, max), (2, 2)),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(passed, 1);
    // Emergencies carry no quota and still go out.
    store
        .create_message(&message_to(&seed, &[Channel::Sms]), now())
        .await
        .unwrap();
}

async fn an_acknowledgment_acks_its_channel_and_cancels_what_has_not_gone_out(
    store: Arc<dyn Store>,
) {
    use tidings_core::delivery::{Actor, Transition};
    use tidings_core::store::AckOutcome;
    use tidings_core::DeliveryState;
    let seed = seed(store.as_ref(), 2).await;
    let message = message_to(&seed, &[Channel::Sms, Channel::Email]);
    store.create_message(&message, now()).await.unwrap();
    let recipient = &message.recipients[0];
    let (sms, email) = (recipient.deliveries[0].id, recipient.deliveries[1].id);
    for (from, to) in [
        (DeliveryState::Created, DeliveryState::Queued),
        (DeliveryState::Queued, DeliveryState::Sent),
    ] {
        let d = store.delivery(sms).await.unwrap().unwrap();
        store
            .transition(&Transition {
                delivery_id: sms,
                from,
                seen_version: d.version,
                to,
                actor: Actor::dispatcher("test"),
                detail: None,
                at: now(),
                since: d.updated_at,
            })
            .await
            .unwrap();
    }
    let guardian = seed.guardians[0].id;
    assert_eq!(
        store.open_ack(guardian, now()).await.unwrap(),
        Some(*recipient.id.as_uuid())
    );
    let acked = store
        .acknowledge(
            *recipient.id.as_uuid(),
            Channel::Sms,
            &Actor::guardian("sms"),
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        acked,
        AckOutcome::Acked {
            delivery: Some(sms),
            cancelled: 1,
            untouched: 0
        }
    );
    let state = |id| {
        let store = store.clone();
        async move { store.delivery(id).await.unwrap().unwrap().state }
    };
    assert_eq!(state(sms).await, DeliveryState::Acked);
    assert_eq!(state(email).await, DeliveryState::Cancelled);
    let trail = store.delivery_events(email).await.unwrap();
    assert_eq!(trail.last().unwrap().to, DeliveryState::Cancelled);
    // Twice is once.
    assert_eq!(
        store
            .acknowledge(
                *recipient.id.as_uuid(),
                Channel::Email,
                &Actor::guardian("email"),
                now()
            )
            .await
            .unwrap(),
        AckOutcome::AlreadyAcked
    );
    assert_eq!(state(email).await, DeliveryState::Cancelled);
    assert_eq!(store.open_ack(guardian, now()).await.unwrap(), None);
    let listed = store
        .recipients(
            &MessageScope::District(seed.staff.district_id),
            message.id,
            Some(true),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(listed.map(|l| l.len()), Some(1));

    // The recipient's timeline: each delivery with every state it went through, and who
    // moved it; nothing for a scope that may not see the message.
    let district = MessageScope::District(seed.staff.district_id);
    let timeline = store
        .recipient_timeline(&district, message.id, recipient.id)
        .await
        .unwrap()
        .expect("the administrator sees the recipient");
    assert_eq!(timeline.recipient.ack_state, "acked");
    assert_eq!(timeline.deliveries.len(), 2);
    let of = |id| {
        timeline
            .deliveries
            .iter()
            .find(|d| d.delivery.id == id)
            .expect("both deliveries")
    };
    let moves: Vec<_> = of(sms).events.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(
        moves[moves.len() - 3..],
        [
            (DeliveryState::Created, DeliveryState::Queued),
            (DeliveryState::Queued, DeliveryState::Sent),
            (DeliveryState::Sent, DeliveryState::Acked)
        ]
    );
    assert_eq!(of(sms).events.last().unwrap().actor, Actor::guardian("sms"));
    assert_eq!(of(email).delivery.state, DeliveryState::Cancelled);
    let stranger = MessageScope::Author(seed.staff.district_id, tidings_core::StaffId::new());
    assert!(store
        .recipient_timeline(&stranger, message.id, recipient.id)
        .await
        .unwrap()
        .is_none());
    let other = message.recipients[1].id;
    assert!(store
        .recipient_timeline(&district, MessageId::new(), other)
        .await
        .unwrap()
        .is_none());

    // Its deliveries per state over time, per channel: everyone starts CREATED; at the
    // end one SMS is ACKED and one email CANCELLED.
    let counts_now = store
        .message_summary(&district, message.id)
        .await
        .unwrap()
        .expect("the administrator sees the message")
        .counts;
    assert_eq!(
        tally(&counts_now),
        tally_by_reading(store.as_ref(), &message).await,
        "the summary counts what the deliveries are"
    );
    let series = store
        .state_series(&district, message.id, &counts_now, 60)
        .await
        .unwrap()
        .expect("the administrator sees the message");
    let last = |channel| {
        let found = series.channels.iter().find(|c| c.channel == channel);
        found
            .and_then(|c| c.steps.last())
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        last(Channel::Sms).into_iter().collect::<Vec<_>>(),
        [(DeliveryState::Created, 1), (DeliveryState::Acked, 1)]
    );
    assert_eq!(
        last(Channel::Email).into_iter().collect::<Vec<_>>(),
        [(DeliveryState::Created, 1), (DeliveryState::Cancelled, 1)]
    );
    assert!(series.channels.iter().all(|c| c.steps.len() <= 60));
    // Before the first change both of each channel were CREATED: what the moves recorded
    // with the transitions undo from the counts now.
    for channel in [Channel::Sms, Channel::Email] {
        let found = series.channels.iter().find(|c| c.channel == channel);
        assert_eq!(
            found.map(|c| c.start.clone().into_iter().collect::<Vec<_>>()),
            Some(vec![(DeliveryState::Created, 2)]),
            "{channel:?}"
        );
    }
    assert!(store
        .state_series(&stranger, message.id, &counts_now, 60)
        .await
        .unwrap()
        .is_none());

    // What the recipients texted back since the message went out.
    add_contact(
        store.as_ref(),
        seed.staff.district_id,
        guardian,
        Channel::Sms,
        "+15555550123",
    )
    .await;
    store
        .record_inbound(
            &tidings_core::store::InboundSms {
                provider: "twilio".into(),
                provider_message_id: "SM-reply-1".into(),
                from: "+15555550123".into(),
                to: "+15555550100".into(),
                body: "We are on our way".into(),
                keyword: None,
            },
            now(),
        )
        .await
        .unwrap();
    let replies = store
        .message_replies(&district, message.id, 10)
        .await
        .unwrap()
        .expect("the administrator sees the message");
    assert_eq!(
        replies.iter().map(|r| r.body.as_str()).collect::<Vec<_>>(),
        ["We are on our way"]
    );
    assert!(store
        .message_replies(&stranger, message.id, 10)
        .await
        .unwrap()
        .is_none());

    // A message that asks for no acknowledgment cannot be acknowledged.
    let plain = NewMessage {
        id: MessageId::new(),
        requires_ack: false,
        ..message_to(&seed, &[Channel::Sms])
    };
    store.create_message(&plain, now()).await.unwrap();
    let other = *plain.recipients[1].id.as_uuid();
    assert_eq!(
        store
            .acknowledge(other, Channel::Sms, &Actor::guardian("sms"), now())
            .await
            .unwrap(),
        AckOutcome::NotRequired
    );
    assert_eq!(
        store
            .acknowledge(
                uuid::Uuid::now_v7(),
                Channel::Sms,
                &Actor::guardian("sms"),
                now()
            )
            .await
            .unwrap(),
        AckOutcome::NotFound
    );
}

async fn registered_devices_are_addressed_by_platform(store: Arc<dyn Store>) {
    use tidings_core::audience::{Audience, AudienceMember};
    use tidings_core::store::Scope;
    use tidings_core::PushPlatform;
    let seed = seed(store.as_ref(), 3).await;
    let district = seed.staff.district_id;
    let (g0, g1) = (seed.guardians[0].id, seed.guardians[1].id);
    let register = |guardian, platform, token: &'static str| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let device = tx
                .register_device(district, guardian, platform, token, now())
                .await
                .unwrap();
            tx.commit().await.unwrap();
            device
        }
    };
    let iphone = register(g0, PushPlatform::Apns, "a1b2c3").await;
    assert_eq!(iphone.kind, Channel::Push);
    register(g1, PushPlatform::Fcm, "fGc4Kq").await;
    // Registering again reactivates, never duplicates.
    register(g1, PushPlatform::Fcm, "fGc4Kq").await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let plan = move |members: &[AudienceMember]| {
        for m in members {
            for c in m.contacts.iter().filter(|c| c.kind == Channel::Push) {
                recorded
                    .lock()
                    .unwrap()
                    .push((m.guardian_id, c.address.clone()));
            }
        }
        Vec::new()
    };
    let header = NewMessage {
        recipients: Vec::new(),
        ..message_to(&seed, &[Channel::Push])
    };
    let everyone = Audience {
        district: true,
        ..Default::default()
    };
    store
        .send_message(
            &header,
            &Scope::District(district),
            &everyone,
            None,
            &plan,
            10,
            now(),
        )
        .await
        .unwrap()
        .unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let mut expected = vec![
        (*g0.as_uuid(), "apns:a1b2c3".to_owned()),
        (*g1.as_uuid(), "fcm:fGc4Kq".to_owned()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
}

/// Every guardian gets an SMS and an email (a plan for `Store::send_message`).
fn sms_and_email(members: &[tidings_core::audience::AudienceMember]) -> Vec<NewRecipient> {
    members
        .iter()
        .map(|m| NewRecipient {
            id: RecipientId::new(),
            guardian_id: GuardianId::from_uuid(m.guardian_id),
            language: "en".into(),
            deliveries: [Channel::Sms, Channel::Email]
                .into_iter()
                .map(|channel| NewDelivery {
                    id: DeliveryId::new(),
                    channel,
                    address: Some(format!("{}-{channel}", m.guardian_id)),
                    suppressed_reason: None,
                    not_before: None,
                    fallback_of: None,
                })
                .collect(),
        })
        .collect()
}

async fn a_message_sent_in_chunks_reaches_everyone_once_with_a_gapless_log(store: Arc<dyn Store>) {
    use tidings_core::audience::{Audience, AudienceMember};
    use tidings_core::store::{Scope, SendRefusal};
    let seed = seed(store.as_ref(), 10).await;
    let district = seed.staff.district_id;
    let scope = Scope::District(district);
    let header = NewMessage {
        recipients: Vec::new(),
        ..message_to(&seed, &[Channel::Sms, Channel::Email])
    };
    // Chunks are never larger than asked.
    let plan = |members: &[AudienceMember]| {
        assert!(members.len() <= 3, "a chunk of {} guardians", members.len());
        sms_and_email(members)
    };
    let everyone = Audience {
        district: true,
        ..Default::default()
    };
    // Over the recipient limit: refused, nothing written.
    let refused = store
        .send_message(&header, &scope, &everyone, Some(9), &plan, 3, now())
        .await
        .unwrap();
    assert_eq!(refused, Err(SendRefusal::TooMany(10)));
    let unknown = Audience {
        guardians: vec!["g-999".into()],
        ..Default::default()
    };
    let refused = store
        .send_message(&header, &scope, &unknown, None, &plan, 3, now())
        .await
        .unwrap();
    assert!(matches!(refused, Err(SendRefusal::Audience(p)) if p.unknown == ["guardians:g-999"]));
    assert!(whole_log(store.as_ref(), Lane::Emergency, 4)
        .await
        .is_empty());

    // Ten guardians in chunks of three, twice: a second send on the same connection pool
    // finds no leftover of the first.
    for round in 1..=2 {
        let message = NewMessage {
            id: MessageId::new(),
            ..header.clone()
        };
        let summary = store
            .send_message(&message, &scope, &everyone, Some(10), &plan, 3, now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((summary.recipients, summary.deliveries), (10, 20));
        let log = whole_log(store.as_ref(), Lane::Emergency, 4).await;
        assert_eq!(log.len(), 20 * round);
        for p in 0..4 {
            let offsets: Vec<i64> = log
                .iter()
                .filter(|e| e.partition == PartitionId::new(p))
                .map(|e| e.offset)
                .collect();
            assert_eq!(
                offsets,
                (0..offsets.len() as i64).collect::<Vec<_>>(),
                "partition {p}"
            );
        }
        let mut guardians: Vec<_> = store
            .recipients(
                &MessageScope::District(district),
                message.id,
                None,
                None,
                100,
            )
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|r| r.guardian_id)
            .collect();
        guardians.sort();
        guardians.dedup();
        assert_eq!(guardians.len(), 10, "each guardian once");
    }
}

async fn a_sign_in_code_allows_few_tries_expires_and_is_redeemed_once(store: Arc<dyn Store>) {
    let at = now();
    let address = "+15005550100";
    let open = |at| {
        let store = store.clone();
        async move { store.open_sign_in(Channel::Sms, address, at).await.unwrap() }
    };
    let expires = at + Duration::minutes(10);
    let first = store
        .create_sign_in(Channel::Sms, address, "h1", expires, 5, at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open(at).await.unwrap().id, first);
    assert!(open(expires).await.is_none(), "expired");
    assert!(store
        .open_sign_in(Channel::Email, address, at)
        .await
        .unwrap()
        .is_none());
    // Four wrong tries leave it open; the right one then redeems it, once.
    for _ in 0..4 {
        assert!(!store.sign_in_attempt(first, false, 5, at).await.unwrap());
    }
    assert_eq!(open(at).await.unwrap().attempts, 4);
    let racing =
        futures_util::future::join_all((0..4).map(|_| store.sign_in_attempt(first, true, 5, at)))
            .await;
    let won: Vec<bool> = racing.into_iter().map(Result::unwrap).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    assert!(open(at).await.is_none(), "used up");
    // Five wrong tries use a code up: the right code is refused after.
    let second = store
        .create_sign_in(Channel::Sms, address, "h2", expires, 5, at)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..5 {
        assert!(!store.sign_in_attempt(second, false, 5, at).await.unwrap());
    }
    assert!(!store.sign_in_attempt(second, true, 5, at).await.unwrap());
    assert!(open(at).await.is_none());
    // A new code replaces the open one; the hourly cap counts every code (2 so far).
    let third = store
        .create_sign_in(Channel::Sms, address, "h3", expires, 5, at)
        .await
        .unwrap()
        .unwrap();
    let fourth = store
        .create_sign_in(Channel::Sms, address, "h4", expires, 5, at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open(at).await.unwrap().id, fourth);
    assert!(
        !store.sign_in_attempt(third, true, 5, at).await.unwrap(),
        "replaced"
    );
    assert!(store
        .create_sign_in(Channel::Sms, address, "h5", expires, 4, at)
        .await
        .unwrap()
        .is_none());
    // An hour later the cap starts over.
    assert!(store
        .create_sign_in(
            Channel::Sms,
            address,
            "h6",
            expires,
            4,
            at + Duration::minutes(61)
        )
        .await
        .unwrap()
        .is_some());
}

async fn link_key_fingerprints_are_recorded_once_and_differences_reported(store: Arc<dyn Store>) {
    let at = now();
    let first = vec![(1u8, "fp-one".to_owned())];
    assert!(store.check_link_keys(&first, at).await.unwrap().is_empty());
    assert!(store.check_link_keys(&first, at).await.unwrap().is_empty());
    let rotated = vec![(1u8, "fp-one".to_owned()), (2u8, "fp-two".to_owned())];
    assert!(store
        .check_link_keys(&rotated, at)
        .await
        .unwrap()
        .is_empty());
    let other = vec![(1u8, "fp-else".to_owned()), (2u8, "fp-two".to_owned())];
    assert_eq!(store.check_link_keys(&other, at).await.unwrap(), vec![1]);
}

async fn an_acknowledgment_covers_the_message_and_its_re_notifications(store: Arc<dyn Store>) {
    use tidings_core::store::AckOutcome;
    let seed = seed(store.as_ref(), 2).await;
    let original = message_to(&seed, &[Channel::Sms]);
    store.create_message(&original, now()).await.unwrap();
    // A reminder of it, and a reminder of the reminder, not sent yet.
    let reminder = NewMessage {
        renotify_of: Some(original.id),
        ..message_to(&seed, &[Channel::Sms, Channel::Email])
    };
    store.create_message(&reminder, now()).await.unwrap();
    let again = NewMessage {
        renotify_of: Some(reminder.id),
        ..message_to(&seed, &[Channel::Email])
    };
    store.create_message(&again, now()).await.unwrap();
    // The guardian acknowledges the first reminder.
    let acked = store
        .acknowledge(
            *reminder.recipients[0].id.as_uuid(),
            Channel::Sms,
            &Actor::guardian("link:sms"),
            now(),
        )
        .await
        .unwrap();
    assert!(matches!(acked, AckOutcome::Acked { .. }), "{acked:?}");
    // Every message of the family counts them as acknowledged, and nothing more goes to
    // them; the other guardian is untouched.
    let guardian = seed.guardians[0].id;
    for message in [&original, &reminder, &again] {
        let pending = store.pending_guardians(message.id).await.unwrap();
        assert!(!pending.contains(guardian.as_uuid()), "{pending:?}");
        assert!(pending.contains(seed.guardians[1].id.as_uuid()));
        for d in &message.recipients[0].deliveries {
            let state = store.delivery(d.id).await.unwrap().unwrap().state;
            let expected = if message.id == reminder.id && d.channel == Channel::Sms {
                DeliveryState::Acked
            } else {
                DeliveryState::Cancelled
            };
            assert_eq!(state, expected, "{:?} {:?}", message.id, d.channel);
        }
    }
    // Pressing the original's link afterwards: already done.
    assert_eq!(
        store
            .acknowledge(
                *original.recipients[0].id.as_uuid(),
                Channel::Sms,
                &Actor::guardian("link:sms"),
                now(),
            )
            .await
            .unwrap(),
        AckOutcome::AlreadyAcked
    );
}

/// On PostgreSQL one foreign key ties a delivery to its recipient, its message and its
/// guardian together: a delivery cannot be moved to another guardian or message of the
/// district, even one that exists.
#[tokio::test]
async fn a_delivery_keeps_its_recipients_message_and_guardian_on_postgres() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await;
    let seed = seed(store.as_ref(), 2).await;
    let message = message_to(&seed, &[Channel::Sms]);
    store.create_message(&message, now()).await.unwrap();
    let other = message_to(&seed, &[Channel::Sms]);
    store.create_message(&other, now()).await.unwrap();
    let delivery = *message.recipients[0].deliveries[0].id.as_uuid();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // (On a channel the guardian has no delivery on yet, so that only the key can object.)
    let moves = [
        ("guardian_id", *seed.guardians[1].id.as_uuid()),
        ("message_id", *other.id.as_uuid()),
        ("recipient_id", *message.recipients[1].id.as_uuid()),
    ];
    for (column, to) in moves {
        let refused = sqlx::query(&format!(
            "UPDATE deliveries SET {column} = $1, channel = 'email' WHERE id = $2"
        ))
        .bind(to)
        .bind(delivery)
        .execute(&pool)
        .await
        .unwrap_err();
        let constraint = refused
            .as_database_error()
            .and_then(|e| e.constraint())
            .map(str::to_owned);
        assert_eq!(
            constraint.as_deref(),
            Some("deliveries_recipient"),
            "{column}: {refused}"
        );
    }
    pool.close().await;
}

/// A send writes its deliveries partition by partition within each chunk, in the table
/// and in id order: a dispatcher sends a partition's deliveries together, so its batch
/// then updates a few pages, not one per delivery.
async fn a_send_writes_its_deliveries_partition_by_partition(db: TestDatabase) {
    use tidings_core::audience::Audience;
    use tidings_core::store::Scope;
    let store = db.store().await;
    let seed = seed(store.as_ref(), 60).await;
    let message = NewMessage {
        recipients: Vec::new(),
        ..message_to(&seed, &[Channel::Sms, Channel::Email])
    };
    let everyone = Audience {
        district: true,
        ..Default::default()
    };
    let scope = Scope::District(seed.staff.district_id);
    let plan = |members: &[tidings_core::audience::AudienceMember]| sms_and_email(members);
    let summary = store
        .send_message(&message, &scope, &everyone, None, &plan, 30, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.deliveries, 120);
    // (id, guardian) in the order the table holds them.
    let on_disk: Vec<(String, String)> = if db.url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        let rows = sqlx::query_as(
            "SELECT id, guardian_id FROM deliveries WHERE message_id = $1 ORDER BY rowid",
        )
        .bind(message.id.as_uuid().hyphenated().to_string())
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let rows = sqlx::query_as(
            "SELECT id::text, guardian_id::text FROM deliveries WHERE message_id = $1 ORDER BY ctid",
        )
        .bind(message.id.as_uuid())
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows
    };
    let partition = |guardian: &str| {
        PartitionId::of(
            GuardianId::from_uuid(guardian.parse().unwrap()),
            message.partitions,
        )
    };
    // Two chunks of 30 guardians, each at most one run per partition (written in the
    // order they were planned, a partition's run would be one or two deliveries long).
    let runs = |order: &[(String, String)]| {
        1 + order
            .windows(2)
            .filter(|w| partition(&w[0].1) != partition(&w[1].1))
            .count()
    };
    assert!(runs(&on_disk) <= 2 * 4, "{} runs on disk", runs(&on_disk));
    let mut by_id = on_disk.clone();
    by_id.sort();
    assert_eq!(by_id, on_disk, "ids in the order of the table");
}

/// Settling puts everything written into the SQLite database file itself, at once (the
/// background checkpoint would copy it some 50 ms after the write).
#[tokio::test]
async fn settling_puts_what_was_written_in_the_sqlite_database_file() {
    use sqlx::ConnectOptions as _;
    use std::str::FromStr as _;
    let db = TestDatabase::sqlite();
    let store = db.store().await;
    let seed = seed(store.as_ref(), 20).await;
    let message = message_to(&seed, &[Channel::Sms]);
    store.create_message(&message, now()).await.unwrap();
    store.settle().await.unwrap();
    // `immutable` reads the file as it is, ignoring the journal beside it.
    let mut file = sqlx::sqlite::SqliteConnectOptions::from_str(&db.url)
        .unwrap()
        .immutable(true)
        .connect()
        .await
        .unwrap();
    let in_file: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&mut file)
        .await
        .unwrap();
    assert_eq!(in_file, 20);
}

/// Only districts and lanes with deliveries whose time has come are counted, each up to
/// the cap: not a district without deliveries waiting, nor one whose time is still ahead.
async fn due_counts_list_each_district_and_lane_with_deliveries_due(store: Arc<dyn Store>) {
    use tidings_core::store::dispatch::DueCount;
    use tidings_core::testing::scheduled;
    let at = now();
    let first = seed(store.as_ref(), 10).await;
    let emergency = scheduled(message_to(&first, &[Channel::Sms]), at);
    store.create_message(&emergency, at).await.unwrap();
    let second = seed_district(store.as_ref(), "Second", 10).await;
    let newsletter = NewMessage {
        kind: MessageKind::General,
        lane: Lane::Bulk,
        ..scheduled(message_to(&second, &[Channel::Email]), at)
    };
    store.create_message(&newsletter, at).await.unwrap();
    // Nothing waiting; and waiting for a later time.
    seed_district(store.as_ref(), "Quiet", 3).await;
    let later = seed_district(store.as_ref(), "Later", 5).await;
    let ahead = scheduled(message_to(&later, &[Channel::Sms]), at + Duration::hours(1));
    store.create_message(&ahead, at).await.unwrap();

    // Sorted by district and lane, to compare.
    let sorted = |mut counts: Vec<DueCount>| {
        counts.sort_by_key(|c| (c.district.to_string(), c.lane));
        counts
    };
    let found = |by, cap| {
        let store = store.clone();
        async move { sorted(store.due_counts(by, cap).await.unwrap()) }
    };
    let due = |district, lane, deliveries| DueCount {
        district,
        lane,
        deliveries,
    };
    let (a, b, d) = (
        first.staff.district_id,
        second.staff.district_id,
        later.staff.district_id,
    );
    assert_eq!(
        found(at + Duration::seconds(1), 4).await,
        sorted(vec![due(a, Lane::Emergency, 4), due(b, Lane::Bulk, 4)])
    );
    assert_eq!(
        found(at + Duration::hours(2), 100).await,
        sorted(vec![
            due(a, Lane::Emergency, 10),
            due(b, Lane::Bulk, 10),
            due(d, Lane::Emergency, 5)
        ])
    );
    assert!(found(at - Duration::seconds(1), 100).await.is_empty());
}

/// What a guardian's later delivery on a channel waits behind: earlier deliveries of its
/// lane or a more urgent one that wait for a retry (with when) or are at the provider
/// (no retry time: the call's outcome decides).
async fn retrying_lists_a_guardians_unfinished_deliveries_of_the_lane_and_more_urgent_ones(
    store: Arc<dyn Store>,
) {
    use tidings_core::store::dispatch::{AttemptResult, Retrying};
    let at = now();
    let seed = seed(store.as_ref(), 1).await;
    let guardian = seed.guardians[0].id;
    // An emergency at the provider now, and a newsletter waiting for its retry.
    let alert = message_to(&seed, &[Channel::Sms]);
    store.create_message(&alert, at).await.unwrap();
    let newsletter = NewMessage {
        kind: MessageKind::General,
        lane: Lane::Bulk,
        ..message_to(&seed, &[Channel::Sms])
    };
    store
        .create_message(&newsletter, at + Duration::seconds(1))
        .await
        .unwrap();
    let partition = PartitionId::of(guardian, alert.partitions);
    let leases = store
        .claim_leases(
            "one",
            &[(Lane::Emergency, partition), (Lane::Bulk, partition)],
            Duration::minutes(5),
            at,
        )
        .await
        .unwrap();
    let lease = |lane| *leases.iter().find(|l| l.lane == lane).unwrap();
    let start = |message: &NewMessage| {
        let store = store.clone();
        let (id, lease) = (delivery_ids(message)[0], lease(message.lane));
        async move {
            let seen = store.delivery(id).await.unwrap().unwrap();
            store
                .start_attempt(
                    &lease,
                    &seen,
                    "sandbox",
                    "one",
                    at + Duration::minutes(2),
                    at,
                )
                .await
                .unwrap();
            (lease, store.delivery(id).await.unwrap().unwrap())
        }
    };
    start(&alert).await;
    let (bulk, sending) = start(&newsletter).await;
    let retry_at = at + Duration::minutes(5);
    let retry = AttemptResult::Retry {
        at: retry_at,
        in_doubt: false,
        error: "timeout".into(),
    };
    store
        .finish_attempt(&bulk, &sending, 1, &retry, "one", at)
        .await
        .unwrap();

    let retrying = |channel, lane, by| {
        let store = store.clone();
        async move {
            store
                .retrying(&[(guardian, channel)], lane, by)
                .await
                .unwrap()
        }
    };
    let behind = |first_created_at, due| {
        vec![Retrying {
            guardian_id: guardian,
            channel: Channel::Sms,
            first_created_at,
            due,
        }]
    };
    // An emergency waits only behind the emergency, which is at the provider.
    assert_eq!(
        retrying(Channel::Sms, Lane::Emergency, at).await,
        behind(at, None)
    );
    // A newsletter waits behind both: until the newsletter's retry.
    assert_eq!(
        retrying(Channel::Sms, Lane::Bulk, at).await,
        behind(at, Some(retry_at))
    );
    assert_eq!(
        retrying(Channel::Sms, Lane::Normal, at).await,
        behind(at, None)
    );
    // Nothing on another channel; nothing once their times have passed.
    assert!(retrying(Channel::Email, Lane::Bulk, at).await.is_empty());
    assert!(retrying(Channel::Sms, Lane::Bulk, retry_at)
        .await
        .is_empty());
}

async fn the_callback_inbox_is_pruned_by_age_in_bounded_rounds(store: Arc<dyn Store>) {
    use tidings_core::store::inbox::{InboxRetention, Pruned};
    use tidings_core::store::InboxPut;
    let old = now() - Duration::days(40);
    let recent = now() - Duration::days(2);
    let put = |n: usize, status: &'static str| InboxPut {
        provider: "twilio".into(),
        event_id: format!("{status}-{n}"),
        payload: serde_json::json!({ "n": n }),
        status,
        outcome: None,
    };
    // Old: 3 ignored, 3 rejected, 2 pending; recent: 1 ignored, 1 rejected.
    let olds: Vec<_> = (0..3)
        .flat_map(|n| [put(n, "ignored"), put(n, "rejected")])
        .chain((0..2).map(|n| put(n, "pending")))
        .collect();
    store.inbox_put_many(&olds, old).await.unwrap();
    store
        .inbox_put_many(&[put(9, "ignored"), put(9, "rejected")], recent)
        .await
        .unwrap();
    // Two of the old pending ones become applied.
    let pending = store.inbox_pending(10).await.unwrap();
    assert_eq!(pending.len(), 2);
    let marks: Vec<_> = pending
        .iter()
        .map(|item| tidings_core::store::InboxApply {
            inbox_id: item.id,
            request: None,
            effect: None,
            district: None,
            status: "applied",
            outcome: "test".into(),
        })
        .collect();
    store.apply_inbox_batch(&marks, now()).await.unwrap();
    store
        .claim_webhook_token("mailgun", "old-token", "k", old)
        .await
        .unwrap();
    store
        .claim_webhook_token("mailgun", "new-token", "k", now())
        .await
        .unwrap();
    store
        .inbox_put_many(&[put(10, "pending")], old)
        .await
        .unwrap();

    let retention = InboxRetention {
        finished_before: now() - Duration::days(30),
        rejected_before: now() - Duration::days(7),
        tokens_before: now() - Duration::minutes(11),
        limit: 2,
    };
    // Bounded: at most two of each kind a round.
    let first = store.prune_inbox(&retention).await.unwrap();
    assert_eq!(
        first,
        Pruned {
            finished: 2,
            rejected: 2,
            tokens: 1
        }
    );
    let second = store.prune_inbox(&retention).await.unwrap();
    assert_eq!(
        second,
        Pruned {
            finished: 2,
            rejected: 1,
            tokens: 0
        }
    );
    let third = store.prune_inbox(&retention).await.unwrap();
    assert_eq!(
        third,
        Pruned {
            finished: 1,
            rejected: 0,
            tokens: 0
        }
    );
    assert_eq!(
        store.prune_inbox(&retention).await.unwrap(),
        Pruned::default()
    );
    // What is left: the recent ones, and the old pending one (never pruned).
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!(
        (
            counts.get("ignored"),
            counts.get("rejected"),
            counts.get("pending"),
            counts.get("applied")
        ),
        (Some(&1), Some(&1), Some(&1), None),
        "{counts:?}"
    );
    // The pruned token can be taken again; the recent one is still remembered.
    use tidings_core::store::inbox::TokenClaim;
    assert_eq!(
        store
            .claim_webhook_token("mailgun", "old-token", "other", now())
            .await
            .unwrap(),
        TokenClaim::New
    );
    assert_eq!(
        store
            .claim_webhook_token("mailgun", "new-token", "other", now())
            .await
            .unwrap(),
        TokenClaim::Reused
    );
}

async fn a_webhook_token_is_good_for_one_event(store: Arc<dyn Store>) {
    use tidings_core::store::inbox::TokenClaim;
    let claim = |provider: &'static str, token: &'static str, key: &'static str| {
        let store = store.clone();
        async move {
            store
                .claim_webhook_token(provider, token, key, now())
                .await
                .unwrap()
        }
    };
    assert_eq!(claim("mailgun", "t1", "event-a").await, TokenClaim::New);
    assert_eq!(claim("mailgun", "t1", "event-a").await, TokenClaim::Repeat);
    assert_eq!(claim("mailgun", "t1", "event-b").await, TokenClaim::Reused);
    // Another provider's tokens are its own.
    assert_eq!(claim("other", "t1", "event-b").await, TokenClaim::New);
    // Racing claims of one token with different events: exactly one is new.
    let racers: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_webhook_token("mailgun", "raced", &format!("event-{n}"), now())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut new = 0;
    for racer in racers {
        if racer.await.unwrap() == TokenClaim::New {
            new += 1;
        }
    }
    assert_eq!(new, 1);
}

async fn sent_through_lists_each_deliverys_channel_reference_and_providers(store: Arc<dyn Store>) {
    use tidings_core::store::dispatch::AttemptResult;
    use tidings_core::store::inbox::SentThrough;
    let seed = seed(store.as_ref(), 1).await;
    let message = message_to(&seed, &[Channel::Sms, Channel::Email]);
    store.create_message(&message, now()).await.unwrap();
    let ids = delivery_ids(&message);
    let (sms, email) = (ids[0], ids[1]);
    let partition = PartitionId::of(seed.guardians[0].id, message.partitions);
    let leases = store
        .claim_leases(
            "one",
            &[(message.lane, partition)],
            Duration::minutes(5),
            now(),
        )
        .await
        .unwrap();
    // The SMS: tried through Kannel (no answer yet), then sent through Twilio.
    let later = now() + Duration::minutes(2);
    let seen = store.delivery(sms).await.unwrap().unwrap();
    store
        .start_attempt(&leases[0], &seen, "kannel", "one", later, now())
        .await
        .unwrap();
    let seen = store.delivery(sms).await.unwrap().unwrap();
    store
        .start_attempt(&leases[0], &seen, "twilio", "one", later, now())
        .await
        .unwrap();
    let seen = store.delivery(sms).await.unwrap().unwrap();
    let sent = AttemptResult::Sent {
        provider_ref: "SM1".into(),
    };
    store
        .finish_attempt(&leases[0], &seen, 2, &sent, "one", now())
        .await
        .unwrap();
    let unknown = DeliveryId::new();
    let mut found = store.sent_through(&[sms, email, unknown]).await.unwrap();
    found.sort_by_key(|s| s.channel.as_str());
    assert_eq!(
        found,
        vec![
            SentThrough {
                delivery_id: email,
                channel: Channel::Email,
                provider_ref: None,
                providers: vec![],
            },
            SentThrough {
                delivery_id: sms,
                channel: Channel::Sms,
                provider_ref: Some("SM1".into()),
                providers: vec!["kannel".into(), "twilio".into()],
            },
        ]
    );
}

async fn broken_schema_rules_are_classified_and_named_alike(db: TestDatabase) {
    use tidings_core::store::constraint::{describe, Rule};
    let _migrated = db.store().await;
    let staff = |email: &str| {
        format!(
            "INSERT INTO staff (id, district_id, email, display_name, role, created_at, updated_at) \
             VALUES ('0193a000-0000-7000-8000-000000000001', '0193a000-0000-7000-8000-000000000002', \
             '{email}', 'X', 'teacher', '2026-12-01T08:00:00Z', '2026-12-01T08:00:00Z')"
        )
    };
    match db.try_execute(&staff("LOUD@riverside.example.org")).await {
        Err(StoreError::Violates {
            rule: Rule::Check,
            constraint,
        }) => assert_eq!(
            describe(&constraint),
            Some("a staff email address must be stored lower-cased"),
            "{constraint}"
        ),
        other => panic!("not a CHECK violation: {other:?}"),
    }
    match db.try_execute(&staff("quiet@riverside.example.org")).await {
        Err(StoreError::Violates {
            rule: Rule::ForeignKey,
            ..
        }) => {}
        other => panic!("no such district, yet: {other:?}"),
    }
}

async fn provider_events_apply_with_their_effects_and_are_marked_in_one_round(
    store: Arc<dyn Store>,
) {
    use tidings_core::services::provider_events::{
        apply_provider_events, apply_read_events, ProviderEvent, Round,
    };
    use tidings_core::store::InboxPut;
    let s = store.as_ref();
    let seed = seed(s, 2).await;
    let district = seed.staff.district_id;
    let message = message_to(&seed, &[Channel::Email]);
    s.create_message(&message, now()).await.unwrap();
    let (bouncing, complaining) = (&message.recipients[0], &message.recipients[1]);
    let bounced_address = bouncing.deliveries[0].address.clone().unwrap();
    add_contact(
        s,
        district,
        bouncing.guardian_id,
        Channel::Email,
        &bounced_address,
    )
    .await;
    let dispatcher = Actor::dispatcher("d1");
    for recipient in [bouncing, complaining] {
        let id = recipient.deliveries[0].id;
        for event in [DeliveryEvent::Enqueue, DeliveryEvent::Accepted] {
            tidings_core::store::apply_event(s, id, event, &dispatcher, None, now())
                .await
                .unwrap();
        }
    }
    let event = |delivery_id, event, effect: Option<&str>| {
        serde_json::to_value(ProviderEvent {
            delivery_id,
            event,
            detail: None,
            effect: effect.map(str::to_owned),
            raw: serde_json::Value::Null,
        })
        .unwrap()
    };
    let put = |event_id: &str, payload| InboxPut {
        provider: "sendgrid".into(),
        event_id: event_id.into(),
        payload,
        status: "pending",
        outcome: None,
    };
    let bounce = event(
        bouncing.deliveries[0].id,
        Some(DeliveryEvent::Failed),
        Some("bounced"),
    );
    let complaint = event(complaining.deliveries[0].id, None, Some("complaint"));
    s.inbox_put_many(
        &[
            put("bounce", bounce),
            put("complaint", complaint.clone()),
            put("queued", event(complaining.deliveries[0].id, None, None)),
            put(
                "stranger",
                event(DeliveryId::new(), Some(DeliveryEvent::Delivered), None),
            ),
            put("unreadable", serde_json::json!({ "n": 1 })),
        ],
        now(),
    )
    .await
    .unwrap();

    let read_early = s.inbox_pending(100).await.unwrap();
    let round = apply_provider_events(s, now(), 100).await.unwrap();
    assert_eq!(
        round,
        Round {
            read: 5,
            applied: 2,
            ignored: 3
        }
    );
    let bounced = s
        .delivery(bouncing.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bounced.state, DeliveryState::Failed);
    let events = s.delivery_events(bounced.id).await.unwrap();
    assert_eq!(events.last().unwrap().actor.reference, "sendgrid:bounce");

    let retired = detail_of(s, district, bouncing.guardian_id)
        .await
        .contact_points;
    assert_eq!(retired.len(), 1);
    assert!(!retired[0].active);
    assert_eq!(retired[0].inactive_reason.as_deref(), Some("bounced"));
    let opted_out = |guardian| async move {
        detail_of(s, district, guardian)
            .await
            .opt_outs
            .iter()
            .map(|o| (o.channel, o.source.clone()))
            .collect::<Vec<_>>()
    };
    let complained = vec![(Channel::Email, "complaint".to_owned())];
    assert_eq!(opted_out(complaining.guardian_id).await, complained);
    // The complaint moved nothing: its delivery is where it was.
    let untouched = s
        .delivery(complaining.deliveries[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(untouched.state, DeliveryState::Sent);
    // The events about the district's deliveries (the bounce, the complaint and the
    // no-op) are the district's to keep: its purge counts them; the unknown delivery's
    // and the unreadable one are not.
    let everything = tidings_core::retention::Retention {
        callbacks_days: Some(7),
        ..Default::default()
    }
    .cutoffs(now() + Duration::days(8));
    assert_eq!(
        s.purge_plan(district, &everything).await.unwrap().callbacks,
        3
    );

    // A worker that read the same events before they were marked applies nothing of
    // them: no second event row on the bounced delivery, no mark changed, none counted.
    let marks_before = s.inbox_counts().await.unwrap();
    assert_eq!(
        apply_read_events(s, read_early, now()).await.unwrap(),
        Round {
            read: 5,
            applied: 0,
            ignored: 0
        }
    );
    assert_eq!(s.delivery_events(bounced.id).await.unwrap(), events);
    assert_eq!(s.inbox_counts().await.unwrap(), marks_before);

    // Everything is marked: another round finds nothing, and a second complaint about
    // the guardian is recorded once.
    assert_eq!(apply_provider_events(s, now(), 100).await.unwrap().read, 0);
    s.inbox_put_many(&[put("complaint-again", complaint)], now())
        .await
        .unwrap();
    let again = apply_provider_events(s, now(), 100).await.unwrap();
    assert_eq!((again.read, again.applied), (1, 1));
    assert_eq!(opted_out(complaining.guardian_id).await, complained);
    let counts = s.inbox_counts().await.unwrap();
    assert_eq!(
        (
            counts.get("applied"),
            counts.get("ignored"),
            counts.get("pending")
        ),
        (Some(&3), Some(&3), None)
    );
    let summary = s
        .message_summary(
            &tidings_core::store::MessageScope::District(district),
            message.id,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tally(&summary.counts), tally_by_reading(s, &message).await);
}

async fn a_guardians_text_is_taken_with_what_it_asks_once(store: Arc<dyn Store>) {
    use tidings_core::store::InboundSms;
    let s = store.as_ref();
    // Two guardians of one family share a phone: its texts speak for both.
    let seed = seed(s, 2).await;
    let district = seed.staff.district_id;
    let family: Vec<GuardianId> = seed.guardians.iter().map(|g| g.id).collect();
    let number = "+12025550142";
    for &guardian in &family {
        add_contact(s, district, guardian, Channel::Sms, number).await;
    }
    let message = message_to(&seed, &[Channel::Sms]);
    s.create_message(&message, now()).await.unwrap();
    let sent: Vec<DeliveryId> = message
        .recipients
        .iter()
        .map(|r| r.deliveries[0].id)
        .collect();
    let dispatcher = Actor::dispatcher("d1");
    for &delivery in &sent {
        for event in [DeliveryEvent::Enqueue, DeliveryEvent::Accepted] {
            tidings_core::store::apply_event(s, delivery, event, &dispatcher, None, now())
                .await
                .unwrap();
        }
    }
    let text = |id: &str, keyword| InboundSms {
        provider: "twilio".into(),
        provider_message_id: id.into(),
        from: number.into(),
        to: "+12025550100".into(),
        body: "whatever".into(),
        keyword,
    };
    let actor = Actor::guardian("sms:SM-ack");
    let carrier_opt_outs = || async {
        let mut n = 0;
        for &guardian in &family {
            n += detail_of(s, district, guardian)
                .await
                .opt_outs
                .iter()
                .filter(|o| o.source == "carrier")
                .count();
        }
        n
    };
    let sorted = |mut guardians: Vec<GuardianId>| {
        guardians.sort_by_key(|g| *g.as_uuid());
        guardians
    };

    // STOP: kept with both guardians' carrier opt-outs; the provider's retry of it
    // changes nothing.
    let taken = s
        .take_inbound(&text("SM-stop", Some(SmsKeyword::Stop)), &actor, now())
        .await
        .unwrap()
        .expect("a new text");
    assert_eq!(
        sorted(taken.guardians.iter().map(|(_, g)| *g).collect()),
        sorted(family.clone())
    );
    assert!(taken.guardians.iter().all(|(d, _)| *d == district));
    assert_eq!(carrier_opt_outs().await, 2);
    assert_eq!(
        s.take_inbound(&text("SM-stop", Some(SmsKeyword::Stop)), &actor, now())
            .await
            .unwrap(),
        None
    );
    // START revokes them.
    s.take_inbound(&text("SM-start", Some(SmsKeyword::Start)), &actor, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(carrier_opt_outs().await, 0);

    // The acknowledgment keyword acknowledges each one's waiting message, once.
    let taken = s
        .take_inbound(&text("SM-ack", Some(SmsKeyword::Ack)), &actor, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sorted(taken.acknowledged), sorted(family.clone()));
    for &delivery in &sent {
        let acked = s.delivery(delivery).await.unwrap().unwrap();
        assert_eq!(acked.state, DeliveryState::Acked);
        let events = s.delivery_events(delivery).await.unwrap();
        assert_eq!(events.last().map(|e| &e.actor), Some(&actor));
    }
    let again = s
        .take_inbound(&text("SM-ack-2", Some(SmsKeyword::Ack)), &actor, now())
        .await
        .unwrap()
        .unwrap();
    assert!(again.acknowledged.is_empty(), "nothing is waiting any more");
}

/// Retention as set is read back; a purge's plan counts what is past it; the purge takes
/// a finished old message with everything about its deliveries a bounded batch at a
/// time, old texts and old audit entries past their own retention, and leaves a message
/// still waiting to be sent, recent ones, and what is within retention.
async fn a_purge_takes_what_is_past_retention_in_bounded_batches(store: Arc<dyn Store>) {
    use tidings_core::retention::{Purged, Retention};
    let seed = seed(store.as_ref(), 3).await;
    let district = seed.staff.district_id;
    let s = store.as_ref();
    let long_ago = now() - Duration::days(100);
    let provider = Actor::provider("twilio", "x");
    // An old message all delivered (6 deliveries), an old one still waiting, a recent one.
    let old = message_to(&seed, &[Channel::Sms, Channel::Email]);
    s.create_message(&old, long_ago).await.unwrap();
    for id in delivery_ids(&old) {
        tidings_core::store::apply_event(
            s,
            id,
            DeliveryEvent::Delivered,
            &provider,
            None,
            long_ago,
        )
        .await
        .unwrap();
    }
    let waiting = message_to(&seed, &[Channel::Sms]);
    s.create_message(&waiting, long_ago).await.unwrap();
    let recent = message_to(&seed, &[Channel::Sms]);
    s.create_message(&recent, now()).await.unwrap();
    // A guardian's old text and a recent one; an old audit entry.
    let guardian = seed.guardians[0].id;
    add_contact(s, district, guardian, Channel::Sms, "+15550100777").await;
    for (n, at) in [(1, long_ago), (2, now())] {
        let sms = tidings_core::store::InboundSms {
            provider: "twilio".into(),
            provider_message_id: format!("SM-purge-{n}"),
            from: "+15550100777".into(),
            to: "+15005550006".into(),
            body: "See you at pickup".into(),
            keyword: None,
        };
        s.record_inbound(&sms, at).await.unwrap();
    }
    // Provider reports on the district's deliveries, as the inbox keeps them once
    // applied: two old ones, one recent. The install-wide prune leaves them to the
    // district's retention.
    {
        use tidings_core::store::{InboxApply, InboxEffect, InboxPut};
        let put = |n: usize| InboxPut {
            provider: "sendgrid".into(),
            event_id: format!("report-{n}"),
            payload: serde_json::json!({ "n": n }),
            status: "pending",
            outcome: None,
        };
        s.inbox_put_many(&[put(0), put(1)], long_ago).await.unwrap();
        s.inbox_put_many(&[put(2)], now()).await.unwrap();
        let marks: Vec<_> = s
            .inbox_pending(10)
            .await
            .unwrap()
            .iter()
            .map(|item| InboxApply {
                inbox_id: item.id,
                request: None,
                effect: Some(InboxEffect::OptOut {
                    district,
                    guardian: seed.guardians[0].id,
                    channel: Channel::Email,
                    source: "complaint",
                }),
                district: Some(district),
                status: "applied",
                outcome: "complaint".into(),
            })
            .collect();
        assert_eq!(marks.len(), 3);
        s.apply_inbox_batch(&marks, now()).await.unwrap();
        let pruned = s
            .prune_inbox(&tidings_core::store::inbox::InboxRetention {
                finished_before: now() + Duration::seconds(1),
                rejected_before: now(),
                tokens_before: now(),
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(
            pruned.finished, 0,
            "the district's reports are its own to keep"
        );
    }
    let mut tx = s.begin().await.unwrap();
    tx.audit(
        district,
        &Actor::staff(seed.staff.id),
        "test.old",
        serde_json::json!({}),
        long_ago,
    )
    .await
    .unwrap();
    let retention = Retention {
        messages_days: Some(30),
        replies_days: Some(30),
        callbacks_days: Some(7),
        audit_days: None,
    };
    assert!(tx
        .set_district_retention(district, &retention)
        .await
        .unwrap());
    assert!(!tx
        .set_district_retention(DistrictId::new(), &retention)
        .await
        .unwrap());
    tx.commit().await.unwrap();
    assert_eq!(s.retention(district).await.unwrap(), Some(retention));
    assert_eq!(s.retention(DistrictId::new()).await.unwrap(), None);

    // The audit log keeps its default 730 days: the 100-day-old entry stays.
    let cutoffs = retention.cutoffs(now());
    let planned = Purged {
        messages: 1,
        recipients: 3,
        deliveries: 6,
        replies: 1,
        callbacks: 2,
        audit_entries: 0,
    };
    assert_eq!(s.purge_plan(district, &cutoffs).await.unwrap(), planned);

    // Four rows of deliveries and recipients a batch: its deliveries first, then its
    // recipients, and the message once nothing is left under it.
    let first = s.purge_batch(district, &cutoffs, 4).await.unwrap();
    assert_eq!(
        (
            first.deliveries,
            first.messages,
            first.replies,
            first.callbacks
        ),
        (4, 0, 1, 2)
    );
    let second = s.purge_batch(district, &cutoffs, 4).await.unwrap();
    assert_eq!(
        (second.deliveries, second.recipients, second.messages),
        (2, 2, 0)
    );
    let third = s.purge_batch(district, &cutoffs, 4).await.unwrap();
    assert_eq!(
        (third.deliveries, third.recipients, third.messages),
        (0, 1, 1)
    );
    assert!(s
        .purge_batch(district, &cutoffs, 4)
        .await
        .unwrap()
        .is_empty());
    assert!(s.purge_plan(district, &cutoffs).await.unwrap().is_empty());

    for id in delivery_ids(&old) {
        assert_eq!(s.delivery(id).await.unwrap(), None);
        assert!(s.delivery_events(id).await.unwrap().is_empty());
    }
    let scope = MessageScope::District(district);
    assert!(s.message_summary(&scope, old.id).await.unwrap().is_none());
    for message in [&waiting, &recent] {
        assert!(s
            .message_summary(&scope, message.id)
            .await
            .unwrap()
            .is_some());
        for id in delivery_ids(message) {
            assert!(s.delivery(id).await.unwrap().is_some());
        }
    }
    let texts = s
        .replies(&tidings_core::store::Scope::District(district), None, 10)
        .await
        .unwrap();
    assert_eq!(texts.len(), 1, "the recent text stays");
    let audit = s.audit_entries(district, 100).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "test.old"));
}

/// The purge of the delivery log takes, a bounded batch at a time, only entries older
/// than its retention that the dispatchers have committed past; the rest stays readable.
async fn the_log_keeps_what_a_dispatcher_has_not_finished_with(store: Arc<dyn Store>) {
    let seed = seed(store.as_ref(), 6).await;
    let s = store.as_ref();
    let message = message_to(&seed, &[Channel::Sms]);
    s.create_message(&message, now()).await.unwrap();
    let lane = Lane::Emergency;
    let wanted: Vec<_> = (0..message.partitions)
        .map(|p| (lane, PartitionId::new(p)))
        .collect();
    let leases = s
        .claim_leases("purger", &wanted, Duration::seconds(30), now())
        .await
        .unwrap();
    assert_eq!(leases.len(), wanted.len());
    // Every partition's entries read; all but the last partition with entries committed.
    let mut entries = Vec::new();
    for lease in &leases {
        let read = s
            .read_outbound(lane, lease.partition, None, 100)
            .await
            .unwrap();
        if let Some(last) = read.iter().filter_map(|o| o.offset).max() {
            entries.push((*lease, last, read.len()));
        }
    }
    assert!(entries.len() >= 2, "the guardians spread over partitions");
    let (kept_partition, _, kept) = entries.pop().unwrap();
    let mut committed = 0;
    for (lease, last, count) in &entries {
        s.commit_offset("dispatcher", lease, *last, now())
            .await
            .unwrap();
        committed += count;
    }
    // Nothing is old enough yet.
    assert_eq!(
        s.purge_log(now() - Duration::hours(1), 100).await.unwrap(),
        0
    );
    let mut purged = 0;
    loop {
        let batch = s.purge_log(now() + Duration::seconds(1), 2).await.unwrap();
        assert!(batch <= 2);
        if batch == 0 {
            break;
        }
        purged += batch as usize;
    }
    assert_eq!(purged, committed);
    for (lease, _, _) in &entries {
        let left = s
            .read_outbound(lane, lease.partition, None, 100)
            .await
            .unwrap();
        assert!(left.is_empty());
    }
    let left = s
        .read_outbound(lane, kept_partition.partition, None, 100)
        .await
        .unwrap();
    assert_eq!(left.len(), kept, "not committed past: kept");
}
