//! Turns SIGINT and SIGTERM into a graceful drain.
//!
//! The first signal cancels the run's [`CancellationToken`]: producers stop and
//! everything already queued is still handled. Draining can take a while when
//! items are slow, so a second signal ends the process at once.

use tokio_util::sync::CancellationToken;

/// Exit code when a second signal cuts a drain short.
pub const FORCED_EXIT_CODE: i32 = 1;

/// Spawns the task that watches for shutdown signals and cancels `token` on the
/// first one.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut signals = match Signals::listen() {
            Ok(signals) => signals,
            Err(error) => {
                tracing::error!(%error, "cannot listen for shutdown signals");
                return;
            }
        };
        signals.next().await;
        tracing::info!(
            "shutdown signal received: draining queued items; send another to force exit"
        );
        token.cancel();
        signals.next().await;
        tracing::warn!("second shutdown signal: exiting without draining");
        std::process::exit(FORCED_EXIT_CODE);
    });
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

/// Ctrl-C, the one shutdown signal every other platform has.
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
