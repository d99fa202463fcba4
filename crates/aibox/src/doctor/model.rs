//! The vocabulary of `aibox doctor`: severities, the catalogue of rules
//! (each with a stable id that scripts and SARIF consumers can key on) and
//! the findings the checks produce.
//!
//! A rule's severity is fixed: two problems of different weight get two
//! ids, so that filtering by id and by severity never disagree.

use std::path::{Path, PathBuf};

/// How much a failed check matters. Any `High` finding makes the doctor
/// exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Must be fixed before production.
    High,
    /// Should be fixed; a real weakness with a narrower blast radius.
    Medium,
    /// Worth knowing; defence in depth.
    Low,
    /// Not a problem: what the doctor could not or did not check.
    Info,
}

impl Severity {
    /// Lower-case name, as printed in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }

    /// The SARIF `level` of a result of this severity.
    pub fn sarif_level(self) -> &'static str {
        match self {
            Severity::High => "error",
            Severity::Medium => "warning",
            Severity::Low | Severity::Info => "note",
        }
    }

    /// The `security-severity` property code-scanning services sort by
    /// (CVSS-like: 9.0+ critical, 7.0+ high, 4.0+ medium, below low).
    pub fn security_severity(self) -> &'static str {
        match self {
            Severity::High => "8.0",
            Severity::Medium => "5.0",
            Severity::Low => "2.0",
            Severity::Info => "0.0",
        }
    }
}

/// One check of the production checklist.
#[derive(Debug)]
pub struct Rule {
    /// The stable id, e.g. `AIBOX-SECRET-001`.
    pub id: &'static str,
    /// A short name in PascalCase, for SARIF `name`.
    pub name: &'static str,
    /// Its fixed severity.
    pub severity: Severity,
    /// One line: what is wrong when it fires.
    pub title: &'static str,
    /// Why it matters and the general fix, with the seed section.
    pub help: &'static str,
}

macro_rules! rules {
    ($( $konst:ident = ($id:literal, $name:literal, $sev:ident, $title:literal, $help:literal); )*) => {
        $(
            #[doc = $title]
            pub static $konst: Rule = Rule {
                id: $id,
                name: $name,
                severity: Severity::$sev,
                title: $title,
                help: $help,
            };
        )*
        /// Every rule, in the order the documentation lists them.
        pub static ALL_RULES: &[&Rule] = &[$(&$konst),*];
    };
}

