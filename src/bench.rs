//! `tidings bench SUITE`: measured performance, printed as a JSON object on the last line.

use std::time::Instant;

use anyhow::Context;
use tidings_core::roster::synthetic::{
    write_bundle, write_bundle_with_guardians, SyntheticDistrict,
};
use tidings_core::roster::{Bundle, ImportOptions};
use tidings_core::secret;
use tidings_core::store::{self, ConnectOptions, FirstAdmin};
use tidings_core::time::now;
use tidings_core::EmailAddress;

/// Which database a benchmark runs on.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchDatabase {
    /// `sqlite`: a temporary file; `postgres`: a scratch database created for the run on
    /// the server of `TIDINGS_BENCH_POSTGRES_URL` (default
    /// `postgres://postgres@127.0.0.1:5432/postgres`) and dropped after it.
    #[arg(long, value_enum, default_value_t = BenchStore::Sqlite)]
    pub store: BenchStore,
    /// An empty database to use instead (`sqlite://…` or `postgres://…`); kept afterwards.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStore {
    Sqlite,
    Postgres,
}

/// A scratch PostgreSQL database: the server it is on and its name.
struct ScratchDatabase {
    server: String,
    name: String,
}

impl ScratchDatabase {
    async fn create() -> anyhow::Result<(Self, String)> {
        use sqlx::Connection as _;
        let server = std::env::var("TIDINGS_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let name = format!("tidings_bench_{}_{nanos}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .with_context(|| {
                format!("cannot reach PostgreSQL at {}", store::redact_url(&server))
            })?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let url = store::with_database(&server, &name);
        Ok((Self { server, name }, url))
    }

    async fn drop_it(self) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&self.server).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// A scratch directory holding a synthetic district's bundle, and a migrated store with an
/// empty district to import it into (see [`BenchDatabase`]).
struct Setup {
    scratch: tempfile::TempDir,
    /// Where the database is.
    url: String,
    postgres: Option<ScratchDatabase>,
    store: std::sync::Arc<dyn store::Store>,
    /// The same database, for the raw speed the figures are compared against.
    raw: std::sync::Arc<dyn store::raw_speed::RawSpeed>,
    district: tidings_core::DistrictId,
    admin: tidings_core::StaffId,
    stats: tidings_core::roster::synthetic::BundleStats,
    generate_seconds: f64,
}

impl Setup {
    async fn new(students: usize, seed: u64, database: &BenchDatabase) -> anyhow::Result<Self> {
        Self::sized(students, None, seed, database).await
    }

    /// A district of `students` students and, if given, exactly `guardians` guardians.
    async fn sized(
        students: usize,
        guardians: Option<usize>,
        seed: u64,
        database: &BenchDatabase,
    ) -> anyhow::Result<Self> {
        let scratch = tempfile::tempdir()?;
        std::fs::create_dir(scratch.path().join("bundle"))?;
        let started = Instant::now();
        let spec = SyntheticDistrict {
            students,
            schools: (students / 500).clamp(1, 200),
            seed,
        };
        let stats = match guardians {
            Some(guardians) => {
                write_bundle_with_guardians(&scratch.path().join("bundle"), &spec, guardians)?
            }
            None => write_bundle(&scratch.path().join("bundle"), &spec)?,
        };
        let generate_seconds = started.elapsed().as_secs_f64();
        let (url, postgres) = match (&database.database_url, database.store) {
            (Some(url), _) => (url.clone(), None),
            (None, BenchStore::Sqlite) => (
                format!("sqlite://{}", scratch.path().join("bench.db").display()),
                None,
            ),
            (None, BenchStore::Postgres) => {
                let (scratch, url) = ScratchDatabase::create().await?;
                (url, Some(scratch))
            }
        };
        let store = store::connect(&url, &ConnectOptions::default()).await?;
        store.migrate().await?;
        let raw = store::raw_speed::connect(&url).await?;
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
        Ok(Self {
            scratch,
            url,
            postgres,
            store,
            raw,
            district: district.id,
            admin: admin.id,
            stats,
            generate_seconds,
        })
    }

    fn bundle(&self) -> anyhow::Result<Bundle> {
        Ok(Bundle::open(&self.scratch.path().join("bundle"))?)
    }

    /// Closes the store and drops the scratch database, if there is one.
    async fn finish(self) -> anyhow::Result<()> {
        drop(self.store);
        if let Some(postgres) = self.postgres {
            postgres.drop_it().await?;
        }
        Ok(())
    }

    async fn import(&self, name: &str) -> anyhow::Result<tidings_core::roster::ImportReport> {
        let bundle = self.bundle()?;
        let (_, report) = crate::import::run_import(
            self.store.as_ref(),
            self.district,
            &bundle,
            name,
            &ImportOptions::default(),
            &|_| {},
        )
        .await?;
        Ok(report)
    }
}

impl Setup {
    /// Every guardian of the district, as a send to the whole district resolves them.
    async fn whole_district(&self) -> anyhow::Result<Vec<tidings_core::audience::AudienceMember>> {
        let audience = tidings_core::audience::Audience {
            district: true,
            ..Default::default()
        };
        self.store
            .resolve_audience(&store::Scope::District(self.district), &audience)
            .await?
            .map_err(|p| anyhow::anyhow!("audience: {p:?}"))
    }

