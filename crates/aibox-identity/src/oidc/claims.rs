//! Standard claim checks and the mapping of claims into a principal.
//!
//! Runs only after the signature verified, so every value read here was
//! vouched for by the provider; it is still validated, because identifiers
//! end up in Redis keys, SQL parameters, logs and downstream JWS claims.

use std::time::SystemTime;

use aibox_core::{AuthMethod, Principal, TenantId, UserId};
use serde_json::{Map, Value};

use super::error::AuthError;
use super::settings::OidcSettings;
use crate::jws;

/// The most roles taken from one token.
pub const MAX_ROLES: usize = 256;
/// The longest role name.
pub const MAX_ROLE_CHARS: usize = 256;
/// The longest `azp` kept as the client id.
const MAX_CLIENT_ID_CHARS: usize = 256;

/// Keycloak marks its non-access tokens with a `typ` claim. An ID token or a
/// refresh token presented as a bearer token is refused even when it carries
/// an acceptable `aud`/`azp`, so one kind of token cannot stand in for another.
const REFUSED_TOKEN_TYPES: [&str; 4] = ["ID", "Refresh", "Offline", "Logout"];

type Claims = Map<String, Value>;

fn missing(claim: &str) -> AuthError {
    AuthError::MissingClaim {
        claim: claim.to_owned(),
    }
}

fn bad(claim: &str) -> AuthError {
    AuthError::BadClaim {
        claim: claim.to_owned(),
    }
}

/// Finds a claim: a top-level claim with exactly this name first (names such
/// as `https://example.com/roles` contain dots), then a dotted path into
/// nested objects.
pub(crate) fn lookup<'a>(claims: &'a Claims, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn time_claim(claims: &Claims, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => jws::numeric_date(v).map(Some).ok_or_else(|| bad(name)),
    }
}

/// Checks `iss`, `exp`, `nbf`, `iat`, the token type and the audience.
pub(crate) fn check(
    settings: &OidcSettings,
    claims: &Claims,
    now: SystemTime,
) -> Result<(), AuthError> {
    check_issuer_and_times(settings, claims, now)?;
    if let Some(Value::String(typ)) = claims.get("typ")
        && REFUSED_TOKEN_TYPES.contains(&typ.as_str())
    {
        return Err(bad("typ"));
    }
    if !settings.audiences.is_empty() {
        check_audience(&settings.audiences, claims)?;
    }
    Ok(())
}

/// Checks an ID token (OpenID Connect Core §3.1.3.7) after its signature:
/// `iss`, `exp`, `nbf`, `iat` as for access tokens; `aud` must contain
/// `client_id` (an `azp`, when present, must be it: a token issued to
/// another client that merely lists us is not our login); the `nonce` must
/// be the one this login sent; a `typ` claim, when present, must say `ID`
/// (Keycloak marks its access tokens `Bearer`, and one must not stand in for
/// the other).
pub(crate) fn check_id_token(
    settings: &OidcSettings,
    claims: &Claims,
    client_id: &str,
    nonce: &str,
    now: SystemTime,
) -> Result<(), AuthError> {
    check_issuer_and_times(settings, claims, now)?;
    match claims.get("typ") {
        None => {}
        Some(Value::String(t)) if t == "ID" => {}
        Some(_) => return Err(bad("typ")),
    }
    let accepted = [client_id.to_owned()];
    let aud_ok = match claims.get("aud") {
        None => return Err(missing("aud")),
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(items)) => {
            let mut found = false;
            for item in items {
                let Value::String(a) = item else {
                    return Err(bad("aud"));
                };
                found |= accepted.contains(a);
            }
            found
        }
        Some(_) => return Err(bad("aud")),
    };
    if !aud_ok {
        return Err(AuthError::AudienceMismatch);
    }
    match claims.get("azp") {
        None => {}
        Some(Value::String(a)) if a == client_id => {}
        Some(_) => return Err(AuthError::AudienceMismatch),
    }
    match claims.get("nonce") {
        None => Err(missing("nonce")),
        Some(Value::String(n))
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                n.as_bytes(),
                nonce.as_bytes(),
            )) =>
        {
            Ok(())
        }
        Some(_) => Err(bad("nonce")),
    }
}

