//! A bounded queue between one producer (capture) and one consumer (processing) that, when
//! full, either drops its oldest item ([`Overflow::DropOldest`], for live sources: the newest
//! frame is the one worth processing) or makes the producer wait ([`Overflow::Block`], for
//! files, where every frame should be processed).
//!
//! Every item pushed is accounted for: at any moment `pushed == popped + dropped + len`, and
//! after [`FrameQueue::close_and_discard`] the queue is empty, so `pushed == popped + dropped`.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a full queue does with a new item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Remove the oldest item to make room and count it as dropped; `push` never blocks.
    DropOldest,
    /// Wait until the consumer makes room (or the queue is closed).
    Block,
}

/// Counters of a queue, read together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Items accepted by `push` (a push onto a closed queue is not counted).
    pub pushed: u64,
    /// Items removed by `pop`.
    pub popped: u64,
    /// Items dropped: oldest ones pushed out by newer ones, and those discarded on close.
    pub dropped: u64,
    /// Items in the queue now.
    pub len: u64,
}

/// What happened to a pushed item.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// Queued; nothing was dropped.
    Queued,
    /// Queued, and the oldest item was dropped to make room.
    QueuedDroppingOldest,
    /// The queue is closed: the item is handed back, not counted.
    Closed(T),
}

/// What `pop_timeout` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Popped<T> {
    /// The oldest item.
    Item(T),
    /// Nothing arrived in time; the queue is still open.
    TimedOut,
    /// The queue is closed and empty: nothing more will come.
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    counts: QueueCounts,
}

/// The queue; share it between threads with an `Arc`.
pub struct FrameQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item arrives or the queue closes.
    not_empty: Condvar,
    /// Signalled when an item leaves or the queue closes (for [`Overflow::Block`]).
    not_full: Condvar,
    capacity: usize,
    overflow: Overflow,
}

