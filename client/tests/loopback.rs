//! The generated client and server talk over a real loopback socket: a fake KeyValue service
//! backed by a map proves that requests, responses, message limits and typed errors survive the
//! trip through tonic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use client::pb::v1::key_value_client::KeyValueClient;
use client::pb::v1::key_value_server::{KeyValue, KeyValueServer};
use client::pb::v1::*;
use client::{KvError, MAX_KEY_BYTES, MAX_MESSAGE_BYTES, MAX_VALUE_BYTES};
use prost::bytes::Bytes;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};

const KEYSPACE: &str = "app";

/// Stores the latest value per key; ALL is refused as if a DC had lost a replica, so the
/// typed UNAVAILABLE detail can be checked end to end.
#[derive(Default)]
struct Fake {
    data: Mutex<BTreeMap<Bytes, ReadValue>>,
}

fn check(keyspace: &str, consistency: i32, key: &[u8]) -> Result<(), KvError> {
    if keyspace != KEYSPACE {
        return Err(KvError::KeyspaceNotFound(KeyspaceNotFound {
            keyspace: keyspace.to_owned(),
        }));
    }
    match ConsistencyLevel::try_from(consistency) {
        Ok(ConsistencyLevel::Unspecified) | Err(_) => {
            return Err(KvError::invalid_argument("consistency", "not a level"))
        }
        Ok(ConsistencyLevel::All) => {
            return Err(KvError::Unavailable(Unavailable {
                consistency,
                required: 6,
                alive: 5,
                per_dc: vec![
                    DcAlive {
                        dc: "dc1".into(),
                        required: 3,
                        alive: 3,
                    },
                    DcAlive {
                        dc: "dc2".into(),
                        required: 3,
                        alive: 2,
                    },
                ],
            }))
        }
        Ok(_) => {}
    }
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(KvError::invalid_argument(
            "key",
            format!("{} bytes, outside 1..={MAX_KEY_BYTES}", key.len()),
        ));
    }
    Ok(())
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the fake"))
}

#[tonic::async_trait]
impl KeyValue for Fake {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = request.into_inner();
        check(&r.keyspace, r.consistency, &r.key)?;
        let value = self.data.lock().unwrap().get(&r.key).cloned();
        Ok(Response::new(GetResponse { value }))
    }

    type PipelineStream = tonic::codegen::BoxStream<PipelineResponse>;

    async fn pipeline(
        &self,
        _: Request<tonic::Streaming<PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        unimplemented()
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = request.into_inner();
        check(&r.keyspace, r.consistency, &r.key)?;
        if r.value.len() > MAX_VALUE_BYTES {
            return Err(KvError::invalid_argument("value", "too large").into());
        }
        let timestamp = r.timestamp.unwrap_or(1 << 16);
        let value = ReadValue {
            value: r.value,
            timestamp,
            expires_at_ms: r.ttl_ms.map(|ttl| 1_000 + ttl),
        };
        self.data.lock().unwrap().insert(r.key, value);
        Ok(Response::new(PutResponse { timestamp }))
    }

    async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        unimplemented()
    }

    async fn multi_get(
        &self,
        request: Request<MultiGetRequest>,
    ) -> Result<Response<MultiGetResponse>, Status> {
        let r = request.into_inner();
        let data = self.data.lock().unwrap();
        let results = r
            .keys
            .into_iter()
            .map(|key| {
                let outcome = match check(&r.keyspace, r.consistency, &key) {
                    Err(e) => key_result::Outcome::Error(e.into()),
                    Ok(()) => match data.get(&key) {
                        Some(v) => key_result::Outcome::Value(v.clone()),
                        None => key_result::Outcome::Missing(Missing {}),
                    },
                };
                KeyResult {
                    key,
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(Response::new(MultiGetResponse { results }))
    }

    async fn batch(&self, _: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        unimplemented()
    }

    async fn scan(&self, _: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        unimplemented()
    }

    async fn create_keyspace(
        &self,
        _: Request<CreateKeyspaceRequest>,
    ) -> Result<Response<CreateKeyspaceResponse>, Status> {
        unimplemented()
    }

    async fn describe_keyspace(
        &self,
        _: Request<DescribeKeyspaceRequest>,
    ) -> Result<Response<DescribeKeyspaceResponse>, Status> {
        unimplemented()
    }

    async fn drop_keyspace(
        &self,
        _: Request<DropKeyspaceRequest>,
    ) -> Result<Response<DropKeyspaceResponse>, Status> {
        unimplemented()
    }

    async fn list_keyspaces(
        &self,
        _: Request<ListKeyspacesRequest>,
    ) -> Result<Response<ListKeyspacesResponse>, Status> {
        unimplemented()
    }

    async fn describe_ring(
        &self,
        _: Request<DescribeRingRequest>,
    ) -> Result<Response<DescribeRingResponse>, Status> {
        unimplemented()
    }

    async fn decommission(
        &self,
        _: Request<client::pb::v1::DecommissionRequest>,
    ) -> Result<Response<client::pb::v1::DecommissionResponse>, Status> {
        unimplemented()
    }

    async fn remove_node(
        &self,
        _: Request<client::pb::v1::RemoveNodeRequest>,
    ) -> Result<Response<client::pb::v1::RemoveNodeResponse>, Status> {
        unimplemented()
    }

    async fn cleanup(
        &self,
        _: Request<client::pb::v1::CleanupRequest>,
    ) -> Result<Response<client::pb::v1::CleanupResponse>, Status> {
        unimplemented()
    }

    async fn netstats(
        &self,
        _: Request<client::pb::v1::NetstatsRequest>,
    ) -> Result<Response<client::pb::v1::NetstatsResponse>, Status> {
        unimplemented()
    }

    async fn inspect(
        &self,
        _: Request<InspectRequest>,
    ) -> Result<Response<InspectResponse>, Status> {
        unimplemented()
    }

    type RepairStream = tonic::codegen::BoxStream<RepairProgress>;

    async fn repair(
        &self,
        _: Request<RepairRequest>,
    ) -> Result<Response<Self::RepairStream>, Status> {
        unimplemented()
    }

    async fn repair_status(
        &self,
        _: Request<RepairStatusRequest>,
    ) -> Result<Response<RepairStatusResponse>, Status> {
        unimplemented()
    }
}

struct Running {
    client: KeyValueClient<Channel>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start() -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let service = KeyValueServer::new(Fake::default())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                stopped.await.ok();
            }),
    );
    let client = KeyValueClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Running {
        client,
        stop,
        server,
    }
}

