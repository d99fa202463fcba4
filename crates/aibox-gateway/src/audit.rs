//! The audit API: receipts, checkpoints, consistency proofs, public keys and
//! verification (seed 000 §8).
//!
//! A principal reads its own tenant's log; the `admin` role may name any
//! tenant (verification reports integrity, never content). Public keys are
//! public. A turn of another tenant is "not found", so turn ids do not leak
//! which tenants exist.

use std::sync::Arc;

use aibox_auditlog::{AuditLogError, SignatureCheck};
use aibox_core::{Principal, TenantId, TurnId};
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;

/// The role that may verify and read any tenant's log.
pub const ADMIN_ROLE: &str = "admin";

/// `?tenant_id=`.
#[derive(Deserialize)]
pub(crate) struct TenantQuery {
    tenant_id: Option<String>,
}

/// `?tenant_id=&old=&new=`.
#[derive(Deserialize)]
pub(crate) struct ConsistencyQuery {
    tenant_id: Option<String>,
    old: u64,
    new: u64,
}

pub(crate) fn log_error(e: AuditLogError) -> ApiError {
    match e {
        AuditLogError::TurnNotFound { .. }
        | AuditLogError::NoSuchEnvelope { .. }
        | AuditLogError::EmptyLog { .. } => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            e.to_string(),
        ),
        AuditLogError::Proof(_) => ApiError::bad_request(e.to_string(), None),
        other => {
            tracing::error!(error = %other, "audit log query failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "audit_unavailable",
                "the audit log cannot answer right now",
            )
        }
    }
}

/// The tenant a request may read: its own, or any for the admin role.
fn tenant_for(principal: &Principal, requested: Option<&str>) -> Result<TenantId, ApiError> {
    let Some(t) = requested else {
        return Ok(principal.tenant.clone());
    };
    let t = TenantId::new(t)
        .map_err(|e| ApiError::bad_request(format!("tenant_id: {e}"), Some("tenant_id")))?;
    if t == principal.tenant || principal.has_role(ADMIN_ROLE) {
        Ok(t)
    } else {
        Err(ApiError::forbidden(format!(
            "reading tenant {t}'s audit log needs the '{ADMIN_ROLE}' role or membership of that tenant"
        )))
    }
}

/// `GET /v1/audit/receipts/{turn_id}`.
pub(crate) async fn receipt(
    State(st): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(turn): Path<String>,
) -> Result<Response, ApiError> {
    let turn =
        TurnId::new(turn).map_err(|e| ApiError::bad_request(format!("turn id: {e}"), None))?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("no turn {turn} in your tenant's audit log"),
        )
    };
    let owner = st
        .audit
        .tenant_of_turn(&turn)
        .await
        .map_err(log_error)?
        .ok_or_else(not_found)?;
    if owner != principal.tenant && !principal.has_role(ADMIN_ROLE) {
        return Err(not_found());
    }
    let r = st.audit.receipt(&owner, &turn).await.map_err(log_error)?;
    Ok(Json(r).into_response())
}

/// `GET /v1/audit/checkpoint?tenant_id=`: the newest signed checkpoint.
pub(crate) async fn checkpoint(
    State(st): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_for(&principal, q.tenant_id.as_deref())?;
    match st
        .audit
        .latest_checkpoint(&tenant)
        .await
        .map_err(log_error)?
    {
        Some(note) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            note,
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("tenant {tenant} has no audit log yet"),
        )),
    }
}

/// `GET /v1/audit/consistency?tenant_id=&old=&new=`.
pub(crate) async fn consistency(
    State(st): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_for(&principal, q.tenant_id.as_deref())?;
    let p = st
        .audit
        .consistency_proof(&tenant, q.old, q.new)
        .await
        .map_err(log_error)?;
    Ok(Json(p).into_response())
}

/// `GET /v1/audit/keys?tenant_id=`: the verifier keys of every version.
pub(crate) async fn public_keys(
    State(st): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<TenantQuery>,
) -> Result<Response, ApiError> {
    let tenant = match q.tenant_id.as_deref() {
        Some(t) => TenantId::new(t)
            .map_err(|e| ApiError::bad_request(format!("tenant_id: {e}"), Some("tenant_id")))?,
        None => principal.tenant.clone(),
    };
    let keys = st.audit.public_keys(&tenant).await.map_err(log_error)?;
    Ok(Json(keys).into_response())
}

/// The query of `GET /v1/admin/audit/verify`.
#[derive(Debug, Deserialize)]
pub(crate) struct VerifyQuery {
    tenant_id: Option<String>,
    /// `all` (default) or `head`: see [`SignatureCheck`].
    signatures: Option<String>,
}

/// `GET /v1/admin/audit/verify?tenant_id=[&signatures=all|head]`:
/// recomputes the whole log.
pub(crate) async fn verify(
    State(st): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<VerifyQuery>,
) -> Result<Response, ApiError> {
    if !principal.has_role(ADMIN_ROLE) {
        return Err(ApiError::forbidden(format!(
            "verifying the audit log needs the '{ADMIN_ROLE}' role"
        )));
    }
    let tenant = tenant_for(&principal, q.tenant_id.as_deref())?;
    let mode = match q.signatures.as_deref() {
        None => SignatureCheck::All,
        Some(s) => s
            .parse::<SignatureCheck>()
            .map_err(|e| ApiError::bad_request(format!("signatures: {e}"), Some("signatures")))?,
    };
    let report = match mode {
        SignatureCheck::All => st.audit.verify(&tenant, |_, _| {}).await,
        SignatureCheck::Head => st.audit.verify_head_then_pin(&tenant, |_, _| {}).await,
    }
    .map_err(log_error)?;
    if !report.ok {
        tracing::error!(tenant = %tenant, first_bad_seq = ?report.first_bad_seq, problem = ?report.problem, "AUDIT LOG VERIFICATION FAILED");
    }
    Ok(Json(report).into_response())
}
