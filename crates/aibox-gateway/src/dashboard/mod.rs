//! The admin dashboard: embedded static pages and the JSON API they call,
//! on a listener of its own (`dashboard.listen`).
//!
//! Why its own listener: the dashboard is meant for people and may be
//! exposed to an operator network behind its own credentials, while the ops
//! listener must never be (seed 004 §3); one socket each keeps the two
//! exposure decisions separate, and keeps `OPS_CONTROLLER_TOKEN` (which can
//! rotate keys) out of browsers.
//!
//! Security, in order of the request: the `Host` must be the listener's own
//! name when it is on loopback (DNS rebinding); every answer carries a CSP
//! without `unsafe-inline`, `frame-ancestors 'none'`, `nosniff`,
//! `no-referrer` and `no-store`; the API needs a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` when configured, absolute
//! expiry) or `Authorization: Bearer DASHBOARD_AUTH_TOKEN`; every
//! state-changing request with a session must carry the session's CSRF token
//! in `X-CSRF-Token` and, when the browser sends one, a same-origin `Origin`.
//! Logins take JSON only (a cross-site form cannot send it without a CORS
//! preflight, which is never granted). Pages build the DOM with
//! `textContent`, never `innerHTML`, so logged data cannot inject markup.

pub mod auth;
pub mod sso;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aibox_core::{TenantId, TurnId};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;

pub use auth::{DashboardAuth, DashboardAuthError, DashboardHandle};

use crate::AppState;
use crate::error::ApiError;

/// The session cookie's name (`__Host-` prefixed when `Secure`, which pins
/// it to this host and path `/`).
const COOKIE: &str = "aibox_session";
const SECURE_COOKIE: &str = "__Host-aibox_session";
/// The pre-login cookie binding an SSO login's state to the browser.
const SSO_COOKIE: &str = "aibox_sso";
const SECURE_SSO_COOKIE: &str = "__Host-aibox_sso";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Rows of a tenant's log on one page, by default and at most.
const PAGE_ROWS: usize = 100;
const MAX_PAGE_ROWS: usize = 500;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The doctor's findings, as `aibox doctor --format json` prints them; the
/// binary supplies it (the checks live there).
pub type DoctorFn = Arc<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>;

/// The dashboard router, for the dashboard listener only. `bound` is the
/// address it listens on (for the `Host` check on loopback).
pub fn router(state: Arc<AppState>, bound: SocketAddr) -> Router {
    let hosts = Arc::new(allowed_hosts(bound));
    let secure = state.config.dashboard.secure_cookie;
    let api = Router::new()
        .route("/api/session", get(session_info))
        .route("/api/logout", post(logout))
        .route("/api/traffic", get(traffic))
        .route("/api/tenants", get(tenants))
        .route("/api/audit/{tenant}", get(audit_rows))
        .route("/api/audit/{tenant}/verify", post(audit_verify))
        .route("/api/receipts/{turn}", get(receipt))
        .route("/api/guardrail", get(guardrail))
        .route("/api/mcp", get(mcp))
        .route("/api/keys", get(keys))
        .route("/api/doctor", get(doctor))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_login,
        ));
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { page(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/login", post(login))
        .route("/api/login/methods", get(login_methods))
        .route("/oidc/login", get(sso_login))
        .route("/oidc/callback", get(sso_callback))
        .merge(api)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                "no such dashboard page",
            )
        })
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let hosts = hosts.clone();
                async move { secure_headers(&hosts, secure, req, next).await }
            },
        ))
        .with_state(state)
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The `Host` values a loopback listener answers to; empty (no check) off
/// loopback, where a proxy in front decides the name.
fn allowed_hosts(bound: SocketAddr) -> Vec<String> {
    if !bound.ip().is_loopback() {
        return Vec::new();
    }
    let port = bound.port();
    vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        bound.to_string(),
    ]
}

