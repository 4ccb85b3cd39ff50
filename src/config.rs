//! Configuration: defaults, then a TOML file (`--config FILE`), then `TIDINGS_*`
//! environment variables, each overriding the one before. Secrets (the database password,
//! provider keys) belong in the environment or in files readable only by the service,
//! never in logs: [`Config::database_url_redacted`] is what may be printed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use tidings_core::link::LinkKeys;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `sqlite://PATH` (embedded, created if missing) or `postgres://USER:PASSWORD@HOST/DB`.
    /// Env: `TIDINGS_DATABASE_URL`.
    pub database_url: String,
    /// Address the HTTP server binds. Env: `TIDINGS_LISTEN`.
    pub listen: SocketAddr,
    /// An operator address of its own for `/metrics` (e.g. `127.0.0.1:9464`, or a
    /// management network's address), where Prometheus scrapes it; `/metrics` is then not
    /// served on `listen` at all. Unset: `/metrics` is on `listen` but answers only a
    /// scraper on this machine connecting directly (from loopback, with no proxy's
    /// forwarding header), never a client through the internet. Env:
    /// `TIDINGS_METRICS_LISTEN`.
    pub metrics_listen: Option<SocketAddr>,
    /// An OpenTelemetry collector's OTLP/HTTP address (e.g. `http://127.0.0.1:4318`):
    /// traces of requests, sends and provider reports are exported there. Unset: no
    /// traces. Env: `TIDINGS_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` traces carry. Env: `TIDINGS_OTLP_SERVICE_NAME`.
    pub otlp_service_name: String,
    /// Addresses of the reverse proxies in front of Tidings: from these peers the client's
    /// address is read from `X-Forwarded-For` (for per-client limits); from anyone else
    /// that header is ignored. Env: `TIDINGS_TRUSTED_PROXIES`, e.g. `["127.0.0.1"]`.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// HTTP connections served at once; further clients wait to be accepted.
    /// Env: `TIDINGS_HTTP_MAX_CONNECTIONS`.
    pub http_max_connections: usize,
    /// Seconds a client has to send a request's header, and to start its next request on
    /// a kept-alive connection. Env: `TIDINGS_HTTP_HEADER_TIMEOUT_SECONDS`.
    pub http_header_timeout_seconds: u64,
    /// Longest wait, in seconds, for the next piece of a request body.
    /// Env: `TIDINGS_HTTP_BODY_TIMEOUT_SECONDS`.
    pub http_body_timeout_seconds: u64,
    /// Connections kept open to the database. Env: `TIDINGS_DATABASE_MAX_CONNECTIONS`.
    pub database_max_connections: u32,
    /// Apply pending migrations when `serve` starts. Turn off where migrations are run as a
    /// separate deployment step (`tidings migrate`). Env: `TIDINGS_MIGRATE_ON_START`.
    pub migrate_on_start: bool,
    /// `text` for people, `json` for log collectors. Env: `TIDINGS_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// Name of the district created on an empty database. Env: `TIDINGS_DISTRICT_NAME`.
    pub district_name: String,
    /// Sign-in email of the administrator created on an empty database.
    /// Env: `TIDINGS_FIRST_ADMIN_EMAIL`.
    pub first_admin_email: String,
    /// Country (ISO 3166 code) for roster phone numbers written without a country code.
    /// Env: `TIDINGS_DEFAULT_PHONE_REGION`.
    pub default_phone_region: String,
    /// A roster import that would delete (soft-delete) more than this percentage of any of
    /// the district's schools, students, guardians, staff or classes is held back unless
    /// forced (`--force`, `force=true`); 100 turns the check off. Env:
    /// `TIDINGS_ROSTER_MAX_DELETE_PERCENT`.
    pub roster_max_delete_percent: u8,
    /// Partitions per lane of the delivery log; deliveries of one guardian share one.
    /// Env: `TIDINGS_LOG_PARTITIONS`.
    pub log_partitions: u32,
    /// Route every channel to the in-process provider sandbox: messages go through the
    /// whole pipeline and reach no one. For demos, staging and load tests. Env:
    /// `TIDINGS_SANDBOX`.
    pub sandbox: bool,
    /// Failures the sandbox injects, as fractions of sends: `transient`, `permanent`,
    /// `in_doubt`, and the `seed` of their schedule. Env: `TIDINGS_SANDBOX_FAULTS`, e.g.
    /// `{transient=0.1,seed=7}`.
    pub sandbox_faults: tidings_sandbox::Faults,
    /// A file the sandbox appends each accepted send's idempotency key to (for counting
    /// duplicates across restarts). Env: `TIDINGS_SANDBOX_JOURNAL`.
    pub sandbox_journal: Option<std::path::PathBuf>,
    /// Log entries a dispatcher reads and sends per partition at a time.
    /// Env: `TIDINGS_DISPATCH_BATCH`.
    pub dispatch_batch: u32,
    /// Sends a dispatcher process has in flight at once, across partitions (it works on
    /// `dispatch_in_flight / dispatch_batch` partitions side by side).
    /// Env: `TIDINGS_DISPATCH_IN_FLIGHT`.
    pub dispatch_in_flight: u32,
    /// Sends a dispatcher process has in flight at once to one provider.
    /// Env: `TIDINGS_PROVIDER_IN_FLIGHT`.
    pub provider_in_flight: u32,
    /// While a more urgent lane has work, a lower lane with work still gets one batch in
    /// this many (1: emergencies strictly first). Env: `TIDINGS_LOWER_LANE_EVERY`.
    pub lower_lane_every: u32,
    /// Seconds a dispatcher's partition lease lasts without renewal: how soon the
    /// partitions of a dispatcher that died move to the others. Env: `TIDINGS_LEASE_SECONDS`.
    pub lease_seconds: u64,
    /// Seconds after which a send whose dispatcher never recorded the provider's answer
    /// (it died during the call) is taken up again as in doubt, when nothing else has
    /// settled it (a first send is taken up at once by whoever takes its partition over;
    /// a retry waits this long). Keep it well above the providers' `timeout_seconds`.
    /// Env: `TIDINGS_IN_DOUBT_SECONDS`.
    pub in_doubt_seconds: u64,
    /// Seconds to wait before each attempt of a delivery (the first is normally 0); its
    /// length is the number of attempts. Each wait is jittered between zero and the value.
    /// Env: `TIDINGS_RETRY_SCHEDULE`, e.g. `[0, 5, 300]`.
    pub retry_schedule: Vec<f64>,
    /// This service's address as providers and guardians reach it, e.g.
    /// `https://tidings.example.org`: status-callback URLs and acknowledgment links are
    /// built on it, and provider signatures are checked against it (proxies rewrite the
    /// host a request arrives with). Without it providers report no delivery status.
    /// Env: `TIDINGS_PUBLIC_URL`.
    pub public_url: Option<String>,
    /// The Twilio account SMS goes through (see the README). Each field can be set alone
    /// with `TIDINGS_TWILIO__FIELD`; the auth token (or API key secret) comes from
    /// `TIDINGS_TWILIO_AUTH_TOKEN` or the file named by `auth_token_file`, never from here.
    pub twilio: Option<TwilioSettings>,
    /// The SMTP relay email goes through (see the README). Each field can be set alone
    /// with `TIDINGS_SMTP__FIELD`; the password comes from `TIDINGS_SMTP_PASSWORD` or the
    /// file named by `password_file`, never from here.
    pub smtp: Option<SmtpSettings>,
    /// The Kannel gateway SMS goes through instead of Twilio (see the README). Each field
    /// can be set alone with `TIDINGS_KANNEL__FIELD`; the sendsms password comes from
    /// `TIDINGS_KANNEL_PASSWORD` or `password_file`, the delivery-report secret from
    /// `TIDINGS_KANNEL_DLR_SECRET` or `dlr_secret_file`.
    pub kannel: Option<KannelSettings>,
    /// Apple push (APNs) for the iOS app (see the README). The `.p8` signing key comes
    /// from `TIDINGS_APNS_KEY` (its contents) or `key_file`.
    pub apns: Option<ApnsSettings>,
    /// Firebase Cloud Messaging for the Android app (see the README). The service-account
    /// key file comes from `TIDINGS_FCM_SERVICE_ACCOUNT` (its contents) or
    /// `service_account_file`.
    pub fcm: Option<FcmSettings>,
    /// Web Push to the guardian app in browsers (see the README): on unless `enabled` is
    /// false, with a VAPID key of the install's own, created on first start. Each field
    /// can be set alone with `TIDINGS_WEB_PUSH__FIELD`; the key comes from
    /// `TIDINGS_VAPID_KEY` (its PEM) or `key_file`.
    pub web_push: WebPushSettings,
    /// How email providers' event webhooks (delivered, bounced, complaints) are checked:
    /// `sendgrid_public_key` (the verification key from SendGrid's console) and the
    /// Mailgun signing key from `TIDINGS_MAILGUN_SIGNING_KEY` or `mailgun_signing_key_file`.
    pub email_events: Option<EmailEventSettings>,
    /// The answer to a guardian's HELP by SMS; unset: "{district_name}: school
    /// notifications. Reply STOP to stop, START to resume. Msg & data rates may apply."
    /// Env: `TIDINGS_SMS_HELP_TEXT`.
    pub sms_help_text: Option<String>,
    /// A text that acknowledges the guardian's latest message asking for it, e.g. `1` or
    /// `OK`; unset: acknowledging by SMS is off. Env: `TIDINGS_SMS_ACK_KEYWORD`.
    #[serde(default, deserialize_with = "text_or_number")]
    pub sms_ack_keyword: Option<String>,
    /// The file of keys acknowledgment and unsubscribe links are signed with, created
    /// (readable by its owner only) when missing. `TIDINGS_LINK_KEYS` (the file's
    /// contents) wins over it. Every Tidings process of a deployment needs the same keys.
    /// Env: `TIDINGS_LINK_KEYS_FILE`.
    pub link_keys_file: std::path::PathBuf,
    /// Days an acknowledgment link keeps working. Env: `TIDINGS_ACK_LINK_DAYS`.
    pub ack_link_days: u32,
    /// How far a signed provider webhook's timestamp (Mailgun, SendGrid) may be from now,
    /// either way, in seconds: a captured request is refused after this. Env:
    /// `TIDINGS_CALLBACK_MAX_AGE_SECONDS`.
    pub callback_max_age_seconds: u64,
    /// Days the callback inbox keeps applied and ignored provider events (the deliveries'
    /// own event trail stays). Env: `TIDINGS_CALLBACK_RETENTION_DAYS`.
    pub callback_retention_days: u32,
    /// Days the callback inbox keeps its sample of refused requests. Env:
    /// `TIDINGS_CALLBACK_REJECTED_RETENTION_DAYS`.
    pub callback_rejected_retention_days: u32,
    /// Minutes between two purges of what each district keeps past its retention
    /// (`tidings district retention`) and of the delivery log's consumed entries; the
    /// first runs at start. 0 turns the scheduled purge off (`tidings purge` still
    /// works). Env: `TIDINGS_PURGE_EVERY_MINUTES`.
    pub purge_every_minutes: u64,
    /// Hours the delivery log keeps an entry every dispatcher has finished with. Env:
    /// `TIDINGS_LOG_RETENTION_HOURS`.
    pub log_retention_hours: u32,
    /// Refused provider requests kept per provider and minute (each cut to 2 KB); the
    /// rest are only counted. Env: `TIDINGS_CALLBACK_REJECTED_SAMPLES`.
    pub callback_rejected_samples: u32,
}

