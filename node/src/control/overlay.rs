//! The overlay's routes: status, peers, lookups, records, providers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::api::*;
use super::{ApiError, AppState, failure, node_failure, parse_key};

/// The routes of this module.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/lookup", post(lookup))
        .route("/v1/record/put", post(put))
        .route("/v1/record/get", post(get_record))
        .route(
            "/v1/provide",
            post(provide).layer(axum::extract::DefaultBodyLimit::max(super::MAX_PROVIDE_BODY_BYTES)),
        )
        .route("/v1/providers", post(providers))
}

fn view(peer: &shoal_overlay::PeerInfo<crate::NodeAddr>) -> PeerView {
    PeerView {
        peer_id: peer.addr.peer.to_string(),
        key: peer.key.to_string(),
        addrs: peer.addr.addrs.iter().map(ToString::to_string).collect(),
        stale: false,
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    let client = &state.client;
    let listening = client.listening().await.map_err(node_failure)?;
    let peers = client.peers().await.map_err(node_failure)?.len();
    let records = client.records_held().await.map_err(node_failure)?;
    Ok(Json(Status {
        peer_id: client.peer_id().to_string(),
        key: client.key().to_string(),
        listening: listening.iter().map(ToString::to_string).collect(),
        peers,
        records,
        swarm: client.swarm_fingerprint().map(str::to_string),
    }))
}

async fn peers(State(state): State<Arc<AppState>>) -> Result<Json<Vec<PeerView>>, ApiError> {
    let table = state.client.routing_table().await.map_err(node_failure)?;
    let peers = table.iter().map(|(peer, stale)| PeerView {
        stale: *stale,
        ..view(peer)
    });
    Ok(Json(peers.collect()))
}

async fn lookup(
    State(state): State<Arc<AppState>>,
    Json(body): Json<KeyRequest>,
) -> Result<Json<LookupView>, ApiError> {
    let key = parse_key(&body.key)?;
    let lookup = state.client.find_node(key).await.map_err(node_failure)?;
    Ok(Json(LookupView {
        peers: lookup.peers.iter().map(view).collect(),
        hops: lookup.stats.hops,
        requests: lookup.stats.requests,
        duration_ms: lookup.stats.duration.as_secs_f64() * 1e3,
    }))
}

async fn put(State(state): State<Arc<AppState>>, Json(body): Json<PutRequest>) -> Result<Json<PutView>, ApiError> {
    let key = parse_key(&body.key)?;
    let stored = state
        .client
        .put_value(key, body.value.into_bytes())
        .await
        .map_err(node_failure)?;
    Ok(Json(PutView { stored }))
}

async fn get_record(
    State(state): State<Arc<AppState>>,
    Json(body): Json<KeyRequest>,
) -> Result<Json<RecordView>, ApiError> {
    let key = parse_key(&body.key)?;
    let record = state.client.get_value(key).await.map_err(node_failure)?;
    Ok(Json(RecordView {
        found: record.is_some(),
        value: record.as_ref().map(|r| String::from_utf8_lossy(&r.value).into_owned()),
        seq: record.map(|r| r.seq),
    }))
}

async fn provide(
    State(state): State<Arc<AppState>>,
    Json(body): Json<ProvideRequest>,
) -> Result<Json<ProvideView>, ApiError> {
    if body.keys.is_empty() || body.keys.len() > MAX_PROVIDE_KEYS {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            format!("give between 1 and {MAX_PROVIDE_KEYS} keys, not {}", body.keys.len()),
        ));
    }
    let keys = body.keys.iter().map(|k| parse_key(k)).collect::<Result<Vec<_>, _>>()?;
    let done = state.client.provide(keys).await.map_err(node_failure)?;
    Ok(Json(ProvideView {
        keys: done.keys,
        stored_everywhere: done.stored_everywhere,
        unconfirmed: done.unconfirmed,
        lookups: done.lookups,
        stores: done.stores,
        duration_ms: done.duration.as_secs_f64() * 1e3,
    }))
}

async fn providers(
    State(state): State<Arc<AppState>>,
    Json(body): Json<KeyRequest>,
) -> Result<Json<Vec<PeerView>>, ApiError> {
    let key = parse_key(&body.key)?;
    let found = state.client.get_providers(key).await.map_err(node_failure)?;
    Ok(Json(found.iter().map(view).collect()))
}
