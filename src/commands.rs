//! What each CLI command does.

use std::sync::Arc;

use anyhow::Context;
use tidings_channel_adapters::webpush::VapidKey;
use tidings_core::delivery::Actor;
use tidings_core::link::LinkKeys;
use tidings_core::secret;
use tidings_core::services::districts::Operator;
use tidings_core::services::{Refusal, ServiceError, Services};
use tidings_core::store::{self, ConnectOptions, FirstAdmin, Store};
use tidings_core::time::now;
use tidings_core::EmailAddress;

use crate::Config;

/// Opens the configured database, applying migrations when asked to.
pub async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Arc<dyn Store>> {
    let options = ConnectOptions {
        max_connections: config.database_max_connections,
    };
    let store = store::connect(&config.database_url, &options).await?;
    if migrate {
        store
            .migrate()
            .await
            .with_context(|| format!("migrating {}", config.database_url_redacted()))?;
    }
    Ok(store)
}

/// `tidings migrate`.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config, true).await?;
    let readiness = store.readiness().await?;
    println!(
        "{} migrations applied to {}",
        readiness.applied_migrations,
        config.database_url_redacted()
    );
    Ok(())
}

/// `tidings backup FILE`: an online backup of the SQLite database (`VACUUM INTO`: one read
/// transaction, so writers go on and the copy is a consistent snapshot, compacted).
pub async fn backup(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    use std::str::FromStr as _;
    if tidings_core::store::Backend::of_url(&config.database_url)?
        != tidings_core::store::Backend::Sqlite
    {
        anyhow::bail!(
            "tidings backup copies an SQLite database; back PostgreSQL up with pg_dump \
             (see the README's Backups and restore)"
        );
    }
    if file.exists() {
        anyhow::bail!(
            "{} exists already: a backup never overwrites",
            file.display()
        );
    }
    let target = file
        .to_str()
        .context("the backup's path is not valid UTF-8")?;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&config.database_url)?
        .busy_timeout(std::time::Duration::from_secs(30));
    let mut db = sqlx::SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("cannot open {}", config.database_url_redacted()))?;
    sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(&mut db)
        .await
        .with_context(|| format!("cannot back up to {}", file.display()))?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    println!(
        "backed up {} to {} ({size} bytes)",
        config.database_url_redacted(),
        file.display()
    );
    Ok(())
}

