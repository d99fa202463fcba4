//! CapTokens: per-turn capability tokens.
//!
//! When the gateway starts a turn (one chat request or one agent turn) it
//! mints a CapToken listing exactly what that turn may do: call
//! `tool:SERVER/TOOL`, `memory:read`, and so on. Turn-aware services (the MCP
//! gateway, memory services) check every call against it: signature, key
//! version, expiry, the turn it is bound to, and that the operation is listed.
//! A token can also be made single-use with a [`ReplayGuard`].
//!
//! Format: a compact JWS, HS256 with the first key of `AIBOX_CAPTOKEN_KEYS`,
//! header `{"alg":"HS256","typ":"JWT","kid":KEY_ID}`, claims `iss` ("aibox"),
//! `jti` (128 random bits, unpadded base64url), `turn`, `tenant`, `sub`,
//! `ops`, `iat`, `exp` (5 minutes by default) and optionally `aud`.
//!
//! Operations are `kind:target` with kind `[a-z][a-z0-9_-]*` and target
//! characters `[A-Za-z0-9._:/@+-]`; tool operations are exactly
//! `tool:SERVER/TOOL`. The only wildcard is `tool:SERVER/*`, which matches
//! every tool of one server and exists only when minted explicitly.

use std::time::{Duration, SystemTime};

use aibox_core::keyring::Keyring;
use aibox_core::{TenantId, TurnId, UserId};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

use crate::jws;
use crate::keys::KeyringKind;
use crate::principal::{
    ISSUER, check_header, check_times, encoded_header, hmac_keys, random_jti, sign_hs256,
    valid_audience, verify_hs256,
};
use crate::replay::ReplayGuard;
use crate::token_error::{IdentityError, VerifyError};

/// The default lifetime of a CapToken.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// The default clock leeway of a verifier.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// The most operations one token may carry.
pub const MAX_OPS: usize = 256;
/// The longest operation string.
pub const MAX_OP_CHARS: usize = 256;

/// What a turn may do, for minting.
#[derive(Debug, Clone, Copy)]
pub struct CapGrant<'a> {
    /// The turn the token is bound to.
    pub turn: &'a TurnId,
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The user.
    pub user: &'a UserId,
    /// The allowed operations.
    pub ops: &'a [String],
    /// The one service that may accept the token, if restricted.
    pub audience: Option<&'a str>,
}

/// A minted token and what the minter may want to log or audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedCapToken {
    /// The compact JWS.
    pub token: String,
    /// Its unique id.
    pub jti: String,
    /// When it expires.
    pub expires_at: SystemTime,
}

/// The claims of a CapToken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapTokenClaims {
    /// Always `aibox`.
    pub iss: String,
    /// The unique token id (22 base64url characters).
    pub jti: String,
    /// The turn.
    pub turn: TurnId,
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub sub: UserId,
    /// The allowed operations.
    pub ops: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// The one service that may accept it, if restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl CapTokenClaims {
    /// True when the token allows `op`: listed exactly, or covered by a
    /// minted `tool:SERVER/*` wildcard.
    pub fn allows(&self, op: &str) -> bool {
        self.ops.iter().any(|granted| op_matches(granted, op))
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.exp)
    }
}

#[derive(Serialize)]
struct ClaimsRef<'a> {
    iss: &'static str,
    jti: &'a str,
    turn: &'a TurnId,
    tenant: &'a TenantId,
    sub: &'a UserId,
    ops: &'a [String],
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-".contains(&b)
}

/// Checks an operation string. `allow_wildcard` is true when minting (a
/// grant may be `tool:SERVER/*`) and false for the operation a call asks for.
fn valid_op(op: &str, allow_wildcard: bool) -> bool {
    if op.is_empty() || op.len() > MAX_OP_CHARS {
        return false;
    }
    let Some((kind, target)) = op.split_once(':') else {
        return false;
    };
    let kind_ok = kind.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !kind_ok || target.is_empty() {
        return false;
    }
    if kind == "tool" {
        let Some((server, tool)) = target.split_once('/') else {
            return false;
        };
        let server_ok = !server.is_empty() && server.bytes().all(is_name_byte);
        let tool_ok =
            (!tool.is_empty() && tool.bytes().all(is_name_byte)) || (allow_wildcard && tool == "*");
        return server_ok && tool_ok;
    }
    target
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b))
}

