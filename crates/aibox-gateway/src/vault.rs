//! The vault API: per-user secrets for the authenticated principal
//! (seed 000 §1, seed 004 §11).
//!
//! `GET /v1/secrets` lists names, `PUT /v1/secrets/{name}` stores
//! `{"value": "..."}`, `GET /v1/secrets/{name}` returns it and `DELETE`
//! removes it. Every call acts on the caller's own secrets only: the owner
//! comes from the authenticated principal, never from the request.
//!
//! Every access is an audit turn (`secret_access` with the owner, the name
//! and the operation, never the value or a hash of it: a hash of a short
//! secret can be guessed offline). A read is released only after its turn is
//! durable, like a model answer.

use std::sync::Arc;

use aibox_core::audit::{EventKind, Sha256Hex, TurnStatus};
use aibox_core::{Principal, RequestId};
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::turn::{self, TurnLog};

/// The route recorded in the audit log.
const ROUTE: &str = "/v1/secrets";

/// `PUT` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutBody {
    value: String,
}

async fn audited(
    st: &AppState,
    principal: &Principal,
    rid: &RequestId,
    name: &str,
    op: &str,
    status: TurnStatus,
) -> Result<(), ApiError> {
    let mut t = TurnLog::start(principal, rid, ROUTE, None, Sha256Hex::of(b""));
    t.event(EventKind::SecretAccess {
        owner: principal.user.clone(),
        name: name.to_owned(),
        op: op.to_owned(),
    });
    turn::record(st, t, status).await
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn failed(e: &ApiError) -> TurnStatus {
    TurnStatus::Error {
        code: e.code().to_owned(),
    }
}

/// `GET /v1/secrets`.
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let items = st.vault.list(&principal.tenant, &principal.user).await?;
    let data: Vec<_> = items
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "object": "secret",
                "name": m.name,
                "master_key_version": m.master_kid,
                "created_ms": m.created_ms,
                "updated_ms": m.updated_ms,
            })
        })
        .collect();
    Ok(no_store(
        Json(serde_json::json!({"object": "list", "data": data})).into_response(),
    ))
}

/// `PUT /v1/secrets/{name}`.
pub(crate) async fn put(
    State(st): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: Result<Json<PutBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(
            format!(
                "the body must be a JSON object {{\"value\": \"...\"}}: {}",
                e.body_text()
            ),
            None,
        )
    })?;
    let res = st
        .vault
        .put(
            &principal.tenant,
            &principal.user,
            &name,
            body.value.as_bytes(),
        )
        .await
        .map_err(ApiError::from);
    let status = res.as_ref().map_or_else(failed, |()| TurnStatus::Ok);
    audited(&st, &principal, &rid, &name, "put", status).await?;
    res?;
    Ok(no_store(StatusCode::NO_CONTENT.into_response()))
}

/// `GET /v1/secrets/{name}`.
pub(crate) async fn get(
    State(st): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let res = st
        .vault
        .get(&principal.tenant, &principal.user, &name)
        .await
        .map_err(ApiError::from)
        .and_then(|v| v.ok_or_else(|| not_found(&name)));
    let status = res.as_ref().map_or_else(failed, |_| TurnStatus::Ok);
    audited(&st, &principal, &rid, &name, "get", status).await?;
    let value = res?;
    let text = String::from_utf8_lossy(&value).into_owned();
    Ok(no_store(
        Json(serde_json::json!({"object": "secret", "name": name, "value": text})).into_response(),
    ))
}

/// `DELETE /v1/secrets/{name}`.
pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let res = st
        .vault
        .delete(&principal.tenant, &principal.user, &name)
        .await
        .map_err(ApiError::from)
        .and_then(|found| if found { Ok(()) } else { Err(not_found(&name)) });
    let status = res.as_ref().map_or_else(failed, |()| TurnStatus::Ok);
    audited(&st, &principal, &rid, &name, "delete", status).await?;
    res?;
    Ok(no_store(StatusCode::NO_CONTENT.into_response()))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("you have no secret named {name:?}"),
    )
}