/// `tidings serve`: everything in one process, until SIGTERM or Ctrl-C.
pub async fn serve(
    config: &Config,
    demo: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    let readiness = store.readiness().await?;
    if !readiness.is_ready() {
        anyhow::bail!(
            "the database has {} of {} migrations applied: run `tidings migrate` first",
            readiness.applied_migrations,
            readiness.expected_migrations
        );
    }
    bootstrap(config, store.as_ref()).await?;
    let link_keys = link_keys(config, store.as_ref()).await?;
    let web_push_key = web_push_key(config, store.as_ref()).await?;
    if demo {
        let district = crate::import::choose_district(store.as_ref(), None).await?;
        if let Some(report) = crate::import::load_demo(store.as_ref(), district).await? {
            let students = report.entities.get("students").map_or(0, |c| c.created);
            println!("Loaded the demo district: {students} students and their guardians.");
        }
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, database = %config.database_url_redacted(), "serving");
    // Scripts and tests read this line to find the port when listening on port 0.
    println!("Tidings is listening on http://{address}");

    // In demo mode links must lead somewhere a newcomer can open: this server.
    let demo_config;
    let config = if demo && config.public_url.is_none() {
        let mut with_url = config.clone();
        let url = format!("http://{address}");
        tracing::warn!(public_url = %url, "public_url is not set: acknowledgment links point at this server's listen address (set public_url for real use)");
        with_url.public_url = Some(url);
        demo_config = with_url;
        &demo_config
    } else {
        config
    };
    crate::metrics::install()?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let sandbox = in_process_sandbox(config, demo)?;
    let adapters = adapters(config, sandbox.as_ref(), web_push_key.clone())?;
    let codes = adapters
        .clone()
        .map(|a| Arc::new(SignInCodes(a)) as Arc<dyn tidings_api::guardian::CodeSender>);
    let dispatching = start_dispatcher(config, adapters, &store, &link_keys, stopping.clone())?;
    // Provider callbacks are kept on arrival and applied by their own worker.
    let callbacks = tidings_callbacks::Callbacks::new(store.clone(), config.callbacks()?);
    let applying = tokio::spawn(callbacks.clone().run(stopping.clone()));
    let purging = start_purging(config, services(config, store.clone())?, stopping.clone());
    let clock: Arc<dyn tidings_core::clock::Clock> = Arc::new(tidings_core::clock::SystemClock);
    let metrics = crate::metrics::router(store.clone(), clock.clone())?;
    let state = tidings_api::AppState {
        store,
        default_phone_region: config.default_phone_region.clone(),
        partitions: config.log_partitions,
        link_keys,
        codes,
        sign_ins: tidings_api::guardian::sign_in_limiter(clock.clone()),
        trusted_proxies: config.trusted_proxies.clone().into(),
        roster_max_delete_percent: config.roster_max_delete_percent,
        clock,
        web_push_key: web_push_key.as_ref().map(|key| key.public_key()),
    };
    let secure_cookies = config
        .public_url
        .as_deref()
        .is_some_and(|url| url.starts_with("https://"));
    let outbox = sandbox.clone().map(|sandbox| {
        Arc::new(crate::outbox::SandboxOutbox(sandbox)) as Arc<dyn tidings_web_admin::Outbox>
    });
    let mut web = tidings_web_admin::Web::new(
        secure_cookies,
        config.public_url.clone(),
        outbox,
        state.clock.clone(),
    );
    // In sandbox mode the sandbox's identity provider is here too, to try single sign-on.
    let identity_provider = match (&sandbox, &config.public_url) {
        (Some(_), Some(base)) => Some(sandbox_identity_provider(base).await?),
        _ => None,
    };
    if let Some(idp) = &identity_provider {
        let provider = idp.config();
        println!(
            "Sandbox identity provider: issuer {}, client id {}, client secret {}",
            provider.issuer, provider.client_id, provider.client_secret
        );
        web = web.with_sandbox_identity_provider(tidings_web_admin::SandboxIdentityProvider {
            issuer: provider.issuer.clone(),
            client_id: provider.client_id.clone(),
            client_secret: provider.client_secret.clone(),
        });
    }
    let web = tidings_web_admin::router(state.clone(), web);
    // `/metrics` on an operator listener of its own when one is set, else on this one for
    // a scraper on this machine only.
    let (metrics, operator) = match operator_listener(config, metrics.clone(), &stopping).await? {
        Some(serving) => (axum::Router::new(), Some(serving)),
        None => (crate::metrics::local_only(metrics), None),
    };
    let mut router = tidings_api::router(state.clone())
        .merge(web)
        .merge(callbacks.router())
        .merge(metrics);
    if let Some(sandbox) = sandbox {
        router = router.merge(crate::outbox::router(state, sandbox));
    }
    if let Some(idp) = identity_provider {
        router = router.merge(idp.router());
    }
    let router = router.layer(axum::middleware::from_fn(crate::metrics::timed));
    let mut http_stopping = stopping;
    let stop = Arc::new(stop);
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            let _ = stop.send(true);
        }
    });
    let served =
        tidings_api::server::serve_with(listener, router, config.serve_limits(), async move {
            let _ = http_stopping.wait_for(|stop| *stop).await;
        })
        .await
        .context("HTTP server failed");
    let _ = stop.send(true);
    // The dispatcher finishes the batch in hand and records its outcomes before exiting.
    if let Some((dispatching, _)) = dispatching {
        dispatching
            .await
            .context("the dispatcher stopped abnormally")??;
    }
    let _ = applying.await;
    if let Some(purging) = purging {
        let _ = purging.await;
    }
    if let Some(operator) = operator {
        operator
            .await
            .context("the metrics listener stopped abnormally")?
            .context("metrics listener failed")?;
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// The scheduled purge (`purge_every_minutes`; none at 0): at start and then every so
/// often, each district's records past its retention, then the log's consumed entries,
/// in short batches with a pause after each so that live sending keeps the database.
fn start_purging(
    config: &Config,
    services: Services,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if config.purge_every_minutes == 0 {
        return None;
    }
    let every = std::time::Duration::from_secs(config.purge_every_minutes.saturating_mul(60));
    let log_retention = chrono::Duration::hours(i64::from(config.log_retention_hours));
    Some(tokio::spawn(async move {
        loop {
            let purging = purge_all(&services, log_retention);
            tokio::select! {
                result = purging => if let Err(error) = result {
                    tracing::error!(error = %tidings_core::store::error_chain(error.as_ref()), "the scheduled purge failed; it runs again later");
                },
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }))
}

/// One round of the scheduled purge.
async fn purge_all(services: &Services, log_retention: chrono::Duration) -> anyhow::Result<()> {
    use tidings_core::services::retention::PurgePace;
    let pace = PurgePace::default();
    for district in services.store.districts().await? {
        let report = services
            .purge(&Actor::system("retention"), district.id, false, pace)
            .await?;
        if !report.purged.is_empty() {
            tracing::info!(district = %district.id, purged = ?report.purged, batches = report.batches, "purged what the district keeps past its retention");
        }
    }
    let before = services.clock.now() - log_retention;
    let mut entries = 0;
    loop {
        let purged = services.store.purge_log(before, pace.batch).await?;
        entries += purged;
        if purged < u64::from(pace.batch) {
            break;
        }
        tokio::time::sleep(pace.pause).await;
    }
    if entries > 0 {
        tracing::info!(entries, "purged the delivery log's consumed entries");
    }
    Ok(())
}

/// `tidings district retention`: shows a district's retention, or sets part of it (0
/// returns a kind to its default).
pub async fn retention(
    config: &Config,
    district: Option<tidings_core::DistrictId>,
    change: RetentionChange,
) -> anyhow::Result<()> {
    use tidings_core::retention::{Retention, KINDS};
    let store = open_store(config, config.migrate_on_start).await?;
    let id = crate::import::choose_district(store.as_ref(), district).await?;
    let services = services(config, store)?;
    let mut retention: Retention = services.retention(id).await?;
    let set = |given: Option<u32>, now: Option<u32>| match given {
        None => now,
        Some(0) => None,
        Some(days) => Some(days),
    };
    if change
        .messages_days
        .or(change.replies_days)
        .or(change.callbacks_days)
        .or(change.audit_days)
        .is_some()
    {
        retention = Retention {
            messages_days: set(change.messages_days, retention.messages_days),
            replies_days: set(change.replies_days, retention.replies_days),
            callbacks_days: set(change.callbacks_days, retention.callbacks_days),
            audit_days: set(change.audit_days, retention.audit_days),
        };
        services
            .set_retention(&Actor::system("cli"), id, retention)
            .await?;
    }
    println!("district {id}");
    for kind in KINDS {
        let days = retention.days(kind);
        let default = if days == kind.default_days {
            " (the default)"
        } else {
            ""
        };
        println!(
            "  {:<14} {days} days{default}; at least {}: {}",
            kind.setting, kind.minimum_days, kind.what
        );
    }
    Ok(())
}

/// What `tidings district retention` changes.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct RetentionChange {
    /// Days to keep messages with their deliveries, events and attempts (0: the default).
    #[arg(long)]
    pub messages_days: Option<u32>,
    /// Days to keep guardians' texts (0: the default).
    #[arg(long)]
    pub replies_days: Option<u32>,
    /// Days to keep providers' delivery reports in the callback inbox (0: the default).
    #[arg(long)]
    pub callbacks_days: Option<u32>,
    /// Days to keep the audit log (0: the default).
    #[arg(long)]
    pub audit_days: Option<u32>,
}

/// `tidings purge`: purges one district, or every one, of what it keeps past its
/// retention (with `--dry-run` only counts); prints a JSON line per district.
pub async fn purge(
    config: &Config,
    district: Option<tidings_core::DistrictId>,
    dry_run: bool,
) -> anyhow::Result<()> {
    use tidings_core::services::retention::PurgePace;
    let store = open_store(config, config.migrate_on_start).await?;
    let districts = match district {
        Some(id) => vec![id],
        None => store.districts().await?.into_iter().map(|d| d.id).collect(),
    };
    let services = services(config, store)?;
    for id in districts {
        let report = services
            .purge(&Actor::system("cli"), id, dry_run, PurgePace::default())
            .await?;
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// `tidings log status`: each partition's last offset and committed offset.
pub async fn log_status(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    for (lane, partition, heads) in store.partition_heads().await? {
        let committed = store
            .committed_offset(tidings_core::log::CONSUMER_GROUP, lane, partition)
            .await?;
        let line = serde_json::json!({
            "lane": lane.as_str(),
            "partition": partition.get(),
            "last_offset": heads.last,
            "committed_offset": committed,
            "unread": heads.last - committed.unwrap_or(-1),
        });
        println!("{line}");
    }
    Ok(())
}

/// `tidings log rewind`: a partition read again from an offset; prints what it did.
pub async fn rewind(
    config: &Config,
    lane: tidings_core::Lane,
    partition: u32,
    from_offset: i64,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    let services = services(config, store)?;
    let rewound = services
        .rewind_partition(Operator::CommandLine, lane, partition, from_offset)
        .await?;
    println!("{}", serde_json::to_string(&rewound)?);
    Ok(())
}

/// `tidings guardian export|erase`: a guardian's data request, printed as JSON.
pub async fn guardian_request(
    config: &Config,
    district: Option<tidings_core::DistrictId>,
    guardian: &str,
    erase: bool,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    let id = crate::import::choose_district(store.as_ref(), district).await?;
    let services = services(config, store)?;
    let by = Actor::system("cli");
    let printed = if erase {
        serde_json::to_string(&services.erase_guardian(&by, id, guardian).await?)?
    } else {
        serde_json::to_string_pretty(&services.export_guardian(&by, id, guardian).await?)?
    };
    println!("{printed}");
    Ok(())
}

/// `/metrics` on an operator listener of its own (`metrics_listen`), when one is set.
async fn operator_listener(
    config: &Config,
    metrics: axum::Router,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(address) = config.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (metrics_listen)"))?;
    tracing::info!(address = %listener.local_addr()?, "metrics served on the operator listener");
    let mut stopping = stopping.clone();
    let limits = config.serve_limits();
    Ok(Some(tokio::spawn(async move {
        tidings_api::server::serve_with(listener, metrics, limits, async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        })
        .await
    })))
}

/// `tidings dispatch`: only the dispatcher, until SIGTERM or Ctrl-C.
pub async fn dispatch(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(config, false).await?;
    let readiness = store.readiness().await?;
    if !readiness.is_ready() {
        anyhow::bail!("the database is not migrated: run `tidings migrate` first");
    }
    crate::metrics::install()?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let clock = Arc::new(tidings_core::clock::SystemClock);
    let metrics = crate::metrics::router(store.clone(), clock)?;
    let operator = operator_listener(config, metrics, &stopping).await?;
    let link_keys = link_keys(config, store.as_ref()).await?;
    let web_push_key = web_push_key(config, store.as_ref()).await?;
    let sandbox = in_process_sandbox(config, false)?;
    let adapters = adapters(config, sandbox.as_ref(), web_push_key)?;
    let Some((dispatching, _)) = start_dispatcher(config, adapters, &store, &link_keys, stopping)?
    else {
        anyhow::bail!("no channel provider is configured, so there is nothing to send with (set `sandbox = true` to try the pipeline)");
    };
    shutdown.await;
    let _ = stop.send(true);
    dispatching
        .await
        .context("the dispatcher stopped abnormally")??;
    if let Some(operator) = operator {
        operator
            .await
            .context("the metrics listener stopped abnormally")?
            .context("metrics listener failed")?;
    }
    Ok(())
}

/// The in-process sandbox every channel goes to with `--demo` or `sandbox = true`.
fn in_process_sandbox(
    config: &Config,
    demo: bool,
) -> anyhow::Result<Option<tidings_sandbox::InProcessProvider>> {
    if !(demo || config.sandbox) {
        return Ok(None);
    }
    tracing::warn!("every channel goes to the in-process sandbox: no one is messaged");
    let mut sandbox = tidings_sandbox::InProcessProvider::new(config.sandbox_faults);
    if let Some(path) = &config.sandbox_journal {
        sandbox = sandbox
            .with_journal(path)
            .with_context(|| format!("cannot open the sandbox journal {}", path.display()))?;
    }
    Ok(Some(sandbox))
}

/// The providers this process sends through, per channel: `sandbox` when there is one,
/// else the providers configured. `None` when there is none.
/// `web_push_key`: the install's Web Push key as read and checked at start, when it is on.
fn adapters(
    config: &Config,
    sandbox: Option<&tidings_sandbox::InProcessProvider>,
    web_push_key: Option<Arc<VapidKey>>,
) -> anyhow::Result<Option<tidings_dispatcher::Adapters>> {
    use tidings_core::Channel;
    let Some(sandbox) = sandbox else {
        let mut adapters = tidings_dispatcher::Adapters::default();
        let mut any = false;
        if let Some(twilio) = config.twilio()? {
            adapters = adapters.with(Channel::Sms, Arc::new(twilio));
            any = true;
        }
        if let Some(kannel) = config.kannel()? {
            adapters = adapters.with(Channel::Sms, Arc::new(kannel));
            any = true;
        }
        if let Some(smtp) = config.smtp()? {
            adapters = adapters.with(Channel::Email, Arc::new(smtp));
            any = true;
        }
        if let Some(push) = config.push(web_push_key)? {
            adapters = adapters.with(Channel::Push, Arc::new(push));
            any = true;
        }
        // With no provider at all no dispatcher runs (see start_dispatcher): deliveries
        // wait on the log, and a warning per channel would say otherwise.
        for &channel in Channel::ALL.iter().filter(|_| any) {
            if !adapters.has(channel) {
                tracing::warn!(%channel, "no provider is configured for this channel: its deliveries become dead letters, to replay once one is");
            }
        }
        return Ok(any.then_some(adapters));
    };
    Ok(Some(
        tidings_core::Channel::ALL
            .iter()
            .fold(tidings_dispatcher::Adapters::default(), |a, &c| {
                a.with(c, sandbox.adapter(c))
            }),
    ))
}

type Dispatching = (
    tokio::task::JoinHandle<Result<(), tidings_dispatcher::DispatchError>>,
    Arc<tidings_dispatcher::Counters>,
);

/// Starts the dispatcher when there is a provider to send through; until then deliveries
/// wait on the log, and are sent once one is configured.
fn start_dispatcher(
    config: &Config,
    adapters: Option<tidings_dispatcher::Adapters>,
    store: &Arc<dyn Store>,
    link_keys: &Arc<LinkKeys>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<Dispatching>> {
    let Some(adapters) = adapters else {
        tracing::warn!("no channel provider is configured: no dispatcher runs, and messages are accepted and wait on the log (state CREATED) until one is");
        return Ok(None);
    };
    let dispatcher = tidings_dispatcher::Dispatcher::new(
        store.clone(),
        adapters,
        config.dispatcher(config.links(link_keys)),
    );
    let counters = dispatcher.counters();
    Ok(Some((
        tokio::spawn(async move { dispatcher.run(stopping).await }),
        counters,
    )))
}

/// Sends the guardian app's sign-in codes through the SMS and email providers.
struct SignInCodes(tidings_dispatcher::Adapters);

#[async_trait::async_trait]
impl tidings_api::guardian::CodeSender for SignInCodes {
    async fn send_code(
        &self,
        channel: tidings_core::Channel,
        address: &str,
        text: &str,
    ) -> Result<(), String> {
        use tidings_channel_adapters::{Outgoing, SendOutcome};
        let adapter = self
            .0
            .get(channel)
            .ok_or_else(|| format!("no {channel} provider"))?;
        let id = tidings_core::DeliveryId::new();
        let send = Outgoing {
            delivery_id: id,
            message_id: tidings_core::MessageId::new(),
            idempotency_key: id.to_string(),
            channel,
            address: address.to_owned(),
            kind: tidings_core::MessageKind::Emergency,
            subject: "Your sign-in code".into(),
            body: text.to_owned(),
            language: "en".into(),
            ack: None,
            unsubscribe_url: None,
            // A code is no delivery: a report of it would name nothing.
            delivery_reports: false,
            span: tracing::Span::none(),
        };
        match adapter.send(std::slice::from_ref(&send)).await.pop() {
            Some(SendOutcome::Sent { .. }) => Ok(()),
            // Only the class: provider errors can quote the address.
            Some(SendOutcome::Transient { .. }) => Err("transient provider failure".into()),
            Some(SendOutcome::Throttled { .. }) => Err("the provider asks to slow down".into()),
            Some(SendOutcome::InDoubt { .. }) => Err("no answer from the provider".into()),
            Some(SendOutcome::Permanent { .. }) => Err("refused by the provider".into()),
            Some(SendOutcome::Unreachable { .. }) => Err("the address is unreachable".into()),
            None => Err("the provider answered nothing".into()),
        }
    }
}

/// The link keys, checked against the ones the other processes on this database use: a
/// process with a different key of the same id would send links nobody can open.
async fn link_keys(config: &Config, store: &dyn Store) -> anyhow::Result<Arc<LinkKeys>> {
    let keys = config.link_keys()?;
    let differing = store.check_link_keys(&keys.fingerprints(), now()).await?;
    if !differing.is_empty() {
        anyhow::bail!(
            "link key {differing:?} differs from the key of that id other Tidings processes on this database sign with: \
             give every process the same link keys (copy the link_keys_file, or set TIDINGS_LINK_KEYS)"
        );
    }
    Ok(Arc::new(keys))
}

/// The Web Push key, when Web Push is on, checked against the one the other
/// processes on this database push with: browsers subscribed with one key, and a
/// process pushing with another would have every push refused.
async fn web_push_key(config: &Config, store: &dyn Store) -> anyhow::Result<Option<Arc<VapidKey>>> {
    let Some(key) = config.vapid_key()? else {
        return Ok(None);
    };
    if let Some(recorded) = store
        .check_install_key("vapid", &key.fingerprint(), now())
        .await?
    {
        anyhow::bail!(
            "the Web Push key (fingerprint {}) differs from the one other Tidings processes on this database push with ({recorded}): \
             give every process the same key (copy web_push.key_file, or set TIDINGS_VAPID_KEY)",
            key.fingerprint()
        );
    }
    Ok(Some(key))
}

/// `tidings link-keys rotate`: a new signing key in `link_keys_file`, the old ones kept.
pub fn rotate_link_keys(config: &Config) -> anyhow::Result<()> {
    if std::env::var("TIDINGS_LINK_KEYS").is_ok_and(|v| !v.trim().is_empty()) {
        anyhow::bail!("the link keys come from TIDINGS_LINK_KEYS: rotate them where that is set (add a line `<next id>:<32 random bytes, URL-safe base64>` at the top)");
    }
    let path = &config.link_keys_file;
    let keys = config.link_keys()?.rotated()?;
    // Written beside the old file and renamed over it: a reader never sees half a file.
    let next = path.with_extension("next");
    let _ = std::fs::remove_file(&next);
    crate::config::create_private(&next, &keys.to_file_text())?;
    std::fs::rename(&next, path).with_context(|| format!("cannot replace {}", path.display()))?;
    let newest = keys
        .fingerprints()
        .last()
        .map(|(id, _)| *id)
        .unwrap_or_default();
    println!("Key {newest} signs links from the next start. Copy {} to every Tidings process and restart them; remove old keys only after their links have expired (ack_link_days, and a year for unsubscribe links).", path.display());
    Ok(())
}

/// On an empty database: create the district and its first administrator, and print the
/// credential once. It is not logged and cannot be shown again.
pub async fn bootstrap(config: &Config, store: &dyn Store) -> anyhow::Result<()> {
    let email = EmailAddress::parse(&config.first_admin_email)
        .context("invalid configuration: first_admin_email")?;
    let password = secret::generate_password();
    let first = FirstAdmin {
        district_name: config.district_name.clone(),
        email,
        display_name: "District administrator".into(),
        password_hash: secret::hash_password(&password)?,
    };
    if let Some((district, admin)) = store.bootstrap(&first, now()).await? {
        store
            .audit(
                district.id,
                &Actor::system("first start"),
                "staff.bootstrap",
                serde_json::json!({ "staff_id": admin.id }),
                now(),
            )
            .await?;
        tracing::info!(district_id = %district.id, staff_id = %admin.id, "created the first administrator");
        println!(
            "Created district {:?} and its first administrator.",
            district.name
        );
        println!("  Sign in as: {}", admin.email);
        println!("  Password:   {password}");
        println!("This password is shown once and never again: keep it somewhere safe.");
    }
    Ok(())
}

/// `tidings token create --email EMAIL`: prints a new bearer token as its last line.
pub async fn create_token(
    config: &Config,
    email: &str,
    name: &str,
    expires_days: Option<u32>,
) -> anyhow::Result<()> {
    let email = EmailAddress::parse(email)?;
    let store = open_store(config, config.migrate_on_start).await?;
    let staff = store
        .staff_by_email(&email)
        .await?
        .with_context(|| format!("no enabled staff member signs in as {email}"))?;
    let expires_at = expires_days.map(|days| now() + chrono::Duration::days(i64::from(days)));
    let created = services(config, store)?
        .create_api_token(&Actor::staff(staff.id), &staff, name, expires_at)
        .await?;
    eprintln!(
        "API token {:?} ({}) for {email} (shown once; send it as `Authorization: Bearer …`):",
        created.view.name, created.view.id
    );
    println!("{}", created.token.reveal());
    Ok(())
}

/// `tidings token list`: a district's API tokens, one line each.
pub async fn list_tokens(
    config: &Config,
    district: Option<tidings_core::DistrictId>,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    let district = crate::import::choose_district(store.as_ref(), district).await?;
    let tokens = services(config, store)?
        .district_api_tokens(district)
        .await?;
    let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(
            || "-".to_owned(),
            |at| at.format("%Y-%m-%d %H:%M").to_string(),
        )
    };
    println!("id\tname\towner\tcreated\tlast used\texpires\trevoked");
    for t in tokens {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.id,
            t.name,
            t.owner_email,
            when(Some(t.created_at)),
            when(t.last_used_at),
            when(t.expires_at),
            when(t.revoked_at)
        );
    }
    Ok(())
}

/// `tidings token revoke ID`: the token stops working at once; audited.
pub async fn revoke_token(
    config: &Config,
    district: Option<tidings_core::DistrictId>,
    id: tidings_core::ApiTokenId,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    let district = crate::import::choose_district(store.as_ref(), district).await?;
    services(config, store)?
        .revoke_api_token_as_operator(district, id)
        .await?;
    eprintln!("API token {id} revoked");
    Ok(())
}

/// `tidings district quotas`: prints the quotas after applying any given (0 = no limit).
pub async fn quotas(
    config: &Config,
    district: Option<tidings_core::DistrictId>,
    max_recipients_per_message: Option<u32>,
    max_messages_per_hour: Option<u32>,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    let id = crate::import::choose_district(store.as_ref(), district).await?;
    let current = store.district(id).await?.context("district vanished")?;
    let limit = |given: Option<u32>, now: Option<i32>| -> anyhow::Result<Option<i32>> {
        match given {
            None => Ok(now),
            Some(0) => Ok(None),
            Some(n) => Ok(Some(i32::try_from(n).context("quota too large")?)),
        }
    };
    let recipients = limit(
        max_recipients_per_message,
        current.max_recipients_per_message,
    )?;
    let hourly = limit(max_messages_per_hour, current.max_messages_per_hour)?;
    if max_recipients_per_message.is_some() || max_messages_per_hour.is_some() {
        services(config, store.clone())?
            .set_district_quotas(&Actor::system("cli"), id, recipients, hourly)
            .await?;
    }
    let show = |v: Option<i32>| v.map_or_else(|| "no limit".to_owned(), |v| v.to_string());
    println!("district {} {:?}", id, current.name);
    println!("  max recipients per message: {}", show(recipients));
    println!("  max messages per hour:      {}", show(hourly));
    Ok(())
}

/// `tidings district list`.
pub async fn districts(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    bootstrap(config, store.as_ref()).await?;
    let lines = services(config, store)?
        .districts(Operator::CommandLine)
        .await?;
    for line in lines {
        let d = &line.district;
        let state = match d.suspended_at {
            Some(at) => format!("suspended since {}", at.format("%Y-%m-%d %H:%M UTC")),
            None => "active".to_owned(),
        };
        println!(
            "{}  {:?}  {}  {}  {} schools, {} students, {} guardians, {} staff",
            d.id,
            d.name,
            d.timezone,
            state,
            line.counts.schools,
            line.counts.students,
            line.counts.guardians,
            line.counts.staff
        );
    }
    Ok(())
}

/// `tidings district create --name NAME --admin-email EMAIL`: prints the first
/// administrator's invitation link as its last line.
pub async fn create_district(
    config: &Config,
    new: tidings_core::services::districts::NewDistrict<'_>,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    bootstrap(config, store.as_ref()).await?;
    let created = services(config, store)?
        .create_district(Operator::CommandLine, new)
        .await?;
    let base = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen));
    eprintln!(
        "Created district {:?} ({}). Pass this link to {}, once: it lets them choose a \
         password within 7 days.",
        created.district.name, created.district.id, created.invitation.staff.email
    );
    println!(
        "{}/invitation/{}",
        base.trim_end_matches('/'),
        created.invitation.token.reveal()
    );
    Ok(())
}