async fn secure_headers(hosts: &[String], secure: bool, req: Request, next: Next) -> Response {
    if !hosts.is_empty() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !hosts.iter().any(|h| h == host) {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "invalid_request_error",
                "wrong_host",
                "this dashboard answers only to its own loopback address",
            )
            .into_response();
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if secure {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    resp
}

fn cookie_name(state: &AppState) -> &'static str {
    if state.config.dashboard.secure_cookie {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "login_required",
        message,
    )
}

fn forbidden_csrf(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "permission_error",
        "csrf_refused",
        message,
    )
}

/// How the caller of an API route authenticated.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// A browser session (cookie id).
    Session(String),
    /// `Authorization: Bearer DASHBOARD_AUTH_TOKEN`, which browsers never
    /// send on their own, so it needs no CSRF token.
    Bearer,
}

impl Caller {
    fn actor(&self) -> &'static str {
        match self {
            Caller::Session(_) => "dashboard",
            Caller::Bearer => "dashboard_token",
        }
    }
}

/// The same-origin check: a browser's `Origin`, when present, must be this
/// host's.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    bare == Some(host)
}

async fn require_login(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let auth = state.dashboard.current();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = if let Some(given) = bearer {
        if !auth.check_token(given) {
            return unauthorized("the bearer token is not DASHBOARD_AUTH_TOKEN").into_response();
        }
        Caller::Bearer
    } else {
        let Some(id) = session_cookie(headers, cookie_name(&state)) else {
            return unauthorized("log in first").into_response();
        };
        let Some(session) = state.dashboard.get(&id) else {
            return unauthorized("the session has expired or ended; log in again").into_response();
        };
        let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
        if changes {
            let given = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ok: bool =
                subtle::ConstantTimeEq::ct_eq(given.as_bytes(), session.csrf.as_bytes()).into();
            if !ok {
                return forbidden_csrf(
                    "missing or wrong X-CSRF-Token; reload the page (GET /api/session gives the token)",
                )
                .into_response();
            }
            if !same_origin(headers) {
                return forbidden_csrf("cross-origin request refused").into_response();
            }
        }
        Caller::Session(id)
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[derive(Deserialize)]
struct LoginBody {
    token: Option<String>,
    password: Option<String>,
}

/// How long a wrong password holds its verification slot.
const FAILED_PASSWORD_PAUSE: Duration = Duration::from_millis(250);

/// At most two password verifications at once: argon2 is expensive by
/// design, and a flood of logins must not take every core.
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// `POST /api/login`: JSON `{"token": ...}` or `{"password": ...}`, or
/// `Authorization: Basic` (any user name) with an empty body.
async fn login(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<crate::edge::Peer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match login_inner(&state, &headers, &body, peer.map(|p| p.0.0)).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn login_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    peer: Option<std::net::IpAddr>,
) -> Result<Response, ApiError> {
    if !same_origin(headers) {
        return Err(forbidden_csrf("cross-origin login refused"));
    }
    let auth = state.dashboard.current();
    if !auth.enabled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "dashboard_auth_unset",
            "no dashboard credential is configured; set DASHBOARD_AUTH_TOKEN or DASHBOARD_PASSWORD in .env and send SIGHUP",
        ));
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(_, p)| p.to_owned()));
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (token, password) = match basic {
        Some(p) => (None, Some(p)),
        None if json => {
            let b: LoginBody = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("login body: {e}"), None))?;
            (b.token, b.password)
        }
        None => {
            return Err(ApiError::bad_request(
                "send JSON {\"token\": ...} or {\"password\": ...}, or HTTP Basic",
                None,
            ));
        }
    };
    let method = match (token, password) {
        (Some(t), _) if auth.check_token(&t) => "token",
        (None, Some(p)) => {
            let _permit = PASSWORD_CHECKS
                .acquire()
                .await
                .map_err(|_| unauthorized("login is not available"))?;
            let checker = auth.clone();
            let ok = tokio::task::spawn_blocking(move || checker.check_password(&p))
                .await
                .unwrap_or(false);
            if !ok {
                // The permit is held through the pause: guesses are
                // serialised across all clients to a few per second.
                tokio::time::sleep(FAILED_PASSWORD_PAUSE).await;
                return Err(refused_login(state, "password", peer));
            }
            "password"
        }
        (Some(_), _) => return Err(refused_login(state, "token", peer)),
        (None, None) => return Err(ApiError::bad_request("give a token or a password", None)),
    };
    let (id, session) = state.dashboard.open(method).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "session_unavailable",
            e.to_string(),
        )
    })?;
    record_login(state, &id, method, None).await?;
    let ttl = state.dashboard.ttl().as_secs();
    let cookie = session_set_cookie(state, &id);
    let mut resp = Json(serde_json::json!({
        "method": method,
        "csrf": session.csrf,
        "expires_in": ttl,
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// The `Set-Cookie` value of a new session.
fn session_set_cookie(state: &AppState, id: &str) -> String {
    let ttl = state.dashboard.ttl().as_secs();
    let secure = if state.config.dashboard.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl}{secure}",
        cookie_name(state)
    )
}

/// The pre-login cookie of an SSO login (`__Host-` prefixed when `Secure`).
fn sso_cookie_name(state: &AppState) -> &'static str {
    if state.config.dashboard.secure_cookie {
        SECURE_SSO_COOKIE
    } else {
        SSO_COOKIE
    }
}

