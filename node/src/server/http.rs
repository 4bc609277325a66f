//! The metrics and health endpoint: `GET /health` answers 200 while the node serves,
//! `GET /metrics` the Prometheus counters.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::metrics::Metrics;
use super::Node;

pub async fn serve(node: Arc<Node>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let metrics_node = node.clone();
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let node = metrics_node.clone();
                async move { node.render_metrics() }
            }),
        );
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "http server failed");
    }
}

impl Node {
    fn render_metrics(&self) -> String {
        let view = self.members.view();
        let up = (view.members.keys())
            .filter(|id| self.members.is_alive(id.as_str()))
            .count() as u64;
        let hints: u64 = (self.hints.targets().iter())
            .filter_map(|t| self.hints.pending(t).ok())
            .map(|s| s.count)
            .sum();
        let mut out = self.metrics.render(&[
            (
                "kv_members",
                "nodes known through gossip",
                view.members.len() as u64,
            ),
            (
                "kv_members_up",
                "nodes the failure detector believes up",
                up,
            ),
            ("kv_hints_pending", "hints waiting for their replica", hints),
            (
                "kv_schema_version",
                "version of this node's schema",
                view.schema.version(),
            ),
        ]);
        Metrics::render_engines(&mut out, &self.storage.engine_stats());
        out
    }
}
