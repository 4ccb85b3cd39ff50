//! Servers for tests of this crate and of the whole product: a real SMTP server
//! (`scripts/smtp-test-server`, aiosmtpd, installed by `scripts/test-services`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};

/// A test SMTP server on a free loopback port, keeping what it accepts as files; it
/// stops when dropped. `args` go to `scripts/smtp-test-server` (TLS, AUTH).
pub struct SmtpServer {
    _child: tokio::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    pub async fn start(args: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/smtp-test-server");
        let dir = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["--port", "0", "--dir"])
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run scripts/smtp-test-server (scripts/test-services installs what it needs)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the SMTP test server did not start in 30 s")
            .unwrap()
            .expect("the SMTP test server exited; is python3-aiosmtpd installed (scripts/test-services)?");
        let port = line.strip_prefix("listening on ").unwrap().parse().unwrap();
        Self {
            _child: child,
            port,
            dir,
        }
    }

    /// The messages it kept, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u32>().ok())
        });
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}