/// Email event webhooks, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailEventSettings {
    #[serde(default)]
    pub sendgrid_public_key: Option<String>,
    #[serde(default)]
    pub mailgun_signing_key_file: Option<std::path::PathBuf>,
}

/// APNs, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSettings {
    /// The signing key's id (10 characters).
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id.
    pub topic: String,
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// `https://api.push.apple.com` (production apps), `https://api.sandbox.push.apple.com`
    /// (development builds), or a provider sandbox.
    #[serde(default = "apns_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub max_per_second: Option<u32>,
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
}

fn apns_endpoint() -> String {
    tidings_channel_adapters::apns::PRODUCTION.into()
}

/// FCM, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    #[serde(default)]
    pub service_account_file: Option<std::path::PathBuf>,
    #[serde(default = "fcm_api_base")]
    pub api_base: String,
    #[serde(default)]
    pub max_per_second: Option<u32>,
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
}

fn fcm_api_base() -> String {
    tidings_channel_adapters::fcm::API_BASE.into()
}

/// Web Push, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebPushSettings {
    pub enabled: bool,
    /// Who the push services contact about these sends (RFC 8292): `mailto:ADDRESS` or
    /// an `https://` URL. Unset: `public_url`, when it is https (Web Push stays off
    /// otherwise: browsers push only to an app served over https).
    pub subject: Option<String>,
    /// The VAPID private key (PKCS#8 PEM), created readable by its owner only when
    /// missing. Every process of a deployment needs the same key: browsers subscribed
    /// with its public half.
    pub key_file: std::path::PathBuf,
    /// The push services that may be called (`https://host`, `https://*.domain`): the
    /// browsers' own by default. A subscription elsewhere is refused and retired.
    pub allowed_origins: Vec<String>,
    /// Sends a second to each push service.
    pub max_per_second: Option<u32>,
    pub timeout_seconds: f64,
}