rules! {
    SECRET_PLACEHOLDER = ("AIBOX-SECRET-001", "SecretIsPlaceholder", High,
        "A secret is a placeholder or empty",
        "Every secret of the stack needs a strong random value (seed 000 §1). Run `aibox bootstrap --env-file .env`, which replaces placeholders and keeps real values, or set the value from your secret manager.");
    SECRET_MISSING_KEY = ("AIBOX-SECRET-002", "AiboxKeyNotSet", High,
        "An aibox signing or encryption key is not set",
        "Without AUDIT_SIGNING_KEY, AIBOX_PRINCIPAL_KEYS, AIBOX_CAPTOKEN_KEYS and SECRETS_MASTER_KEY in aibox's environment, `aibox serve` generates development keys stored beside the data they protect. Run `aibox bootstrap` and pass the keys to aibox (compose `environment:` or the systemd EnvironmentFile).");
    SECRET_WEAK = ("AIBOX-SECRET-003", "SecretTooShortOrMalformed", High,
        "A secret is too short or malformed",
        "Passwords and tokens need at least 16 random characters, AUDIT_SIGNING_KEY at least 32 (seed 000 §1), and keyrings the documented KEY_ID:BASE64URL format with 32-byte keys. Generate values with `aibox bootstrap` or `openssl rand -hex 32`.");
    SECRET_DEFAULT = ("AIBOX-SECRET-004", "SecretIsWellKnownDefault", High,
        "A secret is a well-known default or development value",
        "Development defaults (Langfuse `pk-lf-1234567890`/`sk-lf-1234567890`, `minioadmin`, sequential or repeated characters) are public knowledge (seed 000 §9). Replace them with random values and rotate the key at the service.");
    SECRET_DEV_KEYS = ("AIBOX-SECRET-005", "DevelopmentKeysInDataDir", Medium,
        "Development keys are stored in the data directory",
        "`aibox serve` writes DATA_DIR/dev-keys.env when keys are not configured; they sit beside the data they protect. Configure real keys, check that aibox no longer logs USING DEVELOPMENT KEYS, then delete the file.");
    SECRET_IN_COMPOSE = ("AIBOX-SECRET-006", "SecretWrittenInComposeFile", Medium,
        "A secret is written literally in the compose file",
        "Compose files are committed and copied around; secrets belong in the 0600 env file. Write `NAME: ${NAME}` and put the value in .env.");
    ENVFILE_MODE = ("AIBOX-ENVFILE-001", "EnvFileReadableByOthers", High,
        "The env file is readable by group or others",
        "The env file holds every secret of the stack. `chmod 600` it (aibox bootstrap writes it with mode 0600).");
    ENVFILE_GIT = ("AIBOX-ENVFILE-002", "EnvFileTrackedByGit", High,
        "The env file is tracked by git",
        "A committed env file leaks every secret to everyone with the repository, forever. `git rm --cached` it, add it to .gitignore, and rotate every secret it held.");
    CONFIG_INVALID = ("AIBOX-CONFIG-001", "GatewayConfigInvalid", High,
        "The gateway configuration does not load",
        "aibox refuses to start on an invalid configuration. `aibox config check --config FILE` prints the same error with the key and the fix.");
    AUTH_DISABLED = ("AIBOX-AUTH-001", "GatewayAuthDisabled", High,
        "Gateway authentication is disabled",
        "With auth.enabled false every caller is the default tenant (seed 000 §2). Set auth.enabled: true with auth.issuer and auth.jwks_url (or AIBOX_AUTH_ENABLED=true in aibox's environment).");
    AUTH_ISSUER_HTTP = ("AIBOX-AUTH-002", "IssuerNotHttps", High,
        "The OIDC issuer is not an https URL",
        "Tokens name their issuer and browsers log in there; over plain http the login and the tokens can be intercepted (seed 000 §3). Terminate TLS in front of Keycloak and set auth.issuer to the https URL tokens carry.");
    AUTH_ISSUER_MISMATCH = ("AIBOX-AUTH-003", "IssuerDiscoveryMismatch", High,
        "The configured issuer does not match the provider's discovery document",
        "The gateway compares the token's iss with auth.issuer exactly, scheme, host and port included (seed 000 §3), so every login would fail. Set auth.issuer to the `issuer` of {issuer}/.well-known/openid-configuration, or fix the provider's hostname (KC_HOSTNAME).");
    AUTH_DISCOVERY_UNREACHABLE = ("AIBOX-AUTH-004", "DiscoveryUnreachable", Medium,
        "The provider's discovery document could not be fetched",
        "`--online` fetched {issuer}/.well-known/openid-configuration and failed. Check that the issuer URL is right and the provider is up.");
    TLS_PLAIN_HTTP = ("AIBOX-TLS-001", "IdentityEndpointOverPlainHttp", High,
        "An identity endpoint is reached over plain http on a non-internal host",
        "Keys and tokens fetched over plain http across a network can be replaced by anyone on the path, who can then mint accepted tokens. Use https, or an internal service name on the backend network (http://keycloak:8080/...).");
    REALM_PASSWORD_GRANT = ("AIBOX-REALM-001", "PasswordGrantEnabled", High,
        "A client allows password grants (directAccessGrantsEnabled)",
        "Password grants hand user passwords to clients and bypass MFA (seed 000 §4). Set directAccessGrantsEnabled: false; use authorization code with PKCE for browsers and confidential clients for automation.");
    REALM_LOCALHOST_REDIRECT = ("AIBOX-REALM-002", "LocalhostRedirectUri", High,
        "A client accepts a localhost redirect URI or origin",
        "Anyone who runs a listener on their own machine can receive codes for a production client (seed 000 §3). Remove localhost, 127.0.0.1 and [::1] from redirectUris, webOrigins and post-logout URIs; use ${AIBOX_PUBLIC_URL}/... variables.");
    REALM_SSL_NONE = ("AIBOX-REALM-003", "RealmSslNotRequired", High,
        "The realm does not require TLS (sslRequired: none)",
        "Keycloak then serves logins and tokens over plain http. Set sslRequired to external (or all) (seed 000 §3).");
    REALM_BUILTIN_PASSWORD_GRANT = ("AIBOX-REALM-004", "BuiltinClientPasswordGrant", Low,
        "A built-in Keycloak client allows password grants",
        "admin-cli allows password grants by default, which permits password guessing against the realm's users. Disable direct access grants on it unless you script the admin API with user passwords.");
    REALM_WILDCARD_REDIRECT = ("AIBOX-REALM-005", "WildcardRedirectUri", High,
        "A client accepts any redirect URI",
        "A redirect URI of `*` or a wildcard host lets an attacker receive authorization codes. List the exact production URIs.");
    REALM_NO_PKCE = ("AIBOX-REALM-006", "PkceNotRequired", Medium,
        "A browser-flow client does not require PKCE S256",
        "Without PKCE an intercepted authorization code can be redeemed (seed 000 §4). Set attributes.\"pkce.code.challenge.method\": \"S256\".");
    REALM_IMPLICIT = ("AIBOX-REALM-007", "ImplicitFlowEnabled", High,
        "A client allows the implicit flow",
        "The implicit flow returns tokens in the URL fragment, where browser history and referrers leak them. Set implicitFlowEnabled: false and use authorization code with PKCE.");
    REALM_LITERAL_SECRET = ("AIBOX-REALM-008", "ClientSecretInRealmFile", High,
        "A client secret is written in the realm file",
        "Realm exports are committed; write `\"secret\": \"${SERVICE_<NAME>_CLIENT_SECRET}\"` (Keycloak substitutes environment variables at import) and keep the value in the env file.");
    REALM_UNSET_VARIABLE = ("AIBOX-REALM-009", "RealmVariableNotSet", Medium,
        "The realm file uses a variable the env file does not set",
        "Keycloak substitutes ${VAR} at import; an unset variable is imported literally (a broken redirect URI or a guessable secret). Set it in the env file and pass it to the Keycloak container.");
    REALM_HTTP_REDIRECT = ("AIBOX-REALM-010", "HttpRedirectUri", Medium,
        "A client accepts a plain-http redirect URI",
        "Authorization codes sent to an http URI cross the network in clear. Use https redirect URIs.");
    PORT_INTERNAL = ("AIBOX-PORT-001", "InternalServicePortPublished", High,
        "An internal service publishes a port",
        "Internal services (agent-runtime, guardrail, memory, inference-router, knowledge, sandbox, observability, audit, Qdrant, MinIO, Redis, PostgreSQL, Ollama) must not be reachable from outside the backend network (seed 000 §5). Remove the ports: mapping; use `expose:` or nothing.");
    PORT_OPS = ("AIBOX-PORT-002", "OpsPortPublished", High,
        "The ops port is published",
        "The ops listener (port 9000) serves health, metrics and administrative endpoints and must never be exposed (seed 004 §3). Remove the mapping; reach it with `docker compose exec` or an SSH tunnel.");
    PORT_ALL_INTERFACES = ("AIBOX-PORT-003", "PortPublishedOnAllInterfaces", Medium,
        "A port is published on all interfaces",
        "A mapping without a host address binds 0.0.0.0, on every interface of the host. Publish only the gateway, the frontend and the identity provider, and bind other ports to 127.0.0.1 (`127.0.0.1:HOST:CONTAINER`).");
    NET_BACKEND_NOT_INTERNAL = ("AIBOX-NET-001", "BackendNetworkNotInternal", High,
        "The backend network is not internal",
        "An `internal: true` network has no route out, so a compromised data store or model server cannot exfiltrate or reach the internet (seed 004 §2). Set `internal: true` on the backend network and attach internal services only to it.");
    NET_INTERNAL_SERVICE_EXPOSED = ("AIBOX-NET-002", "InternalServiceOnExternalNetwork", Medium,
        "An internal service is attached to a non-internal network",
        "The service can reach the internet and be reached from the frontend network. Attach it only to the internal backend network.");
    HARDEN_CAP_DROP = ("AIBOX-HARDEN-001", "CapabilitiesNotDropped", High,
        "A service does not drop all capabilities",
        "Set `cap_drop: [ALL]` and add back only what the service needs with cap_add (seed 004 §8).");
    HARDEN_READ_ONLY = ("AIBOX-HARDEN-002", "RootFilesystemWritable", Medium,
        "A service's root filesystem is writable",
        "Set `read_only: true` and give the paths the service writes a volume or a tmpfs (seed 004 §8).");
    HARDEN_NO_NEW_PRIVS = ("AIBOX-HARDEN-003", "NoNewPrivilegesNotSet", High,
        "A service may gain privileges (no-new-privileges not set)",
        "Set `security_opt: [\"no-new-privileges:true\"]` so setuid binaries cannot raise privileges (seed 004 §8).");
    HARDEN_ROOT_USER = ("AIBOX-HARDEN-004", "RunsAsRoot", High,
        "A service runs as root or does not name a non-root user",
        "Set `user: \"UID:GID\"` to a non-root user and make its volumes writable by that user (seed 004 §7).");
    HARDEN_PRIVILEGED = ("AIBOX-HARDEN-005", "PrivilegedContainer", High,
        "A service is privileged, shares a host namespace or mounts the Docker socket",
        "privileged: true, cap_add ALL/SYS_ADMIN, network_mode/pid/ipc: host and a mounted docker.sock each give the container control of the host. Remove them.");
    IMAGE_NOT_PINNED = ("AIBOX-IMAGE-001", "ImageNotPinnedByDigest", Medium,
        "An image is not pinned by digest",
        "A tag can be moved to different content; `image@sha256:...` cannot (seed 004 §9). Resolve the digest with `docker buildx imagetools inspect IMAGE:TAG` and pin it.");
    DANGER_FLAG = ("AIBOX-DANGER-001", "SafetySwitchOff", High,
        "A safety switch is turned off",
        "A `--danger-*` flag or an `*ALLOW*`/`*DANGER*` switch disables a protection (for example unauthenticated public binds). Remove it outside isolated test networks.");
    KEYRING_MISMATCH = ("AIBOX-KEYRING-001", "KeyringsDiffer", High,
        "Principal or CapToken keyrings differ between services",
        "Every service that verifies X-Aibox-Principal or CapTokens needs the signer's current key id with the same key (seed 000 troubleshooting). Give every service the same AIBOX_PRINCIPAL_KEYS and AIBOX_CAPTOKEN_KEYS, e.g. `${AIBOX_PRINCIPAL_KEYS}` from one env file.");
    COMPOSE_UNSET_VARIABLE = ("AIBOX-COMPOSE-001", "ComposeVariableNotSet", Medium,
        "The compose file uses a variable the env file does not set",
        "Compose substitutes an empty string for an unset variable without a default. Set it in the env file, or give a default with ${VAR:-value}.");
    DASHBOARD_AUTH_UNSET = ("AIBOX-DASH-001", "DashboardAuthUnset", High,
        "Dashboard authentication is not set",
        "With DASHBOARD_AUTH_TOKEN and DASHBOARD_PASSWORD both empty the dashboard has no authentication (seed 004 §4). Set DASHBOARD_AUTH_TOKEN (`openssl rand -hex 32`, or `aibox bootstrap`).");
    OPS_TOKEN_UNSET = ("AIBOX-OPS-001", "OpsTokenUnset", High,
        "The ops controller token is not set",
        "OPS_CONTROLLER_TOKEN authenticates calls to the ops controller (seed 004 §5). Set it (`aibox bootstrap` writes one) and restart the services that use it.");
    DATA_PLAINTEXT_TOKEN = ("AIBOX-DATA-001", "PlaintextTokenInDataJson", High,
        "A JSON file under the data directory holds a plaintext secret",
        "Files under data/ end up in backups (seed 004 §11). Keep credentials in the vault or the env file and reference them (MCP servers: `secrets: {VAR: vault-name}`); rotate the exposed secret.");
    MCP_FILESYSTEM_ROOT = ("AIBOX-MCP-001", "FilesystemServerOnRootOrHome", High,
        "The filesystem MCP server is enabled on / or a home directory",
        "Tools would read and write every file of the host or the user, including keys and .env files (seed 004 §10). Set FILESYSTEM_ROOT to one project directory, or remove `filesystem` from data/mcp/servers.txt.");
    AUDIT_KEY_REPLACED = ("AIBOX-AUDIT-001", "AuditKeyNotRegistered", Medium,
        "AUDIT_SIGNING_KEY is not a version the audit log has recorded",
        "The audit log registers a new key version when aibox starts with a new key; records signed earlier keep verifying with the public keys it recorded. A key that differs from every recorded version means it was replaced since aibox last started: restart aibox if it was a rotation (`aibox keys rotate audit`), or restore the previous value if the env file was regenerated by accident (seed 000 §1, §8).");
    AUDIT_VERSION_WITHOUT_KEYS = ("AIBOX-AUDIT-002", "AuditVersionWithoutVerifierKeys", High,
        "Audit records are signed by a key version whose verifier keys are not recorded",
        "Those envelopes and checkpoints cannot be verified any more (seed 000 §8). Restore the database from a backup taken before the loss, then run `aibox audit verify` for every tenant.");
    GUARD_INVALID = ("AIBOX-GUARD-001", "ConstitutionInvalid", High,
        "The guardrail constitution does not parse",
        "The guardrail refuses an invalid constitution. Fix the YAML in deploy/config/guardrail/constitution.yaml (seed 000 §7).");
    GUARD_DISABLED = ("AIBOX-GUARD-002", "GuardrailDisabledOrMissing", Medium,
        "The guardrail constitution is missing or disabled",
        "Review deploy/config/guardrail/constitution.yaml, keep `enabled: true` and add your organisation's principles and blocked topics (seed 000 §7).");
    SYSTEMD_WEAK = ("AIBOX-SYSTEMD-001", "SystemdUnitNotHardened", Medium,
        "The systemd unit lacks hardening directives",
        "Run aibox as a dedicated user with NoNewPrivileges=yes, ProtectSystem=strict, PrivateTmp=yes and an empty CapabilityBoundingSet= (see deploy/systemd/aibox.service).");
    SANDBOX_SUPPORT = ("AIBOX-SANDBOX-001", "SandboxHostSupport", Info,
        "The sandbox protections this host supports",
        "Sandboxed MCP servers (a `sandbox` profile in data/mcp/registry.json) get every protection listed here; run `aibox doctor --sandbox` on the host that runs aibox.");
    SANDBOX_MISSING = ("AIBOX-SANDBOX-002", "SandboxProtectionUnavailable", Medium,
        "A sandbox protection is not available on this host",
        "Servers in `require` mode will refuse to start and `best_effort` ones run without it. Enable it: Landlock needs CONFIG_SECURITY_LANDLOCK and `landlock` in the kernel's lsm= list; network namespaces need root or unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0); seccomp needs CONFIG_SECCOMP_FILTER.");
    DOCTOR_SKIPPED = ("AIBOX-DOCTOR-001", "InputNotFound", Info,
        "An input was not found; its checks were skipped",
        "Point the doctor at the file (--env-file, --config, --compose, --realm, --data-dir, --deploy-dir) to check it.");
    DOCTOR_OFFLINE = ("AIBOX-DOCTOR-002", "OnlineChecksNotRun", Info,
        "Live endpoints were not probed",
        "Run with --online to compare the issuer with the provider's discovery document.");
}

