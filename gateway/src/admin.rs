//! The admin listener: health, metrics and read-only views of routes and services. It runs on
//! the control runtime, away from the data-plane workers.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

use crate::proxy::Proxy;
use crate::registry::{RegisterRequest, RegistryError};

/// Builds the admin router.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/admin/routes", get(routes))
        .route("/admin/services", get(services))
        .route("/admin/plugins", get(plugins))
        .route("/admin/plugins/reload", post(reload_plugins))
        .route("/registry/services", get(registry_services))
        .route("/registry/services/{service}", get(registry_service))
        .route(
            "/registry/services/{service}/instances/{id}",
            axum::routing::put(register).delete(deregister),
        )
        .route("/admin/kv", get(kv_list))
        .route(
            "/admin/kv/{*key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
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
    Json(json!({
        "registry": proxy.registry.status(),
        "services": proxy.registry.views(None),
    }))
}

async fn registry_services(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    services(State(proxy)).await
}

async fn registry_service(
    State(proxy): State<Arc<Proxy>>,
    Path(service): Path<String>,
) -> impl IntoResponse {
    match proxy.registry.views(Some(&service)).pop() {
        Some(view) => Json(json!(view)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no service named {service}\n"),
        )
            .into_response(),
    }
}

/// `PUT /registry/services/{service}/instances/{id}`: registers or renews.
async fn register(
    State(proxy): State<Arc<Proxy>>,
    Path((service, id)): Path<(String, String)>,
    body: Bytes,
) -> impl IntoResponse {
    let request: RegisterRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!(
                "invalid registration for {service}/{id}: {e} (expected JSON like {{\"address\": \"127.0.0.1:9001\", \"ttl\": \"15s\"}})\n"
            );
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    match proxy.registry.register(&service, &id, request).await {
        Ok(registration) => Json(json!({
            "service": service,
            "id": id,
            "address": registration.request.address,
            "weight": registration.request.weight,
            "ttl_ms": registration.ttl.as_millis() as u64,
        }))
        .into_response(),
        Err(e) => registry_error(&service, &id, e),
    }
}

async fn deregister(
    State(proxy): State<Arc<Proxy>>,
    Path((service, id)): Path<(String, String)>,
) -> impl IntoResponse {
    match proxy.registry.deregister(&service, &id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            format!("no instance {id} registered for service {service}\n"),
        )
            .into_response(),
        Err(e) => registry_error(&service, &id, e),
    }
}

fn registry_error(service: &str, id: &str, error: RegistryError) -> axum::response::Response {
    let status = match error {
        RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
        RegistryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, format!("{service}/{id}: {error}\n")).into_response()
}

async fn plugins(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    Json(json!({ "plugins": proxy.plugins.views() }))
}

async fn reload_plugins(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    let report = proxy.plugins.reload().await;
    let status = if report.failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(report))
}

/// How long a kv write through etcd waits to see itself in this gateway's mirror.
const KV_MIRROR_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn kv_list(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    let keys: Vec<_> = proxy
        .plugins
        .kv()
        .list()
        .into_iter()
        .map(|(key, version)| json!({ "key": key, "version": version }))
        .collect();
    Json(json!({ "keys": keys }))
}

async fn kv_get(State(proxy): State<Arc<Proxy>>, Path(key): Path<String>) -> impl IntoResponse {
    match proxy.plugins.kv().get(&key) {
        Some((value, version)) => (
            StatusCode::OK,
            [("x-kv-version", version.to_string())],
            value,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, format!("no key {key}\n")).into_response(),
    }
}

async fn kv_put(
    State(proxy): State<Arc<Proxy>>,
    Path(key): Path<String>,
    value: Bytes,
) -> impl IntoResponse {
    let kv = proxy.plugins.kv().clone();
    if let Some(remote) = kv.remote() {
        return match remote.put(&key, value).await {
            Ok(version) => {
                kv.wait_for(&key, Some(version), KV_MIRROR_WAIT).await;
                Json(json!({ "key": key, "version": version })).into_response()
            }
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("kv backend etcd is unavailable: {e}\n"),
            )
                .into_response(),
        };
    }
    // The store writes its file synchronously; keep that off the event loop.
    let result = tokio::task::spawn_blocking(move || kv.put(&key, value).map(|v| (key, v))).await;
    match result {
        Ok(Ok((key, version))) => (
            StatusCode::OK,
            Json(json!({ "key": key, "version": version })),
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn kv_delete(State(proxy): State<Arc<Proxy>>, Path(key): Path<String>) -> impl IntoResponse {
    let kv = proxy.plugins.kv().clone();
    if let Some(remote) = kv.remote() {
        return match remote.delete(&key).await {
            Ok(existed) => {
                kv.wait_for(&key, None, KV_MIRROR_WAIT).await;
                if existed {
                    StatusCode::NO_CONTENT.into_response()
                } else {
                    StatusCode::NOT_FOUND.into_response()
                }
            }
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("kv backend etcd is unavailable: {e}\n"),
            )
                .into_response(),
        };
    }
    match tokio::task::spawn_blocking(move || kv.delete(&key)).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => StatusCode::NOT_FOUND.into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