/// `tidings district rename DISTRICT NAME`.
pub async fn rename_district(
    config: &Config,
    district: tidings_core::DistrictId,
    name: &str,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    services(config, store)?
        .rename_district(Operator::CommandLine, district, name)
        .await?;
    println!("district {district} is now {:?}", name.trim());
    Ok(())
}

/// `tidings district suspend DISTRICT` and `tidings district resume DISTRICT`.
pub async fn suspend_district(
    config: &Config,
    district: tidings_core::DistrictId,
    suspend: bool,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    services(config, store)?
        .suspend_district(Operator::CommandLine, district, suspend)
        .await?;
    let now = if suspend { "suspended" } else { "active" };
    println!("district {district} is {now}");
    Ok(())
}

/// `tidings district operator --email EMAIL [--revoke]`.
pub async fn set_operator(config: &Config, email: &str, operator: bool) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    let staff = services(config, store)?
        .set_operator(email, operator)
        .await?;
    let is = if staff.operator { "is" } else { "is not" };
    println!("{} {is} an operator of this Tidings", staff.email);
    Ok(())
}

/// `tidings school quiet-hours SCHOOL --start HH:MM --end HH:MM --timezone TZ` (or `--off`).
pub async fn quiet_hours(
    config: &Config,
    district: Option<tidings_core::DistrictId>,
    school: &str,
    window: Option<(Option<String>, Option<String>, Option<String>)>,
) -> anyhow::Result<()> {
    use tidings_core::quiet_hours::QuietHours;
    let quiet = match window {
        None => None,
        Some((Some(start), Some(end), Some(timezone))) => Some(QuietHours::new(
            &timezone,
            QuietHours::parse_time(&start)?,
            QuietHours::parse_time(&end)?,
        )?),
        Some(_) => anyhow::bail!("give --start, --end and --timezone, or --off"),
    };
    let store = open_store(config, config.migrate_on_start).await?;
    let id = crate::import::choose_district(store.as_ref(), district).await?;
    match services(config, store)?
        .set_school_quiet_hours(&Actor::system("cli"), id, school, quiet)
        .await
    {
        Err(ServiceError::Refused(Refusal::NotFound)) => {
            anyhow::bail!("no school {school:?} in this district")
        }
        done => done?,
    }
    match quiet {
        Some(q) => println!(
            "{school}: non-urgent messages wait from {:02}:{:02} to {:02}:{:02} ({})",
            q.start_minute / 60,
            q.start_minute % 60,
            q.end_minute / 60,
            q.end_minute % 60,
            q.timezone.name()
        ),
        None => println!("{school}: no quiet hours"),
    }
    Ok(())
}

