//! Tests of the real `flashsale` binary.

mod config;
mod migrate;
mod serve;

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
                .stderr(Stdio::piped())
                .spawn()
                .expect("flashsale starts"),
        )
    }

    fn terminate(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM sent");
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
