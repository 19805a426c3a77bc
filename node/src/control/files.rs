//! The files' routes: share, get (as jobs the CLI polls), the store's
//! blobs.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::api::*;
use super::tasks::{Task, numbered};
use super::{ApiError, AppState, failure, parse_key};

/// The routes of this module.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/share", post(share))
        .route("/v1/shares/{n}", get(share_status))
        .route("/v1/get", post(get_blob))
        .route("/v1/downloads/{n}", get(download_status).delete(cancel_download))
        .route("/v1/blobs", get(blobs))
}

async fn share(
    State(state): State<Arc<AppState>>,
    Json(body): Json<ShareRequest>,
) -> Result<Json<ShareJobView>, ApiError> {
    let path = PathBuf::from(&body.path);
    // The daemon's working directory is nobody's business.
    if !path.is_absolute() {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not an absolute path (the CLI sends absolute ones)", body.path),
        ));
    }
    let how = if body.in_place {
        shoal_resources::store::Import::InPlace
    } else {
        shoal_resources::store::Import::Copy
    };
    let job = Task::new(body.path.clone());
    let n = state.shares.lock().unwrap_or_else(|p| p.into_inner()).add(job.clone());
    let (client, progress) = (state.client.clone(), job.progress.clone());
    job.run(
        async move {
            let (info, ticket) = client.files().share_counted(path, how, progress).await?;
            Ok(ShareView {
                id: info.id.to_string(),
                size: info.size,
                ticket: ticket.to_text(),
            })
        },
        "cancelled".into(),
    );
    Ok(Json(share_view(n, &job)))
}

fn share_view(n: u64, job: &Task<ShareView>) -> ShareJobView {
    use std::sync::atomic::Ordering::Relaxed;
    let outcome = job.outcome();
    ShareJobView {
        share: n,
        path: job.label.clone(),
        total: job.progress.size.load(Relaxed),
        read: job.progress.verified.load(Relaxed),
        done: outcome.is_some(),
        result: outcome.clone().and_then(Result::ok),
        error: outcome.and_then(Result::err),
    }
}

/// `GET /v1/shares/N`: how share N is going.
async fn share_status(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(n): axum::extract::Path<u64>,
) -> Result<Json<ShareJobView>, ApiError> {
    let job = numbered(&state.shares, n, "share")?;
    Ok(Json(share_view(n, &job)))
}

fn download_view(n: u64, d: &Task<String>) -> DownloadView {
    use std::sync::atomic::Ordering::Relaxed;
    let outcome = d.outcome();
    DownloadView {
        download: n,
        id: d.label.clone(),
        size: d.progress.size.load(Relaxed),
        verified: d.progress.verified.load(Relaxed),
        resumed: d.progress.resumed.load(Relaxed),
        fetched: d.progress.fetched.load(Relaxed),
        providers: d.progress.providers.load(Relaxed),
        done: outcome.is_some(),
        out: outcome.clone().and_then(Result::ok).filter(|o| !o.is_empty()),
        error: outcome.and_then(Result::err),
    }
}

async fn get_blob(
    State(state): State<Arc<AppState>>,
    Json(body): Json<GetRequest>,
) -> Result<Json<DownloadView>, ApiError> {
    let target = body.target.trim();
    let (id, ticket) = if target.starts_with(shoal_resources::ticket::TICKET_PREFIX) {
        let ticket = shoal_resources::Ticket::parse(target)
            .map_err(|e| failure(StatusCode::BAD_REQUEST, format!("malformed ticket: {e}")))?;
        (ticket.blob.id, Some(ticket))
    } else {
        (parse_key(target)?, None)
    };
    let out = body.out.map(PathBuf::from);
    if let Some(out) = &out {
        if !out.is_absolute() {
            return Err(failure(StatusCode::BAD_REQUEST, "the output path must be absolute"));
        }
        // Said now, not after the whole download.
        if let Some(parent) = out.parent()
            && !parent.is_dir()
        {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} is not a directory: create it first, or name another -o",
                    parent.display()
                ),
            ));
        }
    }
    let job = Task::new(id.to_string());
    let n = state
        .downloads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(job.clone());
    let (client, progress) = (state.client.clone(), job.progress.clone());
    job.run(
        async move {
            client.files().download(id, ticket, progress, out.clone()).await?;
            Ok(out.map(|o| o.display().to_string()).unwrap_or_default())
        },
        format!("cancelled; what arrived is kept, and getting {id} again resumes it"),
    );
    Ok(Json(download_view(n, &job)))
}

async fn download_status(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(n): axum::extract::Path<u64>,
) -> Result<Json<DownloadView>, ApiError> {
    let download = numbered(&state.downloads, n, "download")?;
    Ok(Json(download_view(n, &download)))
}

/// `DELETE /v1/downloads/N`: stops a download; what arrived is kept for a
/// later `get` of the same blob to resume from.
async fn cancel_download(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(n): axum::extract::Path<u64>,
) -> Result<Json<DownloadView>, ApiError> {
    let download = numbered(&state.downloads, n, "download")?;
    if let Some(abort) = download.abort.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        abort.abort();
    }
    Ok(Json(download_view(n, &download)))
}

async fn blobs(State(state): State<Arc<AppState>>) -> Result<Json<Vec<BlobView>>, ApiError> {
    let store = state.client.files().store().clone();
    let (list, partials) = tokio::task::spawn_blocking(move || {
        let partials = store
            .partials()?
            .into_iter()
            .map(|(_, id)| {
                let size = std::fs::metadata(store.part_path(&id)).map_or(0, |m| m.len());
                (id, size)
            })
            .collect::<Vec<_>>();
        let whole = store
            .list()?
            .into_iter()
            .map(|e| {
                let changed = e.in_place.is_some() && store.changed_source(&e.info.id).is_some();
                let pinned = store.is_pinned(&e.info.id);
                (e, changed, pinned)
            })
            .collect::<Vec<_>>();
        Ok::<_, shoal_resources::store::StoreError>((whole, partials))
    })
    .await
    .map_err(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, e))?
    .map_err(|e| failure(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let whole = list.into_iter().map(|(e, changed, pinned)| BlobView {
        id: e.info.id.to_string(),
        size: e.info.size,
        changed,
        in_place: e.in_place.map(|p| p.display().to_string()),
        pinned,
        partial: false,
    });
    let partial = partials.into_iter().map(|(id, size)| BlobView {
        id: id.to_string(),
        size,
        in_place: None,
        changed: false,
        pinned: false,
        partial: true,
    });
    Ok(Json(whole.chain(partial).collect()))
}
