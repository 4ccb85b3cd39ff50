//! The fault campaign, at the size CI runs it: the whole pipeline (`tidings bench
//! pipeline`: fan-out, the Twilio adapter over HTTP to the provider sandbox, its signed
//! status callbacks back, acknowledgments) against a provider that fails in every way the
//! sandbox can, a provider down, dispatcher processes killed over and over, PostgreSQL
//! crashed and restarted or turned read-only, and a full disk under SQLite. After each
//! run every delivery is past the queue (sent and waiting for a report that never came,
//! delivered, acknowledged or failed), none was lost, the provider saw a delivery twice
//! only where an attempt was in doubt, no attempt is left at the provider unresolved, and
//! the dead letters are exactly the failed deliveries. `tidings bench pipeline --cycles N`
//! runs the kills at any size (see docs/benchmarks.md for a long run).

mod support;

/// A third of sends refused before the provider takes them, one in twenty taken and never
/// answered (the sender times out in doubt), callbacks repeated, dropped and reordered,
/// some messages undelivered.
const FAULTS: &str = r#"{"transient":0.3,"in_doubt":0.05,"undelivered":0.05,
    "callback_duplicate":0.3,"callback_drop":0.2,"callback_reorder":0.3,"seed":23}"#;

/// Checks what must hold after any run, whatever went wrong during it, and returns the
/// attempts left in doubt.
fn assert_survived(what: &str, run: &serde_json::Value) -> u64 {
    let n = |path: &[&str]| {
        path.iter()
            .fold(run, |v, k| &v[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no {path:?} in {run}"))
    };
    let deliveries = n(&["deliveries"]);
    assert_eq!(n(&["lost"]), 0, "{what}: {run}");
    assert_eq!(
        n(&["states", "CREATED"]) + n(&["states", "QUEUED"]),
        0,
        "{what}: {run}"
    );
    assert_eq!(
        n(&["states", "SENT"])
            + n(&["states", "DELIVERED"])
            + n(&["states", "ACKED"])
            + n(&["states", "FAILED"]),
        deliveries,
        "{what}: {run}"
    );
    let in_doubt = run["attempts"]["in_doubt"].as_u64().unwrap_or(0);
    let duplicates = n(&["duplicates"]) + run["push"]["duplicates"].as_u64().unwrap_or(0);
    assert!(duplicates <= in_doubt, "{what}: {run}");
    // No attempt left at the provider: one whose dispatcher was killed, or could not
    // record the answer, is closed by the provider's report or taken up again.
    assert_eq!(
        run["attempts"]["in_flight"].as_u64().unwrap_or(0),
        0,
        "{what}: {run}"
    );
    assert_eq!(
        n(&["dead_letters"]),
        n(&["states", "FAILED"]),
        "{what}: {run}"
    );
    in_doubt
}

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
        assert_survived(store, &run);
        // The faults bit: sends were refused and retried, some were never answered (in
        // doubt, unless their report came first and closed them), and some messages were
        // reported undelivered.
        assert!(
            run["provider_unanswered"].as_u64() > Some(0),
            "{store}: {run}"
        );
        assert!(
            run["provider_sends"].as_u64() > run["deliveries"].as_u64(),
            "{store}: {run}"
        );
        assert!(run["states"]["FAILED"].as_u64() > Some(0), "{store}: {run}");
    }
}

/// Three `tidings dispatch` processes share a broadcast on PostgreSQL while one of them
/// is killed with SIGKILL ten times, evenly through it, and started again each time.
#[tokio::test]
async fn dispatcher_processes_killed_over_and_over_lose_nothing() {
    let run = support::bench(&[
        "pipeline",
        "--guardians",
        "1200",
        "--store",
        "postgres",
        "--processes",
        "3",
        "--cycles",
        "10",
        "--faults",
        r#"{"transient":0.05,"callback_duplicate":0.2,"callback_reorder":0.2,
            "latency_ms":5,"latency_jitter_ms":20,"seed":31}"#,
    ])
    .await;
    assert_survived("killed", &run);
    assert_eq!(run["kills"], 10, "{run}");
    assert!(run["kills_before_all_sent"].as_u64() > Some(0), "{run}");
    // No undelivered faults: nothing failed for good.
    assert_eq!(run["states"]["FAILED"], 0, "{run}");
}

