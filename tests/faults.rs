//! The fault campaign, at the size CI runs it: the whole pipeline (`tidings bench
//! pipeline`: fan-out, the Twilio adapter over HTTP to the provider sandbox, its signed
//! status callbacks back, acknowledgments) against a provider that fails in every way the
//! sandbox can, on both stores. After each run every delivery is past the queue (sent and
//! waiting for a report that never came, delivered, acknowledged or failed), none was
//! lost, the provider saw a delivery twice only where an attempt was in doubt, and the
//! dead letters are exactly the failed deliveries.

mod support;

/// A third of sends refused before the provider takes them, one in twenty taken and never
/// answered (the sender times out in doubt), callbacks repeated, dropped and reordered,
/// some messages undelivered.
const FAULTS: &str = r#"{"transient":0.3,"in_doubt":0.05,"undelivered":0.05,
    "callback_duplicate":0.3,"callback_drop":0.2,"callback_reorder":0.3,"seed":23}"#;

#[tokio::test]
async fn a_broadcast_survives_a_failing_provider_and_its_unreliable_reports() {
    for store in ["sqlite", "postgres"] {
        let run = support::bench(&[
            "pipeline",
            "--guardians",
            "400",
            "--store",
            store,
            "--faults",
            FAULTS,
        ])
        .await;
        let n = |path: &[&str]| {
            path.iter()
                .fold(&run, |v, k| &v[*k])
                .as_u64()
                .unwrap_or_else(|| panic!("{store}: no {path:?} in {run}"))
        };
        let deliveries = n(&["deliveries"]);
        assert_eq!(n(&["lost"]), 0, "{store}: {run}");
        assert_eq!(
            n(&["states", "CREATED"]) + n(&["states", "QUEUED"]),
            0,
            "{store}: {run}"
        );
        assert_eq!(
            n(&["states", "SENT"])
                + n(&["states", "DELIVERED"])
                + n(&["states", "ACKED"])
                + n(&["states", "FAILED"]),
            deliveries,
            "{store}: {run}"
        );
        // The faults bit: sends were refused and retried, some were in doubt, and some
        // messages were reported undelivered.
        let in_doubt = run["attempts"]["in_doubt"].as_u64().unwrap_or(0);
        assert!(in_doubt > 0, "{store}: {run}");
        assert!(n(&["provider_sends"]) > deliveries, "{store}: {run}");
        assert!(n(&["states", "FAILED"]) > 0, "{store}: {run}");
        assert!(n(&["duplicates"]) <= in_doubt, "{store}: {run}");
        assert_eq!(
            n(&["dead_letters"]),
            n(&["states", "FAILED"]),
            "{store}: {run}"
        );
    }
}
