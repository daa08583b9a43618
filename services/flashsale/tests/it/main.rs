//! Tests of the real `flashsale` binary.

// A test reads as one story from set-up to the last assertion; only code outside tests is held
// to one screen a function.
#![allow(clippy::too_many_lines)]

mod badinput;
mod bench;
mod chaos;
mod config;
mod deploy;
mod drain;

mod e2e;
mod edge;
mod findings;
mod jwks;
mod layout;
mod mesh;
mod migrate;
mod observability;
mod queue;
mod serve;
mod tls;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The binary under test.
fn flashsale() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    // Tests must not pick up a developer's configuration.
    command.env_remove("FLASHSALE_CONFIG");
    for (key, _) in std::env::vars() {
        if key.starts_with("FLASHSALE_") {
            command.env_remove(key);
        }
    }
    // Nothing listens on port 9: a test that forgets to point a process at its own throwaway
    // servers fails instead of quietly using the machine's.
    command
        .env("FLASHSALE_REDIS__URL", "redis://127.0.0.1:9")
        .env("FLASHSALE_NATS__URL", "nats://127.0.0.1:9")
        .env(
            "FLASHSALE_POSTGRES__URL",
            "postgres://postgres@127.0.0.1:9/none",
        );
    // Quiet unless something goes wrong; nextest shows it for failing tests.
    command.env(
        "FLASHSALE_TELEMETRY__LOG_LEVEL",
        std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    command
}

/// The binary for a process whose stores come from a configuration file (the environment would
/// override it).
fn flashsale_configured() -> Command {
    let mut command = flashsale();
    for key in [
        "FLASHSALE_REDIS__URL",
        "FLASHSALE_NATS__URL",
        "FLASHSALE_POSTGRES__URL",
    ] {
        command.env_remove(key);
    }
    command
}

/// A child process that is killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn spawn(command: &mut Command) -> Self {
        Self(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // Inherited, not piped: a pipe nobody reads would block a chatty process.
                .stderr(Stdio::inherit())
                .spawn()
                .expect("flashsale starts"),
        )
    }

    /// Like [`Self::spawn`], but the process's log goes to `log`.
    fn spawn_logging(command: &mut Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        Self(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .expect("flashsale starts"),
        )
    }

    fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), signal)
            .expect("signal sent");
    }

    /// Waits for exit up to `limit`; `None` if still running.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}
