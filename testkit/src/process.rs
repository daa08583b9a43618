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
            .with_context(|| format!("sending {signal} to {}", self.name))?;
        if signal == Signal::SIGSTOP {
            // Delivery is asynchronous: return only once the server really is stopped.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while process_state(pid as i32) != Some('T') {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{} (pid {pid}) did not stop: state {:?}",
                    self.name,
                    process_state(pid as i32)
                );
                let _ = signal_tree(pid as i32, signal);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        Ok(())
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

/// Signals `root`, its process group, and every descendant found in `/proc`. The tree is
/// collected before anything is signalled: a killed parent's children are re-parented at once
/// and could no longer be found. Parents go first, so a stopped parent forks nothing new.
fn signal_tree(root: i32, signal: Signal) -> nix::Result<()> {
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(children_of(parent));
        next += 1;
    }
    let result = nix::sys::signal::kill(Pid::from_raw(root), signal);
    let _ = killpg(Pid::from_raw(root), signal);
    for pid in &tree[1..] {
        let _ = nix::sys::signal::kill(Pid::from_raw(*pid), signal);
    }
    result
}

/// The state letter of a process (`R`, `S`, `T` stopped, ...).
fn process_state(pid: i32) -> Option<char> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|stat| stat.state)
}

/// The pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| p.ok()?.stat().ok())
        .filter(|stat| stat.ppid == parent)
        .map(|stat| stat.pid)
        .collect()
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
