//! Talking to one replica, this node or a peer, with a deadline: the building blocks the
//! coordinator and the forwarder fan out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::pb::internode::v1 as ipb;
use client::pb::v1 as pb;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::convert::{cell_from_pb, cell_to_pb};
use super::Node;
use crate::cluster::{digest, ReadResponse};
use crate::lsm::{Cached, Cell, Mutation, TryWrite};

/// Where a replica is: enough to reach it and to delay traffic across DCs. Shared rather than
/// owned: the coordinator hands one to every replica call of every request, and copying three
/// strings each time was 1.3% of a node's instructions (docs/benchmarks.md).
#[derive(Clone, Debug)]
pub struct Target(Arc<Place>);

#[derive(Debug)]
pub struct Place {
    pub id: String,
    pub dc: String,
    pub address: String,
}

impl Target {
    pub fn new(id: String, dc: String, address: String) -> Self {
        Target(Arc::new(Place { id, dc, address }))
    }

    /// A ring member's internode endpoint.
    pub fn of(node: &topology::Node) -> Self {
        Self::new(node.id.0.clone(), node.dc.clone(), node.address.clone())
    }
}

impl std::ops::Deref for Target {
    type Target = Place;

    fn deref(&self) -> &Place {
        &self.0
    }
}

/// Who ends a replica call's wait at its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The call itself, with a timer of its own.
    Own,
    /// Its caller, which waits on several calls against one timer and drops those unanswered
    /// at the deadline: a timer per replica call was about 3% of a node's instructions.
    Callers,
}

/// What a replica read asks for.
#[derive(Clone, Copy)]
pub struct ReplicaRead<'a> {
    pub key: &'a Bytes,
    pub want_digest: bool,
    pub deadline: Instant,
}

/// Why a replica did not answer as asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    #[error("no answer within the deadline")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

impl From<super::storage::StorageError> for ReplicaError {
    fn from(e: super::storage::StorageError) -> Self {
        ReplicaError::Failed(e.to_string())
    }
}

impl From<ReplicaError> for pb::Error {
    fn from(e: ReplicaError) -> Self {
        e.to_pb()
    }
}

impl ReplicaError {
    pub fn to_pb(&self) -> pb::Error {
        let code = match self {
            ReplicaError::Timeout => tonic::Code::DeadlineExceeded,
            ReplicaError::Failed(_) => tonic::Code::Unavailable,
        };
        pb::Error {
            code: code as i32,
            message: self.to_string(),
            detail: None,
        }
    }
}

fn remaining(deadline: Instant) -> Result<Duration, ReplicaError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(ReplicaError::Timeout)
}

