//! Turns SIGINT and SIGTERM into a graceful drain.
//!
//! The first signal cancels the run's [`CancellationToken`]: producers stop and
//! everything already queued is still handled, for up to `--drain-timeout`
//! seconds. Draining can take a while when items are slow, so a second signal
//! ends the process at once, without a report.
//!
//! The handlers are registered by [`listen`] itself, before it returns, so a
//! signal that arrives before the watcher task first runs is recorded, not
//! handled by the default action (which would kill the process without a
//! report). The watcher is an ordinary task: it is heard under any load only
//! because every pipeline loop yields to the scheduler now and then.

use tokio_util::sync::CancellationToken;

/// Exit code when a second signal cuts a drain short: 128 + SIGINT, as shells
/// report an interrupted command.
pub const EXIT_FORCED: u8 = 130;

/// Registers the SIGINT and SIGTERM handlers now, and spawns the task that
/// cancels the returned token on the first signal and exits the process on
/// the second. Call it from `main` before the pipeline starts.
pub fn listen() -> std::io::Result<CancellationToken> {
    let mut signals = Signals::listen()?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!(
            "shutdown signal received: draining queued items; send another to force exit"
        );
        cancel.cancel();
        signals.next().await;
        tracing::warn!("second shutdown signal: exiting without draining");
        std::process::exit(i32::from(EXIT_FORCED));
    });
    Ok(token)
}

/// SIGINT and SIGTERM listeners, registered once so that a second signal
/// arriving while the first is handled is not missed.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        // Both signals mean "shut down". `recv` is cancel safe, so the listener
        // that loses the race keeps its registration for the next call.
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Ctrl-C, the one shutdown signal every other platform has. There tokio
/// installs the handler when the watcher task first polls it, so the early
/// window described above stays open for a moment after `listen` returns.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn listen() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
