//! The coordinator's writes to this node's own storage, coalesced. Each client operation runs
//! in a task of its own, and its write to this replica used to cost a WAL record and a `pwrite`
//! of its own, where a pipe frame's writes at the serving end share one. Writes queued while
//! other tasks are ready to run now go to the engine together, one batch per keyspace, as a
//! frame's do (docs/benchmarks.md).

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::replica::ReplicaError;
use super::Node;
use crate::lsm::Mutation;

/// A batch stops growing past this many encoded bytes: the WAL refuses a record over 512 MiB,
/// and one value may be 16 MiB.
const LOCAL_BATCH_BYTES_SOFT_MAX: usize = 1 << 20;

#[derive(Default)]
pub struct LocalWrites {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    writes: Vec<Pending>,
    /// A task is on its way to drain the queue.
    draining: bool,
}

struct Pending {
    keyspace: String,
    muts: Vec<Mutation>,
    done: oneshot::Sender<Result<(), ReplicaError>>,
}

impl Node {
    /// Applies `muts` on this node's storage together with the other coordinator writes that
    /// are queued by the time the tasks ready now have run. The queue holds at most one write
    /// per operation in flight, which the client sessions bound.
    pub async fn write_local(
        self: &Arc<Self>,
        keyspace: &str,
        muts: Vec<Mutation>,
    ) -> Result<(), ReplicaError> {
        let (done, answer) = oneshot::channel();
        let first = {
            let mut q = self.local_writes.queue.lock();
            q.writes.push(Pending {
                keyspace: keyspace.to_owned(),
                muts,
                done,
            });
            !std::mem::replace(&mut q.draining, true)
        };
        if first {
            tokio::spawn(self.clone().drain_local_writes());
        }
        let gone = || ReplicaError::Failed("the local write was dropped unanswered".into());
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    async fn drain_local_writes(self: Arc<Self>) {
        client::frame::yield_to_ready_tasks().await;
        let writes = {
            let mut q = self.local_writes.queue.lock();
            q.draining = false;
            std::mem::take(&mut q.writes)
        };
        for batch in batches(writes) {
            self.apply_batch(batch).await;
        }
    }

    /// Applies writes of one keyspace together ([`Node::apply_together`]).
    async fn apply_batch(self: &Arc<Self>, batch: Vec<Pending>) {
        let keyspace = batch[0].keyspace.clone();
        let (done, writes): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.done, p.muts)).unzip();
        let results = self.apply_together(&keyspace, writes).await;
        for (done, result) in done.into_iter().zip(results) {
            let _ = done.send(result);
        }
    }
}

/// The queued writes in batches of one keyspace each, in queue order within a keyspace, each
/// about [`LOCAL_BATCH_BYTES_SOFT_MAX`] at most (one write may pass it alone).
fn batches(writes: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut out: Vec<(Vec<Pending>, usize)> = Vec::new();
    for p in writes {
        let bytes: usize = (p.muts.iter())
            .map(|m| m.key.len() + m.cell.encoded_len())
            .sum();
        let open = (out.iter_mut()).rfind(|(b, _)| b[0].keyspace == p.keyspace);
        match open {
            Some((b, size)) if *size + bytes <= LOCAL_BATCH_BYTES_SOFT_MAX => {
                *size += bytes;
                b.push(p);
            }
            _ => out.push((vec![p], bytes)),
        }
    }
    out.into_iter().map(|(b, _)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsm::Cell;
    use bytes::Bytes;

    fn pending(keyspace: &str, value_bytes: usize) -> Pending {
        let value = Bytes::from(vec![b'v'; value_bytes]);
        Pending {
            keyspace: keyspace.into(),
            muts: vec![Mutation {
                key: Bytes::from_static(b"k"),
                cell: Cell::value(1, value),
            }],
            done: oneshot::channel().0,
        }
    }

    fn shape(batches: &[Vec<Pending>]) -> Vec<(String, usize)> {
        (batches.iter())
            .map(|b| (b[0].keyspace.clone(), b.len()))
            .collect()
    }

    #[test]
    fn writes_batch_by_keyspace_and_size() {
        let small = 100;
        let big = LOCAL_BATCH_BYTES_SOFT_MAX / 2;
        let writes = vec![
            pending("a", small),
            pending("b", small),
            pending("a", small),
            pending("a", big),
            pending("a", big),
            pending("b", small),
        ];
        let got = shape(&batches(writes));
        let want = [("a", 3), ("b", 2), ("a", 1)];
        let want: Vec<(String, usize)> = want.iter().map(|&(k, n)| (k.into(), n)).collect();
        assert_eq!(got, want);
    }
}
