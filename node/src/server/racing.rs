//! A few futures of one type polled together, their outputs yielded in the order they
//! complete: a coordinator's two or three replica calls for one operation.
//!
//! `FuturesUnordered` does the same for any number of futures, at a cost that suits many:
//! a shared ready queue and a reference-counted task with its own waker per future, each an
//! allocation and each wake-up an atomic enqueue. For the handful of replica calls of every
//! read and write that came to 4.8% of the machine's samples at YCSB-A's peak. Here the
//! futures live in one fixed slice, share the caller's waker, and every live one is polled
//! on each wake-up, which for a handful costs less than the queue.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;

pub struct Racing<F> {
    /// Pinned in place: a slot's future is never moved, only dropped where it lies.
    slots: Pin<Box<[Option<F>]>>,
    live: usize,
}

impl<F: Future> Racing<F> {
    /// Room for `capacity` futures over the set's life, counting those already finished.
    pub fn with_capacity(capacity: usize) -> Self {
        Racing {
            slots: Box::into_pin((0..capacity).map(|_| None).collect()),
            live: 0,
        }
    }

    /// Adds `future`; panics when all of the capacity has been used.
    pub fn push(&mut self, future: F) {
        // SAFETY: only an empty slot is written, so no pinned future moves.
        let slots = unsafe { self.slots.as_mut().get_unchecked_mut() };
        let free = (slots.iter_mut().find(|s| s.is_none()))
            .expect("a Racing set holds at most its capacity");
        *free = Some(future);
        self.live += 1;
    }
}

impl<F: Future> FromIterator<F> for Racing<F> {
    fn from_iter<I: IntoIterator<Item = F>>(futures: I) -> Self {
        let slots: Box<[Option<F>]> = futures.into_iter().map(Some).collect();
        Racing {
            live: slots.len(),
            slots: Box::into_pin(slots),
        }
    }
}

impl<F: Future> Stream for Racing<F> {
    type Item = F::Output;

    /// The output of a future that completed, polling each live one in turn; `None` when
    /// none is left.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let this = self.get_mut();
        if this.live == 0 {
            return Poll::Ready(None);
        }
        // SAFETY: each future is polled through a pin of its slot and dropped in place by
        // overwriting the slot; none is moved out.
        let slots = unsafe { this.slots.as_mut().get_unchecked_mut() };
        for slot in slots.iter_mut() {
            let Some(future) = slot.as_mut() else {
                continue;
            };
            // SAFETY: as above; the slot lives in the pinned slice.
            if let Poll::Ready(out) = unsafe { Pin::new_unchecked(future) }.poll(cx) {
                *slot = None;
                this.live -= 1;
                return Poll::Ready(Some(out));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test(start_paused = true)]
    async fn outputs_come_in_completion_order_and_end_with_none() {
        let after = |ms: u64, v: u32| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            v
        };
        let mut set: Racing<_> = [after(30, 3), after(10, 1), after(20, 2)]
            .into_iter()
            .collect();
        let mut got = Vec::new();
        while let Some(v) = set.next().await {
            got.push(v);
        }
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(set.next().await, None);
    }

    #[tokio::test]
    async fn a_future_pushed_later_wakes_the_set_and_reuses_a_finished_slot() {
        let (tx1, rx1) = oneshot::channel::<u32>();
        let (tx2, rx2) = oneshot::channel::<u32>();
        let mut set = Racing::with_capacity(2);
        set.push(rx1);
        tx1.send(1).unwrap();
        assert_eq!(set.next().await, Some(Ok(1)));
        set.push(rx2);
        let sender = tokio::spawn(async move { tx2.send(2).unwrap() });
        assert_eq!(set.next().await, Some(Ok(2)));
        sender.await.unwrap();
        assert_eq!(set.next().await, None);
    }

    #[test]
    #[should_panic(expected = "at most its capacity")]
    fn pushing_past_the_capacity_is_refused() {
        let mut set = Racing::with_capacity(1);
        set.push(std::future::ready(1));
        set.push(std::future::ready(2));
    }

    #[tokio::test]
    async fn dropping_the_set_drops_its_unfinished_futures() {
        let (tx, rx) = oneshot::channel::<u32>();
        let set: Racing<_> = std::iter::once(rx).collect();
        drop(set);
        assert!(tx.is_closed());
    }
}
