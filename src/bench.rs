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
