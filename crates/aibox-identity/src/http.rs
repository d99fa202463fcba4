//! Shared HTTP error wording for the clients of aibox (JWKS, token
//! endpoint, model upstreams, downstream services).

/// Describes a reqwest error by kind and root cause, without its URL (which
/// could carry credentials in a query string) and without the noise of the
/// whole source chain.
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "the body broke off"
    } else if e.is_builder() {
        "invalid request"
    } else if e.is_request() {
        "the request failed"
    } else {
        "transport error"
    };
    let mut source = std::error::Error::source(e);
    let mut root = None;
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    match root {
        Some(r) => format!("{kind} ({r})"),
        None => kind.to_owned(),
    }
}
