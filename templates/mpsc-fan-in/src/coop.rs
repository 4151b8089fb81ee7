//! Keeps loops that never wait from starving the rest of the runtime.
//!
//! tokio gives every task a budget of operations per turn; its own channels,
//! sockets and timers spend from it and make the task yield when it runs out.
//! flume and kanal futures, and the `try_send`/`try_reserve` fast paths, do
//! not. A loop built on them returns to the scheduler only when its channel
//! is full or empty, which with a large capacity or a fast partner may be
//! never. Its runtime thread then runs nothing else: the signal listener,
//! the timers, the drain deadline and the other tasks there all starve, and
//! SIGINT does nothing.

/// A loop spends one unit of its task's budget per this many items. With
/// tokio's budget of 128 units, a loop that never waits yields after about
/// 33,000 items: a few milliseconds at the rates these pipelines reach. Each
/// yield also polls the I/O driver, which is not free: measured on the mpsc
/// fan-in (4 producers, capacity 64, release build, medians of 9 runs), a
/// unit every 32 items cost a fifth of the throughput, a unit every 256
/// items nothing that stood out of the noise.
const ITEMS_PER_BUDGET_UNIT: u32 = 256;

/// Call [`Pacer::step`] once per item in any loop that may never wait.
#[derive(Debug, Default)]
pub struct Pacer {
    items: u32,
}

impl Pacer {
    /// Counts one item, and now and then spends a unit of the task's budget,
    /// which yields to the scheduler once the budget is spent. A loop that
    /// did wait in between got a fresh budget then, so it rarely yields here.
    pub async fn step(&mut self) {
        self.items = self.items.wrapping_add(1);
        if self.items.is_multiple_of(ITEMS_PER_BUDGET_UNIT) {
            tokio::task::consume_budget().await;
        }
    }
}
