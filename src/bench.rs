//! `tidings bench SUITE`: measured performance, printed as a JSON object on the last line.

use std::time::Instant;

use anyhow::Context;
use tidings_core::roster::synthetic::{write_bundle, SyntheticDistrict};
use tidings_core::roster::{Bundle, ImportOptions};
use tidings_core::secret;
use tidings_core::store::{self, ConnectOptions, FirstAdmin};
use tidings_core::time::now;
use tidings_core::EmailAddress;

/// `tidings bench import --students N`: generates a synthetic district, imports it, then
/// imports it again (the nightly re-import of an unchanged roster).
pub async fn import(students: usize, database_url: Option<&str>) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let bundle_dir = scratch.path().join("bundle");
    std::fs::create_dir(&bundle_dir)?;
    let started = Instant::now();
    let spec = SyntheticDistrict {
        students,
        schools: (students / 500).clamp(1, 200),
        seed: 1,
    };
    let stats = write_bundle(&bundle_dir, &spec)?;
    let generate_seconds = started.elapsed().as_secs_f64();

    let url = match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", scratch.path().join("bench.db").display()),
    };
    let store = store::connect(&url, &ConnectOptions::default()).await?;
    store.migrate().await?;
    let first = FirstAdmin {
        district_name: "Bench".into(),
        email: EmailAddress::parse("bench@bench.example.org")?,
        display_name: "Bench".into(),
        password_hash: secret::hash_password(&secret::generate_password())?,
    };
    let district = match store.bootstrap(&first, now()).await? {
        Some((district, _)) => district.id,
        None => crate::import::choose_district(store.as_ref(), None).await?,
    };
    let bundle = Bundle::open(&bundle_dir)?;
    let options = ImportOptions::default();

    let started = Instant::now();
    let (_, report) = crate::import::run_import(
        store.as_ref(),
        district,
        &bundle,
        "bench",
        &options,
        &|_| {},
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (_, again) = crate::import::run_import(
        store.as_ref(),
        district,
        &bundle,
        "bench again",
        &options,
        &|_| {},
    )
    .await?;
    let reimport_seconds = started.elapsed().as_secs_f64();
    let unchanged: u64 = again.entities.values().map(|c| c.unchanged).sum();

    let rows = stats.total_rows();
    let result = serde_json::json!({
        "suite": "import",
        "store": store.backend(),
        "students": students,
        "users_rows": stats.users,
        "rows": rows,
        "rejected": report.rejected.len(),
        "generate_seconds": round(generate_seconds),
        "seconds": round(seconds),
        "rows_per_s": (rows as f64 / seconds).round(),
        "reimport_seconds": round(reimport_seconds),
        "reimport_unchanged_rows": unchanged,
        "peak_rss_mb": peak_rss_mb().context("reading peak memory")?,
    });
    println!("{result}");
    Ok(())
}

fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mb() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok((kib / 1024.0 * 10.0).round() / 10.0)
}

/// `tidings bench fanout --students N --channels C`: imports a synthetic district, then
/// sends one message to the whole district and times the audience resolution and the
/// atomic write of the message, its deliveries and their log entries.
pub async fn fanout(
    students: usize,
    channels: usize,
    database_url: Option<&str>,
) -> anyhow::Result<()> {
    use std::collections::BTreeSet;
    use tidings_core::fanout::{plan, Draft};
    use tidings_core::store::Scope;
    use tidings_core::{Channel, DeliveryGuarantee, MessageKind};

    let scratch = tempfile::tempdir()?;
    let bundle_dir = scratch.path().join("bundle");
    std::fs::create_dir(&bundle_dir)?;
    let spec = SyntheticDistrict {
        students,
        schools: (students / 500).clamp(1, 200),
        seed: 2,
    };
    write_bundle(&bundle_dir, &spec)?;
    let url = match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}", scratch.path().join("bench.db").display()),
    };
    let store = store::connect(&url, &ConnectOptions::default()).await?;
    store.migrate().await?;
    let first = FirstAdmin {
        district_name: "Bench".into(),
        email: EmailAddress::parse("bench@bench.example.org")?,
        display_name: "Bench".into(),
        password_hash: secret::hash_password(&secret::generate_password())?,
    };
    let (district, admin) = store
        .bootstrap(&first, now())
        .await?
        .context("the benchmark needs an empty database")?;
    let bundle = Bundle::open(&bundle_dir)?;
    crate::import::run_import(
        store.as_ref(),
        district.id,
        &bundle,
        "bench",
        &ImportOptions::default(),
        &|_| {},
    )
    .await?;

    let channels: BTreeSet<Channel> = Channel::ALL
        .iter()
        .copied()
        .take(channels.clamp(1, 3))
        .collect();
    let draft = Draft {
        district_id: district.id,
        author_id: admin.id,
        kind: MessageKind::Emergency,
        channels,
        subject: "Bench".into(),
        body: "Benchmark broadcast.".into(),
        translations: Default::default(),
        requires_ack: true,
        guarantee: DeliveryGuarantee::AtLeastOnce,
        audience: serde_json::json!({"district": true}),
        renotify_of: None,
        scheduled_at: None,
        ack_deadline: None,
    };
    let audience = tidings_core::audience::Audience {
        district: true,
        ..Default::default()
    };
    let started = Instant::now();
    let members = store
        .resolve_audience(&Scope::District(district.id), &audience)
        .await?
        .map_err(|p| anyhow::anyhow!("audience: {p:?}"))?;
    let resolve_seconds = started.elapsed().as_secs_f64();
    let message = plan(
        &draft,
        "en",
        &members,
        tidings_core::log::DEFAULT_PARTITIONS,
        now(),
    );
    let deliveries: usize = message.recipients.iter().map(|r| r.deliveries.len()).sum();
    let write_started = Instant::now();
    store.create_message(&message, now()).await?;
    let write_seconds = write_started.elapsed().as_secs_f64();
    let seconds = started.elapsed().as_secs_f64();
    // The same number of plain rows, written the same way into the same database.
    let raw_seconds = store.measure_raw_insert(deliveries).await?;
    let raw_rows_per_s = deliveries as f64 / raw_seconds;
    let result = serde_json::json!({
        "suite": "fanout",
        "store": store.backend(),
        "guardians": members.len(),
        "deliveries": deliveries,
        "resolve_seconds": round(resolve_seconds),
        "write_seconds": round(write_seconds),
        "seconds": round(seconds),
        "deliveries_per_s": (deliveries as f64 / seconds).round(),
        "raw_insert_seconds": round(raw_seconds),
        "raw_rows_per_s": raw_rows_per_s.round(),
        "ratio_to_raw": round(deliveries as f64 / seconds / raw_rows_per_s),
        "peak_rss_mb": peak_rss_mb()?,
    });
    println!("{result}");
    Ok(())
}