/// `GET /api/login/methods`: which logins the login page offers (no
/// credential needed: it reveals only what the page shows anyway).
async fn login_methods(State(state): State<Arc<AppState>>) -> Response {
    let auth = state.dashboard.current();
    Json(serde_json::json!({
        "token": auth.has_token(),
        "password": auth.has_password(),
        "sso": state.sso.is_some(),
    }))
    .into_response()
}

fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An SSO refusal: back to the login page with a fixed code; the cause in
/// the log and the failure counter.
fn sso_refused(state: &AppState, e: &sso::SsoError) -> Response {
    state.metrics.ops_auth_failures.inc();
    match e {
        sso::SsoError::Exchange(_) | sso::SsoError::Unavailable(_) => {
            tracing::error!(error = %e, "dashboard SSO login failed");
        }
        sso::SsoError::IdToken(t) => {
            tracing::warn!(reason = t.code(), hint = %t.operator_hint(), "dashboard SSO login refused: the ID token");
        }
        _ => tracing::warn!(error = %e, "dashboard SSO login refused"),
    }
    let mut resp = see_other(&format!("/?sso_error={}", e.code()));
    expire_sso_cookie(state, &mut resp);
    resp
}

fn expire_sso_cookie(state: &AppState, resp: &mut Response) {
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        sso_cookie_name(state),
        if state.config.dashboard.secure_cookie {
            "; Secure"
        } else {
            ""
        }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// `GET /oidc/login`: starts an SSO login (see [`sso`]).
async fn sso_login(State(state): State<Arc<AppState>>) -> Response {
    let Some(sso) = &state.sso else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "sso_not_configured",
            "single sign-on is not configured (dashboard.oidc)",
        )
        .into_response();
    };
    match sso.start().await {
        Ok((cookie, location)) => {
            let mut resp = see_other(&location);
            let set = format!(
                "{}={cookie}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
                sso_cookie_name(&state),
                sso::PENDING_TTL.as_secs(),
                if state.config.dashboard.secure_cookie {
                    "; Secure"
                } else {
                    ""
                }
            );
            if let Ok(v) = HeaderValue::from_str(&set) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => sso_refused(&state, &e),
    }
}

/// `GET /oidc/callback`: finishes an SSO login and opens a session.
async fn sso_callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<sso::CallbackParams>,
) -> Response {
    let Some(sso) = &state.sso else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "sso_not_configured",
            "single sign-on is not configured (dashboard.oidc)",
        )
        .into_response();
    };
    let cookie = session_cookie(&headers, sso_cookie_name(&state));
    let principal = match sso.finish(cookie.as_deref(), &params).await {
        Ok(p) => p,
        Err(e) => return sso_refused(&state, &e),
    };
    let who = format!("{}/{}", principal.tenant, principal.user);
    let (id, _) = match state.dashboard.open_for("oidc", Some(who.clone())) {
        Ok(s) => s,
        Err(e) => {
            return sso_refused(&state, &sso::SsoError::Unavailable(e.to_string()));
        }
    };
    if let Err(e) = record_login(&state, &id, "oidc", Some(who.as_str())).await {
        return e.into_response();
    }
    let mut resp = see_other("/");
    if let Ok(v) = HeaderValue::from_str(&session_set_cookie(&state, &id)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    expire_sso_cookie(&state, &mut resp);
    resp
}

