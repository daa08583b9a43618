//! Graceful shutdown: one signal drains, a second exits at once.
//!
//! [`Shutdown`] is a cheap-to-clone handle that components wait on. [`Shutdown::on_signals`]
//! triggers it on the first SIGTERM or SIGINT; a second signal exits the process immediately
//! with status 130. Background work is started with [`Shutdown::spawn`], which tracks it, and
//! [`Shutdown::tasks_done`] waits for all of it (children's included); [`drain`] bounds the time
//! a component may take to finish after the trigger.

use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A shutdown trigger that many tasks can wait on, and the background tasks that must finish
/// before the process exits.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A trigger nobody has pulled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A trigger pulled by the first SIGTERM or SIGINT. A second signal exits the process.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Self::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let first = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = first, "shutting down: draining in-flight work");
            trigger.trigger();
            let second = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::warn!(signal = second, "second signal: exiting without draining");
            std::process::exit(130);
        });
        Ok(shutdown)
    }

    /// Pulls the trigger; every waiter wakes.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once the trigger was pulled.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the trigger is pulled.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// A child trigger: pulled when this one is, and can also be pulled on its own. Tasks it
    /// spawns are tracked with this one's.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tasks: self.tasks.clone(),
        }
    }

    /// Runs `task` in the background, tracked: [`Self::tasks_done`] waits for it. A task must
    /// end by itself once the trigger is pulled (it waits on [`Self::wait`] or a child).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Resolves when every task spawned through this trigger and its children has ended; no
    /// task may be spawned after it is called. Bound it with [`drain`].
    pub async fn tasks_done(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The outcome of [`drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The work finished within the grace period.
    Clean,
    /// The grace period ran out first; the work was dropped.
    TimedOut,
}

/// Runs `work` to completion, but once `shutdown` triggers gives it at most `grace` more.
pub async fn drain<F: Future>(
    work: F,
    shutdown: &Shutdown,
    grace: Duration,
) -> (Drained, Option<F::Output>) {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => return (Drained::Clean, Some(out)),
        () = shutdown.wait() => {}
    }
    match tokio::time::timeout(grace, work).await {
        Ok(out) => (Drained::Clean, Some(out)),
        Err(_) => {
            tracing::warn!(grace = %humantime::format_duration(grace), "drain exceeded its grace period");
            (Drained::TimedOut, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_work_within_grace() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let (drained, out) = drain(
            async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                7
            },
            &shutdown,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!((drained, out), (Drained::Clean, Some(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_grace() {
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            trigger.trigger();
        });
        let started = tokio::time::Instant::now();
        let (drained, out) = drain(
            std::future::pending::<()>(),
            &shutdown,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!((drained, out), (Drained::TimedOut, None));
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_done_waits_for_every_tracked_task_of_every_child() {
        let shutdown = Shutdown::new();
        let child = shutdown.child();
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mark = finished.clone();
        let stop = child.clone();
        child.spawn(async move {
            stop.wait().await;
            // Finishing what is in hand takes a while after the trigger.
            tokio::time::sleep(Duration::from_secs(2)).await;
            mark.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        shutdown.trigger();
        shutdown.tasks_done().await;
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn child_follows_parent() {
        let parent = Shutdown::new();
        let child = parent.child();
        assert!(!child.is_triggered());
        parent.trigger();
        child.wait().await;
        assert!(child.is_triggered());
    }
}
