//! 10,000 random sequences of provider and guardian events — with duplicates and
//! reorderings — applied concurrently by four workers racing on the same deliveries:
//! no delivery ever moves backward, and each ends in the state the pure `next()` gives
//! for its events in the order they were generated (the rule book is order-independent).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use tidings_callbacks::{CallbackConfig, Callbacks};
use tidings_core::delivery::{next, Decision};
use tidings_core::services::provider_events::ProviderEvent;
use tidings_core::store::Store;
use tidings_core::testing::{delivery_ids, message_to, seed, TestDatabase};
use tidings_core::time::now;
use tidings_core::{Channel, DeliveryEvent, DeliveryId, DeliveryState};

const SEQUENCES: usize = 10_000;
const SEED: u64 = 20_261_126;

/// Place on the happy path; terminal states have none.
fn rank(state: DeliveryState) -> Option<u8> {
    use DeliveryState as S;
    match state {
        S::Created => Some(0),
        S::Queued => Some(1),
        S::Sent => Some(2),
        S::Delivered => Some(3),
        S::Acked => Some(4),
        _ => None,
    }
}

fn fold(events: &[DeliveryEvent]) -> DeliveryState {
    events.iter().fold(DeliveryState::Created, |state, &event| {
        match next(state, event) {
            Decision::Move(to) => to,
            Decision::Ignore(_) => state,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_event_sequences_applied_concurrently_never_go_backward() {
    let db = TestDatabase::sqlite();
    let store: Arc<dyn Store> = db.store().await;
    // 2,500 guardians × 2 channels × 2 messages = 10,000 deliveries, all CREATED.
    let seeded = seed(store.as_ref(), SEQUENCES / 4).await;
    let mut deliveries: Vec<DeliveryId> = Vec::new();
    for _ in 0..2 {
        let message = message_to(&seeded, &[Channel::Sms, Channel::Email]);
        store.create_message(&message, now()).await.unwrap();
        deliveries.extend(delivery_ids(&message));
    }
    assert_eq!(deliveries.len(), SEQUENCES);

    let mut rng = StdRng::seed_from_u64(SEED);
    let mut sequences = Vec::with_capacity(SEQUENCES);
    let mut all = Vec::new();
    for (n, id) in deliveries.iter().enumerate() {
        let length = rng.gen_range(1..=6);
        let events: Vec<DeliveryEvent> = (0..length)
            .map(|_| *DeliveryEvent::EXTERNAL.choose(&mut rng).unwrap())
            .collect();
        for (i, event) in events.iter().enumerate() {
            all.push((*id, *event, format!("{n}-{i}")));
            // Providers repeat themselves.
            if rng.gen_bool(0.2) {
                all.push((*id, *event, format!("{n}-{i}-again")));
            }
        }
        sequences.push((*id, events));
    }
    all.shuffle(&mut rng);

    let callbacks = Callbacks::new(store.clone(), CallbackConfig::default());
    // Four workers keep events in the inbox, as the routes do, and apply what is pending:
    // two after each event, two in batches of 50, as the server's worker does.
    let workers: Vec<_> = all
        .chunks(all.len().div_ceil(4))
        .enumerate()
        .map(|(worker, chunk)| {
            let callbacks = callbacks.clone();
            let store = store.clone();
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for (n, (delivery_id, event, event_id)) in chunk.into_iter().enumerate() {
                    let kept = ProviderEvent {
                        delivery_id,
                        event: Some(event),
                        detail: None,
                        effect: None,
                        raw: serde_json::Value::Null,
                    };
                    let payload = serde_json::to_value(&kept).unwrap();
                    store
                        .inbox_put("property", &event_id, &payload, "pending", None, now())
                        .await
                        .unwrap();
                    if worker < 2 || n % 50 == 49 {
                        callbacks.apply_pending().await.unwrap();
                    }
                }
                callbacks.apply_pending().await.unwrap();
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    callbacks.apply_pending().await.unwrap();
    assert_eq!(store.inbox_counts().await.unwrap().get("pending"), None);

    let mut mismatches = Vec::new();
    for (id, events) in &sequences {
        let delivery = store.delivery(*id).await.unwrap().unwrap();
        let expected = fold(events);
        if delivery.state != expected {
            mismatches.push(format!(
                "{id}: {events:?} ended {} not {expected}",
                delivery.state
            ));
        }
        for step in store.delivery_events(*id).await.unwrap() {
            if let (Some(from), Some(to)) = (rank(step.from), rank(step.to)) {
                assert!(
                    to > from,
                    "{id} moved backward: {} -> {} ({events:?})",
                    step.from,
                    step.to
                );
            }
            assert!(
                matches!(
                    next(step.from, DeliveryEvent::Acknowledged),
                    Decision::Move(_)
                ) || rank(step.from).is_some(),
                "{id} left a final state: {} -> {}",
                step.from,
                step.to
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "seed {SEED}: {} of {SEQUENCES}: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}
