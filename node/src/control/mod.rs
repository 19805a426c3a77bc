//! The control API: HTTP/JSON on loopback, guarded by a token.
//!
//! `shoal up` serves it and writes its address and a fresh token into
//! `control.json` in the data directory (readable by the owner only); every
//! other subcommand reads that file and calls the API. Requests carry
//! `Authorization: Bearer TOKEN`; answers are JSON, errors `{"error": "..."}`.
//!
//! # Layout
//!
//! - [`api`]: the requests and answers, shared with the CLI.
//! - this module: serving, the token check (one middleware layer in front
//!   of every route), the request cap, errors as answers.
//! - `tasks`: long operations (shares, downloads) as numbered tasks the
//!   CLI polls.
//! - `overlay`, `files`, `pins`, `jobs`, `leases`, `devices`: one route group per part of the node; a
//!   new resource adds a module and merges its group in [`serve`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use shoal_overlay::Key;
use tokio::sync::Notify;

use crate::Client;

pub mod api;
mod devices;
mod files;
mod jobs;
mod leases;
mod overlay;
mod pins;
mod tasks;

pub use api::*;
use tasks::Tasks;

struct AppState {
    client: Client,
    token: String,
    shutdown: Arc<Notify>,
    /// Requests being answered; past [`MAX_REQUESTS`] the API says busy.
    requests: Arc<tokio::sync::Semaphore>,
    downloads: std::sync::Mutex<Tasks<String>>,
    shares: std::sync::Mutex<Tasks<ShareView>>,
}

/// Requests the API answers at once; more are told to come back.
pub const MAX_REQUESTS: usize = 64;
/// Largest request body in general (a key, a path, a ticket).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest body of `POST /v1/provide`: 100,000 keys as JSON are about 7 MB.
pub const MAX_PROVIDE_BODY_BYTES: usize = 8 * 1024 * 1024;
type ApiError = (StatusCode, Json<serde_json::Value>);

fn failure(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    (status, Json(serde_json::json!({ "error": message.to_string() })))
}

/// Every request passes here first: the token is checked before anything
/// of the request's body is read, then a place among the requests answered
/// at once is taken (or the caller is told the daemon is busy).
async fn authorize(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit, so timing does not reveal a prefix.
    let ok = given.is_some_and(|g| {
        g.len() == state.token.len()
            && g.bytes()
                .zip(state.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !ok {
        return failure(StatusCode::UNAUTHORIZED, "missing or wrong token (see control.json)").into_response();
    }
    let Ok(_place) = state.requests.clone().try_acquire_owned() else {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the daemon is answering {MAX_REQUESTS} requests already; try again shortly"),
        )
        .into_response();
    };
    next.run(request).await
}

fn parse_key(text: &str) -> Result<Key, ApiError> {
    text.parse::<Key>()
        .map_err(|e| failure(StatusCode::BAD_REQUEST, format!("bad key {text:?}: {e}")))
}

/// A node error as an HTTP answer: the caller's fault (a bad value, path
/// or pin) is 400, the rest 503.
fn node_failure(e: crate::NodeError) -> ApiError {
    use crate::NodeError as E;
    let status = match &e {
        E::Command(_) | E::Pin(_) | E::Store(shoal_resources::store::StoreError::Unreadable { .. }) => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    failure(status, e)
}

async fn down(State(state): State<Arc<AppState>>) -> Response {
    state.shutdown.notify_one();
    Json(Stopping { stopping: true }).into_response()
}

/// Serves the API on a loopback port for `client`, writes `control.json`
/// into `data_dir`, and returns the file's path. `shutdown` is notified when
/// a client asks the peer to stop.
pub async fn serve(client: Client, data_dir: &Path, shutdown: Arc<Notify>) -> std::io::Result<PathBuf> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let info = ControlInfo {
        addr: listener.local_addr()?,
        token: token.clone(),
    };
    let state = Arc::new(AppState {
        client,
        token,
        shutdown,
        requests: Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS)),
        downloads: std::sync::Mutex::new(Tasks::default()),
        shares: std::sync::Mutex::new(Tasks::default()),
    });
    // Each resource adds its route group here; the token check and the
    // request cap wrap them all.
    let app = Router::new()
        .merge(overlay::routes())
        .merge(files::routes())
        .merge(pins::routes())
        .merge(jobs::routes())
        .merge(leases::routes())
        .merge(devices::routes())
        .route("/v1/down", post(down))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state);
    let path = data_dir.join(CONTROL_FILE);
    write_private(&path, &serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("control API stopped: {e}");
        }
    });
    Ok(path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
