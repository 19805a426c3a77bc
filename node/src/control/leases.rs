//! The named leases' routes: acquire (a session), follow a session,
//! release, list.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::api::*;
use super::{ApiError, AppState, failure};

/// Longest a call for a session's state waits for a change.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// The routes of this module.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/leases", get(list).post(acquire))
        .route("/v1/leases/session/{n}", get(session).delete(release_session))
        .route("/v1/leases/release", post(release_name))
}

async fn acquire(
    State(state): State<Arc<AppState>>,
    Json(body): Json<AcquireRequest>,
) -> Result<Json<SessionView>, ApiError> {
    let ttl = body.ttl_ms.map(Duration::from_millis);
    let n = state
        .client
        .leases()
        .acquire(&body.name, ttl, body.keepalive)
        .map_err(|e| failure(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(SessionView {
        session: n,
        name: body.name,
        version: 0,
        state: SessionState::Joining,
    }))
}

#[derive(Deserialize)]
struct Follow {
    /// The version the caller saw last: answer once there is a newer one.
    after: Option<u64>,
    /// How long to wait for that, ms.
    wait_ms: Option<u64>,
}

async fn session(
    State(state): State<Arc<AppState>>,
    Path(n): Path<u64>,
    Query(follow): Query<Follow>,
) -> Result<Json<SessionView>, ApiError> {
    let wait = Duration::from_millis(follow.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    state
        .client
        .leases()
        .state(n, follow.after, wait)
        .await
        .map(Json)
        .ok_or_else(|| failure(StatusCode::NOT_FOUND, format!("no lease session {n} here")))
}

async fn release_session(
    State(state): State<Arc<AppState>>,
    Path(n): Path<u64>,
) -> Result<Json<ReleasedView>, ApiError> {
    Ok(Json(ReleasedView {
        released: usize::from(state.client.leases().release(n)),
    }))
}

async fn release_name(
    State(state): State<Arc<AppState>>,
    Json(body): Json<ReleaseRequest>,
) -> Result<Json<ReleasedView>, ApiError> {
    let name = body.name;
    let released = state.client.leases().release_name(&name);
    if released == 0 {
        return Err(failure(
            StatusCode::NOT_FOUND,
            format!("this peer neither holds nor waits for lease {name:?}"),
        ));
    }
    Ok(Json(ReleasedView { released }))
}

async fn list(State(state): State<Arc<AppState>>) -> Json<LeaseList> {
    let leases = state.client.leases();
    Json(LeaseList {
        sessions: leases.sessions(),
        kept: leases.kept(),
    })
}
