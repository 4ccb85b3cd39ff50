//! Runs the real `tidings` binary for end-to-end tests and talks HTTP to it.

#![allow(dead_code)]

pub mod browser;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidings");

/// The link keys test servers sign with (see `link_keys`).
pub const LINK_KEYS_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/link-keys");

/// The VAPID key test servers push to browsers with.
pub const VAPID_KEY_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/vapid-key");

/// The link keys test servers sign with, to forge (or age) links as a test needs.
pub fn link_keys() -> tidings_core::link::LinkKeys {
    tidings_core::link::LinkKeys::parse(&std::fs::read_to_string(LINK_KEYS_FILE).unwrap()).unwrap()
}

/// A `tidings` command with a clean `TIDINGS_*` environment.
pub fn tidings(database_url: &str) -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("TIDINGS_") {
            command.env_remove(key);
        }
    }
    command
        .env("TIDINGS_DATABASE_URL", database_url)
        .env("TIDINGS_LISTEN", "127.0.0.1:0")
        .env("TIDINGS_LOG", "warn")
        // One key file for every test server (created by the first), outside the source tree.
        .env("TIDINGS_LINK_KEYS_FILE", LINK_KEYS_FILE)
        .env("TIDINGS_WEB_PUSH__KEY_FILE", VAPID_KEY_FILE)
        .kill_on_drop(true);
    command
}

/// A running `tidings serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// What it printed on stdout before it started listening.
    pub banner: Vec<String>,
}

impl Server {
    /// Starts `command serve` and waits (with a deadline) for its listening line.
    pub async fn start(command: &mut Command) -> Server {
        Self::start_with(command, &[]).await
    }

    /// Starts `command serve ARGS…`.
    pub async fn start_with(command: &mut Command, args: &[&str]) -> Server {
        Self::start_logging_to(command, args, Stdio::inherit()).await
    }

    /// Starts `command serve ARGS…` with its log (stderr) going to `log`.
    pub async fn start_logging_to(command: &mut Command, args: &[&str], log: Stdio) -> Server {
        let mut child = command
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn tidings serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("tidings serve exited before listening");
                if let Some(address) = line.strip_prefix("Tidings is listening on ") {
                    return address.to_owned();
                }
                banner.push(line);
            }
        })
        .await
        .expect("tidings serve did not start listening within 60 s");
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            base,
            banner,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and returns the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("tidings serve did not stop within 30 s of SIGTERM")
            .unwrap()
    }
}

/// The password printed on first start, if any.
pub fn first_login(banner: &[String]) -> Option<(String, String)> {
    let email = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("Sign in as: "))?;
    let password = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("Password:"))?;
    Some((email.trim().to_owned(), password.trim().to_owned()))
}

