//! Runs the real `tidings` binary for end-to-end tests and talks HTTP to it.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidings");

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
        let mut child = command
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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

/// The demo district's bundle, zipped as an SIS exports it.
pub fn demo_zip() -> Vec<u8> {
    use std::io::Write;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/demo");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        zip.start_file(
            entry.file_name().to_string_lossy(),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(&std::fs::read(entry.path()).unwrap())
            .unwrap();
    }
    zip.finish().unwrap().into_inner()
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
