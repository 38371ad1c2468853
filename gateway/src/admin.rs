//! The admin listener: health, metrics and read-only views of routes and services. It runs on
//! the control runtime, away from the data-plane workers.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::proxy::Proxy;

/// Builds the admin router.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/admin/routes", get(routes))
        .route("/admin/services", get(services))
        .with_state(proxy)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        proxy.metrics.encode(),
    )
}

async fn routes(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    let snapshot = proxy.snapshot.load();
    Json(json!({ "routes": snapshot.routes.routes() }))
}

async fn services(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    let snapshot = proxy.snapshot.load();
    let mut services: Vec<_> = snapshot.services.values().map(|s| s.view()).collect();
    services.sort_by(|a, b| a.name().cmp(b.name()));
    Json(json!({ "services": services }))
}
