//! One child server process: spawned in its own process group under `setpriv --pdeathsig`,
//! with its output in a log file, killed when dropped.

use std::{
    ffi::OsString,
    fs::OpenOptions,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::{Pid, User},
};

/// What to run and as whom.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) run_as: Option<User>,
}

/// A running (or stopped) server process.
#[derive(Debug)]
pub(crate) struct Process {
    name: &'static str,
    spec: Spec,
    log: PathBuf,
    child: Option<Child>,
}

fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV.get_or_init(|| crate::which("setpriv")).as_deref()
}

impl Process {
    pub(crate) fn new(name: &'static str, spec: Spec, log: PathBuf) -> Self {
        Self {
            name,
            spec,
            log,
            child: None,
        }
    }

    pub(crate) fn spec_mut(&mut self) -> &mut Spec {
        &mut self.spec
    }

    /// Starts the process (it must not be running).
    pub(crate) fn spawn(&mut self) -> Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.arg("--pdeathsig").arg("KILL");
                if let Some(user) = &self.spec.run_as {
                    c.arg(format!("--reuid={}", user.uid))
                        .arg(format!("--regid={}", user.gid))
                        .arg("--init-groups");
                }
                c.arg("--").arg(&self.spec.program);
                c
            }
            None => {
                anyhow::ensure!(
                    self.spec.run_as.is_none(),
                    "setpriv (util-linux) is needed to run {} as another user",
                    self.name
                );
                tracing::warn!(
                    "setpriv not found: {} will outlive a killed test",
                    self.name
                );
                Command::new(&self.spec.program)
            }
        };
        command
            .args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if let Some(user) = &self.spec.run_as {
            command.env("HOME", &user.dir).env("USER", &user.name);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.spec.program.display()))?;
        tracing::debug!(name = self.name, pid = child.id(), "spawned");
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True if the process was started and has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends a signal to the server, its process group, and every process it forked (Postgres
    /// backends put themselves in their own sessions, so the group alone does not reach them).
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid().context("not running")?;
        signal_tree(pid as i32, signal)
            .with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// SIGKILLs the server and everything it forked, and reaps it. Idempotent.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let _ = signal_tree(pid, Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of the log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Signals `root`, then its process group, then every descendant found in `/proc`, parents
/// before children (so a stopped parent forks no new children).
fn signal_tree(root: i32, signal: Signal) -> nix::Result<()> {
    let result = nix::sys::signal::kill(Pid::from_raw(root), signal);
    let _ = killpg(Pid::from_raw(root), signal);
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for child in children_of(parent) {
            let _ = nix::sys::signal::kill(Pid::from_raw(child), signal);
            frontier.push(child);
        }
    }
    result
}

/// The pids whose parent is `parent`, from `/proc/*/stat`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The command name is in parentheses and may hold spaces: skip past it.
                    let after = &stat[stat.rfind(')')? + 2..];
                    after.split(' ').nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