/// Records a dashboard login (an `ops_action` in the `_aibox` tenant)
/// before its session is handed out. A login the audit log cannot take is
/// refused, and its session closed: an administrator's access is an event of
/// the record like any turn. Refused logins are counted in
/// `aibox_ops_auth_failures_total` and logged, not recorded, so that an
/// unauthenticated caller cannot write to the durable log at will.
async fn record_login(
    state: &AppState,
    session: &str,
    method: &str,
    user: Option<&str>,
) -> Result<(), ApiError> {
    let target = session_target(method, user);
    match crate::ops::record_ops_action(state, "dashboard", "dashboard_login", target, true).await {
        Ok(()) => {
            tracing::info!(method, user = user.unwrap_or(""), "dashboard login");
            Ok(())
        }
        Err(_) => {
            state.dashboard.close(session);
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "audit_unavailable",
                "the login could not be recorded in the audit log, so it was refused; \
                 check the audit database (aibox doctor, /readyz) and try again",
            ))
        }
    }
}

/// The audit target of a session's login and logout: how, and who for SSO.
fn session_target(method: &str, user: Option<&str>) -> String {
    match user {
        Some(u) => format!("method={method} user={u}"),
        None => format!("method={method}"),
    }
}

fn refused_login(state: &AppState, method: &str, peer: Option<std::net::IpAddr>) -> ApiError {
    state.metrics.ops_auth_failures.inc();
    state.refusals.record(
        &state.audit,
        &format!("wrong_dashboard_{method}"),
        "dashboard/login",
        None,
        peer,
        None,
    );
    tracing::warn!(method, "dashboard login refused: wrong credential");
    unauthorized("wrong token or password")
}

async fn session_info(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    match caller {
        Caller::Session(id) => match state.dashboard.get(&id) {
            Some(s) => Json(serde_json::json!({
                "method": s.method,
                "user": s.user,
                "csrf": s.csrf,
                "expires_in": s.expires.saturating_duration_since(std::time::Instant::now()).as_secs(),
            }))
            .into_response(),
            None => unauthorized("log in first").into_response(),
        },
        Caller::Bearer => Json(serde_json::json!({"method": "bearer"})).into_response(),
    }
}

async fn logout(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    if let Caller::Session(id) = caller {
        let who = state
            .dashboard
            .get(&id)
            .map(|s| session_target(s.method, s.user.as_deref()));
        state.dashboard.close(&id);
        // The session is gone whether or not the record is taken: a logout
        // never fails (record_ops_action logs a failure loudly).
        if let Some(target) = who {
            let _ = crate::ops::record_ops_action(
                &state,
                "dashboard",
                "dashboard_logout",
                target,
                true,
            )
            .await;
        }
    }
    let mut resp = Json(serde_json::json!({"ok": true})).into_response();
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        cookie_name(&state)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// One sample line of the exposition: name, labels, value.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some((name, labels, value))
}

/// `k="v",k2="v\"2"` with the exposition's escapes (`\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            return Some(out);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.insert(key, val);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

#[derive(Default, serde::Serialize)]
struct TrafficRow {
    tenant: String,
    model: String,
    requests: f64,
    errors: f64,
    latency_sum_s: f64,
    latency_count: f64,
    prompt_tokens: f64,
    completion_tokens: f64,
}

