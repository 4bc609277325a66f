//! Asking running nodes how they are: HTTP /health, and the ring each one sees.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use client::pb::v1::key_value_client::KeyValueClient;
use client::pb::v1::{DescribeRingRequest, DescribeRingResponse, Liveness, NodeState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::process::{is_running, log_tail};
use super::state::NodeEntry;

/// One probe's budget: a node on loopback that takes longer is not serving.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const LOG_TAIL_LINES: usize = 15;

/// A client for a node's client service, with the protocol's message limit both ways.
pub async fn connect(address: &str) -> anyhow::Result<KeyValueClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("bad address {address}"))?
        .connect_timeout(PROBE_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    Ok(KeyValueClient::new(channel)
        .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(client::MAX_MESSAGE_BYTES))
}

/// `GET /health`: Ok(()) on 200, else why not, in a few words.
pub async fn health(http_address: &str) -> Result<(), String> {
    let probe = async {
        let mut stream = TcpStream::connect(http_address)
            .await
            .map_err(|e| e.to_string())?;
        let request =
            format!("GET /health HTTP/1.1\r\nHost: {http_address}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // The status line is all we need; cap the read so a chatty answer cannot hold us.
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let status = line.split_whitespace().nth(1).unwrap_or("");
        if status == "200" {
            Ok(())
        } else {
            Err(format!(
                "/health answered {:?}",
                line.lines().next().unwrap_or("")
            ))
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(result) => result,
        Err(_) => Err("/health did not answer in time".to_owned()),
    }
}

pub async fn describe_ring(client_address: &str) -> anyhow::Result<DescribeRingResponse> {
    let call = async {
        let mut client = connect(client_address).await?;
        let ring = client
            .describe_ring(DescribeRingRequest {})
            .await
            .with_context(|| format!("DescribeRing on {client_address} failed"))?;
        Ok(ring.into_inner())
    };
    tokio::time::timeout(PROBE_TIMEOUT, call)
        .await
        .with_context(|| format!("DescribeRing on {client_address} did not answer in time"))?
}

/// What keeps each node (by id) from being ready; empty when every observer serves and sees
/// every expected node NORMAL and UP.
pub async fn readiness(
    observers: &[&NodeEntry],
    expected: &[&NodeEntry],
) -> BTreeMap<String, Vec<String>> {
    let mut issues: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for observer in observers {
        if let Err(why) = health(&observer.http_address).await {
            issues
                .entry(observer.id.clone())
                .or_default()
                .push(format!("not serving: {why}"));
            continue;
        }
        let ring = match describe_ring(&observer.client_address).await {
            Ok(ring) => ring,
            Err(e) => {
                issues
                    .entry(observer.id.clone())
                    .or_default()
                    .push(format!("{e:#}"));
                continue;
            }
        };
        for node in expected {
            let seen = ring.nodes.iter().find(|n| n.id == node.id);
            let problem = match seen {
                None => Some("unknown".to_owned()),
                Some(n) if n.state() != NodeState::Normal || n.liveness() != Liveness::Up => Some(
                    format!("{} {}", n.state().as_str_name(), n.liveness().as_str_name()),
                ),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                issues
                    .entry(node.id.clone())
                    .or_default()
                    .push(format!("{} sees it as {problem}", observer.id));
            }
        }
    }
    issues
}

/// Polls until every observer serves and sees every expected node NORMAL and UP. Fails at once
/// when an observer's process is gone, and after `timeout` with what is still missing.
pub async fn wait_ready(
    observers: &[&NodeEntry],
    expected: &[&NodeEntry],
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let exited: Vec<&NodeEntry> = observers
            .iter()
            .copied()
            .filter(|n| !is_running(n))
            .collect();
        if !exited.is_empty() {
            bail!("{}", exited_report(&exited));
        }
        let issues = readiness(observers, expected).await;
        if issues.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bail!(
                "{}",
                not_ready_report(observers, expected, &issues, timeout)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn exited_report(exited: &[&NodeEntry]) -> String {
    let mut report = String::new();
    for node in exited {
        report.push_str(&format!(
            "{} exited while starting; last lines of {}:\n{}\n",
            node.id,
            node.log_path().display(),
            indent(&log_tail(node, LOG_TAIL_LINES))
        ));
    }
    report.trim_end().to_owned()
}

fn not_ready_report(
    observers: &[&NodeEntry],
    expected: &[&NodeEntry],
    issues: &BTreeMap<String, Vec<String>>,
    timeout: Duration,
) -> String {
    let mut report = format!(
        "not ready after {}s: {}\n",
        timeout.as_secs(),
        issues.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    let nodes = observers.iter().chain(expected).copied();
    let mut shown = Vec::new();
    for node in nodes {
        let Some(why) = issues.get(&node.id) else {
            continue;
        };
        if shown.contains(&node.id) {
            continue;
        }
        shown.push(node.id.clone());
        report.push_str(&format!(
            "  {}: {}\n    log {}, last lines:\n{}\n",
            node.id,
            why.join("; "),
            node.log_path().display(),
            indent(&indent(&log_tail(node, LOG_TAIL_LINES)))
        ));
    }
    report.trim_end().to_owned()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
