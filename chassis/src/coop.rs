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
/// 4,000 items, a fraction of a millisecond here. Spending a unit on every
/// item made the mpsc fan-in 20% slower: each yield also polls the I/O
/// driver, and there were thirty times as many.
const ITEMS_PER_BUDGET_UNIT: u32 = 32;

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
