//! The devices' routes: share, unshare, list; use (a session), follow it,
//! let it go.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::api::*;
use super::{ApiError, AppState, failure};
use crate::devices::Adapter;

/// Longest a call for a session's state waits for a change.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// The routes of this module.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/devices", get(list).post(share))
        .route("/v1/devices/unshare", post(unshare))
        .route("/v1/devices/use", post(start_use))
        .route("/v1/devices/use/{n}", get(follow).delete(stop_use))
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    failure(StatusCode::BAD_REQUEST, message)
}

async fn share(
    State(state): State<Arc<AppState>>,
    Json(body): Json<ShareDeviceRequest>,
) -> Result<Json<ReleasedView>, ApiError> {
    let adapter = match (body.tcp, body.cmd, body.path) {
        (Some(addr), None, None) => Adapter::Tcp(addr),
        (None, Some(cmd), None) => Adapter::Cmd(cmd),
        (None, None, Some(path)) => Adapter::Path(path.into()),
        _ => return Err(bad("a device has one adapter: --tcp, --cmd or --path")),
    };
    state
        .client
        .devices()
        .share(&body.name, &body.class, adapter)
        .await
        .map_err(bad)?;
    Ok(Json(ReleasedView { released: 0 }))
}

async fn unshare(
    State(state): State<Arc<AppState>>,
    Json(body): Json<UnshareRequest>,
) -> Result<Json<ReleasedView>, ApiError> {
    state
        .client
        .devices()
        .unshare(&body.name)
        .await
        .map_err(|e| failure(StatusCode::NOT_FOUND, e))?;
    Ok(Json(ReleasedView { released: 1 }))
}

#[derive(Deserialize)]
struct ListQuery {
    class: Option<String>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    state
        .client
        .devices()
        .list(query.class.as_deref())
        .await
        .map(Json)
        .map_err(|e| failure(StatusCode::BAD_GATEWAY, e))
}

async fn start_use(
    State(state): State<Arc<AppState>>,
    Json(body): Json<UseRequest>,
) -> Result<Json<UseView>, ApiError> {
    let target = match (body.name, body.class) {
        (Some(name), None) => Target::Name(name),
        (None, Some(class)) => Target::Class(class),
        _ => return Err(bad("use a device by its name or by --class, one of them")),
    };
    let listen = body
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:0")
        .parse()
        .map_err(|e| bad(format!("--listen: {e}")))?;
    state
        .client
        .devices()
        .start_use(
            target,
            body.shared,
            body.wait_ms.map(Duration::from_millis),
            listen,
            true,
        )
        .await
        .map(Json)
        .map_err(bad)
}

#[derive(Deserialize)]
struct Follow {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

async fn follow(
    State(state): State<Arc<AppState>>,
    Path(n): Path<u64>,
    Query(follow): Query<Follow>,
) -> Result<Json<UseView>, ApiError> {
    let wait = Duration::from_millis(follow.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    state
        .client
        .devices()
        .use_state(n, follow.after, wait)
        .await
        .map(Json)
        .ok_or_else(|| failure(StatusCode::NOT_FOUND, format!("no device session {n} here")))
}

async fn stop_use(State(state): State<Arc<AppState>>, Path(n): Path<u64>) -> Json<ReleasedView> {
    Json(ReleasedView {
        released: usize::from(state.client.devices().stop_use(n)),
    })
}