/// Where a finding points: a file and, where known, a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as the operator named it (or derived from what they named).
    pub file: PathBuf,
    /// The 1-based line.
    pub line: Option<usize>,
}

impl Location {
    /// A location in `file` at `line`.
    pub fn new(file: &Path, line: Option<usize>) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// One failed check. The evidence describes values (length, shape,
/// "is a placeholder") and never contains a secret.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The rule.
    pub rule: &'static Rule,
    /// What was found, in one or two sentences.
    pub evidence: String,
    /// Where.
    pub location: Option<Location>,
    /// What to change: the key, the variable or the command.
    pub fix: String,
}

impl Finding {
    /// A finding of `rule`.
    pub fn new(
        rule: &'static Rule,
        location: Option<Location>,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            rule,
            evidence: evidence.into(),
            location,
            fix: fix.into(),
        }
    }

    /// The rule's severity.
    pub fn severity(&self) -> Severity {
        self.rule.severity
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL_RULES {
            assert!(seen.insert(r.id), "duplicate id {}", r.id);
            assert!(r.id.starts_with("AIBOX-"), "{}", r.id);
            let num = r.id.rsplit('-').next().unwrap();
            assert!(
                num.len() == 3 && num.bytes().all(|b| b.is_ascii_digit()),
                "{}",
                r.id
            );
            assert!(!r.title.is_empty() && !r.help.is_empty());
            assert!(
                r.name.chars().all(|c| c.is_ascii_alphanumeric()),
                "{}",
                r.name
            );
        }
        assert!(ALL_RULES.len() >= 40);
    }

    #[test]
    fn severities_order_and_map_to_sarif() {
        assert!(Severity::High < Severity::Medium && Severity::Low < Severity::Info);
        assert_eq!(Severity::High.sarif_level(), "error");
        assert_eq!(Severity::Medium.sarif_level(), "warning");
        assert_eq!(Severity::Info.sarif_level(), "note");
    }
}