impl Running {
    async fn stop(self) {
        drop(self.client);
        self.stop.send(()).unwrap();
        self.server.await.unwrap().unwrap();
    }
}

fn put(key: &'static [u8], value: Bytes, consistency: ConsistencyLevel) -> PutRequest {
    PutRequest {
        keyspace: KEYSPACE.into(),
        consistency: consistency as i32,
        key: Bytes::from_static(key),
        value,
        timestamp: None,
        ttl_ms: None,
    }
}

fn get(key: &'static [u8]) -> GetRequest {
    GetRequest {
        keyspace: KEYSPACE.into(),
        consistency: ConsistencyLevel::LocalQuorum as i32,
        key: Bytes::from_static(key),
    }
}

#[tokio::test]
async fn put_then_get_over_loopback() {
    let mut s = start().await;

    let mut request = put(b"k", Bytes::from_static(b"v1"), ConsistencyLevel::Quorum);
    request.timestamp = Some(42 << 16);
    request.ttl_ms = Some(60_000);
    let put = s.client.put(request).await.unwrap().into_inner();
    assert_eq!(put.timestamp, 42 << 16);

    let got = s.client.get(get(b"k")).await.unwrap().into_inner();
    assert_eq!(
        got.value,
        Some(ReadValue {
            value: Bytes::from_static(b"v1"),
            timestamp: 42 << 16,
            expires_at_ms: Some(61_000),
        })
    );
    let missing = s.client.get(get(b"nope")).await.unwrap().into_inner();
    assert_eq!(missing.value, None);

    s.stop().await;
}

#[tokio::test]
async fn a_maximal_value_fits_the_message_limit() {
    let mut s = start().await;
    let big = Bytes::from(vec![7u8; MAX_VALUE_BYTES]);
    s.client
        .put(put(b"big", big.clone(), ConsistencyLevel::One))
        .await
        .unwrap();
    let got = s.client.get(get(b"big")).await.unwrap().into_inner();
    assert_eq!(got.value.unwrap().value, big);
    s.stop().await;
}

#[tokio::test]
async fn typed_errors_survive_the_transport() {
    let mut s = start().await;

    let status = s
        .client
        .put(put(b"k", Bytes::new(), ConsistencyLevel::All))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let KvError::Unavailable(u) = KvError::from_status(&status) else {
        panic!("expected a typed UNAVAILABLE, got {status:?}");
    };
    assert_eq!((u.required, u.alive, u.per_dc.len()), (6, 5, 2));
    assert_eq!(
        status.message(),
        "not enough replicas alive for ALL: 6 required, 5 alive \
         (dc1: 3 required, 3 alive; dc2: 3 required, 2 alive)"
    );

    let status = s
        .client
        .put(put(b"k", Bytes::new(), ConsistencyLevel::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(
        KvError::from_status(&status),
        KvError::invalid_argument("consistency", "not a level")
    );

    let mut oversized = put(b"", Bytes::new(), ConsistencyLevel::One);
    oversized.key = Bytes::from(vec![1u8; MAX_KEY_BYTES + 1]);
    let status = s.client.put(oversized).await.unwrap_err();
    let KvError::InvalidArgument(bad) = KvError::from_status(&status) else {
        panic!("expected INVALID_ARGUMENT, got {status:?}");
    };
    assert_eq!(bad.field, "key");

    let mut elsewhere = get(b"k");
    elsewhere.keyspace = "missing".into();
    let status = s.client.get(elsewhere).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(matches!(
        KvError::from_status(&status),
        KvError::KeyspaceNotFound(KeyspaceNotFound { keyspace }) if keyspace == "missing"
    ));

    let status = s.client.delete(DeleteRequest::default()).await.unwrap_err();
    assert!(matches!(
        KvError::from_status(&status),
        KvError::Other {
            code: Code::Unimplemented,
            ..
        }
    ));

    s.stop().await;
}

#[tokio::test]
async fn multi_get_reports_each_key_on_its_own() {
    let mut s = start().await;
    s.client
        .put(put(b"a", Bytes::from_static(b"1"), ConsistencyLevel::One))
        .await
        .unwrap();
    let response = s
        .client
        .multi_get(MultiGetRequest {
            keyspace: KEYSPACE.into(),
            consistency: ConsistencyLevel::One as i32,
            keys: vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"b"),
                Bytes::new(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = response
        .results
        .into_iter()
        .map(|r| r.outcome.unwrap())
        .collect();
    assert!(matches!(&outcomes[0], key_result::Outcome::Value(v) if v.value == "1"));
    assert!(matches!(outcomes[1], key_result::Outcome::Missing(_)));
    let key_result::Outcome::Error(error) = outcomes[2].clone() else {
        panic!("expected an error for the empty key");
    };
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(matches!(KvError::from(error), KvError::InvalidArgument(a) if a.field == "key"));
    s.stop().await;
}
