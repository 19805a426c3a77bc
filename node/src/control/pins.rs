//! The pins' routes: pin and unpin.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::api::*;
use super::{ApiError, AppState, node_failure, parse_key};

/// The routes of this module.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/pin", post(pin))
        .route("/v1/unpin", post(unpin))
}

async fn pin(State(state): State<Arc<AppState>>, Json(body): Json<PinRequest>) -> Result<Json<PutView>, ApiError> {
    let id = parse_key(&body.id)?;
    let stored = state
        .client
        .pins()
        .pin(id, body.replicas.unwrap_or(3))
        .await
        .map_err(node_failure)?;
    Ok(Json(PutView { stored }))
}

async fn unpin(State(state): State<Arc<AppState>>, Json(body): Json<PinRequest>) -> Result<Json<PutView>, ApiError> {
    let id = parse_key(&body.id)?;
    let stored = state.client.pins().unpin(id).await.map_err(node_failure)?;
    Ok(Json(PutView { stored }))
}