impl<T> FrameQueue<T> {
    /// A queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize, overflow: Overflow) -> Self {
        FrameQueue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.max(1)),
                closed: false,
                counts: QueueCounts::default(),
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity: capacity.max(1),
            overflow,
        }
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The overflow policy.
    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock leaves the counters consistent (they are updated
        // together with the items), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an item. With [`Overflow::DropOldest`] this never blocks; with [`Overflow::Block`]
    /// it waits for room. A closed queue hands the item back.
    pub fn push(&self, item: T) -> Pushed<T> {
        self.push_within(item, usize::MAX)
    }

    /// [`FrameQueue::push`] with a tighter capacity for this item, `min(capacity, limit)` (at
    /// least 1): the pipeline bounds its read-ahead in bytes by allowing fewer large frames.
    pub fn push_within(&self, item: T, limit: usize) -> Pushed<T> {
        let room = self.capacity.min(limit.max(1));
        let mut s = self.lock();
        if self.overflow == Overflow::Block {
            while !s.closed && s.items.len() >= room {
                s = self.not_full.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
        if s.closed {
            return Pushed::Closed(item);
        }
        let mut evicted = None;
        if s.items.len() >= room {
            evicted = s.items.pop_front();
            s.counts.dropped += 1;
        }
        s.items.push_back(item);
        s.counts.pushed += 1;
        drop(s);
        self.not_empty.notify_one();
        // The evicted item (a whole frame) is freed outside the lock.
        match evicted {
            Some(_) => Pushed::QueuedDroppingOldest,
            None => Pushed::Queued,
        }
    }

    fn take(&self, s: &mut State<T>) -> Option<T> {
        let item = s.items.pop_front()?;
        s.counts.popped += 1;
        Some(item)
    }

    /// Removes the oldest item, waiting for one; `None` once the queue is closed and empty.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(item) = self.take(&mut s) {
                drop(s);
                self.not_full.notify_one();
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.not_empty.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`FrameQueue::pop`], but gives up after `timeout` (so that the caller can look
    /// at a stop flag).
    pub fn pop_timeout(&self, timeout: Duration) -> Popped<T> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(item) = self.take(&mut s) {
                drop(s);
                self.not_full.notify_one();
                return Popped::Item(item);
            }
            if s.closed {
                return Popped::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Popped::TimedOut;
            }
            s = self
                .not_empty
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Closes the queue: later pushes are refused; the consumer gets the remaining items and
    /// then `None`. Wakes every waiting thread.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// Closes the queue and drops what is left in it, counting it as dropped. Returns how
    /// many items that was.
    pub fn close_and_discard(&self) -> u64 {
        let discarded: Vec<T> = {
            let mut s = self.lock();
            s.closed = true;
            let n = s.items.len() as u64;
            s.counts.dropped += n;
            s.items.drain(..).collect()
        };
        self.not_empty.notify_all();
        self.not_full.notify_all();
        discarded.len() as u64
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The counters, consistent with each other.
    pub fn counts(&self) -> QueueCounts {
        let s = self.lock();
        QueueCounts {
            len: s.items.len() as u64,
            ..s.counts
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn drop_oldest_under_a_slow_consumer() {
        let q = Arc::new(FrameQueue::new(2, Overflow::DropOldest));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    // Never blocks, whatever the consumer does.
                    let t = Instant::now();
                    assert!(!matches!(q.push(i), Pushed::Closed(_)));
                    assert!(t.elapsed() < Duration::from_millis(200));
                    if i % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                q.close();
            })
        };
        let mut seen = vec![];
        while let Some(i) = q.pop() {
            seen.push(i);
            std::thread::sleep(Duration::from_millis(3));
        }
        producer.join().unwrap();
        let c = q.counts();
        assert_eq!(c.pushed, 100);
        assert_eq!(c.popped + c.dropped, c.pushed, "{c:?}");
        assert_eq!(c.popped, seen.len() as u64);
        assert!(c.dropped > 0, "the consumer was slow: {c:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(
            seen.last(),
            Some(&99),
            "the newest item is always delivered"
        );
    }

    #[test]
    fn capacity_one_keeps_only_the_newest() {
        let q = FrameQueue::new(0, Overflow::DropOldest);
        assert_eq!(q.capacity(), 1);
        assert_eq!(q.push(1), Pushed::Queued);
        assert_eq!(q.push(2), Pushed::QueuedDroppingOldest);
        assert_eq!(q.push(3), Pushed::QueuedDroppingOldest);
        assert_eq!(q.pop_timeout(Duration::ZERO), Popped::Item(3));
        assert_eq!(q.pop_timeout(Duration::from_millis(5)), Popped::TimedOut);
        q.close();
        assert_eq!(q.pop_timeout(Duration::from_millis(5)), Popped::Closed);
        assert_eq!(q.push(4), Pushed::Closed(4));
        assert_eq!(
            q.counts(),
            QueueCounts {
                pushed: 3,
                popped: 1,
                dropped: 2,
                len: 0
            }
        );
    }

    #[test]
    fn block_loses_nothing() {
        let q = Arc::new(FrameQueue::new(2, Overflow::Block));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    assert!(!matches!(q.push(i), Pushed::Closed(_)));
                }
                q.close();
            })
        };
        let mut seen = vec![];
        while let Some(i) = q.pop() {
            seen.push(i);
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        producer.join().unwrap();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(q.counts().dropped, 0);
    }

    #[test]
    fn close_wakes_a_waiting_consumer_and_a_blocked_producer() {
        let q = Arc::new(FrameQueue::<u32>::new(1, Overflow::Block));
        let consumer = {
            let q = q.clone();
            std::thread::spawn(move || q.pop())
        };
        std::thread::sleep(Duration::from_millis(20));
        q.close();
        assert_eq!(consumer.join().unwrap(), None);

        let q = Arc::new(FrameQueue::<u32>::new(1, Overflow::Block));
        assert_eq!(q.push(1), Pushed::Queued);
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || q.push(2))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(q.close_and_discard(), 1);
        assert_eq!(producer.join().unwrap(), Pushed::Closed(2));
        let c = q.counts();
        assert_eq!((c.pushed, c.popped, c.dropped, c.len), (1, 0, 1, 0));
    }
}