impl Default for WebPushSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            subject: None,
            key_file: "tidings-vapid-key".into(),
            allowed_origins: tidings_channel_adapters::webpush::KNOWN_PUSH_SERVICES
                .iter()
                .map(|o| (*o).to_owned())
                .collect(),
            max_per_second: None,
            timeout_seconds: default_timeout_seconds(),
        }
    }
}

/// A Kannel gateway, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KannelSettings {
    /// smsbox's sendsms URL, e.g. `http://127.0.0.1:13013/cgi-bin/sendsms`.
    pub sendsms_url: String,
    /// The `sendsms-user`.
    pub username: String,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub dlr_secret_file: Option<std::path::PathBuf>,
    /// Sender number or id; the user's `default-sender` if unset.
    #[serde(default, deserialize_with = "phone_or_text")]
    pub from: Option<String>,
    /// Send through this `smsc-id` only.
    #[serde(default)]
    pub smsc: Option<String>,
    #[serde(default)]
    pub max_per_second: Option<u32>,
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
}

/// An SMTP relay, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    /// 587 for STARTTLS, 465 for implicit TLS, 25 for a local relay.
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `starttls` (required, not opportunistic), `implicit`, or `none` (only for a relay on
    /// this machine or a trusted network).
    #[serde(default = "default_smtp_security")]
    pub security: String,
    /// User for AUTH; unset: no AUTH.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// `From:`, e.g. `Lincoln District <alerts@district.example.org>`.
    pub from: String,
    /// The mailbox of `List-Unsubscribe: <mailto:…>`; the sender's address if unset.
    #[serde(default)]
    pub unsubscribe_mailto: Option<String>,
    /// A PEM file with the CA certificate of a relay using a private CA.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Connections kept open to the relay.
    #[serde(default = "default_smtp_pool")]
    pub pool_size: u32,
    #[serde(default)]
    pub max_per_second: Option<u32>,
    /// Seconds a send may take, from connecting to the relay's answer, before it is in doubt.
    #[serde(default = "default_smtp_timeout")]
    pub timeout_seconds: f64,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_smtp_security() -> String {
    "starttls".into()
}

fn default_smtp_pool() -> u32 {
    4
}

fn default_smtp_timeout() -> f64 {
    30.0
}

/// Twilio, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    /// `AC…`.
    pub account_sid: String,
    /// `SK…`, when signing in with an API key rather than the account's auth token.
    #[serde(default)]
    pub api_key_sid: Option<String>,
    /// A file holding the auth token (or the API key's secret), readable only by the service.
    #[serde(default)]
    pub auth_token_file: Option<std::path::PathBuf>,
    /// The sending number (E.164) or alphanumeric sender id…
    #[serde(default, deserialize_with = "phone_or_text")]
    pub from: Option<String>,
    /// …or a messaging service (`MG…`).
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// The account's sending rate in messages per second (a long code sends 1, a short
    /// code 100); unset means no limit of ours.
    #[serde(default)]
    pub max_per_second: Option<u32>,
    /// Where Twilio's API is; a sandbox's address in tests and staging.
    #[serde(default = "twilio_api_base")]
    pub api_base: String,
    /// Seconds to wait for Twilio's answer before the send is in doubt.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
}