/// The SMS provider answers every send with 500 for eight seconds: its circuit breaker
/// holds SMS back without spending their attempts, push (another provider) goes out
/// meanwhile, and SMS goes once the provider is back, nothing failed.
#[tokio::test]
async fn a_provider_down_is_waited_for_and_the_others_go_on() {
    for store in ["sqlite", "postgres"] {
        let run = support::bench(&[
            "pipeline",
            "--guardians",
            "600",
            "--channels",
            "2",
            "--store",
            store,
            "--outage-seconds",
            "8",
        ])
        .await;
        assert_survived(store, &run);
        let deliveries = run["deliveries"].as_u64().unwrap();
        let pushed = run["push"]["provider_accepted"].as_u64().unwrap();
        let sms = deliveries - pushed;
        let outage = &run["outage"];
        // Push did not wait for the SMS provider.
        assert!(
            outage["push_seconds_to_all_sent"].as_f64() < Some(8.0),
            "{store}: {run}"
        );
        // The breaker held most of SMS back: far fewer sends refused than SMS to send,
        // where six attempts each would have been spent without it.
        let refused = outage["sms_sends_refused"].as_u64().unwrap();
        assert!(refused > 0 && refused < sms, "{store}: {run}");
        assert_eq!(run["states"]["FAILED"], 0, "{store}: {run}");
        assert_eq!(
            run["provider_accepted"].as_u64(),
            Some(sms),
            "{store}: {run}"
        );
    }
}

/// PostgreSQL crashes (every server process killed at once) and restarts while a
/// broadcast goes out; the dispatcher and the callbacks find it again by themselves.
#[tokio::test]
async fn postgres_crashing_mid_broadcast_loses_nothing() {
    let server = support::OwnPostgres::start();
    server.sql("CREATE DATABASE tidings").await;
    let url = server.url("tidings");
    let run = broadcast(&url, "300");
    // Once some of the broadcast has gone out.
    wait_until_sent(&url, 200).await;
    server.crash_and_restart();
    // The broadcast was still going out when the server came back.
    let sent_by_then = sent(&url).await.unwrap();
    let run = run.finish().await;
    assert_survived("restarted", &run);
    assert!(run["deliveries"].as_i64() > Some(sent_by_then), "{run}");
    assert_eq!(run["states"]["FAILED"], 0, "{run}");
}

/// PostgreSQL turns read-only mid-broadcast (as a server does after failing over to a
/// standby), then writable again.
#[tokio::test]
async fn postgres_read_only_for_a_while_loses_nothing() {
    let server = support::OwnPostgres::start();
    server.sql("CREATE DATABASE tidings").await;
    let url = server.url("tidings");
    let mut run = broadcast(&url, "400");
    wait_until_sent(&url, 200).await;
    server
        .sql("ALTER SYSTEM SET default_transaction_read_only = on")
        .await;
    server.sql("SELECT pg_reload_conf()").await;
    // The writes are refused, and the log says why…
    run.logged("cannot execute").await;
    // …until the database takes writes again.
    server
        .sql("ALTER SYSTEM RESET default_transaction_read_only")
        .await;
    server.sql("SELECT pg_reload_conf()").await;
    let run = run.finish().await;
    assert_survived("read-only", &run);
    assert_eq!(run["states"]["FAILED"], 0, "{run}");
}

/// The disk under an SQLite database fills up mid-broadcast; sending stops with a clear
/// error, and goes on once space is freed; the database is intact afterwards.
#[tokio::test]
async fn a_full_disk_under_sqlite_loses_nothing() {
    // A small file system of its own (tmpfs: the test runs as root, as CI does).
    let disk = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(disk.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let unmount = Unmount(disk.path().to_owned());
    let database = disk.path().join("tidings.db");
    let url = format!("sqlite://{}", database.display());
    let mut run = broadcast(&url, "400");
    wait_until_sent(&url, 200).await;
    // Fill the disk.
    let filler = disk.path().join("filler");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    // The log says why writes fail.
    run.logged("database or disk is full").await;
    std::fs::remove_file(&filler).unwrap();
    let run = run.finish().await;
    assert_survived("disk full", &run);
    assert_eq!(run["states"]["FAILED"], 0, "{run}");
    assert_eq!(support::sqlite_integrity(&url).await, "ok");
    drop(unmount);
}

/// Unmounts a test's file system when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A broadcast to 2,000 guardians through `bench pipeline` on the database at `url`,
/// the SMS provider taking `rate` a second.
fn broadcast(url: &str, rate: &str) -> support::BenchRun {
    support::BenchRun::start(&[
        "pipeline",
        "--guardians",
        "2000",
        "--database-url",
        url,
        "--provider-rate",
        rate,
    ])
}

/// Waits until `count` deliveries of the database at `url` have gone to the provider (the
/// benchmark creates its tables meanwhile: until then the query fails and is asked again).
async fn wait_until_sent(url: &str, count: i64) {
    while !sent(url).await.is_ok_and(|sent| sent >= count) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// How many deliveries of the database at `url` have gone to the provider.
async fn sent(url: &str) -> Result<i64, sqlx::Error> {
    support::count(
        url,
        "SELECT count(*) FROM deliveries WHERE state IN ('SENT', 'DELIVERED', 'ACKED')",
    )
    .await
}
