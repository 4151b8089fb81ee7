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
pub const ITEMS_PER_BUDGET_UNIT: u32 = 256;

/// Counts the items of a loop that may never wait, and says when the loop
/// owes its task a unit of budget. Checking is a plain counter update, so it
/// costs next to nothing per item; only when a unit is due does the loop
/// await [`spend`]:
///
/// ```ignore
/// let due = pacer.count(1);
/// if due > 0 {
///     coop::spend(due).await;
/// }
/// ```
///
/// The check and the await are kept apart on purpose: awaiting an `async fn`
/// for every item, even one that returns at once, cost the kanal hot path
/// about a third of its throughput.
#[derive(Debug, Default)]
pub struct Pacer {
    items: u32,
}

impl Pacer {
    /// Counts `items` more items; returns how many units of budget are due
    /// for them (usually 0).
    #[inline]
    pub fn count(&mut self, items: u32) -> u32 {
        let total = self.items + items;
        self.items = total % ITEMS_PER_BUDGET_UNIT;
        total / ITEMS_PER_BUDGET_UNIT
    }
}

/// Spends `units` of the task's budget. Once the budget is gone, this yields
/// to the scheduler; a loop that did wait in between got a fresh budget then,
/// so it rarely yields here. Await it only where no item is in hand, or where
/// dropping the loop's future at this point loses nothing.
pub async fn spend(units: u32) {
    for _ in 0..units {
        tokio::task::consume_budget().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_due_per_256_items_whatever_the_step() {
        let mut one_by_one = Pacer::default();
        let due: u32 = (0..1000).map(|_| one_by_one.count(1)).sum();
        assert_eq!(due, 3);
        let mut in_batches = Pacer::default();
        let due: u32 = (0..10).map(|_| in_batches.count(100)).sum();
        assert_eq!(due, 3);
        assert_eq!(Pacer::default().count(600), 2);
    }
}