/// The sandbox's OpenID Connect provider on the server at `base`; its client from
/// `TIDINGS_SANDBOX_OIDC_CLIENT_ID` and `TIDINGS_SANDBOX_OIDC_CLIENT_SECRET` when set.
async fn sandbox_identity_provider(
    base: &str,
) -> anyhow::Result<Arc<tidings_sandbox::oidc::IdentityProvider>> {
    let mut provider = tidings_sandbox::oidc::ProviderConfig::at(base);
    if let Ok(id) = std::env::var("TIDINGS_SANDBOX_OIDC_CLIENT_ID") {
        provider.client_id = id;
    }
    if let Ok(secret) = std::env::var("TIDINGS_SANDBOX_OIDC_CLIENT_SECRET") {
        provider.client_secret = secret;
    }
    // Making its RSA key takes a moment of CPU.
    let provider =
        tokio::task::spawn_blocking(move || tidings_sandbox::oidc::IdentityProvider::new(provider))
            .await
            .context("making the sandbox identity provider's key")?;
    Ok(Arc::new(provider))
}

/// `tidings sandbox`: the provider sandbox over HTTP, until SIGTERM or Ctrl-C.
pub async fn sandbox(
    config: &Config,
    listen: std::net::SocketAddr,
    callback_base: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut provider = tidings_sandbox::InProcessProvider::new(config.sandbox_faults);
    if let Some(path) = &config.sandbox_journal {
        provider = provider
            .with_journal(path)
            .with_context(|| format!("cannot open the sandbox journal {}", path.display()))?;
    }
    let mut settings = tidings_sandbox::server::SandboxConfig {
        callback_base,
        ..Default::default()
    };
    if let Ok(token) = std::env::var("TIDINGS_SANDBOX_TWILIO_AUTH_TOKEN") {
        settings.twilio_auth_token = token;
    }
    if let Ok(key) = std::env::var("TIDINGS_SANDBOX_MAILGUN_KEY") {
        settings.mailgun_signing_key = key;
    }
    if let Ok(key) = std::env::var("TIDINGS_SANDBOX_APNS_KEY") {
        let point = tidings_channel_adapters::jwt::es256_public_point(&key)
            .context("TIDINGS_SANDBOX_APNS_KEY is not an APNs signing key (.p8)")?;
        settings.apns_public_key = Some(point);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let idp = sandbox_identity_provider(&format!("http://{address}")).await?;
    let oidc = idp.config().clone();
    settings.identity_provider = Some(idp);
    println!("Provider sandbox on http://{address} (nothing sent from here reaches anyone)");
    println!("  Twilio API base:  http://{address} (any AC… account; auth token from TIDINGS_SANDBOX_TWILIO_AUTH_TOKEN, default {:?})", tidings_sandbox::server::SandboxConfig::default().twilio_auth_token);
    println!("  APNs endpoint:    http://{address} (HTTP/2; provider tokens verified when TIDINGS_SANDBOX_APNS_KEY holds the .p8 key)");
    println!(
        "  FCM API base:     http://{address} (service-account token_uri: http://{address}/token)"
    );
    println!("  What it received: http://{address}/_sandbox/received");
    println!("  Faults:           http://{address}/_sandbox/faults (GET, PUT)");
    println!("  Email events:     POST http://{address}/_sandbox/email-events; verification keys at http://{address}/_sandbox/keys");
    println!(
        "  OpenID Connect:   issuer {} (client id {}, client secret {}; TIDINGS_SANDBOX_OIDC_CLIENT_ID/_SECRET)",
        oidc.issuer, oidc.client_id, oidc.client_secret
    );
    tidings_sandbox::server::serve(listener, provider, settings, shutdown)
        .await
        .context("the sandbox server failed")
}

/// The application services, on `store` with this configuration.
fn services(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Services> {
    Ok(Services {
        store,
        clock: Arc::new(tidings_core::clock::SystemClock),
        partitions: config.log_partitions,
        default_phone_region: config.default_phone_region.clone(),
        link_keys: Arc::new(config.link_keys()?),
    })
}