/// A replica write's answer: applied, or why not.
fn written(answer: Result<ipb::pipe_result::Result, ReplicaError>) -> Result<(), ReplicaError> {
    match answer? {
        ipb::pipe_result::Result::Written(_) => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(answer: ipb::pipe_result::Result) -> ReplicaError {
    ReplicaError::Failed(format!(
        "the replica answered another operation: {answer:?}"
    ))
}

pub fn to_pb_mutations(muts: &[Mutation]) -> Vec<ipb::ReplicaMutation> {
    (muts.iter())
        .map(|m| ipb::ReplicaMutation {
            key: user_key(&m.key),
            cell: Some(cell_to_pb(&m.cell)),
        })
        .collect()
}

/// Replica messages carry user keys; the receiver derives the token itself rather than trust
/// the sender's.
fn user_key(engine_key: &Bytes) -> Bytes {
    engine_key.slice(crate::storage_key::TOKEN_BYTES..)
}

/// Decodes a peer's mutations into engine mutations, validating keys and cells.
pub fn from_pb_mutations(
    muts: Vec<ipb::ReplicaMutation>,
) -> Result<Vec<Mutation>, client::KvError> {
    (muts.into_iter().enumerate())
        .map(|(i, m)| {
            let cell = super::convert::check_key(&m.key, "key").and_then(|()| {
                let cell = m
                    .cell
                    .ok_or_else(|| client::KvError::invalid_argument("cell", "missing"))?;
                cell_from_pb(cell, "cell")
            });
            Ok(Mutation {
                key: super::storage::engine_key(&m.key),
                cell: cell.map_err(|e| e.within(format_args!("mutations[{i}]")))?,
            })
        })
        .collect()
}

impl Node {
    fn is_local(&self, t: &Target) -> bool {
        t.id == self.me.0
    }

    /// Runs a storage call off the async runtime: the engine blocks on WAL group commit.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Node) -> Result<T, super::storage::StorageError> + Send + 'static,
    ) -> Result<T, ReplicaError> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || f(&node))
            .await
            .map_err(|e| ReplicaError::Failed(e.to_string()))?
            .map_err(ReplicaError::from)
    }

    /// Applies `muts` on this node's storage: inline when the engine would not wait, which
    /// spares a hand-off to the blocking pool and back (two thread wake-ups) per write.
    pub async fn apply_local(
        self: &Arc<Self>,
        keyspace: &str,
        muts: Vec<Mutation>,
    ) -> Result<(), ReplicaError> {
        let muts = match self.storage.try_apply(keyspace, muts)? {
            TryWrite::Written => return Ok(()),
            TryWrite::WouldWait(muts) => muts,
        };
        let keyspace = keyspace.to_owned();
        self.blocking(move |n| n.storage.apply(&keyspace, muts))
            .await
    }

    /// Applies several writes of one keyspace as one engine batch, one WAL record; if the
    /// batch fails, each alone, so that one bad write does not fail the others. One result per
    /// write, in order.
    pub async fn apply_together(
        self: &Arc<Self>,
        keyspace: &str,
        writes: Vec<Vec<Mutation>>,
    ) -> Vec<Result<(), ReplicaError>> {
        if writes.len() > 1 {
            let all: Vec<Mutation> = writes.iter().flatten().cloned().collect();
            if self.apply_local(keyspace, all).await.is_ok() {
                return writes.iter().map(|_| Ok(())).collect();
            }
        }
        let mut results = Vec::with_capacity(writes.len());
        for muts in writes {
            results.push(self.apply_local(keyspace, muts).await);
        }
        results
    }

    /// This node's raw cell of a user key: inline when memory answers, on the blocking pool
    /// when a block must be read from disk.
    pub async fn read_local(
        self: &Arc<Self>,
        keyspace: &str,
        user_key: &[u8],
    ) -> Result<Option<Cell>, ReplicaError> {
        let key = super::storage::engine_key(user_key);
        if let Cached::Hit(cell) = self.storage.try_read(keyspace, &key)? {
            return Ok(cell);
        }
        let keyspace = keyspace.to_owned();
        self.blocking(move |n| n.storage.read(&keyspace, &key))
            .await
    }

    /// Writes `muts` to one replica.
    pub async fn write_replica(
        self: &Arc<Self>,
        t: &Target,
        keyspace: &str,
        muts: Arc<Vec<Mutation>>,
        deadline: Instant,
        timer: Timer,
    ) -> Result<(), ReplicaError> {
        if self.is_local(t) {
            return self.write_local(keyspace, muts.to_vec()).await;
        }
        let op = ipb::pipe_op::Op::Write(ipb::PipeWrite {
            mutations: to_pb_mutations(&muts),
        });
        written(self.pipe_call(t, keyspace, op, deadline, timer).await)
    }

    /// One operation on a remote replica through its pipe, within the deadline and the
    /// simulated WAN delay.
    async fn pipe_call(
        self: &Arc<Self>,
        t: &Target,
        keyspace: &str,
        op: ipb::pipe_op::Op,
        deadline: Instant,
        timer: Timer,
    ) -> Result<ipb::pipe_result::Result, ReplicaError> {
        remaining(deadline)?;
        let pipe = self.peers.pipe(&t.address, &t.dc, &t.id);
        let call = self.peers.call(&t.dc, pipe.call(keyspace, op));
        match timer {
            Timer::Own => (tokio::time::timeout_at(deadline.into(), call).await)
                .unwrap_or(Err(ReplicaError::Timeout)),
            Timer::Callers => call.await,
        }
    }

    /// Reads one replica's cell, or its digest.
    pub async fn read_replica(
        self: &Arc<Self>,
        t: &Target,
        keyspace: &str,
        read: ReplicaRead<'_>,
        timer: Timer,
    ) -> Result<ReadResponse, ReplicaError> {
        let started = Instant::now();
        let out = self.read_replica_inner(t, keyspace, read, timer).await;
        if out.is_ok() {
            self.latencies.record(&t.id, started.elapsed());
        }
        out
    }

    async fn read_replica_inner(
        self: &Arc<Self>,
        t: &Target,
        keyspace: &str,
        read: ReplicaRead<'_>,
        timer: Timer,
    ) -> Result<ReadResponse, ReplicaError> {
        let ReplicaRead {
            key,
            want_digest,
            deadline,
        } = read;
        if self.is_local(t) {
            let cell = self.read_local(keyspace, key).await?;
            return Ok(match want_digest {
                true => ReadResponse::Digest(digest(cell.as_ref())),
                false => ReadResponse::Data(cell),
            });
        }
        let key = key.clone();
        let op = match want_digest {
            true => ipb::pipe_op::Op::DigestKey(key),
            false => ipb::pipe_op::Op::ReadKey(key),
        };
        match self.pipe_call(t, keyspace, op, deadline, timer).await? {
            ipb::pipe_result::Result::Digest(d) if want_digest => Ok(ReadResponse::Digest(d)),
            ipb::pipe_result::Result::Read(r) if !want_digest => {
                let cell = (r.cell)
                    .map(|c| cell_from_pb(c, "cell"))
                    .transpose()
                    .map_err(|e| ReplicaError::Failed(e.to_string()))?;
                Ok(ReadResponse::Data(cell))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Asks a forwarder in another DC to write `muts` to `targets` there, on its pipe; calls
    /// `on_ack` with each target's outcome as it comes back (a timeout when the deadline passed
    /// first).
    pub async fn forward_write(
        self: &Arc<Self>,
        forwarder: &Target,
        targets: &[Target],
        keyspace: &str,
        muts: Arc<Vec<Mutation>>,
        deadline: Instant,
        mut on_ack: impl FnMut(&str, Result<(), ReplicaError>),
    ) {
        let pipe = self
            .peers
            .pipe(&forwarder.address, &forwarder.dc, &forwarder.id);
        // Delayed on the way out here and on the way back per answer, so answers arriving
        // together are not serialised behind one another's delays.
        let delay = self.peers.wan_delay(&forwarder.dc);
        let sent = async {
            let op = ipb::pipe_op::Op::Forward(ipb::PipeForward {
                mutations: to_pb_mutations(&muts),
                targets: targets.iter().map(|t| t.id.clone()).collect(),
                timeout_ms: remaining(deadline)?.as_millis() as u32,
            });
            super::peers::wan_wait(delay).await;
            pipe.call_each(keyspace, op, targets.len()).await
        };
        let sent = tokio::time::timeout_at(deadline.into(), sent).await;
        let answers = match sent.unwrap_or(Err(ReplicaError::Timeout)) {
            Ok(answers) => answers,
            Err(e) => return targets.iter().for_each(|t| on_ack(&t.id, Err(e.clone()))),
        };
        let mut acks: FuturesUnordered<_> = (answers.into_iter().zip(targets))
            .map(|(answer, t)| async move {
                let answer = tokio::time::timeout_at(deadline.into(), answer).await;
                super::peers::wan_wait(delay).await;
                (&t.id, written(answer.unwrap_or(Err(ReplicaError::Timeout))))
            })
            .collect();
        while let Some((id, outcome)) = acks.next().await {
            on_ack(id, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(muts: Vec<ipb::ReplicaMutation>) -> String {
        match from_pb_mutations(muts) {
            Err(client::KvError::InvalidArgument(a)) => a.field,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn a_peers_bad_mutation_is_refused_by_its_full_path() {
        let good = ipb::ReplicaMutation {
            key: Bytes::from_static(b"k"),
            cell: Some(cell_to_pb(&Cell::value(1, Bytes::from_static(b"v")))),
        };
        assert_eq!(from_pb_mutations(vec![good.clone()]).unwrap().len(), 1);
        let empty_key = ipb::ReplicaMutation {
            key: Bytes::new(),
            ..good.clone()
        };
        assert_eq!(field_of(vec![good.clone(), empty_key]), "mutations[1].key");
        let no_cell = ipb::ReplicaMutation {
            cell: None,
            ..good.clone()
        };
        assert_eq!(field_of(vec![no_cell]), "mutations[0].cell");
        let huge = ipb::ReplicaMutation {
            cell: Some(cell_to_pb(&Cell::value(
                1,
                Bytes::from(vec![0; client::MAX_VALUE_BYTES + 1]),
            ))),
            ..good.clone()
        };
        assert_eq!(field_of(vec![good, huge]), "mutations[1].cell.value");
    }
}
