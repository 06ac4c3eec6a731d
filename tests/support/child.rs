//! This test binary run again as a child process, running one ignored
//! test of its own: the other side of the tests that kill or pause a
//! process. The child is told what to do through an environment variable
//! and stdin, and answers on stdout in lines that start with [`MARK`].

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::signal;

/// Lines the child writes for the parent start with this.
pub const MARK: &str = "CHILD ";

pub struct ChildProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    /// Runs only the test `test` (ignored, so that a normal run skips it),
    /// with `var` set to `spec`.
    pub fn start(test: &str, var: &str, spec: String) -> ChildProcess {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([test, "--exact", "--ignored", "--nocapture"])
            .env(var, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the child process");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(line) = line.strip_prefix(MARK) {
                    let _ = tx.send(line.to_owned());
                }
            }
        });
        ChildProcess {
            child,
            stdin,
            lines,
        }
    }

    /// The next line the child says, which must start with `prefix`; what
    /// follows it.
    pub fn expect_line(&self, prefix: &str) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the child never said {prefix:?}"));
        assert!(
            line.starts_with(prefix),
            "the child said {line:?}, not {prefix:?}"
        );
        line[prefix.len()..].trim().to_owned()
    }

    /// Every line the child said since the last call, without waiting.
    pub fn drain(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Sends the child one line on its stdin.
    pub fn tell(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("tell the child");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