/// `GET /api/traffic`: requests, errors, latency and tokens per tenant and
/// model of the API routes, from the live metrics.
async fn traffic(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.encode();
    let mut rows: BTreeMap<(String, String), TrafficRow> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels, v)) = parse_sample(line) else {
            continue;
        };
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        if matches!(
            name,
            "aibox_http_requests_total"
                | "aibox_http_request_duration_seconds_sum"
                | "aibox_http_request_duration_seconds_count"
        ) && !get("route").starts_with("/v1/")
        {
            continue;
        }
        let key = (get("tenant"), get("model"));
        let row = || TrafficRow {
            tenant: key.0.clone(),
            model: key.1.clone(),
            ..TrafficRow::default()
        };
        match name {
            "aibox_http_requests_total" => {
                let r = rows.entry(key.clone()).or_insert_with(row);
                r.requests += v;
                if get("status").parse::<u16>().is_ok_and(|s| s >= 400) {
                    r.errors += v;
                }
            }
            "aibox_http_request_duration_seconds_sum" => {
                rows.entry(key.clone()).or_insert_with(row).latency_sum_s += v;
            }
            "aibox_http_request_duration_seconds_count" => {
                rows.entry(key.clone()).or_insert_with(row).latency_count += v;
            }
            "aibox_tokens_total" => {
                let r = rows.entry(key.clone()).or_insert_with(row);
                if get("kind") == "prompt" {
                    r.prompt_tokens += v;
                } else {
                    r.completion_tokens += v;
                }
            }
            _ => {}
        }
    }
    Json(serde_json::json!({
        "rows": rows.into_values().collect::<Vec<_>>(),
        "inflight": state.metrics.inflight.get(),
    }))
    .into_response()
}

async fn tenants(State(state): State<Arc<AppState>>) -> Response {
    match state.audit.tenants().await {
        Ok(t) => Json(t.iter().map(|t| t.as_str().to_owned()).collect::<Vec<_>>()).into_response(),
        Err(e) => crate::audit::log_error(e).into_response(),
    }
}

fn tenant_param(t: &str) -> Result<TenantId, ApiError> {
    TenantId::new(t).map_err(|e| ApiError::bad_request(format!("tenant: {e}"), Some("tenant")))
}

#[derive(Deserialize)]
struct RowsQuery {
    kind: Option<String>,
    /// Only rows with a smaller seq (the "older" link).
    before: Option<u64>,
    /// Rows per page (default 100, at most 500).
    limit: Option<usize>,
}

/// `GET /api/audit/{tenant}?kind=&before=&limit=`: one page of a tenant's
/// log (events as recorded; no prompt text is ever in them), newest first,
/// read by sequence number from the database, never the whole log.
/// `older` is the `before` of the next page, absent on the last one.
async fn audit_rows(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    Query(q): Query<RowsQuery>,
) -> Response {
    let tenant = match tenant_param(&tenant) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let limit = q.limit.unwrap_or(PAGE_ROWS).clamp(1, MAX_PAGE_ROWS);
    let page = match state
        .audit
        .page(&tenant, q.before, limit, q.kind.as_deref())
        .await
    {
        Ok(p) => p,
        Err(e) => return crate::audit::log_error(e).into_response(),
    };
    let older = (page.rows.len() == limit)
        .then(|| page.rows.last().map(|r| r.seq))
        .flatten()
        .filter(|s| *s > 1);
    let rows: Vec<serde_json::Value> = page
        .rows
        .into_iter()
        .filter_map(|r| {
            let event: serde_json::Value = serde_json::from_str(&r.event).ok()?;
            Some(serde_json::json!({"seq": r.seq, "turn": r.turn, "event": event}))
        })
        .collect();
    Json(serde_json::json!({
        "tenant": tenant.as_str(),
        "total": page.last_seq,
        "rows": rows,
        "older": older,
    }))
    .into_response()
}

