//! Seeds turned into internode addresses for gossip. Names are looked up again once their
//! records expire, so a seed replaced behind a DNS name is found again; the lookups go through
//! [`SeedResolver`], so tests (and a deterministic simulation) answer them without a network.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use super::Node;
use crate::config::Seed;

/// Records with a TTL of 0 (or a resolver that reports none) would otherwise be looked up on
/// every gossip round.
const TTL_MIN: Duration = Duration::from_secs(1);
/// A name that failed is retried after this long: soon enough to find a seed that appears,
/// rarely enough that a missing one logs a line every few seconds rather than every round.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(5);

/// Records of one lookup and how long they may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<T> {
    pub records: Vec<T>,
    pub ttl: Duration,
}

/// One SRV record's target; priority and weight are ignored, since any seed serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

/// DNS as the seeds need it. Object-safe (boxed futures) so the node holds any implementation.
pub trait SeedResolver: Send + Sync {
    /// A and AAAA records of `host`.
    fn lookup_ip<'a>(&'a self, host: &'a str)
        -> BoxFuture<'a, Result<Answer<IpAddr>, LookupError>>;
    /// SRV records of `name`.
    fn lookup_srv<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Answer<SrvTarget>, LookupError>>;
}

/// The system's resolver, configured from /etc/resolv.conf (and /etc/hosts). A missing or
/// unreadable configuration only fails lookups of names: seeds given as IPs still work.
pub struct HickoryResolver(Result<TokioResolver, String>);

impl HickoryResolver {
    pub fn from_system() -> HickoryResolver {
        let resolver = TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| format!("no system DNS configuration: {e}"));
        HickoryResolver(resolver)
    }

    fn resolver(&self) -> Result<&TokioResolver, LookupError> {
        self.0.as_ref().map_err(|e| LookupError(e.clone()))
    }
}

fn ttl_until(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

impl SeedResolver for HickoryResolver {
    fn lookup_ip<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Answer<IpAddr>, LookupError>> {
        Box::pin(async move {
            let lookup =
                (self.resolver()?.lookup_ip(host).await).map_err(|e| LookupError(e.to_string()))?;
            Ok(Answer {
                records: lookup.iter().collect(),
                ttl: ttl_until(lookup.valid_until()),
            })
        })
    }

    fn lookup_srv<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Answer<SrvTarget>, LookupError>> {
        Box::pin(async move {
            let lookup = (self.resolver()?.srv_lookup(name).await)
                .map_err(|e| LookupError(e.to_string()))?;
            let records = (lookup.answers().iter())
                .filter_map(|r| match &r.data {
                    // A target of "." says the service is not offered at this name.
                    RData::SRV(srv) if !srv.target.is_root() => Some(SrvTarget {
                        host: srv.target.to_string(),
                        port: srv.port,
                    }),
                    _ => None,
                })
                .collect();
            Ok(Answer {
                records,
                ttl: ttl_until(lookup.valid_until()),
            })
        })
    }
}

struct Cached<T> {
    /// Empty after a failure: the name is skipped until `until`.
    records: Vec<T>,
    until: Instant,
}

#[derive(Default)]
struct Cache {
    ips: HashMap<String, Cached<IpAddr>>,
    srv: HashMap<String, Cached<SrvTarget>>,
}

/// The configured seeds and what their names resolved to.
pub struct SeedAddresses {
    /// As configured (for log lines) and parsed; the node's own address left out.
    seeds: Vec<(String, Seed)>,
    own: SocketAddr,
    resolver: Arc<dyn SeedResolver>,
    cache: tokio::sync::Mutex<Cache>,
}

impl SeedAddresses {
    /// `seeds` are validated config entries; one that does not parse is left out with a log
    /// line (validation refuses them, so only a config built in code can have one).
    pub fn new(seeds: &[String], own: SocketAddr, resolver: Arc<dyn SeedResolver>) -> Self {
        let seeds = (seeds.iter())
            .filter_map(|text| match Seed::parse(text) {
                Ok(seed) => Some((text.clone(), seed)),
                Err(why) => {
                    tracing::error!(seed = %text, %why, "seed ignored");
                    None
                }
            })
            .filter(|(_, seed)| *seed != Seed::Addr(own))
            .collect();
        SeedAddresses {
            seeds,
            own,
            resolver,
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    /// Configured seeds other than this node's own address.
    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    /// Every address the seeds name now, this node's own left out; names whose records
    /// expired are looked up again, names that fail are skipped with a log line. `None` while
    /// another gossip round is resolving: that round gossips with a seed, and waiting for a
    /// slow DNS server would only pile up rounds behind it.
    pub async fn addresses(&self) -> Option<Vec<SocketAddr>> {
        let mut cache = self.cache.try_lock().ok()?;
        let now = Instant::now();
        cache.ips.retain(|_, c| c.until > now);
        cache.srv.retain(|_, c| c.until > now);
        let mut out = Vec::new();
        for (text, seed) in &self.seeds {
            match seed {
                Seed::Addr(addr) => out.push(*addr),
                Seed::Host { name, port } => {
                    let ips = self.ips(&mut cache, text, name, now).await;
                    out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, *port)));
                }
                Seed::Srv { name } => {
                    let query = || self.resolver.lookup_srv(name);
                    let targets = lookup(&mut cache.srv, text, name, now, query).await;
                    for target in targets {
                        let ips = self.ips(&mut cache, text, &target.host, now).await;
                        out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, target.port)));
                    }
                }
            }
        }
        out.retain(|a| *a != self.own);
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    async fn ips(&self, cache: &mut Cache, seed: &str, host: &str, now: Instant) -> Vec<IpAddr> {
        lookup(&mut cache.ips, seed, host, now, || {
            self.resolver.lookup_ip(host)
        })
        .await
    }
}

/// `name`'s records from `cache`, looked up when absent (expired entries are already gone).
async fn lookup<'a, T: Clone>(
    cache: &mut HashMap<String, Cached<T>>,
    seed: &str,
    name: &'a str,
    now: Instant,
    query: impl FnOnce() -> BoxFuture<'a, Result<Answer<T>, LookupError>>,
) -> Vec<T> {
    if let Some(cached) = cache.get(name) {
        return cached.records.clone();
    }
    let cached = match query().await {
        Ok(answer) => Cached {
            records: answer.records,
            until: now + answer.ttl.max(TTL_MIN),
        },
        Err(e) => {
            tracing::warn!(
                %seed, %name, error = %e,
                "seed name did not resolve; skipped, retried in {}s",
                RETRY_FAILED_AFTER.as_secs()
            );
            Cached {
                records: Vec::new(),
                until: now + RETRY_FAILED_AFTER,
            }
        }
    };
    let records = cached.records.clone();
    cache.insert(name.to_owned(), cached);
    records
}

impl Node {
    /// Gossips with a random one of the seeds' addresses that this round does not already
    /// talk to.
    pub(super) async fn gossip_with_seed(self: Arc<Self>, targets: Vec<String>) {
        let Some(addresses) = self.seeds.addresses().await else {
            return;
        };
        let candidates: Vec<String> = (addresses.iter())
            .map(SocketAddr::to_string)
            .filter(|a| !targets.contains(a))
            .collect();
        let pick = candidates.choose(&mut *self.rng.lock()).cloned();
        if let Some(addr) = pick {
            self.gossip_with(addr).await;
        }
    }
}

#[cfg(test)]
mod tests;