/// A sender: text, or a number, which is what `+15551234567` becomes when it arrives
/// through an environment variable (figment reads it as an integer).
fn phone_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sender {
        Text(String),
        Number(u64),
    }
    Ok(Option::<Sender>::deserialize(d)?.map(|s| match s {
        Sender::Text(text) => text,
        Sender::Number(n) => format!("+{n}"),
    }))
}

/// A word that may be a number (`1`), which is what it becomes through an environment
/// variable.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Word {
        Text(String),
        Number(i64),
    }
    Ok(Option::<Word>::deserialize(d)?.map(|w| match w {
        Word::Text(text) => text,
        Word::Number(n) => n.to_string(),
    }))
}

fn twilio_api_base() -> String {
    tidings_channel_adapters::twilio::API_BASE.into()
}

fn default_timeout_seconds() -> f64 {
    15.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "sqlite://tidings.db".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            otlp_endpoint: None,
            otlp_service_name: "tidings".into(),
            trusted_proxies: Vec::new(),
            http_max_connections: 1024,
            http_header_timeout_seconds: 10,
            http_body_timeout_seconds: 10,
            database_max_connections: 10,
            migrate_on_start: true,
            log_format: LogFormat::Text,
            district_name: "My District".into(),
            first_admin_email: "admin@tidings.local".into(),
            default_phone_region: "US".into(),
            roster_max_delete_percent: tidings_core::roster::DEFAULT_MAX_DELETE_PERCENT,
            log_partitions: tidings_core::log::DEFAULT_PARTITIONS,
            sandbox: false,
            sandbox_faults: tidings_sandbox::Faults::default(),
            sandbox_journal: None,
            dispatch_batch: 256,
            dispatch_in_flight: 4096,
            provider_in_flight: 2048,
            lower_lane_every: 8,
            lease_seconds: 15,
            in_doubt_seconds: 120,
            retry_schedule: vec![0.0, 5.0, 300.0, 1_800.0, 7_200.0, 18_000.0],
            public_url: None,
            twilio: None,
            smtp: None,
            kannel: None,
            apns: None,
            fcm: None,
            web_push: WebPushSettings::default(),
            email_events: None,
            sms_help_text: None,
            sms_ack_keyword: None,
            link_keys_file: "tidings-link-keys".into(),
            ack_link_days: tidings_core::link::DEFAULT_ACK_LINK_DAYS,
            callback_max_age_seconds: tidings_callbacks::DEFAULT_MAX_AGE.as_secs(),
            callback_retention_days: 30,
            callback_rejected_retention_days: 7,
            purge_every_minutes: 60,
            log_retention_hours: tidings_core::retention::LOG_DEFAULT_HOURS,
            callback_rejected_samples: 20,
        }
    }
}

