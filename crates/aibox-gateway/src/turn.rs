//! One turn's audit events, collected while the request runs and appended
//! to the tenant's log when it ends.
//!
//! A model request is one turn: it gets a fresh turn id (sent back as
//! `X-Aibox-Turn`), and its events (request received, every upstream
//! attempt, turn end) are sealed into one signed envelope. The response is
//! released only once the envelope is durable; if the audit log cannot take
//! it, the client gets 503 (or, for a stream, an error event instead of
//! `[DONE]`), never an unrecorded answer.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aibox_core::audit::{AuditEvent, EventKind, Sha256Hex, TurnStatus, Usage};
use aibox_core::{Principal, RequestId, TenantId, TurnId};
use aibox_router::AttemptFailure;
use axum::http::StatusCode;

use crate::AppState;
use crate::error::ApiError;

/// The events of one turn so far.
pub(crate) struct TurnLog {
    tenant: TenantId,
    turn: TurnId,
    rid: RequestId,
    started: Instant,
    events: Vec<AuditEvent>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis(i: Instant) -> u64 {
    u64::try_from(i.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl TurnLog {
    /// Starts a turn with its `request_received` event.
    pub(crate) fn start(
        principal: &Principal,
        rid: &RequestId,
        route: &str,
        model: Option<&str>,
        body_sha256: Sha256Hex,
    ) -> Self {
        let turn = TurnId::generate();
        let mut log = Self {
            tenant: principal.tenant.clone(),
            turn,
            rid: rid.clone(),
            started: Instant::now(),
            events: Vec::with_capacity(4),
        };
        log.push(EventKind::RequestReceived {
            user: principal.user.clone(),
            roles: principal.roles.clone(),
            auth: principal.auth.clone(),
            route: route.to_owned(),
            model: model.map(str::to_owned),
            body_sha256,
            content: None,
        });
        log
    }

    /// The turn id.
    pub(crate) fn turn(&self) -> &TurnId {
        &self.turn
    }

    fn push(&mut self, kind: EventKind) {
        self.events.push(AuditEvent {
            tenant: self.tenant.clone(),
            turn: Some(self.turn.clone()),
            request_id: Some(self.rid.clone()),
            at_ms: now_ms(),
            kind,
        });
    }

    /// Records an event of another part (the vault, the MCP gateway).
    pub(crate) fn event(&mut self, kind: EventKind) {
        self.push(kind);
    }

    /// Records targets that failed before one answered (or all failed).
    pub(crate) fn failures(&mut self, failures: &[AttemptFailure]) {
        for (i, f) in failures.iter().enumerate() {
            self.push(EventKind::UpstreamResponse {
                upstream: f.upstream.clone(),
                model: String::new(),
                status: 0,
                attempt: u32::try_from(i + 1).unwrap_or(u32::MAX),
                body_sha256: None,
                usage: None,
                duration_ms: millis(self.started),
            });
        }
    }

    /// Records the upstream's answer.
    pub(crate) fn answer(
        &mut self,
        upstream: &str,
        model: &str,
        status: u16,
        attempt: u32,
        body_sha256: Sha256Hex,
        usage: Option<Usage>,
    ) {
        self.push(EventKind::UpstreamResponse {
            upstream: upstream.to_owned(),
            model: model.to_owned(),
            status,
            attempt,
            body_sha256: Some(body_sha256),
            usage,
            duration_ms: millis(self.started),
        });
    }

    /// Sets the request body hash once a streamed body has been forwarded.
    pub(crate) fn set_request_body_sha256(&mut self, hash: Sha256Hex) {
        if let Some(AuditEvent {
            kind: EventKind::RequestReceived { body_sha256, .. },
            ..
        }) = self.events.first_mut()
        {
            *body_sha256 = hash;
        }
    }

    /// Records a downstream service's answer (its body is streamed to the
    /// client and not hashed).
    pub(crate) fn status_only(&mut self, service: &str, status: u16) {
        self.push(EventKind::UpstreamResponse {
            upstream: service.to_owned(),
            model: String::new(),
            status,
            attempt: 1,
            body_sha256: None,
            usage: None,
            duration_ms: millis(self.started),
        });
    }

    /// Ends the turn; returns what to append.
    pub(crate) fn end(mut self, status: TurnStatus) -> (TenantId, TurnId, Vec<AuditEvent>) {
        let duration_ms = millis(self.started);
        self.push(EventKind::TurnEnd {
            status,
            duration_ms,
        });
        (self.tenant, self.turn, self.events)
    }
}

/// Appends a finished turn; a failure is the client's 503, never a silent
/// loss.
pub(crate) async fn record(
    st: &AppState,
    turn: TurnLog,
    status: TurnStatus,
) -> Result<(), ApiError> {
    let (tenant, turn_id, events) = turn.end(status);
    st.metrics.observe_verdicts(&events);
    st.metrics.time_audit(st.audit.append_turn(&tenant, Some(turn_id), events)).await.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "cannot append the turn to the audit log; failing the request closed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "audit_unavailable",
            "the answer could not be recorded in the audit log, so it is withheld; retry later",
        )
    })
}
