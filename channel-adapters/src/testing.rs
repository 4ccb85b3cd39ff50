//! Servers for tests of this crate and of the whole product: a real SMTP server
//! (`scripts/smtp-test-server`, aiosmtpd) and a real Kannel with an SMPP simulator as its
//! SMSC (`scripts/smpp-test-smsc`), both installed by `scripts/test-services`.

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
        let dir = tempfile::tempdir().unwrap();
        let mut all: Vec<&std::ffi::OsStr> = vec![
            "--port".as_ref(),
            "0".as_ref(),
            "--dir".as_ref(),
            dir.path().as_os_str(),
        ];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        let (child, port) = start_script("smtp-test-server", &all).await;
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

/// `N` distinct free TCP ports on loopback (free when asked; good enough for a test's
/// own servers). Held together while asked, so that no two are the same.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// Starts `program ARGS…` and returns it with the port from its first line, "listening on PORT".
async fn start_script(script: &str, args: &[&std::ffi::OsStr]) -> (tokio::process::Child, u16) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("scripts/{script} did not start in 30 s"))
        .unwrap()
        .unwrap_or_else(|| {
            panic!("scripts/{script} exited; scripts/test-services installs what it needs")
        });
    let port = line
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("scripts/{script} said {line:?}"));
    (child, port)
}

/// A real Kannel (Debian's `kannel`: bearerbox and smsbox) whose SMSC is the SMPP
/// simulator `scripts/smpp-test-smsc`, all on free loopback ports in a temporary
/// directory; stopped when dropped.
pub struct KannelGateway {
    _smsc: tokio::process::Child,
    _bearerbox: tokio::process::Child,
    _smsbox: tokio::process::Child,
    pub sendsms_url: String,
    pub username: String,
    pub password: String,
    dir: tempfile::TempDir,
}

impl KannelGateway {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (smsc, smpp_port) = start_script(
            "smpp-test-smsc",
            &[
                "--port".as_ref(),
                "0".as_ref(),
                "--dir".as_ref(),
                dir.path().as_os_str(),
                "--password".as_ref(),
                "smppsec".as_ref(),
            ],
        )
        .await;
        let [admin, boxes, sendsms] = free_ports::<3>();
        let d = dir.path().display();
        let conf = format!(
            r#"group = core
admin-port = {admin}
admin-password = admin-secret
smsbox-port = {boxes}
box-allow-ip = 127.0.0.1
log-file = "{d}/bearerbox.log"
log-level = 1
dlr-storage = internal
store-type = file
store-location = "{d}/store"

group = smsc
smsc = smpp
smsc-id = sim
host = 127.0.0.1
port = {smpp_port}
transceiver-mode = true
smsc-username = tidings
smsc-password = smppsec
system-type = ""
msg-id-type = 0x00
reconnect-delay = 1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {boxes}
sendsms-port = {sendsms}
log-file = "{d}/smsbox.log"
log-level = 1

group = sendsms-user
username = tidings
password = sendsms-secret
default-sender = 5550100
max-messages = 10
concatenation = true

group = sms-service
keyword = default
text = ""
omit-empty = true
"#
        );
        let conf_path = dir.path().join("kannel.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let spawn = |program: &str| {
            tokio::process::Command::new(program)
                .arg(&conf_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "run {program} (Debian's kannel; scripts/test-services installs it): {e}"
                    )
                })
        };
        let bearerbox = spawn("/usr/sbin/bearerbox");
        // smsbox gives up at once if bearerbox is not listening yet: start it after, and
        // call Kannel ready when the SMSC link is up and smsbox answers.
        let client = reqwest::Client::new();
        let status = format!("http://127.0.0.1:{admin}/status.txt?password=admin-secret");
        let sendsms_url = format!("http://127.0.0.1:{sendsms}/cgi-bin/sendsms");
        let mut smsbox = None;
        let mut ready = false;
        for _ in 0..300 {
            let online = match client.get(&status).send().await {
                Ok(r) => {
                    smsbox.get_or_insert_with(|| spawn("/usr/sbin/smsbox"));
                    r.text().await.unwrap_or_default().contains("(online")
                }
                Err(_) => false,
            };
            if online && client.get(&sendsms_url).send().await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ready {
            let kept = dir.keep();
            panic!(
                "Kannel did not come up in 30 s; see {}/bearerbox.log and smsbox.log",
                kept.display()
            );
        }
        Self {
            _smsc: smsc,
            _bearerbox: bearerbox,
            _smsbox: smsbox.expect("started once bearerbox answered"),
            sendsms_url,
            username: "tidings".into(),
            password: "sendsms-secret".into(),
            dir,
        }
    }

    /// What the SMSC was given: one JSON object per `submit_sm`.
    pub fn submitted(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("submitted.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