    /// A broadcast by the district's administrator to the whole district.
    fn draft(
        &self,
        kind: tidings_core::MessageKind,
        channels: std::collections::BTreeSet<tidings_core::Channel>,
        requires_ack: bool,
    ) -> tidings_core::fanout::Draft {
        tidings_core::fanout::Draft {
            district_id: self.district,
            author_id: self.admin,
            kind,
            channels,
            subject: "Bench".into(),
            body: "Benchmark broadcast.".into(),
            translations: Default::default(),
            requires_ack,
            guarantee: tidings_core::DeliveryGuarantee::AtLeastOnce,
            audience: serde_json::json!({"district": true}),
            renotify_of: None,
            scheduled_at: None,
            ack_deadline: None,
            fallback_after: None,
        }
    }
}

/// The deliveries of `message` that go to a provider (not suppressed at the fan-out).
fn sendable(
    message: &tidings_core::store::NewMessage,
) -> impl Iterator<Item = &tidings_core::fanout::NewDelivery> {
    message
        .recipients
        .iter()
        .flat_map(|r| &r.deliveries)
        .filter(|d| d.suppressed_reason.is_none())
}

/// The public address Twilio's status callbacks are signed for in the benchmarks, and the
/// auth token they are signed with.
const BENCH_PUBLIC_URL: &str = "https://tidings.bench.example";
const BENCH_TWILIO_TOKEN: &str = "bench-twilio-token";
const BENCH_TWILIO_SID: &str = "AC00000000000000000000000000bench";
const BENCH_TWILIO_FROM: &str = "+15005550006";

/// The callbacks of a benchmark's process, on loopback until `stopping`: their address,
/// the worker applying what they keep, and the server.
async fn serve_callbacks(
    store: std::sync::Arc<dyn store::Store>,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let callbacks = tidings_callbacks::Callbacks::new(
        store,
        tidings_callbacks::CallbackConfig {
            public_url: Some(BENCH_PUBLIC_URL.into()),
            twilio_auth_token: Some(BENCH_TWILIO_TOKEN.into()),
            ..Default::default()
        },
    );
    let applying = tokio::spawn(callbacks.clone().run(stopping.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let mut http_stopping = stopping.clone();
    let serving = tokio::spawn(tidings_api::serve(
        listener,
        callbacks.router(),
        async move {
            let _ = http_stopping.wait_for(|s| *s).await;
        },
    ));
    Ok((address, applying, serving))
}

/// A provider sandbox over HTTP on loopback until `stopping`: its address and the server.
async fn serve_sandbox(
    provider: &tidings_sandbox::InProcessProvider,
    config: tidings_sandbox::server::SandboxConfig,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let mut stopping = stopping.clone();
    let serving = tokio::spawn(tidings_sandbox::server::serve(
        listener,
        provider.clone(),
        config,
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        },
    ));
    Ok((address, serving))
}

/// The value at percentile `p` (0 to 1) of `sorted`, NaN when it is empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// `tidings bench import --students N`: generates a synthetic district, imports it, then
/// imports it again (the nightly re-import of an unchanged roster).
pub async fn import(students: usize, database: &BenchDatabase) -> anyhow::Result<()> {
    let setup = Setup::new(students, 1, database).await?;
    let (store, stats, generate_seconds) = (&setup.store, &setup.stats, setup.generate_seconds);
    let started = Instant::now();
    let report = setup.import("bench").await?;
    let seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let again = setup.import("bench again").await?;
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
    setup.finish().await
}

fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Starts the peak resident set (VmHWM) over from the current one (Linux: `clear_refs`
/// value 5); where that is refused, the peak stays the whole process's.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
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

/// `tidings bench fanout --students N --channels C`: imports a synthetic district of N
/// students and exactly N guardians (so `--guardians N` means what it says), then
/// sends one message to the whole district and times the audience resolution and the
/// atomic write of the message, its deliveries and their log entries.
pub async fn fanout(
    students: usize,
    channels: usize,
    database: &BenchDatabase,
) -> anyhow::Result<()> {
    use std::collections::BTreeSet;
    use tidings_core::store::Scope;
    use tidings_core::{Channel, MessageKind};

    // `--guardians N` (the same flag as `--students N`) means N of each, exactly.
    let setup = Setup::sized(students, Some(students), 2, database).await?;
    setup.import("bench").await?;
    let store = &setup.store;
    let district_id = setup.district;
    let channels: BTreeSet<Channel> = Channel::ALL
        .iter()
        .copied()
        .take(channels.clamp(1, 3))
        .collect();
    let draft = setup.draft(MessageKind::Emergency, channels, true);
    let audience = tidings_core::audience::Audience {
        district: true,
        ..Default::default()
    };
    // As the API sends: resolved, planned and written a chunk of guardians at a time, in
    // one transaction.
    let header = tidings_core::fanout::header(&draft, tidings_core::log::DEFAULT_PARTITIONS);
    let started = now();
    let plan = move |members: &[tidings_core::audience::AudienceMember]| {
        tidings_core::fanout::recipients(&draft, "en", members, started)
    };
    // The send's own peak, apart from generating and importing the district.
    reset_peak_rss();
    let timer = Instant::now();
    let summary = store
        .send_message(
            &header,
            &Scope::District(district_id),
            &audience,
            None,
            &plan,
            store::SEND_CHUNK,
            now(),
        )
        .await?
        .map_err(|refusal| anyhow::anyhow!("the message was refused: {refusal:?}"))?;
    let seconds = timer.elapsed().as_secs_f64();
    let send_peak_rss_mb = peak_rss_mb()?;
    let deliveries = summary.deliveries;
    // The same number of plain rows, written the same way into the same database.
    let raw_seconds = setup.raw.measure_raw_insert(deliveries).await?;
    let raw_rows_per_s = deliveries as f64 / raw_seconds;
    let result = serde_json::json!({
        "suite": "fanout",
        "store": store.backend(),
        "guardians": summary.recipients,
        "deliveries": deliveries,
        "seconds": round(seconds),
        "deliveries_per_s": (deliveries as f64 / seconds).round(),
        "raw_insert_seconds": round(raw_seconds),
        "raw_rows_per_s": raw_rows_per_s.round(),
        "ratio_to_raw": round(deliveries as f64 / seconds / raw_rows_per_s),
        "send_peak_rss_mb": send_peak_rss_mb,
        "peak_rss_mb": peak_rss_mb()?,
    });
    println!("{result}");
    setup.finish().await
}

/// What `bench dispatch` sends, and with how many dispatchers.
#[derive(Debug, Clone)]
pub struct DispatchShape {
    pub deliveries: usize,
    pub processes: usize,
    pub in_flight: u32,
    pub batch: u32,
    /// The broadcast is scheduled ahead: it goes out as deliveries coming due.
    pub scheduled: bool,
}

/// How far ahead `bench dispatch --scheduled` schedules its broadcast.
const SCHEDULED_AHEAD: std::time::Duration = std::time::Duration::from_secs(3);

/// `tidings bench dispatch --deliveries N [--processes K] [--scheduled]`: a broadcast of N
/// deliveries drained by K dispatchers into the in-process sandbox (zero latency), with a
/// neighbouring district's alert written a tenth of the way in; then 200 single alerts
/// sent one at a time to the idle dispatchers, each timed from the commit of its fan-out
/// to the provider call.
pub async fn dispatch(shape: &DispatchShape, database: &BenchDatabase) -> anyhow::Result<()> {
    let DispatchShape {
        deliveries,
        processes,
        in_flight,
        batch,
        scheduled,
    } = *shape;
    use std::collections::{BTreeSet, HashMap};
    use tidings_core::fanout::{plan, Draft};
    use tidings_core::{Channel, MessageKind};
    use tidings_dispatcher::{Adapters, Config, Dispatcher};

    let setup = Setup::new(deliveries.div_ceil(2), 3, database).await?;
    setup.import("bench").await?;
    let store = setup.store.clone();
    let members = setup.whole_district().await?;
    let draft = |members: usize| Draft {
        audience: serde_json::json!({ "guardians": members }),
        ..setup.draft(
            MessageKind::Emergency,
            BTreeSet::from([Channel::Sms, Channel::Email]),
            true,
        )
    };
    let partitions = tidings_core::log::DEFAULT_PARTITIONS;
    let send_at = scheduled.then(|| now() + SCHEDULED_AHEAD);
    let broadcast = plan(
        &Draft {
            scheduled_at: send_at,
            ..draft(members.len())
        },
        "en",
        &members,
        partitions,
        now(),
    );
    let to_send = sendable(&broadcast).count();
    store.create_message(&broadcast, now()).await?;
    // The dispatcher's time, not the time to copy the broadcast's journal into the
    // database file (SQLite), which a send leaves to the background.
    store.settle().await?;
    // A neighbouring district's alert, written while the broadcast is going out: it is in
    // the same lane, behind the whole broadcast on every partition.
    let (neighbour_district, neighbour_author, neighbours) =
        neighbour_district(store.as_ref(), NEIGHBOURS).await?;
    let neighbour = plan(
        &Draft {
            district_id: neighbour_district,
            author_id: neighbour_author,
            channels: BTreeSet::from([Channel::Sms]),
            ..draft(neighbours.len())
        },
        "en",
        &neighbours,
        partitions,
        now(),
    );
    let neighbour_ids: std::collections::HashSet<_> = sendable(&neighbour).map(|d| d.id).collect();
    let mut neighbour_at = None;

    let sandbox = tidings_sandbox::InProcessProvider::default();
    let adapters = Channel::ALL
        .iter()
        .fold(Adapters::default(), |a, &c| a.with(c, sandbox.adapter(c)));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    // Timed from when the broadcast may go.
    let started = Instant::now()
        + send_at
            .and_then(|at| (at - now()).to_std().ok())
            .unwrap_or_default();
    let running: Vec<_> = (0..processes.max(1))
        .map(|_| {
            let config = Config {
                max_in_flight: in_flight,
                batch,
                ..Config::default()
            };
            let dispatcher = Dispatcher::new(store.clone(), adapters.clone(), config);
            let stopping = stopping.clone();
            tokio::spawn(async move { dispatcher.run(stopping).await })
        })
        .collect();
    // Lag: entries on the log not yet committed, summed over partitions, every 100 ms.
    let mut max_lag = 0;
    let mut sampled = Instant::now();
    while sandbox.received_count() < to_send + neighbour_ids.len() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if neighbour_at.is_none() && sandbox.received_count() >= to_send / 10 {
            store.create_message(&neighbour, now()).await?;
            neighbour_at = Some(now());
        }
        if sampled.elapsed() >= std::time::Duration::from_millis(100) {
            let lag = total_lag(store.as_ref()).await?;
            max_lag = max_lag.max(lag);
            sampled = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    // Pickup on idle dispatchers: one alert to one guardian at a time.
    let mut committed_at = HashMap::new();
    for member in members.iter().filter(|m| !m.contacts.is_empty()).take(200) {
        let alert = plan(
            &draft(1),
            "en",
            std::slice::from_ref(member),
            partitions,
            now(),
        );
        let expected = sandbox.received_count() + sendable(&alert).count();
        store.create_message(&alert, now()).await?;
        let at = now();
        for d in alert.recipients.iter().flat_map(|r| &r.deliveries) {
            committed_at.insert(d.id, at);
        }
        while sandbox.received_count() < expected {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.send(true)?;
    for r in running {
        r.await??;
    }
    let lag_after = total_lag(store.as_ref()).await?;
    // When the neighbour's last text went, and how much of the broadcast had gone by then.
    let received = sandbox.received();
    let neighbour_last = received
        .iter()
        .rposition(|r| r.delivery_id.is_some_and(|d| neighbour_ids.contains(&d)));
    let neighbour_ms = neighbour_last
        .zip(neighbour_at)
        .and_then(|(i, at)| (received[i].at - at).num_microseconds())
        .map_or(f64::NAN, |us| us as f64 / 1000.0);
    let broadcast_sent_by_then = neighbour_last.map_or(0, |i| i + 1 - neighbour_ids.len());
    let mut pickups: Vec<f64> = received
        .iter()
        .filter_map(|r| {
            let at = committed_at.get(&r.delivery_id?)?;
            Some((r.at - *at).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    pickups.sort_by(f64::total_cmp);
    let percentile = |p: f64| percentile(&pickups, p);
    let outcomes = store.attempt_outcomes().await?;
    let result = serde_json::json!({
        "suite": "dispatch",
        "store": store.backend(),
        "processes": processes.max(1),
        "in_flight": in_flight,
        "batch": batch,
        "scheduled": scheduled,
        "deliveries": to_send,
        "seconds": round(seconds),
        "deliveries_per_s": (to_send as f64 / seconds).round(),
        "idle_pickups": pickups.len(),
        "pickup_ms_p50": round(percentile(0.50)),
        "pickup_ms_p95": round(percentile(0.95)),
        "pickup_ms_p99": round(percentile(0.99)),
        "duplicates": sandbox.duplicates(),
        "max_lag": max_lag,
        "neighbour_alert": {
            "guardians": neighbour_ids.len(),
            "last_send_ms": round(neighbour_ms),
            "broadcast_sent_by_then_pct": round(100.0 * broadcast_sent_by_then as f64 / to_send.max(1) as f64),
        },
        "lag_after": lag_after,
        "attempts": outcomes,
        "peak_rss_mb": peak_rss_mb()?,
    });
    println!("{result}");
    setup.finish().await
}

/// Sends `message` as it would go out — a dispatcher hands every delivery to the
/// in-process sandbox — and has one recipient in ten acknowledge it, so that the pages
/// read a broadcast with its events rather than an untouched one. How many were sent and
/// acknowledged.
async fn go_out(
    state: &tidings_api::AppState,
    district: tidings_core::DistrictId,
    message: tidings_core::MessageId,
) -> anyhow::Result<(usize, usize)> {
    use tidings_core::services::acknowledge::AckVia;
    use tidings_core::Channel;
    use tidings_dispatcher::{Adapters, Config, Dispatcher};

    let sandbox = tidings_sandbox::InProcessProvider::default();
    let adapters = Channel::ALL
        .iter()
        .fold(Adapters::default(), |a, &c| a.with(c, sandbox.adapter(c)));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let dispatcher = Dispatcher::new(state.store.clone(), adapters, Config::default());
    let running = tokio::spawn(async move { dispatcher.run(stopping).await });
    // Waits while the log drains; a dispatcher that stopped, or sent nothing for a
    // minute, ends the benchmark with why rather than leaving it waiting for ever.
    const STALLED: std::time::Duration = std::time::Duration::from_secs(60);
    let mut least = (i64::MAX, Instant::now());
    loop {
        let lag = total_lag(state.store.as_ref()).await?;
        if lag == 0 {
            break;
        }
        if running.is_finished() {
            running.await??;
            anyhow::bail!("the dispatcher stopped with {lag} entries left on the log");
        }
        if lag < least.0 {
            least = (lag, Instant::now());
        } else if least.1.elapsed() > STALLED {
            anyhow::bail!(
                "the dispatcher sent nothing for {} s with {lag} entries left on the log",
                STALLED.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    stop.send(true)?;
    running.await??;
    let scope = tidings_core::store::MessageScope::District(district);
    let (mut after, mut acknowledged) = (None, 0);
    loop {
        let page = state
            .store
            .recipients(&scope, message, None, after, 500)
            .await?
            .context("the benchmark's message")?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for recipient in page.iter().step_by(10) {
            state
                .services()
                .acknowledge(
                    tidings_core::RecipientId::from_uuid(recipient.id),
                    AckVia::Link(Channel::Sms),
                )
                .await?;
            acknowledged += 1;
        }
    }
    Ok((sandbox.received_count(), acknowledged))
}

/// Guardians of the neighbouring district in `bench dispatch`.
const NEIGHBOURS: usize = 100;

/// A second district with an administrator and `guardians` guardians, each with a phone
/// (the in-process sandbox takes any number): its id, the administrator's, the guardians
/// as an audience.
async fn neighbour_district(
    store: &dyn tidings_core::store::Store,
    guardians: usize,
) -> anyhow::Result<(
    tidings_core::DistrictId,
    tidings_core::StaffId,
    Vec<tidings_core::audience::AudienceMember>,
)> {
    use tidings_core::audience::{AudienceMember, MemberContact};
    use tidings_core::store::{NewGuardian, NewStaff};
    let at = now();
    let district = store.create_district("Neighbour", at).await?;
    let staff = NewStaff {
        district_id: district.id,
        email: EmailAddress::parse("admin@neighbour.example.org")?,
        display_name: "Neighbour".into(),
        role: tidings_core::Role::DistrictAdmin,
        password_hash: None,
    };
    let author = store.create_staff(&staff, at).await?;
    let mut members = Vec::with_capacity(guardians);
    for i in 0..guardians {
        let guardian = NewGuardian {
            district_id: district.id,
            given_name: format!("Neighbour{i}"),
            family_name: "Bench".into(),
            preferred_language: None,
            sourced_id: None,
        };
        let guardian = store.create_guardian(&guardian, at).await?;
        members.push(AudienceMember {
            guardian_id: *guardian.id.as_uuid(),
            preferred_language: None,
            contacts: vec![MemberContact {
                id: *tidings_core::ContactPointId::new().as_uuid(),
                kind: tidings_core::Channel::Sms,
                address: format!("+1555{i:07}"),
            }],
            opt_outs: Vec::new(),
            quiet: None,
        });
    }
    Ok((district.id, author.id, members))
}

/// Entries on the delivery log the dispatchers have not committed yet.
async fn total_lag(store: &dyn tidings_core::store::Store) -> anyhow::Result<i64> {
    let partitions = store
        .watch_partitions(tidings_dispatcher::CONSUMER_GROUP, now())
        .await?;
    Ok(partitions.iter().map(|p| p.waiting).sum())
}

/// `tidings bench callbacks`: a synthetic district gets one SMS broadcast; then every
/// delivery's "delivered" report is posted as a signed Twilio status callback over HTTP to
/// the callbacks of this process, which keep each in the inbox before answering and apply
/// it through the state machine. Compared with the raw single-row CAS UPDATE rate of the
/// same database, measured in the same run.
pub async fn callbacks(
    students: usize,
    concurrency: usize,
    database: &BenchDatabase,
) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    use std::collections::BTreeSet;
    use tidings_core::fanout::plan;
    use tidings_core::{Channel, MessageKind};

    let setup = Setup::new(students, 4, database).await?;
    setup.import("bench").await?;
    let store = setup.store.clone();
    let members = setup.whole_district().await?;
    let draft = setup.draft(
        MessageKind::Emergency,
        BTreeSet::from([Channel::Sms]),
        false,
    );
    let broadcast = plan(
        &draft,
        "en",
        &members,
        tidings_core::log::DEFAULT_PARTITIONS,
        now(),
    );
    store.create_message(&broadcast, now()).await?;
    let ids: Vec<String> = sendable(&broadcast).map(|d| d.id.to_string()).collect();

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (address, applying, serving) = serve_callbacks(store.clone(), &stopping).await?;

    let client = reqwest::Client::new();
    let started = Instant::now();
    let answers: Vec<u16> = futures_util::stream::iter(ids.iter().enumerate())
        .map(|(n, id)| {
            let client = client.clone();
            async move {
                let path = format!("/callbacks/twilio/status?delivery={id}");
                let form = vec![
                    (
                        "AccountSid".to_owned(),
                        "AC00000000000000000000000000bench".to_owned(),
                    ),
                    ("MessageSid".to_owned(), format!("SM{n:032x}")),
                    ("MessageStatus".to_owned(), "delivered".to_owned()),
                ];
                let signature = tidings_channel_adapters::twilio::signature(
                    BENCH_TWILIO_TOKEN,
                    &format!("{BENCH_PUBLIC_URL}{path}"),
                    &form,
                );
                client
                    .post(format!("http://{address}{path}"))
                    .header("X-Twilio-Signature", signature)
                    .form(&form)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let answered_seconds = started.elapsed().as_secs_f64();
    let refused = answers.iter().filter(|s| **s != 204).count();
    anyhow::ensure!(refused == 0, "{refused} callbacks were not accepted");
    loop {
        let counts = store.inbox_counts().await?;
        if counts.get("pending").copied().unwrap_or(0) == 0
            && counts.get("applied").copied().unwrap_or(0) as usize >= ids.len()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = applying.await;
    let _ = serving.await;

    let raw_seconds = setup.raw.measure_raw_cas(ids.len()).await?;
    let applied_per_s = ids.len() as f64 / seconds;
    let raw_per_s = ids.len() as f64 / raw_seconds;
    let report = serde_json::json!({
        "suite": "callbacks",
        "store": store.backend(),
        "callbacks": ids.len(),
        "concurrency": concurrency,
        "answered_seconds": round(answered_seconds),
        "answered_per_s": (ids.len() as f64 / answered_seconds).round(),
        "seconds": round(seconds),
        "applied_per_s": applied_per_s.round(),
        "raw_cas_seconds": round(raw_seconds),
        "raw_cas_per_s": raw_per_s.round(),
        "ratio_to_raw": round(applied_per_s / raw_per_s),
    });
    println!("{report}");
    setup.finish().await
}

/// `tidings bench pages --students N`: the web admin's server time per page (request
/// sent to response read, over loopback) for a district of N students with one message
/// to all of it, as a district administrator sees it.
pub async fn pages(
    students: usize,
    samples: usize,
    database: &BenchDatabase,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    use tidings_core::services::accounts::SESSION_NAME;
    use tidings_core::services::send::SendMessage;
    use tidings_core::store::{PageRequest, Scope};

    let setup = Setup::new(students, 5, database).await?;
    setup.import("bench").await?;
    let store = setup.store.clone();
    let clock: Arc<dyn tidings_core::clock::Clock> = Arc::new(tidings_core::clock::SystemClock);
    let state = tidings_api::AppState {
        store: store.clone(),
        default_phone_region: "US".into(),
        partitions: tidings_core::log::DEFAULT_PARTITIONS,
        link_keys: Arc::new(tidings_core::link::LinkKeys::generate()),
        codes: None,
        sign_ins: tidings_api::guardian::sign_in_limiter(clock.clone()),
        trusted_proxies: Arc::from(Vec::new()),
        roster_max_delete_percent: 10,
        clock,
        web_push_key: None,
    };
    let admin = store
        .staff_by_email(&EmailAddress::parse("bench@bench.example.org")?)
        .await?
        .context("the benchmark's administrator")?;
    // One message to the whole district, as the report pages show it.
    let request = SendMessage {
        audience: tidings_core::audience::Audience {
            district: true,
            ..Default::default()
        },
        channels: vec!["sms".into(), "email".into()],
        kind: "general".into(),
        subject: "Bench".into(),
        body: "The web admin's benchmark message.".into(),
        translations: Default::default(),
        requires_ack: true,
        delivery: None,
        scheduled_at: None,
        ack_deadline: None,
        fallback_after_minutes: None,
    };
    let kept = tidings_api::idempotency::words::<tidings_core::services::send::Sent>(
        axum::http::StatusCode::CREATED,
    );
    let message = match state
        .services()
        .send_message(&admin, request, None, &kept)
        .await?
    {
        tidings_core::services::Reply::Done(sent) => sent.id,
        tidings_core::services::Reply::Replayed(_) => anyhow::bail!("a fresh send replayed"),
    };
    let (sent, acknowledged) = go_out(&state, setup.district, message).await?;
    // A web session, as signing in makes.
    let session = secret::ApiToken::generate();
    let mut tx = store.begin().await?;
    tx.create_token(
        session.id,
        &admin,
        SESSION_NAME,
        &session.secret_hash(),
        now(),
        Some(now() + chrono::Duration::hours(1)),
    )
    .await?;
    tx.commit().await?;
    let cookie = format!("{}={}", tidings_web_admin::SESSION_COOKIE, session.reveal());

    // Rows to open: the first school, class, student and guardian, and one recipient.
    let scope = Scope::District(setup.district);
    let first = PageRequest {
        limit: 1,
        ..PageRequest::default()
    };
    let school = store.schools(&scope, &first).await?.remove(0);
    let class = store.classes(&scope, &first).await?.remove(0);
    let student = store.students(&scope, &first).await?.remove(0);
    let guardian = store.guardians(&scope, &first).await?.remove(0);
    let recipient = store
        .recipients(
            &tidings_core::store::MessageScope::District(setup.district),
            message,
            None,
            None,
            1,
        )
        .await?
        .and_then(|r| r.into_iter().next())
        .context("a recipient")?;
    let pages = [
        ("messages", "/".to_owned()),
        ("compose", "/messages/new".to_owned()),
        ("report", format!("/messages/{message}")),
        ("report, everyone", format!("/messages/{message}?show=all")),
        (
            "recipient timeline",
            format!("/messages/{message}/recipients/{}", recipient.id),
        ),
        ("schools", "/schools".to_owned()),
        ("school", format!("/schools/{}", school.id)),
        ("class", format!("/classes/{}", class.id)),
        ("students", "/students".to_owned()),
        ("students, searched", "/students?q=an".to_owned()),
        ("student", format!("/students/{}", student.id)),
        ("guardians", "/guardians".to_owned()),
        ("guardians, searched", "/guardians?q=an".to_owned()),
        ("guardian", format!("/guardians/{}", guardian.id)),
        ("dead letters", "/dead-letters".to_owned()),
        ("audit log", "/audit".to_owned()),
        ("staff", "/staff".to_owned()),
        ("settings", "/settings".to_owned()),
        ("API tokens", "/tokens".to_owned()),
        ("imports", "/imports".to_owned()),
        ("districts", "/districts".to_owned()),
    ];

    let web = tidings_web_admin::Web::new(false, None, None, state.clock.clone());
    let router = tidings_api::router(state.clone()).merge(tidings_web_admin::router(state, web));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let mut figures = Vec::new();
    let mut slow = Vec::new();
    for (name, path) in pages {
        let mut times = Vec::with_capacity(samples);
        let mut status = 0;
        let mut bytes = 0;
        // Two unmeasured requests first: connections and caches warm, as in use.
        for round in 0..samples + 2 {
            let timer = Instant::now();
            let response = client
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            status = response.status().as_u16();
            bytes = response.bytes().await?.len();
            if round >= 2 {
                times.push(timer.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let (p50, p95) = (at(0.5), at(0.95));
        if p95 >= 200.0 || status != 200 {
            slow.push(name);
        }
        figures.push(serde_json::json!({
            "page": name,
            "status": status,
            "bytes": bytes,
            "p50_ms": (p50 * 10.0).round() / 10.0,
            "p95_ms": (p95 * 10.0).round() / 10.0,
            "max_ms": (times[times.len() - 1] * 10.0).round() / 10.0,
        }));
    }
    server.abort();
    let result = serde_json::json!({
        "suite": "pages",
        "store": store.backend(),
        "students": students,
        "guardians": setup.stats.guardians,
        "samples": samples,
        "message": { "sent": sent, "acknowledged": acknowledged },
        "pages": figures,
        "over_200ms_or_failed": slow,
        "peak_rss_mb": peak_rss_mb()?,
    });
    println!("{result}");
    setup.finish().await
}

/// What `bench pipeline` sends, and how.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineShape {
    /// District size in guardians (one SMS delivery each, but for those without a
    /// number).
    #[arg(long, default_value_t = 10_000)]
    pub guardians: usize,
    /// Channels per guardian: 1, SMS through Twilio's API; 2, SMS and push (every
    /// guardian's phone has the app) through FCM's API, each on its own sandbox.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub channels: u8,
    /// Push alone: every guardian's phone has the app, and the broadcast goes to it only.
    #[arg(long, conflicts_with = "channels")]
    pub push_only: bool,
    /// Dispatchers as `tidings dispatch` processes of their own on the same database, as
    /// a district scaling out runs them; unset: one dispatcher inside this process.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub processes: Option<u32>,
    /// Kill a dispatcher process with SIGKILL this many times, evenly through the
    /// broadcast (each time another 1/(N+1) of it is past the queue), each process in
    /// turn, and start it again at once: a crash in the middle of sends, over and over.
    /// Their leases last 2 s, so a killed process's partitions go to the others soon.
    #[arg(long, default_value_t = 0, requires = "processes")]
    pub cycles: u32,
    /// The SMS provider is down for this many seconds from the start of the broadcast:
    /// every send is answered 500. Push (with `--channels 2`) goes on; SMS's circuit
    /// breaker opens and holds its sends without spending their attempts until the
    /// provider answers again.
    #[arg(long)]
    pub outage_seconds: Option<f64>,
    /// The provider's faults: `none`, `flaky` (refusals, sends never answered, repeated
    /// and reordered reports, undelivered messages, slow answers) or a JSON object of the
    /// sandbox's faults.
    #[arg(long, default_value = "none")]
    pub faults: String,
    /// The Twilio account's rate in sends a second, enforced by the sandbox (429 above
    /// it) and configured on the adapter; unset: unlimited.
    #[arg(long)]
    pub provider_rate: Option<u32>,
    /// A rate in sends a second above which the sandbox refuses SMS with 429 and
    /// `Retry-After: 1`, not configured on the adapter: a provider throttling an account
    /// whose rate Tidings was not told.
    #[arg(long)]
    pub throttle_at: Option<u32>,
    /// Share of the recipients the provider reached who acknowledge (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub ack_share: f64,
}

/// `bench pipeline`'s retry schedule, in seconds after each failed attempt.
const PIPELINE_RETRIES_S: [u64; 6] = [0, 1, 2, 4, 8, 16];

/// The sandbox faults a `--faults` profile names.
fn pipeline_faults(profile: &str) -> anyhow::Result<tidings_sandbox::Faults> {
    let faults = match profile {
        "none" => tidings_sandbox::Faults::default(),
        // Sends refused now and then, a few never answered, reports repeated and out of
        // order, some messages undelivered, and answers taking their time.
        "flaky" => tidings_sandbox::Faults {
            transient: 0.02,
            in_doubt: 0.005,
            undelivered: 0.02,
            callback_duplicate: 0.1,
            callback_reorder: 0.1,
            latency_ms: 5,
            latency_jitter_ms: 20,
            seed: 7,
            ..Default::default()
        },
        json => serde_json::from_str(json).with_context(|| {
            format!("--faults: none, flaky, or a JSON object of faults, not {json}")
        })?,
    };
    if let Some(problem) = faults.problem() {
        anyhow::bail!("--faults: {problem}");
    }
    Ok(faults)
}

/// The rate at which a provider took `received` (in order): over all of it, and
/// sustained — between the tenth and the ninetieth percentile of send times, leaving out
/// the first burst and the tail of retries waiting for their time.
fn send_rates(received: &[tidings_sandbox::Received]) -> (f64, f64) {
    let seconds = |a: &tidings_sandbox::Received, b: &tidings_sandbox::Received| {
        ((b.at - a.at).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.001)
    };
    let achieved = match (received.first(), received.last()) {
        (Some(a), Some(b)) => received.len() as f64 / seconds(a, b),
        _ => 0.0,
    };
    let (from, to) = (received.len() / 10, received.len() * 9 / 10);
    let sustained = match (received.get(from), received.get(to)) {
        (Some(a), Some(b)) if to > from => (to - from) as f64 / seconds(a, b),
        _ => achieved,
    };
    (achieved, sustained)
}

/// p50, p95 and p99 of `values` (milliseconds), sorted here.
fn percentiles(mut values: Vec<f64>) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| match percentile(&values, p) {
        v if v.is_nan() => serde_json::Value::Null,
        v => round(v).into(),
    };
    serde_json::json!({ "n": values.len(), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99) })
}

/// The dispatchers of a `bench pipeline` run.
enum Dispatching {
    InProcess(tokio::task::JoinHandle<Result<(), tidings_dispatcher::DispatchError>>),
    Processes(DispatchProcesses),
}

impl Dispatching {
    /// An error if a dispatcher stopped by itself.
    fn check(&mut self) -> anyhow::Result<()> {
        match self {
            Dispatching::InProcess(running) => {
                anyhow::ensure!(!running.is_finished(), "the dispatcher stopped");
                Ok(())
            }
            Dispatching::Processes(processes) => processes.check(),
        }
    }

    /// Waits for the dispatchers to stop (`stop` has been sent to one in this process;
    /// processes are sent SIGTERM).
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Dispatching::InProcess(running) => Ok(running.await??),
            Dispatching::Processes(processes) => processes.stop().await,
        }
    }
}

/// `tidings dispatch` processes on the benchmark's database, configured by environment,
/// their logs (stderr) appended to one file.
struct DispatchProcesses {
    env: Vec<(&'static str, String)>,
    log: std::path::PathBuf,
    children: Vec<tokio::process::Child>,
    /// The next to be killed.
    next: usize,
}

impl DispatchProcesses {
    fn start(
        count: u32,
        env: Vec<(&'static str, String)>,
        log: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        let mut processes = Self {
            env,
            log,
            children: Vec::new(),
            next: 0,
        };
        for _ in 0..count {
            let child = processes.spawn()?;
            processes.children.push(child);
        }
        Ok(processes)
    }

    fn spawn(&self) -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TIDINGS_") {
                command.env_remove(key);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("dispatch")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        command
            .spawn()
            .context("cannot start a `tidings dispatch` process")
    }

    /// SIGKILL to the next process in turn, and a new one in its place.
    async fn kill_next(&mut self) -> anyhow::Result<()> {
        let at = self.next % self.children.len();
        self.next += 1;
        let child = &mut self.children[at];
        child.start_kill()?;
        child.wait().await?;
        self.children[at] = self.spawn()?;
        Ok(())
    }

    /// An error, with the end of their log, if a process exited by itself.
    fn check(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "a dispatcher process exited ({status}); the end of their log:\n{}",
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM to each, and each must stop cleanly.
    async fn stop(mut self) -> anyhow::Result<()> {
        for child in &self.children {
            if let Some(pid) = child.id() {
                std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()?;
            }
        }
        for child in &mut self.children {
            let status = child.wait().await?;
            anyhow::ensure!(
                status.success(),
                "a dispatcher process stopped with {status}; the end of their log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }
}

/// `tidings bench pipeline --guardians N`: the whole path over HTTP. A synthetic district
/// of N guardians gets one SMS broadcast (fan-out timed); K dispatchers send it through
/// the Twilio adapter to the provider sandbox (Twilio's API on loopback, with `--faults`
/// and `--provider-rate` enforced as a provider would, 429 above it); the sandbox posts
/// its signed status callbacks back to this process's callbacks, which keep and apply
/// them; then a share of the recipients acknowledge. Prints the time to all SENT and to
/// all DELIVERED, deliveries per second, p50/p95/p99 of each stage (from the deliveries'
/// events), duplicates at the provider, deliveries lost (never taken by the provider nor
/// failed visibly as a dead letter: must be 0), the
/// share of the provider's rate achieved with its 429s, and the peak resident set.
pub async fn pipeline(shape: &PipelineShape, database: &BenchDatabase) -> anyhow::Result<()> {
    use std::collections::{BTreeSet, HashMap};
    use tidings_core::fanout::plan;
    use tidings_core::{Channel, DeliveryState, MessageKind};
    use tidings_dispatcher::{Adapters, Config, Dispatcher};

    anyhow::ensure!(
        (0.0..=1.0).contains(&shape.ack_share),
        "--ack-share is between 0 and 1"
    );
    let faults = pipeline_faults(&shape.faults)?;
    reset_peak_rss();
    let setup = Setup::sized(shape.guardians, Some(shape.guardians), 5, database).await?;
    setup.import("bench").await?;
    let store = setup.store.clone();

    // The callbacks of this process, where the sandbox posts its reports.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (callbacks_at, applying, serving) = serve_callbacks(store.clone(), &stopping).await?;
    // The provider: Twilio's API on loopback, calling back to the callbacks above.
    let mut provider = tidings_sandbox::InProcessProvider::new(faults);
    let account_rate = shape.throttle_at.or(shape.provider_rate);
    if let Some(rate) = account_rate.and_then(std::num::NonZeroU32::new) {
        provider = provider.with_account_rate(rate);
    }
    let sandbox_config = tidings_sandbox::server::SandboxConfig {
        twilio_auth_token: BENCH_TWILIO_TOKEN.into(),
        callback_base: Some(format!("http://{callbacks_at}")),
        hang: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let (sandbox_at, sandbox) = serve_sandbox(&provider, sandbox_config.clone(), &stopping).await?;
    // Push: FCM's API on a sandbox of its own (its faults, no account rate), every
    // guardian's phone registered as the app does it.
    let push_provider = tidings_sandbox::InProcessProvider::new(faults);
    let push = if shape.channels >= 2 || shape.push_only {
        let at = now();
        let mut tx = store.begin().await?;
        for member in setup.whole_district().await? {
            let guardian = tidings_core::GuardianId::from_uuid(member.guardian_id);
            let token = format!("bench-device-{}", member.guardian_id.simple());
            tx.register_device(
                setup.district,
                guardian,
                tidings_core::PushPlatform::Fcm,
                &token,
                at,
            )
            .await?;
        }
        tx.commit().await?;
        let (push_at, serving) = serve_sandbox(&push_provider, sandbox_config, &stopping).await?;
        let service_account = tidings_sandbox::server::fcm_service_account(&push_at);
        let fcm =
            tidings_channel_adapters::fcm::Fcm::new(tidings_channel_adapters::fcm::FcmConfig {
                account: tidings_channel_adapters::fcm::Fcm::service_account(&service_account)?,
                api_base: push_at.clone(),
                timeouts: tidings_channel_adapters::http::Timeouts {
                    request: std::time::Duration::from_secs(1),
                    ..Default::default()
                },
                max_per_second: None,
                concurrency: 16,
                clock: std::sync::Arc::new(tidings_core::clock::SystemClock),
            })?;
        Some((
            tidings_channel_adapters::push::Push::new(None, Some(fcm), None),
            serving,
            (push_at, service_account),
        ))
    } else {
        None
    };
    let twilio = tidings_channel_adapters::twilio::Twilio::new(
        tidings_channel_adapters::twilio::TwilioConfig {
            account_sid: BENCH_TWILIO_SID.into(),
            api_key_sid: None,
            secret: BENCH_TWILIO_TOKEN.into(),
            from: Some(BENCH_TWILIO_FROM.into()),
            messaging_service_sid: None,
            api_base: sandbox_at.clone(),
            status_callback: Some(format!("{BENCH_PUBLIC_URL}/callbacks/twilio/status")),
            timeouts: tidings_channel_adapters::http::Timeouts {
                request: std::time::Duration::from_secs(1),
                ..Default::default()
            },
            max_per_second: shape.provider_rate.and_then(std::num::NonZeroU32::new),
            concurrency: 8,
        },
    )?;
    let mut adapters = Adapters::default().with(Channel::Sms, std::sync::Arc::new(twilio));
    let mut channels = if shape.push_only {
        BTreeSet::new()
    } else {
        BTreeSet::from([Channel::Sms])
    };
    let (push_serving, fcm_at) = match push {
        Some((Some(adapter), serving, fcm_at)) => {
            adapters = adapters.with(Channel::Push, std::sync::Arc::new(adapter));
            channels.insert(Channel::Push);
            (Some(serving), Some(fcm_at))
        }
        _ => (None, None),
    };

    // The broadcast, as a send writes it.
    let members = setup.whole_district().await?;
    let draft = setup.draft(MessageKind::General, channels, true);
    let started = Instant::now();
    let broadcast = plan(
        &draft,
        "en",
        &members,
        tidings_core::log::DEFAULT_PARTITIONS,
        now(),
    );
    store.create_message(&broadcast, now()).await?;
    let fanout_seconds = started.elapsed().as_secs_f64();
    let ids: Vec<tidings_core::DeliveryId> = sendable(&broadcast).map(|d| d.id).collect();
    let message = broadcast.id;

    // Retries within seconds rather than the production schedule's minutes, so that a
    // run measures the pipeline, not the waits of its retry schedule.
    let retry = tidings_dispatcher::RetryPolicy {
        schedule: PIPELINE_RETRIES_S
            .iter()
            .map(|&s| std::time::Duration::from_secs(s))
            .collect(),
    };
    let mut dispatching = match shape.processes {
        None => {
            // The breaker's pauses in seconds too (production: 30 s, doubling to 5 min).
            let breaker = tidings_dispatcher::BreakerPolicy {
                pause: std::time::Duration::from_secs(1),
                max_pause: std::time::Duration::from_secs(8),
                ..Default::default()
            };
            // An attempt whose outcome could not be written (the database went away
            // mid-call) is taken up again after 5 s, not the production 2 minutes: the
            // calls time out after 1 s, and a run that waits minutes reads as stalled.
            let config = Config {
                retry,
                breaker,
                in_doubt_after: std::time::Duration::from_secs(5),
                ..Config::default()
            };
            let dispatcher = Dispatcher::new(store.clone(), adapters.clone(), config);
            let stopping = stopping.clone();
            Dispatching::InProcess(tokio::spawn(async move { dispatcher.run(stopping).await }))
        }
        Some(count) => {
            let mut env = vec![
                ("TIDINGS_DATABASE_URL", setup.url.clone()),
                ("TIDINGS_LOG", "warn".into()),
                (
                    "TIDINGS_LINK_KEYS",
                    tidings_core::link::LinkKeys::generate().to_file_text(),
                ),
                ("TIDINGS_PUBLIC_URL", BENCH_PUBLIC_URL.into()),
                ("TIDINGS_RETRY_SCHEDULE", format!("{PIPELINE_RETRIES_S:?}")),
                ("TIDINGS_TWILIO__ACCOUNT_SID", BENCH_TWILIO_SID.into()),
                ("TIDINGS_TWILIO__FROM", BENCH_TWILIO_FROM.into()),
                ("TIDINGS_TWILIO__API_BASE", sandbox_at.clone()),
                ("TIDINGS_TWILIO__TIMEOUT_SECONDS", "1".into()),
                ("TIDINGS_TWILIO_AUTH_TOKEN", BENCH_TWILIO_TOKEN.into()),
            ];
            if let Some(rate) = shape.provider_rate {
                env.push(("TIDINGS_TWILIO__MAX_PER_SECOND", rate.to_string()));
            }
            if let Some((api_base, service_account)) = &fcm_at {
                env.push(("TIDINGS_FCM__API_BASE", api_base.clone()));
                env.push(("TIDINGS_FCM__TIMEOUT_SECONDS", "1".into()));
                env.push(("TIDINGS_FCM_SERVICE_ACCOUNT", service_account.clone()));
            }
            if shape.cycles > 0 {
                // A killed process's partitions move on after 2 s, and its retries in
                // flight are taken up again after 5 s (the calls time out after 1 s).
                env.push(("TIDINGS_LEASE_SECONDS", "2".into()));
                env.push(("TIDINGS_IN_DOUBT_SECONDS", "5".into()));
            }
            let log = setup.scratch.path().join("dispatchers.log");
            Dispatching::Processes(DispatchProcesses::start(count, env, log)?)
        }
    };
    // The SMS provider down from the start, for `--outage-seconds`.
    let outage = shape
        .outage_seconds
        .map(std::time::Duration::try_from_secs_f64)
        .transpose()
        .context("--outage-seconds: a number of seconds")?;
    if outage.is_some() {
        provider.set_faults(tidings_sandbox::Faults {
            transient: 1.0,
            ..faults
        });
    }
    let (mut outage_refused, mut push_all_sent) = (None, None);
    let push_deliveries = sendable(&broadcast)
        .filter(|d| d.channel == Channel::Push)
        .count();
    let (mut kills, mut kills_before_all_sent) = (0u32, 0u32);

    // Until every delivery is past SENT, then until every report the provider will send
    // has been sent and applied; a stall of a minute ends the run with why.
    const STALLED: std::time::Duration = std::time::Duration::from_secs(60);
    let scope = tidings_core::store::MessageScope::District(setup.district);
    let counts = |counts: &[tidings_core::store::DeliveryCount]| {
        let mut by: HashMap<DeliveryState, u64> = HashMap::new();
        for c in counts {
            *by.entry(c.state).or_default() += c.count.max(0) as u64;
        }
        by
    };
    let (mut all_sent, mut progress) = (None, (0u64, Instant::now()));
    let mut database_errors = 0u64;
    let all_reported = loop {
        dispatching.check()?;
        if outage.is_some_and(|o| started.elapsed() >= o) && outage_refused.is_none() {
            outage_refused = Some(provider.sends());
            provider.set_faults(faults);
        }
        if push_all_sent.is_none() && push_provider.received_count() >= push_deliveries {
            push_all_sent = Some(started.elapsed().as_secs_f64());
        }
        // The database may be away for a while (restarted, full, read-only): the run
        // waits for it as the dispatchers do, within the stall limit below.
        let looked = async {
            let report = store.message_summary(&scope, message).await?;
            let inbox = store.inbox_counts().await?;
            Ok::<_, tidings_core::store::StoreError>((report, inbox))
        }
        .await;
        let (report, inbox) = match looked {
            Ok((report, inbox)) => (report.context("the benchmark's message")?, inbox),
            Err(error) => {
                database_errors += 1;
                if progress.1.elapsed() > STALLED {
                    return Err(error).context("the database stayed unreachable");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let by = counts(&report.counts);
        let waiting = by.get(&DeliveryState::Created).copied().unwrap_or(0)
            + by.get(&DeliveryState::Queued).copied().unwrap_or(0);
        let settled = ids.len() as u64 - waiting;
        if let Dispatching::Processes(processes) = &mut dispatching {
            let due = (u64::from(kills) + 1) * ids.len() as u64 / (u64::from(shape.cycles) + 1);
            if kills < shape.cycles && settled >= due {
                processes.kill_next().await?;
                kills += 1;
                kills_before_all_sent += u32::from(waiting > 0);
            }
        }
        if waiting == 0 && all_sent.is_none() {
            all_sent = Some(started.elapsed().as_secs_f64());
        }
        let accepted = provider.received_count() as u64;
        if all_sent.is_some()
            && kills >= shape.cycles
            && outage_refused.is_some() == outage.is_some()
            && provider.reports_finished() >= accepted
            && inbox.get("pending").copied().unwrap_or(0) == 0
        {
            break started.elapsed().as_secs_f64();
        }
        let moved = settled + provider.reports_finished();
        if moved > progress.0 {
            progress = (moved, Instant::now());
        } else if progress.1.elapsed() > STALLED {
            // What the log looked like when it stopped: entries waiting per partition and
            // whether a live lease holds it, and the deliveries due by district and lane.
            let now = tidings_core::time::now();
            let partitions = store
                .watch_partitions(tidings_core::log::CONSUMER_GROUP, now)
                .await
                .map(|all| {
                    all.iter()
                        .filter(|p| p.waiting > 0 || !p.held)
                        .map(|p| {
                            format!(
                                "{}/{}: {} waiting, held {}",
                                p.lane, p.partition, p.waiting, p.held
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_else(|e| e.to_string());
            let due = store
                .due_counts(now, 10_000)
                .await
                .map(|all| format!("{all:?}"))
                .unwrap_or_else(|e| e.to_string());
            anyhow::bail!(
                "nothing moved for {} s: {waiting} deliveries not sent ({by:?}), {} of {accepted} reports sent; \
                 partitions waiting or unheld: [{partitions}]; due now: {due}",
                STALLED.as_secs(),
                provider.reports_finished()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let all_sent = all_sent.unwrap_or(all_reported);

    // What the providers took, and what they never took that did not fail visibly either.
    let received = provider.received();
    let pushed = push_provider.received();
    let sent_ids: std::collections::HashSet<_> = received
        .iter()
        .chain(&pushed)
        .filter_map(|r| r.delivery_id)
        .collect();
    // Lost: never taken by the provider, and not a dead letter staff can see either.
    let never_sent: Vec<_> = ids
        .iter()
        .filter(|id| !sent_ids.contains(id))
        .copied()
        .collect();
    let dead = store
        .deliveries_by_ids(&never_sent)
        .await?
        .iter()
        .filter(|d| d.state == DeliveryState::Failed)
        .count();
    let lost = never_sent.len() - dead;

    // A share of the recipients the provider reached acknowledge, as the link page
    // records it.
    let acking = Instant::now();
    let via = tidings_core::services::acknowledge::AckVia::Link(Channel::Sms);
    let reached: Vec<_> = broadcast
        .recipients
        .iter()
        .filter(|r| r.deliveries.iter().any(|d| sent_ids.contains(&d.id)))
        .collect();
    let mut acknowledged = 0usize;
    if shape.ack_share > 0.0 {
        let every = (1.0 / shape.ack_share).round().max(1.0) as usize;
        for recipient in reached.iter().step_by(every) {
            store
                .acknowledge(*recipient.id.as_uuid(), via.channel(), &via.actor(), now())
                .await?;
            acknowledged += 1;
        }
    }
    let ack_seconds = acking.elapsed().as_secs_f64();
    stop.send(true)?;
    dispatching.stop().await?;
    let _ = applying.await;
    serving.await??;
    sandbox.await??;
    if let Some(serving) = push_serving {
        serving.await??;
    }

    // Stages, from the events of a sample of the deliveries.
    let step = (ids.len() / 2_000).max(1);
    let (mut to_sent, mut to_delivered, mut to_acked) = (Vec::new(), Vec::new(), Vec::new());
    let sample: Vec<_> = ids.iter().step_by(step).copied().collect();
    let created: HashMap<_, _> = store
        .deliveries_by_ids(&sample)
        .await?
        .into_iter()
        .map(|d| (d.id, d.created_at))
        .collect();
    for id in &sample {
        let events = store.delivery_events(*id).await?;
        let entered = |state| events.iter().find(|e| e.to == state).map(|e| e.at);
        let ms = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
            (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0
        };
        let (sent, delivered, acked) = (
            entered(DeliveryState::Sent),
            entered(DeliveryState::Delivered),
            entered(DeliveryState::Acked),
        );
        if let (Some(created), Some(sent)) = (created.get(id), sent) {
            to_sent.push(ms(*created, sent));
        }
        if let (Some(sent), Some(delivered)) = (sent, delivered) {
            to_delivered.push(ms(sent, delivered));
        }
        if let (Some(delivered), Some(acked)) = (delivered, acked) {
            to_acked.push(ms(delivered, acked));
        }
    }
    let report = store
        .message_summary(&scope, message)
        .await?
        .context("the benchmark's message")?;
    let by = counts(&report.counts);
    let attempts = store.attempt_outcomes().await?;
    let dead_letters: u64 = store
        .dead_letter_counts()
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();
    let (achieved, sustained) = send_rates(&received);
    let push = (shape.channels >= 2 || shape.push_only).then(|| {
        let (achieved, sustained) = send_rates(&pushed);
        serde_json::json!({
            "provider_sends": push_provider.sends(),
            "provider_accepted": pushed.len(),
            "duplicates": push_provider.duplicates(),
            "achieved_per_s": achieved.round(),
            "sustained_per_s": sustained.round(),
        })
    });
    let result = serde_json::json!({
        "suite": "pipeline",
        "store": store.backend(),
        "guardians": shape.guardians,
        "channels": if shape.push_only { serde_json::json!("push") } else { shape.channels.into() },
        "processes": shape.processes,
        "kills": kills,
        "kills_before_all_sent": kills_before_all_sent,
        "outage": outage.map(|o| serde_json::json!({
            "seconds": o.as_secs_f64(),
            "sms_sends_refused": outage_refused,
            "push_seconds_to_all_sent": push_all_sent.map(round),
        })),
        "database_errors_seen": database_errors,
        "faults": faults,
        "provider_rate": shape.provider_rate,
        "retry_schedule_s": PIPELINE_RETRIES_S,
        "deliveries": ids.len(),
        "fanout_seconds": round(fanout_seconds),
        "seconds_to_all_sent": round(all_sent),
        "seconds_to_all_reported": round(all_reported),
        "deliveries_per_s": (ids.len() as f64 / all_sent).round(),
        "states": {
            "CREATED": by.get(&DeliveryState::Created).copied().unwrap_or(0),
            "QUEUED": by.get(&DeliveryState::Queued).copied().unwrap_or(0),
            "SENT": by.get(&DeliveryState::Sent).copied().unwrap_or(0),
            "DELIVERED": by.get(&DeliveryState::Delivered).copied().unwrap_or(0),
            "ACKED": by.get(&DeliveryState::Acked).copied().unwrap_or(0),
            "FAILED": by.get(&DeliveryState::Failed).copied().unwrap_or(0),
        },
        "stage_ms": {
            "created_to_sent": percentiles(to_sent),
            "sent_to_delivered": percentiles(to_delivered),
            "delivered_to_acked": percentiles(to_acked),
        },
        "acknowledged": acknowledged,
        "ack_seconds": round(ack_seconds),
        "provider_sends": provider.sends(),
        "provider_accepted": received.len(),
        "provider_unanswered": provider.unanswered(),
        "duplicates": provider.duplicates(),
        "lost": lost,
        "attempts": attempts,
        "dead_letters": dead_letters,
        "provider_rate_achieved_per_s": achieved.round(),
        "provider_rate_sustained_per_s": sustained.round(),
        "throttle_at": shape.throttle_at,
        "provider_rate_share": account_rate.map(|r| round(sustained / f64::from(r.max(1)))),
        "provider_429s": provider.over_rate(),
        "push": push,
        "peak_rss_mb": peak_rss_mb()?,
    });
    println!("{result}");
    setup.finish().await
}

/// What `bench purge` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct PurgeShape {
    /// District size in guardians: each broadcast goes to every one (an SMS each, but for
    /// those without a number).
    #[arg(long, default_value_t = 100_000)]
    pub guardians: usize,
    /// Broadcasts to the whole district written 100 days ago (and recalled, so finished),
    /// past a retention of 30 days: what the purge takes away.
    #[arg(long, default_value_t = 10)]
    pub old_broadcasts: usize,
}

/// `tidings bench purge --guardians N --old-broadcasts K`: a district whose retention is
/// 30 days holds K finished broadcasts of 100 days ago (about K × N deliveries). A new
/// broadcast to the district is sent alone (one dispatcher, the in-process sandbox),
/// then another while the purge (the product's, as `tidings purge` runs it) takes the
/// old ones away. Prints both broadcasts' deliveries per second, the purge's deliveries
/// per second over its whole run and while the broadcast drained, and what it took.
pub async fn purge(shape: &PurgeShape, database: &BenchDatabase) -> anyhow::Result<()> {
    use std::collections::BTreeSet;
    use tidings_core::delivery::Actor;
    use tidings_core::fanout::plan;
    use tidings_core::retention::Retention;
    use tidings_core::services::retention::PurgePace;
    use tidings_core::{Channel, MessageKind};
    use tidings_dispatcher::{Adapters, Config, Dispatcher};

    reset_peak_rss();
    let setup = Setup::sized(shape.guardians, Some(shape.guardians), 11, database).await?;
    setup.import("bench").await?;
    let store = setup.store.clone();
    let members = setup.whole_district().await?;
    let draft = setup.draft(MessageKind::General, BTreeSet::from([Channel::Sms]), true);
    let partitions = tidings_core::log::DEFAULT_PARTITIONS;
    let long_ago = now() - chrono::Duration::days(100);
    let staff = Actor::staff(setup.admin);
    let scope = tidings_core::store::MessageScope::District(setup.district);
    let writing = Instant::now();
    let mut old_deliveries = 0;
    for _ in 0..shape.old_broadcasts {
        let old = plan(&draft, "en", &members, partitions, long_ago);
        old_deliveries += old
            .recipients
            .iter()
            .map(|r| r.deliveries.len())
            .sum::<usize>();
        store.create_message(&old, long_ago).await?;
        store
            .cancel_message(&scope, old.id, &staff, long_ago)
            .await?;
    }
    let write_seconds = writing.elapsed().as_secs_f64();
    let mut tx = store.begin().await?;
    let retention = Retention {
        messages_days: Some(30),
        ..Default::default()
    };
    tx.set_district_retention(setup.district, &retention)
        .await?;
    tx.commit().await?;

    let sandbox = tidings_sandbox::InProcessProvider::default();
    let adapters = Adapters::default().with(Channel::Sms, sandbox.adapter(Channel::Sms));
    // The old broadcasts' log entries read off (recalled: nothing to send), untimed.
    Dispatcher::new(store.clone(), adapters.clone(), Config::default())
        .run_until_idle()
        .await?;
    store.settle().await?;

    // One broadcast to the district, drained by one dispatcher; its seconds.
    let broadcast = |sandbox: tidings_sandbox::InProcessProvider| {
        let (store, adapters, members, draft) = (
            store.clone(),
            adapters.clone(),
            members.clone(),
            draft.clone(),
        );
        async move {
            let message = plan(&draft, "en", &members, partitions, now());
            let to_send = sendable(&message).count() + sandbox.received_count();
            let started = Instant::now();
            store.create_message(&message, now()).await?;
            let (stop, stopping) = tokio::sync::watch::channel(false);
            let dispatcher = Dispatcher::new(store.clone(), adapters, Config::default());
            let running = tokio::spawn(async move { dispatcher.run(stopping).await });
            while sandbox.received_count() < to_send {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let seconds = started.elapsed().as_secs_f64();
            stop.send(true)?;
            running.await??;
            anyhow::Ok((sendable(&message).count(), seconds))
        }
    };
    let (sent_alone, alone_seconds) = broadcast(sandbox.clone()).await?;

    let services = tidings_core::services::Services {
        store: store.clone(),
        clock: std::sync::Arc::new(tidings_core::clock::SystemClock),
        partitions,
        default_phone_region: "US".into(),
        link_keys: std::sync::Arc::new(tidings_core::link::LinkKeys::generate()),
    };
    let district = setup.district;
    let purging = tokio::spawn(async move {
        let started = Instant::now();
        let report = services
            .purge(
                &Actor::system("bench"),
                district,
                false,
                PurgePace::default(),
            )
            .await?;
        anyhow::Ok((report, started.elapsed().as_secs_f64()))
    });
    let (sent_beside, beside_seconds) = broadcast(sandbox.clone()).await?;
    // What the purge had taken when the broadcast was out.
    let left = store
        .purge_plan(district, &retention.cutoffs(now()))
        .await?;
    let (report, purge_seconds) = purging.await??;
    let purged_while_sending = old_deliveries as u64 - left.deliveries;

    let result = serde_json::json!({
        "suite": "purge",
        "store": store.backend(),
        "guardians": shape.guardians,
        "old_broadcasts": shape.old_broadcasts,
        "old_deliveries": old_deliveries,
        "old_write_seconds": round(write_seconds),
        "broadcast_alone": {
            "deliveries": sent_alone,
            "seconds": round(alone_seconds),
            "deliveries_per_s": (sent_alone as f64 / alone_seconds).round(),
        },
        "broadcast_beside_purge": {
            "deliveries": sent_beside,
            "seconds": round(beside_seconds),
            "deliveries_per_s": (sent_beside as f64 / beside_seconds).round(),
        },
        "broadcast_rate_share": round(alone_seconds / beside_seconds),
        "purge": {
            "purged": report.purged,
            "batches": report.batches,
            "seconds": round(purge_seconds),
            "deliveries_per_s": (report.purged.deliveries as f64 / purge_seconds).round(),
            "deliveries_while_the_broadcast_drained": purged_while_sending,
            "deliveries_per_s_while_the_broadcast_drained":
                (purged_while_sending as f64 / beside_seconds).round(),
        },
        "duplicates": sandbox.duplicates(),
        "peak_rss_mb": peak_rss_mb()?,
    });
    println!("{result}");
    setup.finish().await
}