impl Config {
    /// Defaults < `file` < environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::new().merge(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("TIDINGS_").split("__"))
            .extract()
            .map_err(|e| anyhow::anyhow!(one_line(&e)))
            .context("invalid configuration")?;
        if config.log_partitions == 0 || config.log_partitions > 4096 {
            bail!("invalid configuration: log_partitions must be between 1 and 4096");
        }
        if config.dispatch_batch == 0 || config.dispatch_batch > 10_000 {
            bail!("invalid configuration: dispatch_batch must be between 1 and 10000");
        }
        if config.dispatch_in_flight == 0 || config.provider_in_flight == 0 {
            bail!("invalid configuration: dispatch_in_flight and provider_in_flight must be at least 1");
        }
        if config.lower_lane_every == 0 {
            bail!("invalid configuration: lower_lane_every must be at least 1");
        }
        if config.lease_seconds < 2 {
            bail!("invalid configuration: lease_seconds must be at least 2");
        }
        if config.log_retention_hours == 0 {
            bail!("invalid configuration: log_retention_hours must be at least 1");
        }
        if config.in_doubt_seconds < 2 {
            bail!("invalid configuration: in_doubt_seconds must be at least 2");
        }
        if config.retry_schedule.is_empty()
            || config
                .retry_schedule
                .iter()
                .any(|s| !s.is_finite() || *s < 0.0)
        {
            bail!("invalid configuration: retry_schedule must list one or more delays in seconds, each 0 or more");
        }
        if let Some(problem) = config.sandbox_faults.problem() {
            bail!("invalid configuration: sandbox_faults: {problem}");
        }
        if let Some(url) = &config.public_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains('?') {
                bail!("invalid configuration: public_url must be an http(s) URL without a query, e.g. https://tidings.example.org");
            }
        }
        if let Some(twilio) = &config.twilio {
            if !(twilio.timeout_seconds.is_finite() && twilio.timeout_seconds > 0.0) {
                bail!("invalid configuration: twilio.timeout_seconds must be more than 0");
            }
        }
        if config.twilio.is_some() && config.kannel.is_some() {
            bail!("invalid configuration: SMS goes through one provider: configure twilio or kannel, not both");
        }
        if let Some(kannel) = &config.kannel {
            if !(kannel.timeout_seconds.is_finite() && kannel.timeout_seconds > 0.0) {
                bail!("invalid configuration: kannel.timeout_seconds must be more than 0");
            }
        }
        let push_timeouts = [
            config.apns.as_ref().map(|a| a.timeout_seconds),
            config.fcm.as_ref().map(|f| f.timeout_seconds),
        ];
        if push_timeouts
            .into_iter()
            .flatten()
            .any(|t| !(t.is_finite() && t > 0.0))
        {
            bail!("invalid configuration: apns.timeout_seconds and fcm.timeout_seconds must be more than 0");
        }
        if let Some(smtp) = &config.smtp {
            if !(smtp.timeout_seconds.is_finite() && smtp.timeout_seconds > 0.0) {
                bail!("invalid configuration: smtp.timeout_seconds must be more than 0");
            }
            if !["starttls", "implicit", "none"].contains(&smtp.security.as_str()) {
                bail!("invalid configuration: smtp.security must be starttls, implicit or none");
            }
        }
        if config.database_max_connections == 0 {
            bail!("invalid configuration: database_max_connections must be at least 1");
        }
        if config.http_max_connections == 0
            || config.http_header_timeout_seconds == 0
            || config.http_body_timeout_seconds == 0
        {
            bail!("invalid configuration: http_max_connections, http_header_timeout_seconds and http_body_timeout_seconds must be at least 1");
        }
        Ok(config)
    }

    /// How this process's dispatcher runs.
    /// The link keys: from `TIDINGS_LINK_KEYS`, else `link_keys_file`, which is created
    /// with one fresh key when it does not exist.
    pub fn link_keys(&self) -> anyhow::Result<LinkKeys> {
        if let Ok(value) = std::env::var("TIDINGS_LINK_KEYS") {
            if !value.trim().is_empty() {
                return LinkKeys::parse(&value).context("TIDINGS_LINK_KEYS");
            }
        }
        let path = &self.link_keys_file;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                LinkKeys::parse(&text).with_context(|| format!("link keys file {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = LinkKeys::generate();
                match create_private(path, &keys.to_file_text()) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "created a link signing key");
                        Ok(keys)
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.link_keys(),
                    Err(e) => Err(e).with_context(|| {
                        format!("cannot create the link keys file {}", path.display())
                    }),
                }
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot read the link keys file {}", path.display()))
            }
        }
    }

    /// Where links point and what signs them; `None` without a `public_url`.
    pub fn links(&self, keys: &std::sync::Arc<LinkKeys>) -> Option<tidings_core::link::Links> {
        let base = given(&self.public_url)?;
        Some(tidings_core::link::Links::new(
            &base,
            keys.clone(),
            self.ack_link_days.max(1),
        ))
    }

    pub fn dispatcher(
        &self,
        links: Option<tidings_core::link::Links>,
    ) -> tidings_dispatcher::Config {
        tidings_dispatcher::Config {
            links,
            sms_ack_keyword: given(&self.sms_ack_keyword),
            partitions: self.log_partitions,
            batch: self.dispatch_batch,
            max_in_flight: self.dispatch_in_flight,
            connections: self.database_max_connections,
            concurrency: tidings_dispatcher::ConcurrencyPolicy {
                max: self.provider_in_flight,
                ..Default::default()
            },
            lower_lane_every: self.lower_lane_every,
            lease_ttl: std::time::Duration::from_secs(self.lease_seconds),
            in_doubt_after: std::time::Duration::from_secs(self.in_doubt_seconds),
            retry: tidings_dispatcher::RetryPolicy {
                schedule: self
                    .retry_schedule
                    .iter()
                    .map(|s| std::time::Duration::from_secs_f64(*s))
                    .collect(),
            },
            ..tidings_dispatcher::Config::default()
        }
    }

    /// The Twilio adapter, when Twilio is configured.
    pub fn twilio(&self) -> anyhow::Result<Option<tidings_channel_adapters::twilio::Twilio>> {
        let Some(t) = &self.twilio else {
            return Ok(None);
        };
        let secret = secret("TIDINGS_TWILIO_AUTH_TOKEN", t.auth_token_file.as_deref()).context(
            "twilio: no auth token: set TIDINGS_TWILIO_AUTH_TOKEN or twilio.auth_token_file",
        )?;
        let status_callback = self
            .public_url
            .as_ref()
            .map(|base| format!("{}/callbacks/twilio/status", base.trim_end_matches('/')));
        if status_callback.is_none() {
            tracing::warn!("public_url is not set: Twilio will not report delivery status");
        }
        let config = tidings_channel_adapters::twilio::TwilioConfig {
            account_sid: t.account_sid.clone(),
            api_key_sid: given(&t.api_key_sid),
            secret,
            from: given(&t.from),
            messaging_service_sid: given(&t.messaging_service_sid),
            api_base: t.api_base.clone(),
            status_callback,
            timeouts: tidings_channel_adapters::http::Timeouts {
                request: std::time::Duration::from_secs_f64(t.timeout_seconds),
                ..Default::default()
            },
            max_per_second: t.max_per_second.and_then(std::num::NonZeroU32::new),
            concurrency: 8,
        };
        Ok(Some(tidings_channel_adapters::twilio::Twilio::new(config)?))
    }

    /// The Kannel adapter, when Kannel is configured.
    pub fn kannel(&self) -> anyhow::Result<Option<tidings_channel_adapters::kannel::Kannel>> {
        let Some(k) = &self.kannel else {
            return Ok(None);
        };
        let password = secret("TIDINGS_KANNEL_PASSWORD", k.password_file.as_deref()).context(
            "kannel: no sendsms password: set TIDINGS_KANNEL_PASSWORD or kannel.password_file",
        )?;
        let dlr_url = self
            .public_url
            .as_ref()
            .map(|base| format!("{}/callbacks/kannel/dlr", base.trim_end_matches('/')));
        let dlr_secret = match dlr_url {
            Some(_) => secret("TIDINGS_KANNEL_DLR_SECRET", k.dlr_secret_file.as_deref())
                .context("kannel: delivery reports need a secret: set TIDINGS_KANNEL_DLR_SECRET or kannel.dlr_secret_file (16 characters or more)")?,
            None => {
                tracing::warn!("public_url is not set: Kannel will not report delivery");
                String::new()
            }
        };
        let config = tidings_channel_adapters::kannel::KannelConfig {
            sendsms_url: k.sendsms_url.clone(),
            username: k.username.clone(),
            password,
            from: given(&k.from),
            smsc: given(&k.smsc),
            dlr_url,
            dlr_secret,
            timeouts: tidings_channel_adapters::http::Timeouts {
                request: std::time::Duration::from_secs_f64(k.timeout_seconds),
                ..Default::default()
            },
            max_per_second: k.max_per_second.and_then(std::num::NonZeroU32::new),
            concurrency: 8,
        };
        Ok(Some(tidings_channel_adapters::kannel::Kannel::new(config)?))
    }

    /// How provider callbacks are checked: the secrets of the configured providers.
    /// What each HTTP connection may cost (`tidings_api::server`).
    pub fn serve_limits(&self) -> tidings_api::server::ServeLimits {
        tidings_api::server::ServeLimits {
            max_connections: self.http_max_connections,
            header_read_timeout: std::time::Duration::from_secs(self.http_header_timeout_seconds),
            body_read_timeout: std::time::Duration::from_secs(self.http_body_timeout_seconds),
            ..tidings_api::server::ServeLimits::default()
        }
    }

    pub fn callbacks(&self) -> anyhow::Result<tidings_callbacks::CallbackConfig> {
        let days = |n: u32| std::time::Duration::from_secs(u64::from(n.max(1)) * 86_400);
        let twilio_auth_token = match &self.twilio {
            Some(t) => Some(secret(
                "TIDINGS_TWILIO_AUTH_TOKEN",
                t.auth_token_file.as_deref(),
            )?),
            None => None,
        };
        let kannel_dlr_secret = match (&self.kannel, &self.public_url) {
            (Some(k), Some(_)) => Some(secret(
                "TIDINGS_KANNEL_DLR_SECRET",
                k.dlr_secret_file.as_deref(),
            )?),
            _ => None,
        };
        let events = self.email_events.as_ref();
        let mailgun_file = events.and_then(|e| e.mailgun_signing_key_file.as_deref());
        let mailgun_signing_key = secret("TIDINGS_MAILGUN_SIGNING_KEY", mailgun_file).ok();
        Ok(tidings_callbacks::CallbackConfig {
            public_url: self.public_url.clone(),
            twilio_auth_token,
            kannel_dlr_secret,
            sendgrid_public_key: events.and_then(|e| given(&e.sendgrid_public_key)),
            mailgun_signing_key,
            help_text: given(&self.sms_help_text).unwrap_or_else(|| {
                format!(
                    "{}: school notifications. Reply STOP to stop, START to resume. Msg & data rates may apply.",
                    self.district_name
                )
            }),
            district_name: self.district_name.clone(),
            ack_keyword: given(&self.sms_ack_keyword),
            max_age: std::time::Duration::from_secs(self.callback_max_age_seconds.max(1)),
            // The in-process sandbox sends email as itself: reports on it are its.
            email_adapters: if self.sandbox {
                vec!["smtp".to_owned(), "sandbox".to_owned()]
            } else {
                vec!["smtp".to_owned()]
            },
            retention: tidings_callbacks::Retention {
                finished: days(self.callback_retention_days),
                rejected: days(self.callback_rejected_retention_days),
                ..Default::default()
            },
            refused_samples: tidings_callbacks::sampling::SamplePolicy {
                per_window: self.callback_rejected_samples,
                ..Default::default()
            },
            body_caps: tidings_callbacks::BodyCaps::default(),
            clock: std::sync::Arc::new(tidings_core::clock::SystemClock),
        })
    }

    /// The push adapter, when APNs, FCM or Web Push is on.
    /// `web_push_key`: the Web Push key as read at start (`vapid_key`), when it is on.
    pub fn push(
        &self,
        web_push_key: Option<Arc<tidings_channel_adapters::webpush::VapidKey>>,
    ) -> anyhow::Result<Option<tidings_channel_adapters::push::Push>> {
        use tidings_channel_adapters::{apns, fcm, http::Timeouts};
        let timeouts = |seconds: f64| Timeouts {
            request: std::time::Duration::from_secs_f64(seconds),
            ..Default::default()
        };
        let apns = match &self.apns {
            Some(a) => {
                let key_pem = secret("TIDINGS_APNS_KEY", a.key_file.as_deref())
                    .context("apns: no signing key: set TIDINGS_APNS_KEY or apns.key_file")?;
                Some(apns::Apns::new(apns::ApnsConfig {
                    key_pem,
                    key_id: a.key_id.clone(),
                    team_id: a.team_id.clone(),
                    topic: a.topic.clone(),
                    endpoint: a.endpoint.clone(),
                    timeouts: timeouts(a.timeout_seconds),
                    max_per_second: a.max_per_second.and_then(std::num::NonZeroU32::new),
                    concurrency: 16,
                    clock: Arc::new(tidings_core::clock::SystemClock),
                })?)
            }
            None => None,
        };
        let fcm = match &self.fcm {
            Some(f) => {
                let json = secret("TIDINGS_FCM_SERVICE_ACCOUNT", f.service_account_file.as_deref())
                    .context("fcm: no service account: set TIDINGS_FCM_SERVICE_ACCOUNT or fcm.service_account_file")?;
                Some(fcm::Fcm::new(fcm::FcmConfig {
                    account: fcm::Fcm::service_account(&json)?,
                    api_base: f.api_base.clone(),
                    timeouts: timeouts(f.timeout_seconds),
                    max_per_second: f.max_per_second.and_then(std::num::NonZeroU32::new),
                    concurrency: 16,
                    clock: Arc::new(tidings_core::clock::SystemClock),
                })?)
            }
            None => None,
        };
        let web_push = self.web_push(web_push_key)?;
        Ok(tidings_channel_adapters::push::Push::new(
            apns, fcm, web_push,
        ))
    }

    /// The VAPID key, when Web Push is on: from `TIDINGS_VAPID_KEY`, else `key_file`,
    /// created with a fresh key when it does not exist.
    pub fn vapid_key(
        &self,
    ) -> anyhow::Result<Option<Arc<tidings_channel_adapters::webpush::VapidKey>>> {
        use tidings_channel_adapters::webpush::VapidKey;
        if !self.web_push.enabled || self.web_push_subject().is_none() {
            return Ok(None);
        }
        let pem = match std::env::var("TIDINGS_VAPID_KEY") {
            Ok(pem) if !pem.trim().is_empty() => pem,
            _ => {
                let path = &self.web_push.key_file;
                match std::fs::read_to_string(path) {
                    Ok(pem) => pem,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let pem = VapidKey::generate_pem();
                        match create_private(path, &pem) {
                            Ok(()) => {
                                tracing::info!(path = %path.display(), "created a Web Push (VAPID) key");
                                pem
                            }
                            // Another process created it first: use theirs.
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                                return self.vapid_key()
                            }
                            Err(e) => {
                                return Err(e).with_context(|| {
                                    format!("cannot create the VAPID key file {}", path.display())
                                })
                            }
                        }
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("cannot read the VAPID key file {}", path.display())
                        })
                    }
                }
            }
        };
        let key = VapidKey::from_pem(&pem)
            .context("the VAPID key (TIDINGS_VAPID_KEY or web_push.key_file)")?;
        Ok(Some(Arc::new(key)))
    }

    /// Who push services contact: `web_push.subject`, else an https `public_url`.
    fn web_push_subject(&self) -> Option<String> {
        given(&self.web_push.subject)
            .or_else(|| given(&self.public_url).filter(|url| url.starts_with("https://")))
    }

    /// The Web Push adapter, with `key` when Web Push is on.
    pub fn web_push(
        &self,
        key: Option<Arc<tidings_channel_adapters::webpush::VapidKey>>,
    ) -> anyhow::Result<Option<tidings_channel_adapters::webpush::WebPush>> {
        use tidings_channel_adapters::webpush::{WebPush, WebPushConfig};
        let (Some(key), Some(subject)) = (key, self.web_push_subject()) else {
            return Ok(None);
        };
        let w = &self.web_push;
        Ok(Some(WebPush::new(WebPushConfig {
            key,
            subject,
            allowed_origins: w.allowed_origins.clone(),
            app_url: given(&self.public_url),
            timeouts: tidings_channel_adapters::http::Timeouts {
                request: std::time::Duration::from_secs_f64(w.timeout_seconds),
                ..Default::default()
            },
            max_per_second: w.max_per_second.and_then(std::num::NonZeroU32::new),
            concurrency: 16,
            clock: Arc::new(tidings_core::clock::SystemClock),
        })?))
    }

    /// The SMTP adapter, when an SMTP relay is configured.
    pub fn smtp(&self) -> anyhow::Result<Option<tidings_channel_adapters::smtp::Smtp>> {
        use tidings_channel_adapters::smtp::{Security, Smtp, SmtpConfig};
        let Some(m) = &self.smtp else {
            return Ok(None);
        };
        let credentials = match given(&m.username) {
            Some(user) => {
                let password = secret("TIDINGS_SMTP_PASSWORD", m.password_file.as_deref())
                    .context("smtp: a username is set but no password: set TIDINGS_SMTP_PASSWORD or smtp.password_file")?;
                Some((user, password))
            }
            None => None,
        };
        let ca_pem = match &m.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("smtp: cannot read ca_file {}", path.display()))?,
            ),
            None => None,
        };
        let security = match m.security.as_str() {
            "implicit" => Security::Implicit,
            "none" => Security::None,
            _ => Security::StartTls,
        };
        let config = SmtpConfig {
            host: m.host.clone(),
            port: m.port,
            security,
            ca_pem,
            credentials,
            from: m.from.clone(),
            unsubscribe_mailto: given(&m.unsubscribe_mailto),
            timeout: std::time::Duration::from_secs_f64(m.timeout_seconds),
            pool_size: m.pool_size,
            max_per_second: m.max_per_second.and_then(std::num::NonZeroU32::new),
        };
        Ok(Some(Smtp::new(config)?))
    }

    pub fn database_url_redacted(&self) -> String {
        tidings_core::store::redact_url(&self.database_url)
    }
}

