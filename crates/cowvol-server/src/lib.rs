//! The cowvol platform HTTP API and snapshot panel.
//!
//! One tokio runtime serves an axum router over one [`cowvol::Store`],
//! opened once; every engine call runs on the blocking pool. Requests carry
//! a bearer token from a tokens file ([`Tokens`]); each owner sees only its
//! own volumes, snapshots and templates. Answers are JSON envelopes
//! (`{"success": true, "data": ...}` or `{"success": false, "error": ...}`),
//! described by `/openapi.json`, which is generated from the handlers.
//!
//! Layout: [`wire`] (the JSON types) → `routes` (handlers and OpenAPI) →
//! `ops` (owner checks and engine calls) → the engine. `error` maps every
//! failure to a status code, in one place.

#![deny(missing_docs)]

mod auth;
mod error;
mod extract;
mod metrics;
mod ops;
mod panel;
mod routes;
mod size;
pub mod wire;

pub use auth::{Caller, Tokens, TokensError};
pub use error::ApiError;
pub use size::parse_size;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cowvol::{Store, StoreOptions};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;

/// Largest request body accepted; bigger ones get 413.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// How long [`Server::run`] waits, after the last connection closed, for
/// engine calls still finishing on the blocking pool to let the store go.
const STORE_HANDBACK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a server runs. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Default: 127.0.0.1:7480.
    pub listen: SocketAddr,
    /// Size of volumes created without `size_bytes`. Default: 10 GiB (thin).
    pub default_volume_size: u64,
    /// A request still running after this long is answered 503 (the engine
    /// call may still complete). Default: 60 s; it stays above the longest
    /// restore drain timeout a request may ask for.
    pub request_timeout: Duration,
    /// Requests handled at once; more wait. Default: 64.
    pub max_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
            default_volume_size: 10 << 30,
            request_timeout: Duration::from_secs(60),
            max_in_flight: 64,
        }
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    app: Arc<ops::App>,
}

impl Server {
    /// Binds the listening socket. Call inside a tokio runtime.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(store: Store, tokens: Tokens, config: &ServerConfig) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let app = Arc::new(ops::App::new(store, config.default_volume_size));
        let router = router(app.clone(), Arc::new(tokens), config);
        Ok(Server { listener, router, app })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets the
    /// requests in progress finish, and hands back the store.
    ///
    /// # Errors
    /// When accepting connections fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<Option<Store>> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown).await?;
        // A request's engine call runs on the blocking pool and drops its
        // handle on the app a moment after its response went out: wait for
        // that. Engine calls of requests that hit the request timeout may
        // still run for long; after the wait the store is left to them.
        let mut app = self.app;
        let deadline = tokio::time::Instant::now() + STORE_HANDBACK_WAIT;
        loop {
            match Arc::try_unwrap(app) {
                Ok(a) => return Ok(Some(a.store)),
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    app = shared;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(_) => return Ok(None),
            }
        }
    }
}

/// The whole router: API, metrics, OpenAPI, health and the panel.
fn router(app: Arc<ops::App>, tokens: Arc<Tokens>, config: &ServerConfig) -> Router {
    use routes::*;
    let api = Router::new()
        .route("/sandboxvolumes", post(create_volume).get(list_volumes))
        .route("/sandboxvolumes/{id}", get(get_volume).delete(delete_volume))
        .route("/sandboxvolumes/{id}/fork", post(fork_volume))
        .route("/sandboxvolumes/{id}/snapshots", post(create_snapshot).get(list_volume_snapshots))
        .route("/sandboxvolumes/{id}/snapshots/{sid}", get(get_snapshot).delete(delete_snapshot))
        .route("/sandboxvolumes/{id}/snapshots/{sid}/restore", post(restore_snapshot))
        .route("/sandboxvolumes/{id}/snapshots/{sid}/hold", post(hold_snapshot))
        .route("/sandboxvolumes/{id}/snapshots/{sid}/release", post(release_snapshot))
        .route("/sandboxvolumes/{id}/policy", get(get_policy).put(put_policy).delete(delete_policy))
        .route("/snapshots", get(search_snapshots))
        .route("/templates", post(create_template).get(list_templates))
        .route("/templates/{id}", get(get_template).delete(delete_template))
        .route_layer(middleware::from_fn_with_state(tokens, auth::require_token))
        .with_state(app.clone());
    let openapi = Arc::new(openapi_json());
    let metrics = Arc::new(metrics::Metrics::default());
    let scrape = {
        let (app, metrics) = (app.clone(), metrics.clone());
        move || scrape_metrics(app.clone(), metrics.clone())
    };
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(scrape))
        .route("/openapi.json", get(move || serve_openapi(openapi.clone())))
        .merge(panel::routes())
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn(refuse_announced_large_bodies))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(config.max_in_flight))
        .layer(middleware::from_fn_with_state(config.request_timeout, deadline))
        .layer(middleware::from_fn_with_state(metrics, metrics::record))
}

