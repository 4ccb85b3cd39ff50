//! `tidings`: the command line. It parses arguments, loads configuration and calls the
//! application; everything else lives in library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tidings::commands;
use tidings::config::{Config, LogFormat};

/// mimalloc instead of the system allocator: the dispatcher, the stores' worker threads
/// and the HTTP servers allocate and free small buffers from many threads at once, where
/// glibc's malloc spent about an eighth of a dispatch run's CPU time (consolidating and
/// unlinking free chunks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// School-to-guardian notifications over SMS, email and push.
#[derive(Debug, Parser)]
#[command(name = "tidings", version)]
struct Cli {
    /// TOML configuration file; `TIDINGS_*` environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: API, web admin, callbacks and dispatcher.
    Serve {
        /// Load the bundled demo district into an empty database.
        #[arg(long)]
        demo: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Copy the SQLite database to FILE while Tidings runs: a consistent snapshot, ready
    /// to be restored by putting it in the database's place. (On PostgreSQL use pg_dump.)
    Backup {
        /// Where the copy goes; it must not exist yet.
        file: std::path::PathBuf,
    },
    /// Run only the dispatcher: send what is on the log. Several may share one PostgreSQL;
    /// they divide the partitions between them.
    Dispatch,
    /// Run the provider sandbox: Twilio's API (and the other providers') on loopback,
    /// with signed callbacks and fault injection, for demos, staging and load tests.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// Post callbacks here (same path and query) instead of to the URLs the sends
        /// name, e.g. http://127.0.0.1:8080 when public_url is a public name. They stay
        /// signed for the URLs as named.
        #[arg(long, value_name = "URL")]
        callback_base: Option<String>,
    },
    /// Import a roster.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Purge what each district (or one) keeps past its retention now; prints a JSON line
    /// per district. `serve` also purges on its own every `purge_every_minutes`.
    Purge {
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
        /// Only count what would go.
        #[arg(long)]
        dry_run: bool,
    },
    /// The delivery log: where the dispatchers are in each partition, and rewinding one.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// A guardian's data requests: export everything held about them, or erase them.
    Guardian {
        #[command(subcommand)]
        command: GuardianCommand,
    },
    /// Measure performance; prints a JSON object as its last line.
    Bench {
        #[command(subcommand)]
        suite: BenchSuite,
    },
    /// School settings.
    School {
        #[command(subcommand)]
        command: SchoolCommand,
    },
    /// Districts of the install (operators), and each district's settings.
    District {
        #[command(subcommand)]
        command: DistrictCommand,
    },
    /// Manage staff API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the keys acknowledgment and unsubscribe links are signed with.
    LinkKeys {
        #[command(subcommand)]
        command: LinkKeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Each partition with entries: its last offset and the offset the dispatchers have
    /// committed (a JSON line each).
    Status,
    /// Move a partition's committed offset back so that its entries from --from on are
    /// read again: what still waits among them is sent, what was sent is left alone.
    /// Refused over an at-most-once delivery already attempted, past the oldest entry
    /// left, and within 10 minutes of the partition's last rewind (audited).
    Rewind {
        /// emergency, normal or bulk.
        #[arg(long)]
        lane: tidings_core::Lane,
        #[arg(long)]
        partition: u32,
        /// The first offset to read again.
        #[arg(long = "from")]
        from_offset: i64,
    },
}

#[derive(Debug, Subcommand)]
enum GuardianCommand {
    /// Print everything held about a guardian as JSON: contact points, children, opt-outs,
    /// messages with their deliveries and events, texts and app sessions (audited).
    Export {
        /// The guardian: its id, or the roster's sourcedId.
        guardian: String,
        /// The district (needed only when there are several).
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
    },
    /// Erase a guardian: contact points, links to children, opt-outs, messages received,
    /// texts and app sessions. A carrier STOP is kept as a one-way hash of the number.
    /// Refused while deliveries to them wait to be sent. Prints what went as JSON
    /// (audited).
    Erase {
        /// The guardian: its id, or the roster's sourcedId.
        guardian: String,
        /// The district (needed only when there are several).
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
    },
}

#[derive(Debug, Subcommand)]
enum LinkKeysCommand {
    /// Add a new key to the link keys file: it signs from the next start on, the older
    /// ones keep verifying links already sent. Copy the file to every Tidings process and
    /// restart them.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// A OneRoster 1.1 CSV bundle: a directory or a .zip, as the SIS exports it.
    Oneroster {
        path: PathBuf,
        /// The district to import into (needed only when the database has several).
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
        /// Do the whole import, print what it would do, and roll it back.
        #[arg(long)]
        dry_run: bool,
        /// Go ahead even if the import deletes more of the directory than
        /// `roster_max_delete_percent` allows.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchSuite {
    /// Generate a synthetic district and import it (then re-import it).
    Import {
        #[arg(long, default_value_t = 10_000)]
        students: usize,
        #[command(flatten)]
        database: tidings::bench::BenchDatabase,
    },
    /// Send one message to a whole synthetic district and time the fan-out.
    Fanout {
        /// District size: N students and exactly N guardians (`--guardians N` is the
        /// same).
        #[arg(long, visible_alias = "guardians", default_value_t = 10_000)]
        students: usize,
        /// Channels per guardian (1 to 3).
        #[arg(long, default_value_t = 2)]
        channels: usize,
        #[command(flatten)]
        database: tidings::bench::BenchDatabase,
    },
    /// The whole path over HTTP: fan-out, dispatch through the Twilio adapter to the
    /// provider sandbox, signed status callbacks back, acknowledgments; times each stage.
    Pipeline {
        #[command(flatten)]
        shape: tidings::bench::PipelineShape,
        #[command(flatten)]
        database: tidings::bench::BenchDatabase,
    },
    /// A purge of K old broadcasts (about K × N deliveries) while a broadcast to the
    /// district drains, beside the same broadcast alone.
    Purge {
        #[command(flatten)]
        shape: tidings::bench::PurgeShape,
        #[command(flatten)]
        database: tidings::bench::BenchDatabase,
    },
    /// Post every delivery's signed "delivered" status callback over HTTP and time until
    /// all are kept and applied; compared with the raw CAS UPDATE rate of the database.
    Callbacks {
        /// District size in students (guardians, one SMS delivery each, are about as many).
        #[arg(long, default_value_t = 10_000)]
        students: usize,
        /// Callbacks in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[command(flatten)]
        database: tidings::bench::BenchDatabase,
    },
    /// Time the web admin's pages (server time per page, p50 and p95 of several
    /// requests) for a district of N students with one message to all of it.
    Pages {
        #[arg(long, default_value_t = 10_000)]
        students: usize,
        /// Measured requests per page.
        #[arg(long, default_value_t = 20)]
        samples: usize,
        #[command(flatten)]
        database: tidings::bench::BenchDatabase,
    },
    /// Send a broadcast through the dispatcher to the in-process sandbox (no latency),
    /// then time single alerts from commit to provider call on an idle dispatcher.
    Dispatch {
        /// Deliveries in the broadcast (two per guardian: SMS and email).
        #[arg(long, default_value_t = 20_000)]
        deliveries: usize,
        /// Dispatchers sharing the database.
        #[arg(long, default_value_t = 1)]
        processes: usize,
        /// Sends each dispatcher has in flight at once (the `dispatch_in_flight` setting).
        #[arg(long, default_value_t = tidings_dispatcher::Config::default().max_in_flight)]
        in_flight: u32,
        /// Log entries read per partition at a time (the `dispatch_batch` setting).
        #[arg(long, default_value_t = tidings_dispatcher::Config::default().batch)]
        batch: u32,
        /// Schedule the broadcast a few seconds ahead, so it goes out as deliveries that
        /// come due (as a message sent during quiet hours does when they end).
        #[arg(long)]
        scheduled: bool,
        #[command(flatten)]
        database: tidings::bench::BenchDatabase,
    },
}

#[derive(Debug, Subcommand)]
enum SchoolCommand {
    /// Set when non-urgent messages wait (emergencies never do), in the school's time zone.
    QuietHours {
        /// The school's id or sourcedId.
        school: String,
        /// Start of the quiet window, HH:MM.
        #[arg(long, required_unless_present = "off")]
        start: Option<String>,
        /// End of the quiet window, HH:MM (may be after midnight).
        #[arg(long, required_unless_present = "off")]
        end: Option<String>,
        /// IANA time zone of the school, e.g. America/Chicago.
        #[arg(long, required_unless_present = "off")]
        timezone: Option<String>,
        /// Remove the school's quiet hours.
        #[arg(long, conflicts_with_all = ["start", "end", "timezone"])]
        off: bool,
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
    },
}

#[derive(Debug, Subcommand)]
enum DistrictCommand {
    /// List the districts: id, name, time zone, whether suspended, directory size.
    List,
    /// Create a district and invite its first district administrator (prints the
    /// invitation link, once).
    Create {
        #[arg(long)]
        name: String,
        /// IANA time zone, e.g. America/Chicago.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// The first district administrator's email.
        #[arg(long)]
        admin_email: String,
        #[arg(long, default_value = "District administrator")]
        admin_name: String,
    },
    /// Rename a district.
    Rename {
        district: tidings_core::DistrictId,
        name: String,
    },
    /// Suspend a district: its staff cannot sign in or use the API until it is resumed.
    Suspend { district: tidings_core::DistrictId },
    /// Resume a suspended district.
    Resume { district: tidings_core::DistrictId },
    /// Make a staff member an operator of the install (manages districts in the web
    /// admin), or with --revoke no longer one.
    Operator {
        #[arg(long)]
        email: String,
        #[arg(long)]
        revoke: bool,
    },
    /// Show or set the quotas on non-emergency messages (0 removes a limit).
    Quotas {
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
        #[arg(long)]
        max_recipients_per_message: Option<u32>,
        #[arg(long)]
        max_messages_per_hour: Option<u32>,
    },
    /// Show or set how long the district keeps its records (older ones are purged).
    Retention {
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
        #[command(flatten)]
        change: commands::RetentionChange,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a bearer token for a staff member; it is printed once, as the last line.
    Create {
        /// The staff member's sign-in email.
        #[arg(long)]
        email: String,
        /// A label to recognise the token by later.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Days until the token stops working (no expiry when left out).
        #[arg(long)]
        expires_days: Option<u32>,
    },
    /// List a district's API tokens: name, owner, created, last used, expiry, revocation.
    List {
        /// The district (needed only when there are several).
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
    },
    /// Revoke an API token by its id (from `tidings token list`); it stops working at once.
    Revoke {
        /// The token's id.
        id: tidings_core::ApiTokenId,
        #[arg(long)]
        district: Option<tidings_core::DistrictId>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "error: {}",
                tidings_core::store::error_chain(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// Open files wanted: sends in flight to every provider at their ceiling, the sockets
/// served and the database's, with room to spare.
const OPEN_FILES: u64 = 65_536;

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    // Kept until the end of the run: dropping it sends the spans still buffered.
    let _traces = init_tracing(&config)?;
    // Each send in flight to a provider, each connection served and each database
    // connection is an open file: a dispatcher keeping a thousand sends out needs more
    // than the 1,024 a session often starts with. Raised to what the system allows.
    match rlimit::increase_nofile_limit(OPEN_FILES) {
        Ok(limit) if limit < 8_192 => tracing::warn!(
            limit,
            "few open files allowed: sends in flight are bounded by it (raise the hard limit, `ulimit -Hn` or LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve { demo } => commands::serve(&config, demo, shutdown_signal()?).await,
            Command::Import {
                command:
                    ImportCommand::Oneroster {
                        path,
                        district,
                        dry_run,
                        force,
                    },
            } => {
                let run = tidings::import::Run { dry_run, force };
                tidings::import::oneroster(&config, &path, district, run).await
            }
            Command::Bench {
                suite: BenchSuite::Import { students, database },
            } => tidings::bench::import(students, &database).await,
            Command::Bench {
                suite: BenchSuite::Pipeline { shape, database },
            } => tidings::bench::pipeline(&shape, &database).await,
            Command::Bench {
                suite: BenchSuite::Purge { shape, database },
            } => tidings::bench::purge(&shape, &database).await,
            Command::Bench {
                suite:
                    BenchSuite::Fanout {
                        students,
                        channels,
                        database,
                    },
            } => tidings::bench::fanout(students, channels, &database).await,
            Command::Bench {
                suite:
                    BenchSuite::Dispatch {
                        deliveries,
                        processes,
                        in_flight,
                        batch,
                        scheduled,
                        database,
                    },
            } => {
                let shape = tidings::bench::DispatchShape {
                    deliveries,
                    processes,
                    in_flight,
                    batch,
                    scheduled,
                };
                tidings::bench::dispatch(&shape, &database).await
            }
            Command::Bench {
                suite:
                    BenchSuite::Pages {
                        students,
                        samples,
                        database,
                    },
            } => tidings::bench::pages(students, samples.max(1), &database).await,
            Command::Bench {
                suite:
                    BenchSuite::Callbacks {
                        students,
                        concurrency,
                        database,
                    },
            } => tidings::bench::callbacks(students, concurrency, &database).await,
            Command::Migrate => commands::migrate(&config).await,
            Command::Backup { file } => commands::backup(&config, &file).await,
            Command::Sandbox {
                listen,
                callback_base,
            } => commands::sandbox(&config, listen, callback_base, shutdown_signal()?).await,
            Command::Dispatch => commands::dispatch(&config, shutdown_signal()?).await,
            Command::School {
                command:
                    SchoolCommand::QuietHours {
                        school,
                        start,
                        end,
                        timezone,
                        off,
                        district,
                    },
            } => {
                let window = (!off).then_some((start, end, timezone));
                commands::quiet_hours(&config, district, &school, window).await
            }
            Command::District {
                command: DistrictCommand::List,
            } => commands::districts(&config).await,
            Command::District {
                command:
                    DistrictCommand::Create {
                        name,
                        timezone,
                        admin_email,
                        admin_name,
                    },
            } => {
                let new = tidings_core::services::districts::NewDistrict {
                    name: &name,
                    timezone: &timezone,
                    admin_email: &admin_email,
                    admin_name: &admin_name,
                };
                commands::create_district(&config, new).await
            }
            Command::District {
                command: DistrictCommand::Rename { district, name },
            } => commands::rename_district(&config, district, &name).await,
            Command::District {
                command: DistrictCommand::Suspend { district },
            } => commands::suspend_district(&config, district, true).await,
            Command::District {
                command: DistrictCommand::Resume { district },
            } => commands::suspend_district(&config, district, false).await,
            Command::District {
                command: DistrictCommand::Operator { email, revoke },
            } => commands::set_operator(&config, &email, !revoke).await,
            Command::District {
                command:
                    DistrictCommand::Quotas {
                        district,
                        max_recipients_per_message,
                        max_messages_per_hour,
                    },
            } => {
                commands::quotas(
                    &config,
                    district,
                    max_recipients_per_message,
                    max_messages_per_hour,
                )
                .await
            }
            Command::District {
                command: DistrictCommand::Retention { district, change },
            } => commands::retention(&config, district, change).await,
            Command::Log {
                command: LogCommand::Status,
            } => commands::log_status(&config).await,
            Command::Log {
                command:
                    LogCommand::Rewind {
                        lane,
                        partition,
                        from_offset,
                    },
            } => commands::rewind(&config, lane, partition, from_offset).await,
            Command::Guardian {
                command: GuardianCommand::Export { guardian, district },
            } => commands::guardian_request(&config, district, &guardian, false).await,
            Command::Guardian {
                command: GuardianCommand::Erase { guardian, district },
            } => commands::guardian_request(&config, district, &guardian, true).await,
            Command::Purge { district, dry_run } => {
                commands::purge(&config, district, dry_run).await
            }
            Command::Token {
                command:
                    TokenCommand::Create {
                        email,
                        name,
                        expires_days,
                    },
            } => commands::create_token(&config, &email, &name, expires_days).await,
            Command::Token {
                command: TokenCommand::List { district },
            } => commands::list_tokens(&config, district).await,
            Command::Token {
                command: TokenCommand::Revoke { id, district },
            } => commands::revoke_token(&config, district, id).await,
            Command::LinkKeys {
                command: LinkKeysCommand::Rotate,
            } => commands::rotate_link_keys(&config),
        }
    })
}

/// Logs to stderr, as text or JSON; with `otlp_endpoint`, spans to the collector too.
fn init_tracing(config: &Config) -> anyhow::Result<Option<tidings::traces::Traces>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("TIDINGS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
    };
    // Colours only for a person at a terminal: a log file or a collector gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let logs = match config.log_format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let (spans, traces) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let (layer, traces) = tidings::traces::layer(endpoint, &config.otlp_service_name)?;
            // Spans at info and above whatever TIDINGS_LOG says: a quiet log still
            // exports every request's and send's span.
            let spans = tracing_subscriber::EnvFilter::new("info,sqlx=warn");
            (Some(layer.with_filter(spans)), Some(traces))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(spans)
        .init();
    Ok(traces)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed here, before the
/// server starts, so that a signal arriving during start-up is not fatal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