/// An optional setting, where an empty value (`TIDINGS_TWILIO__FROM=`) means unset.
fn given(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.trim().is_empty())
}

/// Creates a file only its owner can read with `text`, whole or not at all: written
/// beside it, then linked into place unless the path exists by then (`AlreadyExists`).
pub fn create_private(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates its files readable by their owner only.
    let mut file = tempfile::Builder::new()
        .prefix(".tidings-")
        .tempfile_in(dir)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist_noclobber(path).map(drop).map_err(|e| e.error)
}

/// A secret from the environment variable `env`, else from `file` (trailing newline
/// removed). Never from the configuration file itself, never logged.
fn secret(env: &str, file: Option<&Path>) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var(env) {
        if !value.trim().is_empty() {
            return Ok(value.trim().to_owned());
        }
    }
    let Some(file) = file else {
        bail!("{env} is not set and no file is configured");
    };
    let value = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the secret file {}", file.display()))?;
    let value = value.trim_end_matches(['\n', '\r']).to_owned();
    if value.is_empty() {
        bail!("the secret file {} is empty", file.display());
    }
    Ok(value)
}

/// figment's errors can span lines when several keys are wrong; users get one line each.
fn one_line(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
// figment's `Jail` closures must return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_run_on_sqlite_on_loopback() {
        Jail::expect_with(|_| {
            let config = Config::load(None).unwrap();
            assert_eq!(config, Config::default());
            assert_eq!(config.database_url, "sqlite://tidings.db");
            assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
            Ok(())
        });
    }

    #[test]
    fn twilio_is_configured_by_table_or_by_field_and_its_secret_only_from_outside() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tidings.toml",
                "public_url = \"https://tidings.example.org/\"\n[twilio]\naccount_sid = \"AC1\"\nmessaging_service_sid = \"MG1\"\n",
            )?;
            // A phone number in the environment arrives as a number; it stays a number.
            jail.set_env("TIDINGS_TWILIO__FROM", "+15551234567");
            let config = Config::load(Some(Path::new("tidings.toml"))).unwrap();
            let twilio = config.twilio.clone().unwrap();
            assert_eq!(twilio.account_sid, "AC1");
            assert_eq!(twilio.from.as_deref(), Some("+15551234567"));
            assert_eq!(twilio.api_base, "https://api.twilio.com");
            // No secret anywhere: refused, saying where it goes.
            let err = format!("{:#}", config.twilio().err().unwrap());
            assert!(err.contains("TIDINGS_TWILIO_AUTH_TOKEN"), "{err}");
            jail.create_file("token", "s3cret\n")?;
            jail.set_env("TIDINGS_TWILIO__AUTH_TOKEN_FILE", "token");
            let config = Config::load(Some(Path::new("tidings.toml"))).unwrap();
            assert!(
                config.twilio().is_err(),
                "from and a messaging service both set"
            );
            jail.create_file(
                "tidings.toml",
                "public_url = \"https://tidings.example.org/\"\n[twilio]\naccount_sid = \"AC1\"\n",
            )?;
            let config = Config::load(Some(Path::new("tidings.toml"))).unwrap();
            assert!(config.twilio().unwrap().is_some());
            // Misspelt fields are errors, not silently ignored.
            jail.set_env("TIDINGS_TWILIO__FORM", "+15551234567");
            let err = Config::load(Some(Path::new("tidings.toml"))).unwrap_err();
            assert!(format!("{err:#}").contains("form"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn the_environment_overrides_the_file_which_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tidings.toml",
                "listen = \"0.0.0.0:9000\"\ndatabase_url = \"sqlite://from-file.db\"\nlog_format = \"json\"\n",
            )?;
            jail.set_env("TIDINGS_DATABASE_URL", "postgres://u:pw@db/tidings");
            let config = Config::load(Some(Path::new("tidings.toml"))).unwrap();
            assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(config.database_url, "postgres://u:pw@db/tidings");
            assert_eq!(
                config.database_url_redacted(),
                "postgres://u:***@db/tidings"
            );
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_the_key_on_one_line() {
        Jail::expect_with(|jail| {
            jail.set_env("TIDINGS_LISTEN", "not-an-address");
            let err = format!("{:#}", Config::load(None).unwrap_err());
            assert!(err.to_lowercase().contains("listen"), "{err}");
            assert!(!err.contains('\n'), "{err}");
            Ok(())
        });
    }

    /// The README's settings table lists every setting, its variable and its default.
    #[test]
    fn the_readme_documents_every_setting_with_its_default() {
        let readme = include_str!("../README.md");
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let defaults = defaults.as_object().unwrap();
        for (key, default) in defaults {
            let env = format!("TIDINGS_{}", key.to_uppercase());
            let default = default
                .as_str()
                .map_or_else(|| default.to_string(), str::to_owned);
            let row = format!("| `{key}` | `{env}` | `{default}` |");
            assert!(
                readme.contains(&row),
                "README.md lacks the row starting {row}"
            );
        }
        let rows = readme
            .lines()
            .filter(|l| l.starts_with("| `") && l.contains("| `TIDINGS_"))
            .count();
        assert_eq!(
            rows,
            defaults.len(),
            "README.md documents a setting that does not exist"
        );
    }

    #[test]
    fn a_missing_config_file_is_an_error_not_a_silent_default() {
        Jail::expect_with(|_| {
            let err = Config::load(Some(Path::new("nope.toml"))).unwrap_err();
            assert_eq!(err.to_string(), "config file nope.toml does not exist");
            Ok(())
        });
    }
}
