//! Real server processes for the tests: started on free loopback ports with
//! their own temp dirs, so a test can kill, pause, restart and reconfigure
//! them. Never the machine's shared instances.
#![allow(dead_code)]

#[cfg(any(feature = "axum", feature = "nats"))]
pub mod child;
pub mod http;
#[cfg(feature = "nats")]
pub mod nats;

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral loopback port")
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listened on 127.0.0.1:{port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child server process, killed when dropped.
pub struct ServerProcess {
    program: PathBuf,
    args: Vec<String>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `program args…` (inside a fresh temp dir, which is also its
    /// working directory) and waits for it to listen on `port`.
    pub fn start(program: &str, args: Vec<String>, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = ServerProcess {
            program: PathBuf::from(program),
            args,
            port,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn dir_path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("server is running")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", self.program.display()));
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(15));
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts it again with the same arguments, port and dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the process stays, frozen, holding its sockets.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Whether the process ended by itself (a crash), with the first lines
    /// of the panic it logged; it is then started again.
    pub fn revive_if_crashed(&mut self) -> Option<String> {
        let exited = self.child.as_mut()?.try_wait().ok()??;
        let log = self.log();
        let panic = log
            .find("panic:")
            .map_or("no panic logged", |at| &log[at..]);
        let what = format!(
            "{exited}: {}",
            panic.lines().take(4).collect::<Vec<_>>().join(" | ")
        );
        self.child = None;
        self.spawn();
        Some(what)
    }

    /// What the server wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused process can not die until it is continued.
            signal(child.id(), "CONT");
        }
        self.kill();
    }
}

/// Sends a signal by name with `kill(1)`, keeping the tests free of
/// `unsafe` FFI.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{name} {pid} failed");
}
