//! A small bounded queue from one sender to one receiver: a link attempt's frames to its socket,
//! and the client's checkpoint answers back.
//!
//! Every attached session holds two of these for its whole life, so they are built for size:
//! one allocation of about 100 bytes while empty (tokio's `mpsc` allocates a block of 32 slots
//! up front, about 290 bytes per channel), and a few bytes of queue only while something waits
//! in it. Traffic is a handful of messages a minute, so a mutex and one `Notify` for every change
//! (either end may wait on it) cost nothing measurable.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// A queue of at most `capacity` messages (at least 1).
pub fn mailbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            sender: true,
            receiver: true,
        }),
        changed: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Woken on every change: a message in or out, an end dropped.
    changed: Notify,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    capacity: usize,
    /// Whether each end still exists.
    sender: bool,
    receiver: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding it; a poisoned queue is still a consistent queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `step` on the state until it returns `Some`, waiting for a change between tries
    /// (registered before each try, so a change in between is not missed).
    async fn wait<R>(&self, mut step: impl FnMut(&mut State<T>) -> Option<R>) -> R {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(out) = step(&mut self.lock()) {
                self.changed.notify_waiters();
                return out;
            }
            changed.await;
        }
    }
}

/// The sending end.
#[derive(Debug)]
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving end.
#[derive(Debug)]
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full; gives it back if the receiver is gone.
    pub async fn send(&self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        self.shared
            .wait(|state| {
                if !state.receiver {
                    return Some(Err(item.take()?));
                }
                if state.items.len() < state.capacity {
                    state.items.push_back(item.take()?);
                    return Some(Ok(()));
                }
                None
            })
            .await
    }

    /// Queues `item` if there is room now; gives it back if not or if the receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        let mut state = self.shared.lock();
        if !state.receiver || state.items.len() >= state.capacity {
            return Err(item);
        }
        state.items.push_back(item);
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// The next message, waiting for one; `None` once the queue is empty and the sender gone.
    pub async fn recv(&mut self) -> Option<T> {
        self.shared
            .wait(|state| match pop(state) {
                Some(item) => Some(Some(item)),
                None if !state.sender => Some(None),
                None => None,
            })
            .await
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let item = pop(&mut self.shared.lock())?;
        self.shared.changed.notify_waiters();
        Some(item)
    }
}

/// Takes the oldest message, and frees the queue's buffer once it is empty: messages are rare
/// and the session lives long.
fn pop<T>(state: &mut State<T>) -> Option<T> {
    let item = state.items.pop_front()?;
    if state.items.is_empty() {
        state.items = VecDeque::new();
    }
    Some(item)
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.lock().sender = false;
        self.shared.changed.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.shared.lock();
            state.receiver = false;
            std::mem::take(&mut state.items)
        };
        self.shared.changed.notify_waiters();
        // Outside the lock: a message's drop may do anything.
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_and_the_end_after_the_last() {
        let (tx, mut rx) = mailbox(4);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        assert_eq!(tx.try_send(3), Ok(()));
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_sender_until_the_receiver_takes_one() {
        let (tx, mut rx) = mailbox(1);
        tx.send("a").await.unwrap();
        assert_eq!(tx.try_send("b"), Err("b"));
        let mut sending = Box::pin(tx.send("b"));
        assert_eq!((&mut sending).now_or_never(), None, "full: the send waits");
        assert_eq!(rx.recv().await, Some("a"));
        assert_eq!(sending.await, Ok(()));
        assert_eq!(rx.try_recv(), Some("b"));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message_sent_from_another_task() {
        let (tx, mut rx) = mailbox(2);
        let receiving = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send(7u32).await.unwrap();
        assert_eq!(receiving.await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn without_a_receiver_sends_fail_and_give_the_message_back() {
        let (tx, rx) = mailbox(2);
        tx.send(1).await.unwrap();
        let mut sending = Box::pin(tx.send(2));
        assert_eq!((&mut sending).now_or_never(), Some(Ok(())));
        let mut blocked = Box::pin(tx.send(3));
        assert_eq!((&mut blocked).now_or_never(), None);
        drop(rx);
        assert_eq!(
            blocked.await,
            Err(3),
            "a waiting send ends when the receiver goes"
        );
        assert_eq!(tx.try_send(4), Err(4));
    }

    #[tokio::test]
    async fn an_empty_queue_keeps_no_buffer() {
        let (tx, mut rx) = mailbox(4);
        tx.send(String::from("x")).await.unwrap();
        assert!(rx.shared.lock().items.capacity() > 0);
        rx.recv().await.unwrap();
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }
}