/// The demo district's bundle, zipped as an SIS exports it, with an optional edit: in
/// `file`, the first `from` replaced by `to`.
pub fn demo_zip_with(edit: Option<(&str, &str, &str)>) -> Vec<u8> {
    use std::io::Write;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/demo");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut body = std::fs::read_to_string(entry.path()).unwrap();
        if let Some((_, from, to)) = edit.filter(|(file, _, _)| *file == name) {
            body = body.replacen(from, to, 1);
        }
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(body.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// The deliveries a send's answer reports as not sent, over every reason.
pub fn suppressed_total(sent: &serde_json::Value) -> u64 {
    sent["suppressed"].as_object().map_or(0, |reasons| {
        reasons.values().filter_map(|n| n.as_u64()).sum()
    })
}

/// The demo district's bundle, zipped as an SIS exports it.
pub fn demo_zip() -> Vec<u8> {
    demo_zip_with(None)
}

/// The JSON a request is answered with (any error fails the test).
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// The log at `path` once it says `needle` (looked at every 20 ms, for a minute at most).
pub async fn logged(path: &std::path::Path, needle: &str) -> String {
    for _ in 0..3000 {
        let said = std::fs::read_to_string(path).unwrap_or_default();
        if said.contains(needle) {
            return said;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the log never said {needle:?}: {}",
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

/// The stderr of a command that must fail with exit status 1 and one line of error.
pub fn one_line_error(output: &std::process::Output) -> String {
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A new API token for the staff member with this email, made with `tidings token create`.
pub async fn token_for(database_url: &str, email: &str) -> String {
    let output = tidings(database_url)
        .args(["token", "create", "--email", email])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// Sign-in of the first administrator in end-to-end tests.
pub const ADMIN: &str = "it@district.example.org";

/// A running `tidings serve` on its own database, with an API token of its first
/// administrator, and requests that check every error is problem+json.
pub struct District {
    pub db: tidings_core::testing::TestDatabase,
    pub server: Server,
    pub client: reqwest::Client,
    pub admin: String,
}

impl District {
    pub async fn start(db: tidings_core::testing::TestDatabase) -> Self {
        Self::start_env(db, &[]).await
    }

    /// Started with extra `TIDINGS_*` settings.
    pub async fn start_env(db: tidings_core::testing::TestDatabase, env: &[(&str, &str)]) -> Self {
        let mut command = tidings(&db.url);
        command
            .env("TIDINGS_FIRST_ADMIN_EMAIL", ADMIN)
            .envs(env.iter().copied());
        let server = Server::start(&mut command).await;
        let admin = token_for(&db.url, ADMIN).await;
        Self {
            db,
            server,
            client: reqwest::Client::new(),
            admin,
        }
    }

    /// A district with the demo roster uploaded through the API.
    pub async fn with_demo(db: tidings_core::testing::TestDatabase) -> Self {
        Self::with_demo_env(db, &[]).await
    }

    pub async fn with_demo_env(
        db: tidings_core::testing::TestDatabase,
        env: &[(&str, &str)],
    ) -> Self {
        let district = Self::start_env(db, env).await;
        let imported = district
            .client
            .post(district.server.url("/api/v1/imports/oneroster"))
            .bearer_auth(&district.admin)
            .body(demo_zip())
            .send()
            .await
            .unwrap();
        assert_eq!(imported.status(), reqwest::StatusCode::CREATED);
        district
    }

    /// A message's deliveries by state, from its report.
    pub async fn counts(&self, message: &str) -> std::collections::BTreeMap<String, u64> {
        let (status, summary) = self
            .get(&format!("/api/v1/messages/{message}"), &self.admin)
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{summary}");
        let mut counts = std::collections::BTreeMap::new();
        for c in summary["counts"].as_array().unwrap() {
            *counts
                .entry(c["state"].as_str().unwrap().to_owned())
                .or_default() += c["count"].as_u64().unwrap();
        }
        counts
    }

    /// A JSON request; errors, and only errors, must come back as problem+json.
    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self
            .client
            .request(method, self.server.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        if status != reqwest::StatusCode::NO_CONTENT {
            let problem = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/problem+json");
            assert_eq!(
                problem,
                !status.is_success(),
                "errors, and only errors, are problem+json"
            );
        }
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.call_with(method, path, token, body.as_ref(), &[])
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    /// A POST without a body (an action such as cancel or replay).
    pub async fn post(&self, path: &str, token: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.call(reqwest::Method::POST, path, token, None).await
    }

    /// Every item of a paged listing, following `next_after`.
    pub async fn all(&self, path: &str, token: &str) -> Vec<serde_json::Value> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let joiner = if path.contains('?') { '&' } else { '?' };
            let url = match &after {
                Some(a) => format!("{path}{joiner}limit=100&after={a}"),
                None => format!("{path}{joiner}limit=100"),
            };
            let (status, page) = self.get(&url, token).await;
            assert_eq!(status, reqwest::StatusCode::OK, "{page}");
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_after"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return items,
            }
        }
    }
}

/// Announces a 2 MiB JSON body, sends just over 1 MiB of it, and returns the raw response.
pub async fn send_oversized(server: &Server, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"kind\":",
        2 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // More than the 1 MiB limit, less than announced: the server refuses once it has read
    // past the limit, and we never send the rest.
    // (The server may answer and close before all of it is written.)
    let _ = stream.write_all(&vec![b' '; 1024 * 1024 + 64 * 1024]).await;
    // The server answers and then waits for the rest of the body: read until the problem
    // document is complete rather than until the connection closes.
    let mut response = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&response).trim_end().ends_with('}') {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("an answer to an oversized body");
    String::from_utf8_lossy(&response).into_owned()
}

/// The demo roster's first teacher: their sign-in email and the sourcedId of the class
/// they teach (`class-N` for `teacher-N`).
pub fn demo_teacher() -> (String, String) {
    let mut users =
        csv::Reader::from_path(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/users.csv")).unwrap();
    let headers = users.headers().unwrap().clone();
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (sid, role, email) = (column("sourcedId"), column("role"), column("email"));
    let row = users
        .records()
        .map(|r| r.unwrap())
        .find(|r| &r[role] == "teacher")
        .unwrap();
    let class = format!("class-{}", row[sid].trim_start_matches("teacher-"));
    (row[email].to_owned(), class)
}

/// Runs `tidings bench ARGS` (a `--store postgres` scratch database on the test server)
/// and returns the JSON object it prints last; fails the test if the run fails.
pub async fn bench(args: &[&str]) -> serde_json::Value {
    BenchRun::start(args).finish().await
}

/// A `tidings bench ARGS` running, its log (stderr) followed line by line.
pub struct BenchRun {
    child: Child,
    args: Vec<String>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reading: tokio::task::JoinHandle<()>,
}

impl BenchRun {
    pub fn start(args: &[&str]) -> Self {
        let server = std::env::var("TIDINGS_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut child = tidings("sqlite://unused.db")
            .env("TIDINGS_BENCH_POSTGRES_URL", server)
            .arg("bench")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let keeping = log.clone();
        let reading = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keeping.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            args: args.iter().map(|a| a.to_string()).collect(),
            log,
            reading,
        }
    }

    /// Waits until the run has logged a line containing `text`, and returns it.
    pub async fn logged(&mut self, text: &str) -> String {
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "bench {:?} ended ({status}) without logging {text:?}: {}",
                    self.args,
                    self.log.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The JSON object the run prints last; fails the test if the run fails.
    pub async fn finish(self) -> serde_json::Value {
        let output = self.child.wait_with_output().await.unwrap();
        let _ = self.reading.await;
        assert!(
            output.status.success(),
            "bench {:?}: {}",
            self.args,
            self.log.lock().unwrap().join("\n")
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    }
}

/// `tidings ARGS` on the database at `url`: its stdout, or its stderr if it failed.
pub async fn cli(url: &str, args: &[&str]) -> Result<String, String> {
    let output = tidings(url).args(args).output().await.unwrap();
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8(output.stderr).unwrap())
    }
}

/// What SQLite's `PRAGMA integrity_check` says of the database at `url` ("ok").
pub async fn sqlite_integrity(url: &str) -> String {
    use sqlx::Connection as _;
    let mut db = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

/// A count (`sql`, a `count(*)` or like) from the database at `url`, SQLite (opened
/// read-only) or PostgreSQL, on a connection of its own.
pub async fn count(url: &str, sql: &str) -> Result<i64, sqlx::Error> {
    use sqlx::Connection as _;
    if url.starts_with("sqlite:") {
        let mut db = sqlx::SqliteConnection::connect(&format!("{url}?mode=ro")).await?;
        sqlx::query_scalar(sql).fetch_one(&mut db).await
    } else {
        let mut db = sqlx::PgConnection::connect(url).await?;
        sqlx::query_scalar(sql).fetch_one(&mut db).await
    }
}

/// Runs one writing statement on the test's database (SQLite or PostgreSQL): what a
/// test does behind the server's back, such as ageing a row; the rows it changed.
pub async fn execute(url: &str, sql: &str) -> Result<u64, sqlx::Error> {
    use sqlx::Connection as _;
    if url.starts_with("sqlite:") {
        let mut db = sqlx::SqliteConnection::connect(url).await?;
        Ok(sqlx::query(sql).execute(&mut db).await?.rows_affected())
    } else {
        let mut db = sqlx::PgConnection::connect(url).await?;
        Ok(sqlx::query(sql).execute(&mut db).await?.rows_affected())
    }
}

/// The directory of Debian's PostgreSQL binaries (initdb, pg_ctl, pg_dump, pg_restore),
/// of the newest version installed.
pub fn pg_bin() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL's binaries in /usr/lib/postgresql (scripts/test-services installs them)",
        )
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
        .max()
        .map(|(_, path)| path.join("bin"))
        .expect("a PostgreSQL version in /usr/lib/postgresql")
}

/// A PostgreSQL server of the test's own, in a temporary directory on a free loopback
/// port (from Debian's binaries, as `scripts/test-services` installs them), to crash,
/// restart or make read-only without touching the server the other tests share. Stopped
/// when dropped.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
}

impl OwnPostgres {
    pub fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self { dir, bin, port };
        if Self::as_root() {
            // PostgreSQL refuses to run as root: it runs as `postgres`, in a directory
            // that user owns.
            let owner = std::process::Command::new("chown")
                .args(["postgres"])
                .arg(server.dir.path())
                .status()
                .unwrap();
            assert!(owner.success(), "chown postgres {:?}", server.dir.path());
        }
        let data = server.data();
        server.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8"],
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=200",
            server.dir.path().display()
        );
        let log = format!("{data}/server.log");
        server.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
        );
        server
    }

    fn as_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    /// `program` of the server's binaries with `args`, as the user the server runs as.
    fn command(&self, program: &str, args: &[&str]) -> std::process::Command {
        let path = self.bin.join(program);
        let mut command = if Self::as_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            std::process::Command::new(&path)
        };
        command.args(args);
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self.command(program, args).output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` in database `postgres`.
    pub async fn sql(&self, sql: &str) {
        use sqlx::Connection as _;
        let mut connection = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap();
        sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    }

    /// Kills the server as a crash does (every process at once, nothing flushed in
    /// order) and starts it again: it recovers from its write-ahead log.
    pub fn crash_and_restart(&self) {
        let (data, log) = (self.data(), format!("{}/server.log", self.data()));
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-m", "immediate", "-w", "restart"],
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl", &["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

// `tidings sandbox` as a separate process, Twilio pointed at it, and the sign-in codes
// it took: what tests of providers and of the guardian app share.

pub const ACCOUNT: &str = "AC00000000000000000000000000000042";
pub const TOKEN: &str = "e2e-sandbox-token";

/// `tidings sandbox` on a free port: its base URL and the process.
pub async fn sandbox(faults: &str) -> (String, tokio::process::Child) {
    sandbox_calling_back(faults, None).await
}

/// `tidings sandbox` sending its callbacks to `callback_base`.
pub async fn sandbox_calling_back(
    faults: &str,
    callback_base: Option<&str>,
) -> (String, tokio::process::Child) {
    let mut command = tidings("sqlite://unused.db");
    command.args(["sandbox", "--listen", "127.0.0.1:0"]);
    if let Some(base) = callback_base {
        command.args(["--callback-base", base]);
    }
    let mut child = command
        .env("TIDINGS_SANDBOX_TWILIO_AUTH_TOKEN", TOKEN)
        .env("TIDINGS_SANDBOX_FAULTS", faults)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("sandbox exited");
            if let Some(rest) = line.strip_prefix("Provider sandbox on ") {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
    })
    .await
    .expect("the sandbox did not start within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (base, child)
}

pub fn twilio_env(api_base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TIDINGS_TWILIO__ACCOUNT_SID", ACCOUNT.into()),
        ("TIDINGS_TWILIO__FROM", "+15005550006".into()),
        ("TIDINGS_TWILIO__API_BASE", api_base.into()),
        ("TIDINGS_TWILIO__TIMEOUT_SECONDS", "1".into()),
        ("TIDINGS_TWILIO_AUTH_TOKEN", TOKEN.into()),
        // Status callbacks name the delivery (nothing answers there yet in this test).
        ("TIDINGS_PUBLIC_URL", "http://127.0.0.1:9".into()),
        (
            "TIDINGS_RETRY_SCHEDULE",
            "[0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]".into(),
        ),
    ]
}

/// Twilio through the sandbox at `base`, for a server on `port` that the sandbox calls
/// back: Twilio signs for the public URL, the sandbox posts to the port.
pub fn twilio_env_calling_back(base: &str, port: u16) -> Vec<(&'static str, String)> {
    let mut env = twilio_env(base);
    env.retain(|(k, _)| *k != "TIDINGS_PUBLIC_URL");
    env.push(("TIDINGS_PUBLIC_URL", "https://tidings.example.org".into()));
    env.push(("TIDINGS_LISTEN", format!("127.0.0.1:{port}")));
    env
}

/// The demo district's first guardian and their active SMS number.
pub async fn first_guardian_with_sms(d: &District) -> (String, String) {
    let guardian = d.all("/api/v1/guardians", &d.admin).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
        .await;
    let number = detail["contact_points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "sms" && c["active"] == true)
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned();
    (guardian, number)
}

/// The sign-in codes the sandbox took for `number`, oldest first, once there are `count`
/// (codes are sent after the answer; polled, a liveness bound, not a measurement).
pub async fn codes_sent_to(base: &str, number: &str, count: usize) -> Vec<String> {
    let mut codes = codes_taken(base, number).await;
    for _ in 0..300 {
        if codes.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        codes = codes_taken(base, number).await;
    }
    codes
}

pub async fn codes_taken(base: &str, number: &str) -> Vec<String> {
    let received: serde_json::Value = reqwest::get(format!("{base}/_sandbox/received"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    received["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["address"] == number)
        .filter_map(|i| {
            let body = i["body"].as_str()?;
            let at = body.find("your sign-in code is ")? + "your sign-in code is ".len();
            Some(body[at..at + 6].to_owned())
        })
        .collect()
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