/// `POST /api/audit/{tenant}/verify`: full verification of a tenant's log
/// (an operator action: recorded in the `_aibox` tenant).
async fn audit_verify(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(tenant): Path<String>,
) -> Response {
    let tenant = match tenant_param(&tenant) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let report = match state.audit.verify(&tenant, |_, _| {}).await {
        Ok(r) => r,
        Err(e) => return crate::audit::log_error(e).into_response(),
    };
    let _ = crate::ops::record_ops_action(
        &state,
        caller.actor(),
        "verify_audit_log",
        format!("tenant={tenant} ok={} rows={}", report.ok, report.rows),
        true,
    )
    .await;
    Json(report).into_response()
}

/// `GET /api/receipts/{turn}`: a turn's receipt as a download.
async fn receipt(State(state): State<Arc<AppState>>, Path(turn): Path<String>) -> Response {
    let turn = match TurnId::new(&turn) {
        Ok(t) => t,
        Err(e) => return ApiError::bad_request(format!("turn: {e}"), Some("turn")).into_response(),
    };
    let tenant = match state.audit.tenant_of_turn(&turn).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                "no such turn",
            )
            .into_response();
        }
        Err(e) => return crate::audit::log_error(e).into_response(),
    };
    match state.audit.receipt(&tenant, &turn).await {
        Ok(r) => {
            let mut resp = Json(r).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "attachment; filename=\"receipt-{}.json\"",
                turn.as_str()
            )) {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Err(e) => crate::audit::log_error(e).into_response(),
    }
}

/// `GET /api/guardrail`: verdict counts by stage and action, the profile.
async fn guardrail(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.encode();
    let counts: Vec<serde_json::Value> = text
        .lines()
        .filter_map(parse_sample)
        .filter(|(name, _, _)| *name == "aibox_guardrail_verdicts_total")
        .map(|(_, labels, v)| {
            serde_json::json!({
                "stage": labels.get("stage"),
                "action": labels.get("action"),
                "count": v,
            })
        })
        .collect();
    let g = state.guardrail.current();
    Json(serde_json::json!({
        "constitution": state.guardrail.source().map(|p| p.display().to_string()),
        "profile": g.profile_for("default").as_str(),
        "verdicts": counts,
    }))
    .into_response()
}

async fn mcp(State(state): State<Arc<AppState>>) -> Response {
    let servers = match &state.mcp {
        Some(m) => m.overview(Duration::from_secs(2)).await,
        None => Vec::new(),
    };
    Json(servers).into_response()
}

/// `GET /api/keys`: key ids and fingerprints (never material) of every
/// keyring, and the audit log's public verifier keys per tenant.
async fn keys(State(state): State<Arc<AppState>>) -> Response {
    let mut audit = Vec::new();
    if let Ok(tenants) = state.audit.tenants().await {
        for t in tenants {
            if let Ok(k) = state.audit.public_keys(&t).await {
                audit.push(serde_json::json!({"tenant": t.as_str(), "keys": k}));
            }
        }
    }
    Json(serde_json::json!({
        "keyrings": *state.key_summary.load_full(),
        "audit": audit,
    }))
    .into_response()
}

async fn doctor(State(state): State<Arc<AppState>>) -> Response {
    let Some(f) = state.doctor.clone() else {
        return Json(serde_json::json!({"findings": []})).into_response();
    };
    match tokio::task::spawn_blocking(move || f()).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "doctor_failed",
            e,
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "doctor_failed",
            "the doctor did not finish",
        )
        .into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_with_escapes() {
        let (name, labels, v) = parse_sample(
            r#"aibox_http_requests_total{route="/v1/x",model="a\"b,c\\d",tenant="t"} 3"#,
        )
        .unwrap();
        assert_eq!(name, "aibox_http_requests_total");
        assert_eq!(labels["model"], "a\"b,c\\d");
        assert_eq!(labels["tenant"], "t");
        assert_eq!(v, 3.0);
        assert!(parse_sample("garbage").is_none());
    }

    #[test]
    fn same_origin_needs_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9001"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9001"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn the_csp_has_no_unsafe_inline_and_forbids_framing() {
        assert!(!CSP.contains("unsafe"));
        assert!(CSP.contains("frame-ancestors 'none'"));
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
        assert!(!APP_JS.contains("innerHTML"));
    }
}