/// True when the granted operation covers the requested one.
fn op_matches(granted: &str, requested: &str) -> bool {
    if granted == requested {
        return true;
    }
    // `tool:SERVER/*` covers `tool:SERVER/TOOL` for one tool segment.
    match granted.strip_suffix('*') {
        Some(prefix) if prefix.starts_with("tool:") && prefix.ends_with('/') => requested
            .strip_prefix(prefix)
            .is_some_and(|tool| !tool.is_empty() && tool.bytes().all(is_name_byte)),
        _ => false,
    }
}

/// Mints CapTokens with the first key of `AIBOX_CAPTOKEN_KEYS`.
pub struct CapTokenMinter {
    kid: String,
    header: String,
    key: EncodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for CapTokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapTokenMinter")
            .field("kid", &self.kid)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CapTokenMinter {
    /// A minter signing with the keyring's first key.
    pub fn new(keyring: &Keyring) -> Self {
        crate::ensure_crypto_provider();
        let signing = keyring.signing();
        Self {
            kid: signing.id().to_owned(),
            header: encoded_header("HS256", signing.id()),
            key: EncodingKey::from_secret(signing.secret()),
            ttl: DEFAULT_TTL,
        }
    }

    /// Sets the token lifetime.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The key id that signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Mints a token for one turn.
    pub fn mint(
        &self,
        grant: &CapGrant<'_>,
        now: SystemTime,
    ) -> Result<MintedCapToken, IdentityError> {
        if grant.ops.is_empty() {
            return Err(IdentityError::NoOperations);
        }
        if grant.ops.len() > MAX_OPS {
            return Err(IdentityError::BadOperation {
                op: format!("({} operations; at most {MAX_OPS})", grant.ops.len()),
            });
        }
        if let Some(bad) = grant.ops.iter().find(|op| !valid_op(op, true)) {
            return Err(IdentityError::BadOperation {
                op: jws::printable(bad, 64),
            });
        }
        if grant.audience.is_some_and(|a| !valid_audience(a)) {
            return Err(IdentityError::BadAudience);
        }
        let jti = random_jti()?;
        let iat = jws::unix_secs(now);
        let exp = iat.saturating_add(self.ttl.as_secs());
        let claims = ClaimsRef {
            iss: ISSUER,
            jti: &jti,
            turn: grant.turn,
            tenant: grant.tenant,
            sub: grant.user,
            ops: grant.ops,
            iat,
            exp,
            aud: grant.audience,
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| IdentityError::Signing)?;
        let token = sign_hs256(&self.header, &payload, &self.key)?;
        Ok(MintedCapToken {
            token,
            jti,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

/// Verifies CapTokens with every key of `AIBOX_CAPTOKEN_KEYS`.
pub struct CapTokenVerifier {
    keys: Vec<(String, DecodingKey)>,
    audience: Option<String>,
    also: Vec<String>,
    leeway: Duration,
}

impl std::fmt::Debug for CapTokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("CapTokenVerifier")
            .field("kids", &kids)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl CapTokenVerifier {
    /// A verifier holding every key of the keyring.
    pub fn new(keyring: &Keyring) -> Self {
        crate::ensure_crypto_provider();
        Self {
            keys: hmac_keys(keyring),
            audience: None,
            also: Vec::new(),
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// Names the service this verifier runs in. Tokens minted with an `aud`
    /// are accepted only by the verifier with that audience; tokens without
    /// `aud` are accepted by every turn-aware service.
    #[must_use]
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Also accepts tokens minted for these audiences. The MCP gateway uses
    /// this for the route audiences of aibox's own downstream routes: an
    /// agent runtime behind a route receives its turn's CapToken and calls
    /// back into `/mcp` with it.
    #[must_use]
    pub fn also_accepting(mut self, audiences: impl IntoIterator<Item = String>) -> Self {
        self.also.extend(audiences);
        self
    }

    /// Sets the clock leeway for `exp` and `iat`.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Verifies a token for a call that needs `required_op`, optionally in
    /// the turn `expected_turn`.
    pub fn verify(
        &self,
        token: &str,
        expected_turn: Option<&TurnId>,
        required_op: &str,
        now: SystemTime,
    ) -> Result<CapTokenClaims, VerifyError> {
        let keyring = KeyringKind::CapToken;
        let checked = check_header(token, "HS256", keyring)?;
        verify_hs256(&checked, &self.keys, keyring)?;
        let payload = jws::b64_decode(checked.parts.payload).ok_or(VerifyError::Malformed)?;
        let claims: CapTokenClaims =
            serde_json::from_slice(&payload).map_err(|_| VerifyError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(VerifyError::WrongIssuer);
        }
        // The jti becomes a Redis key; only the minted shape is accepted.
        if claims.jti.len() != 22 || jws::b64_decode(&claims.jti).is_none() {
            return Err(VerifyError::BadClaim { claim: "jti" });
        }
        check_times(claims.iat, claims.exp, now, self.leeway)?;
        if let Some(aud) = &claims.aud
            && self.audience.as_deref() != Some(aud.as_str())
            && !self.also.iter().any(|a| a == aud)
        {
            return Err(VerifyError::WrongAudience);
        }
        if let Some(turn) = expected_turn
            && *turn != claims.turn
        {
            return Err(VerifyError::WrongTurn);
        }
        if !valid_op(required_op, false) || !claims.allows(required_op) {
            return Err(VerifyError::OpNotAllowed {
                op: jws::printable(required_op, 64),
            });
        }
        Ok(claims)
    }

    /// Like [`CapTokenVerifier::verify`], then records the token's `jti` in
    /// `guard` and refuses a second use. A guard that cannot answer refuses
    /// the token too.
    pub async fn verify_single_use<G: ReplayGuard>(
        &self,
        token: &str,
        expected_turn: Option<&TurnId>,
        required_op: &str,
        now: SystemTime,
        guard: &G,
    ) -> Result<CapTokenClaims, VerifyError> {
        let claims = self.verify(token, expected_turn, required_op, now)?;
        self.consume(&claims, guard).await?;
        Ok(claims)
    }

    /// Records the `jti` of claims that [`CapTokenVerifier::verify`]
    /// accepted in `guard`, refusing a second use. For callers that check
    /// more (the principal, say) between verifying and consuming, so that a
    /// token refused for another reason is not used up. A guard that cannot
    /// answer refuses the token.
    pub async fn consume<G: ReplayGuard>(
        &self,
        claims: &CapTokenClaims,
        guard: &G,
    ) -> Result<(), VerifyError> {
        // Remember the id as long as any verifier could still accept it.
        let until = claims.expires_at() + self.leeway;
        match guard.first_use(&claims.jti, until).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(VerifyError::Replayed),
            Err(e) => Err(VerifyError::ReplayCheck(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{MemoryReplayGuard, ReplayError};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn ring(spec: &[(&str, u8)]) -> Keyring {
        let text: Vec<String> = spec
            .iter()
            .map(|(id, n)| format!("{id}:{}", URL_SAFE_NO_PAD.encode([*n; 32])))
            .collect();
        Keyring::parse(&text.join(",")).unwrap()
    }

    const NOW: u64 = 1_750_000_000;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    struct Fixture {
        turn: TurnId,
        tenant: TenantId,
        user: UserId,
        ops: Vec<String>,
    }

    fn fixture() -> Fixture {
        Fixture {
            turn: TurnId::new("0190a5f2-0000-7000-8000-000000000001").unwrap(),
            tenant: TenantId::new("acme").unwrap(),
            user: UserId::new("alice").unwrap(),
            ops: vec![
                "tool:files/read_file".into(),
                "memory:read".into(),
                "tool:search/*".into(),
            ],
        }
    }

    fn mint(m: &CapTokenMinter, f: &Fixture, aud: Option<&str>) -> MintedCapToken {
        m.mint(
            &CapGrant {
                turn: &f.turn,
                tenant: &f.tenant,
                user: &f.user,
                ops: &f.ops,
                audience: aud,
            },
            t(NOW),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_claims_and_header() {
        let r = ring(&[("c2", 2), ("c1", 1)]);
        let f = fixture();
        let minted = mint(&CapTokenMinter::new(&r), &f, None);
        assert_eq!(minted.jti.len(), 22);
        assert_eq!(minted.expires_at, t(NOW + 300));
        let parts: Vec<&str> = minted.token.split('.').collect();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg":"HS256","typ":"JWT","kid":"c2"})
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({
                "iss":"aibox","jti":minted.jti,"turn":f.turn.as_str(),"tenant":"acme","sub":"alice",
                "ops":["tool:files/read_file","memory:read","tool:search/*"],
                "iat":NOW,"exp":NOW+300
            })
        );
        let v = CapTokenVerifier::new(&r);
        let c = v
            .verify(
                &minted.token,
                Some(&f.turn),
                "tool:files/read_file",
                t(NOW + 10),
            )
            .unwrap();
        assert_eq!(c.jti, minted.jti);
        assert_eq!(c.tenant, f.tenant);
        assert!(c.allows("tool:search/web"));
        // Unique ids.
        let again = mint(&CapTokenMinter::new(&r), &f, None);
        assert_ne!(again.jti, minted.jti);
    }

    #[test]
    fn also_accepted_audiences_extend_but_never_replace_the_check() {
        let r = ring(&[("c1", 1)]);
        let f = fixture();
        let m = CapTokenMinter::new(&r);
        let route = mint(&m, &f, Some("agent-runtime")).token;
        let other = mint(&m, &f, Some("memory")).token;
        let v = CapTokenVerifier::new(&r)
            .also_accepting(["agent-runtime".to_owned()])
            .with_audience("aibox-mcp");
        v.verify(&route, None, "tool:search/web", t(NOW)).unwrap();
        assert_eq!(
            v.verify(&other, None, "tool:search/web", t(NOW))
                .unwrap_err(),
            VerifyError::WrongAudience
        );
    }

    #[test]
    fn verification_table() {
        let r = ring(&[("c1", 1)]);
        let f = fixture();
        let m = CapTokenMinter::new(&r);
        let token = mint(&m, &f, None).token;
        let aud_token = mint(&m, &f, Some("mcp-gateway")).token;
        let other_turn = TurnId::new("0190a5f2-0000-7000-8000-000000000002").unwrap();
        let v = CapTokenVerifier::new(&r);
        let v_mcp = CapTokenVerifier::new(&r).with_audience("mcp-gateway");
        let v_other = CapTokenVerifier::new(&r).with_audience("memory");
        let rotated_out = CapTokenVerifier::new(&ring(&[("c2", 2)]));
        let rotated_in = CapTokenVerifier::new(&ring(&[("c2", 2), ("c1", 1)]));
        let wrong_secret = CapTokenVerifier::new(&ring(&[("c1", 9)]));
        let principal_token = crate::principal::PrincipalSigner::hmac(&r)
            .sign(
                &aibox_core::Principal::anonymous(),
                "svc",
                &aibox_core::RequestId::new("r1").unwrap(),
                t(NOW),
            )
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let none = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"c1"}"#),
            parts[1],
            parts[2]
        );
        let hs512 = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512","kid":"c1"}"#),
            parts[1],
            parts[2]
        );
        type Case<'a> = (
            &'a str,
            &'a CapTokenVerifier,
            &'a str,
            Option<&'a TurnId>,
            &'a str,
            u64,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "exact op",
                &v,
                &token,
                Some(&f.turn),
                "memory:read",
                NOW,
                "ok",
            ),
            (
                "no turn binding asked",
                &v,
                &token,
                None,
                "memory:read",
                NOW,
                "ok",
            ),
            (
                "wildcard op",
                &v,
                &token,
                Some(&f.turn),
                "tool:search/web",
                NOW,
                "ok",
            ),
            (
                "wildcard other server",
                &v,
                &token,
                Some(&f.turn),
                "tool:files/write_file",
                NOW,
                "op_not_allowed",
            ),
            (
                "wildcard nested",
                &v,
                &token,
                Some(&f.turn),
                "tool:search/a/b",
                NOW,
                "op_not_allowed",
            ),
            (
                "asking for the wildcard itself",
                &v,
                &token,
                Some(&f.turn),
                "tool:search/*",
                NOW,
                "op_not_allowed",
            ),
            (
                "missing op",
                &v,
                &token,
                Some(&f.turn),
                "memory:write",
                NOW,
                "op_not_allowed",
            ),
            (
                "prefix of op",
                &v,
                &token,
                Some(&f.turn),
                "memory:rea",
                NOW,
                "op_not_allowed",
            ),
            (
                "wrong turn",
                &v,
                &token,
                Some(&other_turn),
                "memory:read",
                NOW,
                "wrong_turn",
            ),
            (
                "expired",
                &v,
                &token,
                Some(&f.turn),
                "memory:read",
                NOW + 305,
                "expired",
            ),
            (
                "within leeway",
                &v,
                &token,
                Some(&f.turn),
                "memory:read",
                NOW + 304,
                "ok",
            ),
            (
                "issued in future",
                &v,
                &token,
                Some(&f.turn),
                "memory:read",
                NOW - 60,
                "issued_in_future",
            ),
            (
                "removed kid",
                &rotated_out,
                &token,
                Some(&f.turn),
                "memory:read",
                NOW,
                "unknown_kid",
            ),
            (
                "old kid kept",
                &rotated_in,
                &token,
                Some(&f.turn),
                "memory:read",
                NOW,
                "ok",
            ),
            (
                "different secret",
                &wrong_secret,
                &token,
                Some(&f.turn),
                "memory:read",
                NOW,
                "bad_signature",
            ),
            (
                "aud token at its service",
                &v_mcp,
                &aud_token,
                Some(&f.turn),
                "memory:read",
                NOW,
                "ok",
            ),
            (
                "aud token elsewhere",
                &v_other,
                &aud_token,
                Some(&f.turn),
                "memory:read",
                NOW,
                "wrong_audience",
            ),
            (
                "aud token at unnamed verifier",
                &v,
                &aud_token,
                Some(&f.turn),
                "memory:read",
                NOW,
                "wrong_audience",
            ),
            (
                "unrestricted token anywhere",
                &v_other,
                &token,
                Some(&f.turn),
                "memory:read",
                NOW,
                "ok",
            ),
            (
                "principal token as captoken",
                &v,
                &principal_token,
                None,
                "memory:read",
                NOW,
                "malformed",
            ),
            (
                "alg none",
                &v,
                &none,
                None,
                "memory:read",
                NOW,
                "algorithm_not_allowed",
            ),
            (
                "alg HS512",
                &v,
                &hs512,
                None,
                "memory:read",
                NOW,
                "algorithm_not_allowed",
            ),
            (
                "garbage",
                &v,
                "x.y.z",
                None,
                "memory:read",
                NOW,
                "malformed",
            ),
        ];
        for (name, verifier, tok, turn, op, now, want) in cases {
            let got = match verifier.verify(tok, turn, op, t(now)) {
                Ok(_) => "ok",
                Err(e) => e.code(),
            };
            assert_eq!(got, want, "case {name}");
        }
        let e = rotated_out
            .verify(&token, None, "memory:read", t(NOW))
            .unwrap_err();
        assert!(
            e.operator_hint()
                .contains("Verify AIBOX_CAPTOKEN_KEYS are shared by turn-aware services")
        );
    }

    #[test]
    fn mint_validates_operations() {
        let r = ring(&[("c1", 1)]);
        let m = CapTokenMinter::new(&r);
        let f = fixture();
        let grant = |ops: &[String]| {
            m.mint(
                &CapGrant {
                    turn: &f.turn,
                    tenant: &f.tenant,
                    user: &f.user,
                    ops,
                    audience: None,
                },
                t(NOW),
            )
        };
        assert_eq!(grant(&[]).unwrap_err(), IdentityError::NoOperations);
        for bad in [
            "",
            "tool",
            "tool:",
            "tool:srv",
            "tool:/x",
            "tool:srv/",
            "tool:srv/a/b",
            "tool:*",
            "tool:srv/a*",
            "*",
            "Memory:read",
            "memory:read write",
            "memory:*",
            ":read",
            "1tool:x/y",
            "memory:read\n",
        ] {
            assert!(
                matches!(
                    grant(&[bad.to_owned()]),
                    Err(IdentityError::BadOperation { .. })
                ),
                "{bad:?} accepted"
            );
        }
        for good in [
            "tool:srv/tool_1",
            "tool:srv.v2/*",
            "memory:read",
            "http:svc/path",
            "kv-2:a@b",
        ] {
            assert!(grant(&[good.to_owned()]).is_ok(), "{good:?} refused");
        }
        let many: Vec<String> = (0..=MAX_OPS).map(|i| format!("tool:s/t{i}")).collect();
        assert!(grant(&many).is_err());
        assert_eq!(
            m.mint(
                &CapGrant {
                    turn: &f.turn,
                    tenant: &f.tenant,
                    user: &f.user,
                    ops: &f.ops,
                    audience: Some("bad aud"),
                },
                t(NOW)
            )
            .unwrap_err(),
            IdentityError::BadAudience
        );
    }

    #[tokio::test]
    async fn single_use_refuses_replay_and_fails_closed() {
        let r = ring(&[("c1", 1)]);
        let f = fixture();
        let m = CapTokenMinter::new(&r);
        let v = CapTokenVerifier::new(&r);
        // The memory guard forgets ids by the real clock, so mint now.
        let at = SystemTime::now();
        let grant = CapGrant {
            turn: &f.turn,
            tenant: &f.tenant,
            user: &f.user,
            ops: &f.ops,
            audience: None,
        };
        let token = m.mint(&grant, at).unwrap().token;
        let guard = MemoryReplayGuard::new(100);
        assert!(
            v.verify_single_use(&token, Some(&f.turn), "memory:read", at, &guard)
                .await
                .is_ok()
        );
        // The second use fails even for another permitted operation.
        assert_eq!(
            v.verify_single_use(&token, Some(&f.turn), "tool:search/web", at, &guard)
                .await
                .unwrap_err(),
            VerifyError::Replayed
        );

        // A guard that cannot answer refuses the token.
        struct Broken;
        impl ReplayGuard for Broken {
            async fn first_use(&self, _: &str, _: SystemTime) -> Result<bool, ReplayError> {
                Err(ReplayError::Unavailable {
                    target: "127.0.0.1:6379".into(),
                    cause: "down".into(),
                })
            }
        }
        let fresh = m.mint(&grant, at).unwrap().token;
        let e = v
            .verify_single_use(&fresh, Some(&f.turn), "memory:read", at, &Broken)
            .await
            .unwrap_err();
        assert!(e.is_server_side());
        assert_eq!(e.code(), "replay_check_failed");
    }

    #[tokio::test]
    async fn single_use_with_real_redis() {
        let r = ring(&[("c1", 1)]);
        let f = fixture();
        let m = CapTokenMinter::new(&r);
        let v = CapTokenVerifier::new(&r);
        let now = SystemTime::now();
        let minted = m
            .mint(
                &CapGrant {
                    turn: &f.turn,
                    tenant: &f.tenant,
                    user: &f.user,
                    ops: &f.ops,
                    audience: None,
                },
                now,
            )
            .unwrap();
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        let prefix = format!("aibox-identity-test:captoken:{}:", hex::encode(b));
        let guard = match crate::replay::RedisReplayGuard::connect(
            &aibox_core::Secret::new("redis://127.0.0.1:6379"),
            prefix,
        )
        .await
        {
            Ok(g) => g,
            Err(e) => panic!(
                "this test needs the real Redis at 127.0.0.1:6379: {}",
                e.operator_hint()
            ),
        };
        assert!(
            v.verify_single_use(&minted.token, Some(&f.turn), "memory:read", now, &guard)
                .await
                .is_ok()
        );
        assert_eq!(
            v.verify_single_use(&minted.token, Some(&f.turn), "memory:read", now, &guard)
                .await
                .unwrap_err(),
            VerifyError::Replayed
        );
    }
}