/// The OpenAPI document as served. utoipa writes a link's target as
/// `operation_id`; OpenAPI (and schemathesis, which follows links in its
/// stateful phase) reads `operationId`.
pub fn openapi_json() -> String {
    fn fix_links(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(links)) = map.get_mut("links") {
                    for link in links.values_mut().filter_map(serde_json::Value::as_object_mut) {
                        if let Some(id) = link.remove("operation_id") {
                            link.insert("operationId".into(), id);
                        }
                    }
                }
                map.values_mut().for_each(fix_links);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(fix_links),
            _ => {}
        }
    }
    let mut doc = serde_json::to_value(routes::ApiDoc::openapi()).unwrap_or_default();
    fix_links(&mut doc);
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

async fn serve_openapi(doc: Arc<String>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc.as_str().to_owned()).into_response()
}

async fn scrape_metrics(app: Arc<ops::App>, metrics: Arc<metrics::Metrics>) -> Response {
    // Store statistics walk the catalog: blocking work.
    match tokio::task::spawn_blocking(move || metrics.render(&app.store)).await {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => ApiError::internal(format!("metrics could not be gathered: {e}")).into_response(),
    }
}

/// Middleware: a body announced larger than the limit is refused before
/// any of it is read (bodies that are not announced are cut off by the
/// extractors at the limit).
async fn refuse_announced_large_bodies(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT_BYTES as u64) {
        return ApiError::too_large(BODY_LIMIT_BYTES).into_response();
    }
    next.run(req).await
}

/// Middleware: answers 503 for a request that runs past the deadline.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::request_timeout(limit.as_secs()).into_response(),
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        // Without signal handlers the server can only be killed; say so.
        eprintln!("cowvol serve: could not install signal handlers; graceful shutdown is unavailable");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// What `cowvol serve` is given.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The store directory (created when missing).
    pub store_dir: PathBuf,
    /// The tokens file; when absent a one-off admin token is made and printed.
    pub tokens_file: Option<PathBuf>,
    /// Listen address, default volume size and limits.
    pub config: ServerConfig,
}

/// Opens the store, serves until SIGINT or SIGTERM, drains and closes the
/// store. Builds and owns the process's one tokio runtime.
///
/// # Errors
/// A refused tokens file, a store that does not open, an address that
/// cannot be bound, or a failure closing the store.
pub fn serve(opts: ServeOptions) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tokens = match &opts.tokens_file {
        Some(path) => Tokens::load(path)?,
        None => {
            let token = random_token()?;
            eprintln!("cowvol serve: no --tokens file; admin token for this run: {token}");
            Tokens::single_admin(token, "admin")
        }
    };
    let store_opts = StoreOptions { policy_interval: Some(Duration::from_secs(60)), ..Default::default() };
    let store = Store::open(&opts.store_dir, store_opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(64).build()?;
    let store = runtime.block_on(async {
        let server = Server::bind(store, tokens, &opts.config).await?;
        eprintln!("cowvol serve: listening on http://{} (panel at /ui)", server.local_addr()?);
        server.run(shutdown_signal()).await
    })?;
    runtime.shutdown_timeout(Duration::from_secs(35));
    if let Some(store) = store {
        store.close()?;
    }
    eprintln!("cowvol serve: stopped");
    Ok(())
}

fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
