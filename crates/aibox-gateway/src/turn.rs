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
        body: &[u8],
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
            body_sha256: Sha256Hex::of(body),
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