fn check_issuer_and_times(
    settings: &OidcSettings,
    claims: &Claims,
    now: SystemTime,
) -> Result<(), AuthError> {
    match claims.get("iss") {
        None => return Err(missing("iss")),
        Some(Value::String(iss)) if *iss == settings.issuer => {}
        Some(Value::String(iss)) => {
            return Err(AuthError::IssuerMismatch {
                expected: settings.issuer.clone(),
                got: jws::printable(iss, 200),
            });
        }
        Some(_) => return Err(bad("iss")),
    }
    let now = jws::unix_secs(now);
    let leeway = settings.leeway.as_secs();
    let exp = time_claim(claims, "exp")?.ok_or_else(|| missing("exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(AuthError::NotYetValid);
    }
    if let Some(iat) = time_claim(claims, "iat")?
        && iat > now.saturating_add(leeway)
    {
        return Err(AuthError::IssuedInFuture);
    }
    Ok(())
}

fn check_audience(accepted: &[String], claims: &Claims) -> Result<(), AuthError> {
    let accepts = |s: &str| accepted.iter().any(|a| a == s);
    let aud_ok = match claims.get("aud") {
        None => false,
        Some(Value::String(a)) => accepts(a),
        Some(Value::Array(items)) => {
            let mut found = false;
            for item in items {
                let Value::String(a) = item else {
                    return Err(bad("aud"));
                };
                found |= accepts(a);
            }
            found
        }
        Some(_) => return Err(bad("aud")),
    };
    let azp_ok = match claims.get("azp") {
        None => false,
        Some(Value::String(a)) => accepts(a),
        Some(_) => return Err(bad("azp")),
    };
    if aud_ok || azp_ok {
        Ok(())
    } else {
        Err(AuthError::AudienceMismatch)
    }
}

/// Maps verified claims to a principal.
pub(crate) fn map(settings: &OidcSettings, claims: &Claims) -> Result<Principal, AuthError> {
    let m = &settings.claims;
    let user = user(&m.user_claims, claims)?;
    let tenant = tenant(settings, claims)?;
    let roles = roles(&m.roles_claim, claims)?;
    let client_id = match claims.get("azp") {
        None => None,
        Some(Value::String(a))
            if !a.is_empty()
                && a.len() <= MAX_CLIENT_ID_CHARS
                && !a.chars().any(char::is_control) =>
        {
            Some(a.clone())
        }
        Some(_) => return Err(bad("azp")),
    };
    Ok(Principal {
        tenant,
        user,
        roles,
        auth: AuthMethod::Oidc {
            issuer: settings.issuer.clone(),
            client_id,
        },
    })
}

fn user(names: &[String], claims: &Claims) -> Result<UserId, AuthError> {
    for name in names {
        match lookup(claims, name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return UserId::new(s.as_str()).map_err(|_| bad(name)),
            Some(_) => return Err(bad(name)),
        }
    }
    Err(missing(&names.join("|")))
}

fn tenant(settings: &OidcSettings, claims: &Claims) -> Result<TenantId, AuthError> {
    let m = &settings.claims;
    match lookup(claims, &m.tenant_claim) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            return TenantId::new(s.as_str()).map_err(|_| bad(&m.tenant_claim));
        }
        Some(_) => return Err(bad(&m.tenant_claim)),
    }
    if let Some(prefix) = &m.tenant_from_group_prefix
        && let Some(groups) = lookup(claims, &m.groups_claim)
    {
        let Value::Array(groups) = groups else {
            return Err(bad(&m.groups_claim));
        };
        let found = groups
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|g| g.strip_prefix(prefix.as_str()))
            .map(|rest| rest.split('/').next().unwrap_or(""))
            .find(|t| !t.is_empty());
        if let Some(t) = found {
            return TenantId::new(t).map_err(|_| bad(&m.groups_claim));
        }
    }
    m.default_tenant
        .clone()
        .ok_or_else(|| missing(&m.tenant_claim))
}

fn roles(name: &str, claims: &Claims) -> Result<Vec<String>, AuthError> {
    let items = match lookup(claims, name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad(name)),
    };
    if items.len() > MAX_ROLES {
        return Err(bad(name));
    }
    let mut roles = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(r)
                if !r.is_empty()
                    && r.len() <= MAX_ROLE_CHARS
                    && !r.chars().any(char::is_control) =>
            {
                roles.push(r.clone());
            }
            _ => return Err(bad(name)),
        }
    }
    Ok(roles)
}
