//! Credentials: a rule set of our own for cloud provider keys, git hosting
//! tokens, chat and payment provider tokens, LLM provider API keys, PEM
//! private keys, JWTs, database URLs with passwords and generic
//! `password = "..."` / `api_key: ...` assignments.
//!
//! Every rule has a *trigger*: either a case-sensitive literal prefix that
//! the format always starts with (`ghp_`, `AKIA`, `sk-ant-`, `-----BEGIN`)
//! or a keyword found case-insensitively in the folded text (`password`,
//! `aws_secret_access_key`, `discord`). One keyword-index pass over the text
//! finds all prefix triggers at once (keywords come from the engine's single
//! pass over the folded text); only at a trigger does the rule's regex run,
//! on a small window. No rule runs over the whole text.
//!
//! A candidate must then pass: word boundaries around fixed-length formats,
//! a Shannon entropy threshold where the format is loose (the value of a
//! generic assignment, a 40-character AWS secret), and a placeholder check
//! (`changeme`, `<YOUR_API_KEY>`, `xxxx`, `${VAR}`, values containing
//! `EXAMPLE` such as AWS's documented `AKIAIOSFODNN7EXAMPLE`). Documentation
//! markers are deliberately *not* reported: a real key never ends in
//! `EXAMPLE`, and flagging every README that shows the format would teach
//! users to ignore the scanner.
//!
//! Found keys are never verified against their provider: verification is a
//! network call carrying the secret to a third party, which is exactly the
//! leak this scanner exists to stop.

use aibox_core::audit::GuardAction;
use regex::bytes::{Regex, RegexBuilder};

use crate::finding::{Finding, Scanner};
use crate::kwindex::KeywordIndex;
use crate::normalize;

/// How a rule is triggered.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Case-sensitive literals in the original text.
    Prefix(&'static [&'static str]),
    /// Lower-case keywords in the folded text.
    Keyword(&'static [&'static str]),
}

/// One credential format.
#[derive(Debug, Clone, Copy)]
pub struct RuleDef {
    /// Rule name in findings, audit records and client errors.
    pub name: &'static str,
    trigger: Trigger,
    /// The regex, matched from the trigger (or from up to `back` bytes
    /// before it); capture group 1, when present and matched, is the secret
    /// (else the whole match), and only the secret is redacted.
    pattern: &'static str,
    /// Bytes before the trigger where a match may start.
    back: usize,
    /// Bytes after the trigger searched.
    window: usize,
    /// Minimum Shannon entropy (bits per byte) of the secret.
    min_entropy: f32,
    /// The byte after the match must not be a letter or digit.
    bounded: bool,
    /// For assignments: the pattern ends where the value starts and the
    /// value is read here (no capture groups: a regex that must resolve
    /// captures over a `{16,256}` class is a hundred times slower).
    value: Option<ValueSpec>,
}

/// How to read the value of an assignment.
#[derive(Debug, Clone, Copy)]
struct ValueSpec {
    /// Shortest quoted value.
    quoted_min: usize,
    /// Shortest bare value.
    bare_min: usize,
    /// Longest value.
    max: usize,
}

const fn pre(
    name: &'static str,
    prefixes: &'static [&'static str],
    pattern: &'static str,
    window: usize,
    min_entropy: f32,
) -> RuleDef {
    RuleDef {
        name,
        trigger: Trigger::Prefix(prefixes),
        pattern,
        back: 0,
        window,
        min_entropy,
        bounded: true,
        value: None,
    }
}

const fn kw(
    name: &'static str,
    keywords: &'static [&'static str],
    pattern: &'static str,
    window: usize,
    min_entropy: f32,
) -> RuleDef {
    RuleDef {
        name,
        trigger: Trigger::Keyword(keywords),
        pattern,
        back: 0,
        window,
        min_entropy,
        bounded: true,
        value: None,
    }
}

const fn with_value(mut r: RuleDef, quoted_min: usize, bare_min: usize, max: usize) -> RuleDef {
    r.value = Some(ValueSpec {
        quoted_min,
        bare_min,
        max,
    });
    r.bounded = false;
    r
}

const fn unbounded(mut r: RuleDef) -> RuleDef {
    r.bounded = false;
    r
}

const fn back(mut r: RuleDef, bytes: usize) -> RuleDef {
    r.back = bytes;
    r
}

/// The value part of a `key = value` assignment after a keyword: optional
/// suffix characters of the identifier, a closing quote, an operator, then
/// a quoted (group 1) or bare (group 2) value.
macro_rules! assign {
    ($key:literal, $value:literal) => {
        concat!(
            "(?i:",
            $key,
            r#")[a-z0-9_.-]{0,24}["']?\s{0,4}(?::=|=>|=|:)\s{0,4}["']?"#,
            $value
        )
    };
}

/// The key and operator of an assignment, up to the value's opening quote;
/// the value itself is read by [`ValueSpec`].
macro_rules! assign_key {
    ($key:literal) => {
        concat!(
            "(?i:",
            $key,
            r#")[A-Za-z0-9_.-]{0,24}["']?[ \t]{0,4}(?::=|=>|=|:)[ \t]{0,4}["'`]?"#
        )
    };
}

/// Every rule, in trigger order: rules sharing a trigger are tried in this
/// order and the first that verifies wins (most specific first).
pub const RULES: &[RuleDef] = &[
    // --- Cloud providers -------------------------------------------------
    pre(
        "aws_access_key_id",
        &["AKIA", "ASIA", "ABIA", "ACCA"],
        r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}",
        24,
        2.8,
    ),
    kw(
        "aws_secret_access_key",
        &[
            "aws_secret_access_key",
            "aws_secret_key",
            "secretaccesskey",
            "aws secret access key",
        ],
        assign!(
            r"aws_?secret(?:_?access)?_?key|secretaccesskey|aws secret access key",
            r"([A-Za-z0-9/+]{40})"
        ),
        120,
        4.0,
    ),
    kw(
        "aws_session_token",
        &["aws_session_token", "sessiontoken"],
        assign!(r"aws_session_token|sessiontoken", r"([A-Za-z0-9/+=]{100,})"),
        1300,
        4.0,
    ),
    pre("gcp_api_key", &["AIza"], r"AIza[0-9A-Za-z_-]{35}", 48, 3.5),
    kw(
        "gcp_service_account_key",
        &["\"private_key_id\""],
        r#"(?i:"private_key_id")\s*:\s*"([a-f0-9]{40})""#,
        80,
        3.0,
    ),
    pre(
        "google_oauth_client_secret",
        &["GOCSPX-"],
        r"GOCSPX-[A-Za-z0-9_-]{28}",
        40,
        3.5,
    ),
    pre(
        "google_oauth_access_token",
        &["ya29."],
        r"ya29\.[0-9A-Za-z_-]{30,}",
        520,
        3.5,
    ),
    kw(
        "azure_storage_account_key",
        &["accountkey="],
        r"(?i:accountkey)=([A-Za-z0-9+/]{86}==)",
        110,
        4.0,
    ),
    kw(
        "azure_sas_token",
        &["sv=20"],
        r"sv=20\d\d-\d\d-\d\d&[^\s]{0,300}?sig=([A-Za-z0-9%+/]{30,}(?:%3D|=){0,2})",
        420,
        3.5,
    ),
    // The `Q~` marker sits inside the word, so the trigger is the `~`.
    back(
        pre(
            "azure_ad_client_secret",
            &["~"],
            r"[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}",
            40,
            3.5,
        ),
        5,
    ),
    kw(
        "azure_openai_api_key",
        &[
            "azure_openai_api_key",
            "azure_openai_key",
            "ocp-apim-subscription-key",
            "azure_api_key",
            "azure_cognitive",
        ],
        assign!(
            r"azure_openai_api_key|azure_openai_key|ocp-apim-subscription-key|azure_api_key|azure_cognitive[a-z_]*",
            r"([a-f0-9]{32}|[A-Za-z0-9]{84})"
        ),
        160,
        3.2,
    ),
    pre(
        "alibaba_access_key_id",
        &["LTAI"],
        r"LTAI[A-Za-z0-9]{12,20}",
        28,
        3.2,
    ),
    pre(
        "digitalocean_token",
        &["dop_v1_", "doo_v1_", "dor_v1_"],
        r"do[opr]_v1_[a-f0-9]{64}",
        80,
        3.0,
    ),
    pre(
        "heroku_api_key",
        &["HRKU-"],
        r"HRKU-[A-Za-z0-9_-]{58,64}",
        80,
        3.5,
    ),
    kw(
        "heroku_api_key_legacy",
        &["heroku"],
        r#"(?is:heroku.{0,40}?(?:api_?key|token))["']?\s{0,4}[:=]\s{0,4}["']?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"#,
        140,
        3.0,
    ),
    kw(
        "cloudflare_api_token",
        &["cloudflare", "cf_api_token"],
        r#"(?is:(?:cloudflare|cf_api_token).{0,40}?(?:api_?token|token|api_?key|key)?)["']?\s{0,4}[:=]\s{0,4}["']?([A-Za-z0-9_-]{40})"#,
        140,
        3.5,
    ),
    // --- Git hosting and CI ---------------------------------------------
    pre("github_pat", &["ghp_"], r"ghp_[A-Za-z0-9]{36}", 44, 3.5),
    pre(
        "github_oauth_token",
        &["gho_"],
        r"gho_[A-Za-z0-9]{36}",
        44,
        3.5,
    ),
    pre(
        "github_app_token",
        &["ghu_", "ghs_"],
        r"gh[us]_[A-Za-z0-9]{36}",
        44,
        3.5,
    ),
    pre(
        "github_refresh_token",
        &["ghr_"],
        r"ghr_[A-Za-z0-9]{36,76}",
        84,
        3.5,
    ),
    pre(
        "github_fine_grained_pat",
        &["github_pat_"],
        r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}",
        100,
        3.5,
    ),
    pre(
        "gitlab_pat",
        &["glpat-"],
        r"glpat-[A-Za-z0-9_.-]{20,}",
        310,
        3.3,
    ),
    pre(
        "gitlab_deploy_token",
        &["gldt-"],
        r"gldt-[A-Za-z0-9_-]{20,}",
        80,
        3.3,
    ),
    pre(
        "gitlab_runner_token",
        &["glrt-"],
        r"glrt-[A-Za-z0-9_.-]{20,}",
        80,
        3.3,
    ),
    pre(
        "gitlab_pipeline_trigger_token",
        &["glptt-"],
        r"glptt-[0-9a-f]{40}",
        50,
        3.0,
    ),
    pre(
        "bitbucket_app_password",
        &["ATBB"],
        r"ATBB[A-Za-z0-9_=.-]{32}",
        40,
        3.5,
    ),
    pre(
        "atlassian_api_token",
        // The trigger stops before the digit: prefixes are found in the
        // folded text, where leetspeak may have rewritten digits in a word.
        &["ATATT"],
        r"ATATT3[A-Za-z0-9_=-]{150,250}",
        260,
        4.0,
    ),
    pre("npm_token", &["npm_"], r"npm_[A-Za-z0-9]{36}", 44, 3.5),
    pre(
        "pypi_token",
        &["pypi-AgEIcHlwa"],
        r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
        330,
        3.5,
    ),
    pre(
        "dockerhub_pat",
        &["dckr_pat_"],
        r"dckr_pat_[A-Za-z0-9_-]{27}",
        40,
        3.5,
    ),
    pre(
        "hashicorp_vault_token",
        &["hvs.", "hvb."],
        r"hv[sb]\.[A-Za-z0-9_-]{24,}",
        310,
        3.5,
    ),
    back(
        pre(
            "terraform_cloud_token",
            &[".atlasv1."],
            r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}",
            80,
            3.5,
        ),
        14,
    ),
    pre(
        "doppler_token",
        &["dp.pt.", "dp.st.", "dp.sa.", "dp.ct."],
        r"dp\.(?:pt|st|sa|ct)\.[A-Za-z0-9]{40,44}",
        56,
        3.5,
    ),
    pre(
        "databricks_token",
        &["dapi"],
        r"dapi[a-f0-9]{32}(?:-[0-9])?",
        40,
        3.0,
    ),
    pre(
        "postman_api_key",
        &["PMAK-"],
        r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}",
        70,
        3.0,
    ),
    pre(
        "grafana_token",
        &["glc_", "glsa_"],
        r"(?:glc_[A-Za-z0-9+/]{32,}={0,2}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})",
        410,
        3.5,
    ),
    pre(
        "sentry_token",
        &["sntrys_", "sntryu_"],
        r"(?:sntrys_eyJ[A-Za-z0-9+/=_-]{60,}|sntryu_[a-f0-9]{64})",
        410,
        3.5,
    ),
    pre(
        "new_relic_api_key",
        &["NRAK-"],
        r"NRAK-[A-Z0-9]{27}",
        36,
        3.0,
    ),
    pre(
        "tailscale_key",
        &["tskey-"],
        r"tskey-(?:api|auth|client)-[A-Za-z0-9]{10,20}-[A-Za-z0-9]{20,40}",
        80,
        3.5,
    ),
    pre("supabase_token", &["sbp_"], r"sbp_[a-f0-9]{40}", 48, 3.0),
    pre("flyio_token", &["fo1_"], r"fo1_[A-Za-z0-9_-]{43}", 50, 3.5),
    pre(
        "planetscale_token",
        &["pscale_tkn_", "pscale_pw_", "pscale_oauth_"],
        r"pscale_(?:tkn|pw|oauth)_[A-Za-z0-9_.-]{32,64}",
        80,
        3.5,
    ),
    pre(
        "linear_api_key",
        &["lin_api_"],
        r"lin_api_[A-Za-z0-9]{40}",
        50,
        3.5,
    ),
    pre(
        "notion_token",
        &["ntn_", "secret_"],
        r"(?:ntn_[0-9]{11}[A-Za-z0-9]{35}|secret_[A-Za-z0-9]{43})",
        56,
        3.5,
    ),
    pre(
        "figma_token",
        &["figd_"],
        r"figd_[A-Za-z0-9_-]{40}",
        50,
        3.5,
    ),
    pre(
        "age_secret_key",
        &["AGE-SECRET-KEY-1"],
        r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
        80,
        3.0,
    ),
    pre(
        "onepassword_service_token",
        &["ops_eyJ"],
        r"ops_eyJ[A-Za-z0-9+/=_-]{100,}",
        1210,
        4.0,
    ),
    kw(
        "okta_api_token",
        &["okta"],
        r#"(?is:okta.{0,40}?(?:api_?token|token|ssws))["']?\s{0,4}[:=]?\s{0,4}["']?(00[A-Za-z0-9_-]{40})"#,
        140,
        3.5,
    ),
    // --- Chat, mail and payments -----------------------------------------
    pre(
        "slack_bot_token",
        &["xoxb-"],
        r"xoxb-[0-9]{10,13}-[0-9]{10,13}-[A-Za-z0-9]{24,34}",
        80,
        3.0,
    ),
    pre(
        "slack_user_token",
        &["xoxp-", "xoxa-", "xoxs-"],
        r"xox[pas]-(?:[0-9]{10,13}-){2,3}[A-Za-z0-9]{28,34}",
        100,
        3.0,
    ),
    pre(
        "slack_app_token",
        &["xapp-"],
        r"xapp-[0-9]-[A-Z0-9]{9,11}-[0-9]{10,13}-[a-z0-9]{64}",
        110,
        3.0,
    ),
    pre(
        "slack_webhook_url",
        &["hooks.slack.com/"],
        r"hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Z0-9]{8,12}/[A-Z0-9]{8,12}/[A-Za-z0-9]{20,32}",
        120,
        3.0,
    ),
    kw(
        "discord_bot_token",
        &["discord"],
        r"(?is:discord).{0,60}?([MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,40})",
        160,
        3.5,
    ),
    pre(
        "discord_webhook_url",
        &["discord.com/api/webhooks/", "discordapp.com/api/webhooks/"],
        r"discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_-]{60,70}",
        120,
        3.5,
    ),
    kw(
        "telegram_bot_token",
        &["telegram"],
        r"(?is:telegram).{0,80}?([0-9]{8,10}:AA[A-Za-z0-9_-]{33})",
        150,
        3.5,
    ),
    pre(
        "stripe_secret_key",
        &["sk_live_"],
        r"sk_live_[A-Za-z0-9]{24,99}",
        110,
        3.5,
    ),
    pre(
        "stripe_test_key",
        &["sk_test_"],
        r"sk_test_[A-Za-z0-9]{24,99}",
        110,
        3.5,
    ),
    pre(
        "stripe_restricted_key",
        &["rk_live_", "rk_test_"],
        r"rk_(?:live|test)_[A-Za-z0-9]{24,99}",
        110,
        3.5,
    ),
    pre(
        "stripe_webhook_secret",
        &["whsec_"],
        r"whsec_[A-Za-z0-9]{32,64}",
        72,
        3.5,
    ),
    pre(
        "square_token",
        &["sq0atp-", "sq0csp-"],
        r"sq0(?:atp|csp)-[0-9A-Za-z_-]{22,43}",
        52,
        3.5,
    ),
    pre("twilio_api_key", &["SK"], r"SK[0-9a-f]{32}", 36, 3.0),
    kw(
        "twilio_auth_token",
        &["twilio"],
        r#"(?is:twilio.{0,40}?(?:auth_?token|token))["']?\s{0,4}[:=]\s{0,4}["']?([a-f0-9]{32})"#,
        120,
        3.0,
    ),
    pre(
        "sendgrid_api_key",
        &["SG."],
        r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
        72,
        3.5,
    ),
    pre("mailgun_api_key", &["key-"], r"key-[0-9a-f]{32}", 40, 3.0),
    kw(
        "mailchimp_api_key",
        &["mailchimp"],
        r"(?is:mailchimp).{0,60}?([0-9a-f]{32}-us[0-9]{1,2})",
        110,
        3.0,
    ),
    pre(
        "shopify_token",
        &["shpat_", "shpca_", "shppa_", "shpss_"],
        r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
        40,
        3.0,
    ),
    // --- LLM providers ---------------------------------------------------
    pre(
        "anthropic_api_key",
        &["sk-ant-"],
        r"sk-ant-(?:api03|admin01)-[A-Za-z0-9_-]{80,100}",
        120,
        4.0,
    ),
    pre(
        "openai_project_key",
        &["sk-proj-", "sk-svcacct-", "sk-admin-"],
        r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}",
        220,
        4.0,
    ),
    pre(
        "openai_api_key",
        &["sk-"],
        r"sk-(?:[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}|[A-Za-z0-9]{48})",
        60,
        4.0,
    ),
    pre("deepseek_api_key", &["sk-"], r"sk-[a-f0-9]{32}", 40, 3.0),
    pre(
        "huggingface_token",
        &["hf_", "api_org_"],
        r"(?:hf_|api_org_)[A-Za-z]{34}",
        44,
        3.5,
    ),
    kw(
        "cohere_api_key",
        &["cohere", "co_api_key"],
        r#"(?is:(?:cohere|co_api_key).{0,40}?(?:api_?key|key|token)?)["']?\s{0,4}[:=]\s{0,4}["']?([A-Za-z0-9]{40})"#,
        140,
        3.8,
    ),
    pre("groq_api_key", &["gsk_"], r"gsk_[A-Za-z0-9]{52}", 60, 4.0),
    pre(
        "replicate_api_token",
        &["r8_"],
        r"r8_[A-Za-z0-9]{37}",
        44,
        3.5,
    ),
    kw(
        "mistral_api_key",
        &["mistral"],
        r#"(?is:mistral.{0,40}?(?:api_?key|key|token))["']?\s{0,4}[:=]\s{0,4}["']?([A-Za-z0-9]{32})"#,
        120,
        3.8,
    ),
    pre(
        "perplexity_api_key",
        &["pplx-"],
        r"pplx-[A-Za-z0-9]{48}",
        56,
        4.0,
    ),
    pre("xai_api_key", &["xai-"], r"xai-[A-Za-z0-9]{80}", 90, 4.0),
    // --- Keys, tokens and URLs -------------------------------------------
    unbounded(pre(
        "private_key_rsa",
        &["-----BEGIN RSA PRIVATE KEY-----"],
        r"-----BEGIN RSA PRIVATE KEY-----(?:[A-Za-z0-9+/=\s\\:,.]|-[A-Za-z]){64,}(?:-----END RSA PRIVATE KEY-----)?",
        16384,
        4.0,
    )),
    unbounded(pre(
        "private_key_ec",
        &["-----BEGIN EC PRIVATE KEY-----"],
        r"-----BEGIN EC PRIVATE KEY-----(?:[A-Za-z0-9+/=\s\\:,.]|-[A-Za-z]){64,}(?:-----END EC PRIVATE KEY-----)?",
        16384,
        4.0,
    )),
    unbounded(pre(
        "private_key_dsa",
        &["-----BEGIN DSA PRIVATE KEY-----"],
        r"-----BEGIN DSA PRIVATE KEY-----(?:[A-Za-z0-9+/=\s\\:,.]|-[A-Za-z]){64,}(?:-----END DSA PRIVATE KEY-----)?",
        16384,
        4.0,
    )),
    unbounded(pre(
        "private_key_openssh",
        &["-----BEGIN OPENSSH PRIVATE KEY-----"],
        r"-----BEGIN OPENSSH PRIVATE KEY-----(?:[A-Za-z0-9+/=\s\\:,.]|-[A-Za-z]){64,}(?:-----END OPENSSH PRIVATE KEY-----)?",
        16384,
        4.0,
    )),
    unbounded(pre(
        "private_key_pkcs8",
        &[
            "-----BEGIN PRIVATE KEY-----",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        ],
        r"-----BEGIN (?:ENCRYPTED )?PRIVATE KEY-----(?:[A-Za-z0-9+/=\s\\:,.]|-[A-Za-z]){64,}(?:-----END (?:ENCRYPTED )?PRIVATE KEY-----)?",
        16384,
        4.0,
    )),
    unbounded(pre(
        "private_key_pgp",
        &["-----BEGIN PGP PRIVATE KEY BLOCK-----"],
        r"-----BEGIN PGP PRIVATE KEY BLOCK-----(?:[A-Za-z0-9+/=\s\\:,.()]|-[A-Za-z]){64,}(?:-----END PGP PRIVATE KEY BLOCK-----)?",
        32768,
        4.0,
    )),
    unbounded(pre(
        "jwt",
        &["eyJ"],
        r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}",
        11000,
        3.5,
    )),
    unbounded(back(
        pre(
            "database_url_password",
            &["://"],
            r#"(?i:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|rediss|amqps?|mssql|sqlserver|clickhouse|cockroachdb|jdbc:[a-z]+)://[^\s:/@"'<>]{1,64}:([^\s@/"'<>]{3,128})@[^\s/"'<>]{1,253}"#,
            450,
            2.0,
        ),
        48,
    )),
    with_value(
        kw(
            "password_assignment",
            &["password", "passwd", "passphrase", "pwd"],
            assign_key!(r"password|passwd|passphrase|pwd"),
            200,
            2.5,
        ),
        6,
        8,
        128,
    ),
    with_value(
        kw(
            "generic_secret_assignment",
            &[
                "secret",
                "token",
                "api_key",
                "apikey",
                "api-key",
                "access_key",
                "accesskey",
                "auth_key",
                "private_key",
                "credential",
            ],
            assign_key!(
                r"client[_-]?secret|secret[_-]?key|secret|access[_-]?token|auth[_-]?token|token|api[_-]?key|apikey|access[_-]?key|accesskey|auth[_-]?key|private[_-]?key|credentials?"
            ),
            360,
            3.5,
        ),
        16,
        16,
        256,
    ),
];

/// Reads an assignment's value starting at `at` (just after the opening
/// quote, if any); returns its span within `w`.
fn read_value(w: &[u8], at: usize, spec: ValueSpec) -> Option<(usize, usize)> {
    let quote = at
        .checked_sub(1)
        .map(|p| w[p])
        .filter(|q| matches!(q, b'"' | b'\'' | b'`'));
    let limit = (at + spec.max + 1).min(w.len());
    match quote {
        Some(q) => {
            let len = w[at..limit]
                .iter()
                .position(|&c| c == q || c.is_ascii_whitespace())?;
            (w[at + len] == q && len >= spec.quoted_min).then_some((at, at + len))
        }
        None => {
            let len = w[at..limit]
                .iter()
                .position(|&c| {
                    c.is_ascii_whitespace()
                        || matches!(
                            c,
                            b'"' | b'\''
                                | b'`'
                                | b','
                                | b';'
                                | b'('
                                | b')'
                                | b'{'
                                | b'}'
                                | b'['
                                | b']'
                                | b'<'
                                | b'>'
                        )
                })
                .unwrap_or(limit - at);
            (len >= spec.bare_min && len <= spec.max).then_some((at, at + len))
        }
    }
}

/// Shannon entropy of `s` in bits per byte.
pub fn shannon_entropy(s: &str) -> f32 {
    let b = s.as_bytes();
    if b.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &c in b {
        counts[c as usize] += 1;
    }
    let n = b.len() as f32;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f32 / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether a value is a documentation placeholder, a variable reference or
/// otherwise obviously not a real credential.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim_matches(|c: char| matches!(c, '"' | '\'' | '`'));
    if v.is_empty() {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    // Whole values that are the names of the thing, not the thing.
    const WHOLE: &[&str] = &[
        "password", "passwd", "pass", "secret", "token", "user", "admin", "root", "postgres",
        "mysql", "redis", "guest", "test", "pwd", "apikey", "api_key", "none", "null",
    ];
    if WHOLE.contains(&lower.as_str()) {
        return true;
    }
    // Long values (PEM bodies, JWTs) only get the structural markers: a
    // random body contains short words like `todo` by chance.
    if v.len() > 100 {
        const LONG: &[&str] = &["example", "....", "…", "<", ">", "${", "{{"];
        return LONG.iter().any(|m| lower.contains(m)) || v.contains("xxxxxxxx");
    }
    const MARKERS: &[&str] = &[
        "example",
        "changeme",
        "change_me",
        "change-me",
        "placeholder",
        "your_",
        "your-",
        "yourkey",
        "yourtoken",
        "yoursecret",
        "yourpassword",
        "xxxx",
        "****",
        "....",
        "…",
        "<",
        ">",
        "${",
        "{{",
        "}}",
        "%(",
        "dummy",
        "redacted",
        "insert_",
        "insert-",
        "replace_",
        "replace-",
        "replaceme",
        "todo",
        "fixme",
        "notreal",
        "not_real",
        "not-real",
        "fake",
        "sample",
        "_here",
        "-here",
        "secret123",
        "password1",
        "hunter2_",
        "abc123",
        "123456",
        "qwerty",
        "letmein",
        "foobar",
    ];
    if MARKERS.iter().any(|m| lower.contains(m)) {
        return true;
    }
    // Variable references and expressions.
    if v.starts_with(['$', '%', '@', '&', '*']) || lower.starts_with("env.") {
        return true;
    }
    let b = v.as_bytes();
    // One character repeated, or three distinct characters at most.
    let mut seen = [false; 256];
    let mut distinct = 0;
    for &c in b {
        if !seen[c as usize] {
            seen[c as usize] = true;
            distinct += 1;
        }
    }
    if distinct <= 3 {
        return true;
    }
    // Mostly an ascending run (`abcdefgh`, `12345678`).
    let asc = b
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1))
        .count();
    asc * 10 >= (b.len().saturating_sub(1)) * 7
}

/// Code-like values of generic assignments: identifiers and expressions
/// (`request.headers.get`, `settings.SECRET_KEY`, `None`), not secrets.
fn is_code_reference(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    if [
        "getenv",
        "environ",
        "process.",
        "os.",
        "secrets.",
        "config.",
        "settings.",
        "vault:",
        "env(",
        "env[",
        "null",
        "none",
        "true",
        "false",
        "undefined",
    ]
    .iter()
    .any(|m| lower.starts_with(m) || lower.contains(&format!(".{m}")))
    {
        return true;
    }
    let b = v.as_bytes();
    let upper = b.iter().any(u8::is_ascii_uppercase);
    let lower_c = b.iter().any(u8::is_ascii_lowercase);
    let digit = b.iter().any(u8::is_ascii_digit);
    let classes = usize::from(upper) + usize::from(lower_c) + usize::from(digit);
    // A dotted or snake-case identifier of one letter case, no digits.
    if !digit && (b.contains(&b'.') || b.contains(&b'_')) && !(upper && lower_c) {
        return true;
    }
    classes < 2
}

struct Compiled {
    def: &'static RuleDef,
    regex: Regex,
}

/// One trigger literal and the rules it starts.
#[derive(Debug, Clone)]
struct TriggerEntry {
    /// The literal as it appears in the folded text.
    folded: String,
    /// For a prefix: the exact, case-sensitive literal the original must
    /// hold at the trigger.
    exact: Option<&'static str>,
    /// The rules, in table order.
    rules: Vec<usize>,
}

/// The compiled secrets scanner.
pub struct SecretScanner {
    rules: Vec<Compiled>,
    /// Every trigger (prefixes and keywords), found in the folded text.
    triggers: Vec<TriggerEntry>,
    /// The triggers, for scanning without the engine.
    index: KeywordIndex,
}

impl std::fmt::Debug for SecretScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretScanner")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

/// A rule that does not compile (a bug in the table, caught by tests).
#[derive(Debug, thiserror::Error)]
#[error("secret rule `{rule}` does not compile: {reason}")]
pub struct RuleError {
    /// The rule.
    pub rule: &'static str,
    /// The regex error.
    pub reason: String,
}

/// A secret trigger found in a text.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    /// Index into [`SecretScanner::triggers`].
    pub trigger: usize,
    /// Original byte offset of the trigger.
    pub pos: usize,
}

impl SecretScanner {
    /// Compiles the rule table.
    pub fn new() -> Result<SecretScanner, RuleError> {
        let mut rules = Vec::with_capacity(RULES.len());
        let mut triggers: Vec<TriggerEntry> = Vec::new();
        for (idx, def) in RULES.iter().enumerate() {
            let pat = if def.back == 0 {
                format!("^(?:{})", def.pattern)
            } else {
                def.pattern.to_owned()
            };
            // Byte regexes without Unicode classes: every format is ASCII,
            // and Unicode-aware negated classes (`[^\s"']`) would compile
            // to automata a hundred times larger.
            let regex = RegexBuilder::new(&pat)
                .unicode(false)
                .build()
                .map_err(|e| RuleError {
                    rule: def.name,
                    reason: e.to_string(),
                })?;
            rules.push(Compiled { def, regex });
            let (lits, prefix) = match def.trigger {
                Trigger::Prefix(l) => (l, true),
                Trigger::Keyword(l) => (l, false),
            };
            for lit in lits {
                let folded = normalize::fold_phrase(lit);
                let exact = prefix.then_some(*lit);
                match triggers
                    .iter_mut()
                    .find(|t| t.folded == folded && t.exact == exact)
                {
                    Some(t) => t.rules.push(idx),
                    None => triggers.push(TriggerEntry {
                        folded,
                        exact,
                        rules: vec![idx],
                    }),
                }
            }
        }
        let index = KeywordIndex::new(triggers.iter().map(|t| t.folded.as_bytes()));
        Ok(SecretScanner {
            rules,
            triggers,
            index,
        })
    }

    /// The trigger literals as they appear in folded text, in
    /// [`Hit::trigger`] order, for the engine's combined pass.
    pub fn triggers(&self) -> impl Iterator<Item = &str> {
        self.triggers.iter().map(|t| t.folded.as_str())
    }

    /// The number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Scans `text` on its own: folds it, finds the triggers, then
    /// verifies. The engine uses [`SecretScanner::scan_with_hits`] instead,
    /// sharing one pass over the folded text with the other scanners.
    pub fn scan(&self, text: &str, out: &mut Vec<Finding>) {
        let norm = normalize::normalize(text);
        let mut hits = Vec::new();
        let case = &text.as_bytes()[..norm.identity_prefix()];
        self.index
            .for_each_camel(norm.text.as_bytes(), case, |trigger, at| {
                hits.push(Hit {
                    trigger,
                    pos: norm.to_original(at),
                });
            });
        self.scan_with_hits(text, &hits, out);
    }

    /// Verifies the triggers found in `text`; appends findings with action
    /// `Allow`.
    pub fn scan_with_hits(&self, text: &str, hits: &[Hit], out: &mut Vec<Finding>) {
        let first = out.len();
        let bytes = text.as_bytes();
        for h in hits {
            let Some(t) = self.triggers.get(h.trigger) else {
                continue;
            };
            if let Some(exact) = t.exact {
                // Prefixes are case-sensitive (`SK…` is a Twilio key, `sk…`
                // a word) and must start a word (`task-…` holds no `sk-`).
                if !bytes[h.pos..].starts_with(exact.as_bytes()) {
                    continue;
                }
                let starts_word = exact.as_bytes()[0].is_ascii_alphanumeric();
                if starts_word && h.pos > 0 && bytes[h.pos - 1].is_ascii_alphanumeric() {
                    continue;
                }
                // Rules sharing a prefix are tried most specific first.
                for &rule in &t.rules {
                    if self.verify(text, rule, h.pos, out) {
                        break;
                    }
                }
            } else {
                for &rule in &t.rules {
                    self.verify(text, rule, h.pos, out);
                }
            }
        }
        dedupe(out, first);
    }

    /// Runs rule `rule` at trigger position `pos`; pushes a finding and
    /// returns true when it verifies.
    fn verify(&self, text: &str, rule: usize, pos: usize, out: &mut Vec<Finding>) -> bool {
        let Compiled { def, regex } = &self.rules[rule];
        let bytes = text.as_bytes();
        let mut ws = pos.saturating_sub(def.back);
        while !text.is_char_boundary(ws) {
            ws -= 1;
        }
        let mut we = (pos + def.window).min(text.len());
        while !text.is_char_boundary(we) {
            we += 1;
        }
        let window = &bytes[ws..we];
        let rel = pos - ws;
        // Locate with the DFA first (no captures: cheap on large windows),
        // then resolve the capture groups on the match alone.
        for whole in regex.find_iter(window) {
            if whole.start() > rel {
                break;
            }
            if whole.end() <= rel {
                continue;
            }
            let end = ws + whole.end();
            if def.bounded && end < bytes.len() && bytes[end].is_ascii_alphanumeric() {
                continue;
            }
            let (secret_start, secret_end) = if let Some(spec) = def.value {
                match read_value(window, whole.end(), spec) {
                    Some(span) => span,
                    None => continue,
                }
            } else if regex.captures_len() > 1 {
                let span = &window[..whole.end()];
                let Some(caps) = regex.captures_at(span, whole.start()) else {
                    continue;
                };
                match (1..caps.len()).find_map(|i| caps.get(i)) {
                    Some(g) => (g.start(), g.end()),
                    None => (whole.start(), whole.end()),
                }
            } else {
                (whole.start(), whole.end())
            };
            // Secrets are ASCII by construction of the patterns; a match
            // that is not valid UTF-8 (a negated class over a multi-byte
            // character) is cut at a boundary below or dropped.
            let Some(value) = text.get(ws + secret_start..ws + secret_end) else {
                continue;
            };
            if is_placeholder(value) {
                continue;
            }
            if matches!(def.trigger, Trigger::Keyword(_)) && is_code_reference(value) {
                continue;
            }
            if shannon_entropy(value) < def.min_entropy {
                continue;
            }
            out.push(Finding {
                scanner: Scanner::Secrets,
                rule: def.name.into(),
                start: ws + secret_start,
                end: ws + secret_end,
                score: 1.0,
                action: GuardAction::Allow,
            });
            return true;
        }
        false
    }
}

/// Sorts the scanner's findings and drops overlaps, keeping the specific
/// rule over the generic assignment rules and the longer span otherwise.
fn dedupe(out: &mut Vec<Finding>, first: usize) {
    if out.len() - first < 2 {
        return;
    }
    let generic = |f: &Finding| {
        matches!(
            f.rule.as_ref(),
            "generic_secret_assignment" | "password_assignment"
        )
    };
    let mut mine: Vec<Finding> = out.drain(first..).collect();
    mine.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut kept: Vec<Finding> = Vec::with_capacity(mine.len());
    for f in mine {
        if let Some(last) = kept.last_mut()
            && f.start < last.end
        {
            let replace = (generic(last) && !generic(&f))
                || (generic(last) == generic(&f) && f.end - f.start > last.end - last.start);
            if replace {
                *last = f;
            }
            continue;
        }
        kept.push(f);
    }
    out.extend(kept);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::synth::*;

    fn scan(text: &str) -> Vec<(String, String)> {
        let s = SecretScanner::new().unwrap();
        let mut out = Vec::new();
        s.scan(text, &mut out);
        out.iter()
            .map(|f| (f.rule.to_string(), text[f.start..f.end].to_owned()))
            .collect()
    }

    /// (rule, positive text, the secret in it, negative text), generated.
    fn cases() -> Vec<(&'static str, String, String, String)> {
        let c = chars;
        let mut v: Vec<(&'static str, String, String, String)> = Vec::new();
        let mut add = |rule: &'static str, secret: String, pos: String, neg: String| {
            v.push((rule, pos.replace("{}", &secret), secret, neg));
        };
        let akia = format!("AKIA{}", c(B32, 16, 1));
        add(
            "aws_access_key_id",
            akia.clone(),
            "key id {} here".into(),
            "AKIAIOSFODNN7EXAMPLE is the docs key".into(),
        );
        let aws_secret = c(B64, 40, 2);
        add(
            "aws_secret_access_key",
            aws_secret,
            "aws_secret_access_key = {}".into(),
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        );
        add(
            "aws_session_token",
            c(B64, 300, 3),
            "AWS_SESSION_TOKEN={}".into(),
            "AWS_SESSION_TOKEN=${AWS_SESSION_TOKEN}".into(),
        );
        add(
            "gcp_api_key",
            format!("AIza{}", c(URL, 35, 4)),
            "key={}&q=1".into(),
            "AIzaSy-your-key-here".into(),
        );
        add(
            "gcp_service_account_key",
            c(HEX, 40, 5),
            "{\"type\": \"service_account\", \"private_key_id\": \"{}\"}".into(),
            "\"private_key_id\": \"<KEY_ID>\"".into(),
        );
        add(
            "google_oauth_client_secret",
            format!("GOCSPX-{}", c(URL, 28, 6)),
            "client secret {}".into(),
            "GOCSPX-xxxxxxxxxxxxxxxxxxxxxxxxxxxx".into(),
        );
        add(
            "google_oauth_access_token",
            format!("ya29.{}", c(URL, 120, 7)),
            "Authorization: Bearer {}".into(),
            "tokens start with ya29. followed by data".into(),
        );
        add("azure_storage_account_key", format!("{}==", c(B64, 86, 8)), "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={};EndpointSuffix=core.windows.net".into(), "AccountKey=<storage-key>".into());
        add("azure_sas_token", format!("{}%3D", c(A62, 43, 9)), "https://acct.blob.core.windows.net/c?sv=2022-11-02&ss=b&srt=o&sp=r&se=2030-01-01&sig={}".into(), "sv=2022-11-02&sig=SIGNATURE".into());
        add(
            "azure_ad_client_secret",
            format!("{}7Q~{}", c(A62, 3, 10), c(A62, 32, 11)),
            "AZURE_CLIENT_SECRET {}".into(),
            "the Q~ marker".into(),
        );
        add(
            "azure_openai_api_key",
            c(HEX, 32, 12),
            "AZURE_OPENAI_API_KEY={}".into(),
            "AZURE_OPENAI_API_KEY=your-azure-key".into(),
        );
        add(
            "alibaba_access_key_id",
            format!("LTAI{}", c(A62, 20, 13)),
            "id {}".into(),
            "LTAIxxxxxxxxxxxxxxxx".into(),
        );
        add(
            "digitalocean_token",
            format!("dop_v1_{}", c(HEX, 64, 14)),
            "DO {}".into(),
            "dop_v1_ prefix".into(),
        );
        add(
            "heroku_api_key",
            format!("HRKU-AA{}", c(URL, 58, 15)),
            "HEROKU_API_KEY={}".into(),
            "HRKU-<token>".into(),
        );
        add(
            "heroku_api_key_legacy",
            format!(
                "{}-{}-{}-{}-{}",
                c(HEX, 8, 16),
                c(HEX, 4, 17),
                c(HEX, 4, 18),
                c(HEX, 4, 19),
                c(HEX, 12, 20)
            ),
            "heroku api_key: {}".into(),
            "heroku app id 1234".into(),
        );
        add(
            "cloudflare_api_token",
            c(URL, 40, 21),
            "CLOUDFLARE_API_TOKEN={}".into(),
            "cloudflare token: ${CF_TOKEN}".into(),
        );
        add(
            "github_pat",
            format!("ghp_{}", c(A62, 36, 22)),
            "token {}".into(),
            "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".into(),
        );
        add(
            "github_oauth_token",
            format!("gho_{}", c(A62, 36, 23)),
            "{}".into(),
            "gho_ prefix means OAuth".into(),
        );
        add(
            "github_app_token",
            format!("ghs_{}", c(A62, 36, 24)),
            "x-access-token:{}".into(),
            "ghs_short".into(),
        );
        add(
            "github_refresh_token",
            format!("ghr_{}", c(A62, 76, 25)),
            "{}".into(),
            "ghr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        );
        add(
            "github_fine_grained_pat",
            format!("github_pat_{}_{}", c(A62, 22, 26), c(A62, 59, 27)),
            "GH_TOKEN={}".into(),
            "github_pat_<your token>".into(),
        );
        add(
            "gitlab_pat",
            format!("glpat-{}", c(URL, 20, 28)),
            "PRIVATE-TOKEN: {}".into(),
            "glpat-XXXXXXXXXXXXXXXXXXXX".into(),
        );
        add(
            "gitlab_deploy_token",
            format!("gldt-{}", c(URL, 20, 29)),
            "{}".into(),
            "gldt-token".into(),
        );
        add(
            "gitlab_runner_token",
            format!("glrt-{}", c(URL, 20, 30)),
            "token = \"{}\"".into(),
            "glrt-REDACTED".into(),
        );
        add(
            "gitlab_pipeline_trigger_token",
            format!("glptt-{}", c(HEX, 40, 31)),
            "{}".into(),
            "glptt-".into(),
        );
        add(
            "bitbucket_app_password",
            format!("ATBB{}", c(A62, 32, 32)),
            "{}".into(),
            "ATBBxxxxxxxx".into(),
        );
        add(
            "atlassian_api_token",
            format!("ATATT3{}", c(URL, 186, 33)),
            "{}".into(),
            "ATATT3xFfGF0...".into(),
        );
        add(
            "npm_token",
            format!("npm_{}", c(A62, 36, 34)),
            "//registry.npmjs.org/:_authToken={}".into(),
            "npm_config_cache=/tmp".into(),
        );
        add(
            "pypi_token",
            format!("pypi-AgEIcHlwaS5vcmc{}", c(URL, 80, 35)),
            "password = {}".into(),
            "pypi-AgEIcHlwaS5vcmc...".into(),
        );
        add(
            "dockerhub_pat",
            format!("dckr_pat_{}", c(URL, 27, 36)),
            "{}".into(),
            "dckr_pat_***".into(),
        );
        add(
            "hashicorp_vault_token",
            format!("hvs.{}", c(URL, 90, 37)),
            "VAULT_TOKEN={}".into(),
            "hvs.example".into(),
        );
        add(
            "terraform_cloud_token",
            format!("{}.atlasv1.{}", c(A62, 14, 38), c(URL, 67, 39)),
            "token = \"{}\"".into(),
            "x.atlasv1.y".into(),
        );
        add(
            "doppler_token",
            format!("dp.pt.{}", c(A62, 43, 40)),
            "{}".into(),
            "dp.pt.token".into(),
        );
        add(
            "databricks_token",
            format!("dapi{}", c(HEX, 32, 41)),
            "{}".into(),
            "dapi documentation".into(),
        );
        add(
            "postman_api_key",
            format!("PMAK-{}-{}", c(HEX, 24, 42), c(HEX, 34, 43)),
            "{}".into(),
            "PMAK-<key>".into(),
        );
        add(
            "grafana_token",
            format!("glsa_{}_{}", c(A62, 32, 44), c(HEX, 8, 45)),
            "{}".into(),
            "glsa_".into(),
        );
        add(
            "sentry_token",
            format!("sntrys_eyJ{}", c(URL, 120, 46)),
            "SENTRY_AUTH_TOKEN={}".into(),
            "sntrys_".into(),
        );
        add(
            "new_relic_api_key",
            format!("NRAK-{}", c(UPPER36, 27, 47)),
            "{}".into(),
            "NRAK-XXXXXXXXXXXXXXXXXXXXXXXXXXX".into(),
        );
        add(
            "tailscale_key",
            format!("tskey-auth-{}-{}", c(A62, 12, 48), c(A62, 30, 49)),
            "{}".into(),
            "tskey-auth-<key>".into(),
        );
        add(
            "supabase_token",
            format!("sbp_{}", c(HEX, 40, 50)),
            "{}".into(),
            "sbp_0000000000000000000000000000000000000000".into(),
        );
        add(
            "flyio_token",
            format!("fo1_{}", c(URL, 43, 51)),
            "{}".into(),
            "fo1_".into(),
        );
        add(
            "planetscale_token",
            format!("pscale_tkn_{}", c(URL, 43, 52)),
            "{}".into(),
            "pscale_tkn_<token>".into(),
        );
        add(
            "linear_api_key",
            format!("lin_api_{}", c(A62, 40, 53)),
            "{}".into(),
            "lin_api_".into(),
        );
        add(
            "notion_token",
            format!("ntn_{}{}", c(DIGITS, 11, 54), c(A62, 35, 55)),
            "{}".into(),
            "secret_key = get_secret_key()".into(),
        );
        add(
            "figma_token",
            format!("figd_{}", c(URL, 40, 56)),
            "{}".into(),
            "figd_".into(),
        );
        add(
            "age_secret_key",
            format!("AGE-SECRET-KEY-1{}", c(BECH32, 58, 57)),
            "{}".into(),
            "AGE-SECRET-KEY-1...".into(),
        );
        add(
            "onepassword_service_token",
            format!("ops_eyJ{}", c(URL, 300, 58)),
            "OP_SERVICE_ACCOUNT_TOKEN={}".into(),
            "ops_eyJ".into(),
        );
        add(
            "okta_api_token",
            format!("00{}", c(URL, 40, 59)),
            "Okta SSWS token: {}".into(),
            "okta token: <token>".into(),
        );
        add(
            "slack_bot_token",
            format!(
                "xoxb-{}-{}-{}",
                c(DIGITS, 12, 60),
                c(DIGITS, 13, 61),
                c(A62, 24, 62)
            ),
            "{}".into(),
            "xoxb-your-token".into(),
        );
        add(
            "slack_user_token",
            format!(
                "xoxp-{}-{}-{}-{}",
                c(DIGITS, 12, 63),
                c(DIGITS, 12, 64),
                c(DIGITS, 13, 65),
                c(HEX, 32, 66)
            ),
            "{}".into(),
            "xoxp-".into(),
        );
        add(
            "slack_app_token",
            format!(
                "xapp-1-{}-{}-{}",
                c(UPPER36, 10, 67),
                c(DIGITS, 13, 68),
                c("abcdefghijklmnopqrstuvwxyz0123456789", 64, 69)
            ),
            "{}".into(),
            "xapp-1-x".into(),
        );
        add(
            "slack_webhook_url",
            format!(
                "hooks.slack.com/services/T{}/B{}/{}",
                c(UPPER36, 8, 70),
                c(UPPER36, 8, 71),
                c(A62, 24, 72)
            ),
            "https://{}".into(),
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX".into(),
        );
        add(
            "discord_bot_token",
            format!("M{}.{}.{}", c(URL, 25, 73), c(URL, 6, 74), c(URL, 38, 75)),
            "discord bot token: {}".into(),
            "discord server invite".into(),
        );
        add(
            "discord_webhook_url",
            format!(
                "discord.com/api/webhooks/{}/{}",
                c(DIGITS, 18, 76),
                c(URL, 68, 77)
            ),
            "https://{}".into(),
            "https://discord.com/api/webhooks/ID/TOKEN".into(),
        );
        add(
            "telegram_bot_token",
            format!("{}:AA{}", c(DIGITS, 10, 78), c(URL, 33, 79)),
            "TELEGRAM_BOT_TOKEN={}".into(),
            "telegram bot 123456789:ABC".into(),
        );
        add(
            "stripe_secret_key",
            format!("sk_live_{}", c(A62, 24, 80)),
            "Stripe.api_key = '{}'".into(),
            "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx".into(),
        );
        add(
            "stripe_test_key",
            format!("sk_test_{}", c(A62, 24, 81)),
            "{}".into(),
            "sk_test_... in docs".into(),
        );
        add(
            "stripe_restricted_key",
            format!("rk_live_{}", c(A62, 24, 82)),
            "{}".into(),
            "rk_live_".into(),
        );
        add(
            "stripe_webhook_secret",
            format!("whsec_{}", c(A62, 32, 83)),
            "{}".into(),
            "whsec_...".into(),
        );
        add(
            "square_token",
            format!("sq0atp-{}", c(URL, 22, 84)),
            "{}".into(),
            "sq0atp-".into(),
        );
        add(
            "twilio_api_key",
            format!("SK{}", c(HEX, 32, 85)),
            "TWILIO_API_KEY={}".into(),
            "SKU 12345 and ASK me".into(),
        );
        add(
            "twilio_auth_token",
            c(HEX, 32, 86),
            "TWILIO_AUTH_TOKEN={}".into(),
            "twilio auth_token: your_auth_token".into(),
        );
        add(
            "sendgrid_api_key",
            format!("SG.{}.{}", c(URL, 22, 87), c(URL, 43, 88)),
            "{}".into(),
            "SG.xxxxx.yyyyy".into(),
        );
        add(
            "mailgun_api_key",
            format!("key-{}", c(HEX, 32, 89)),
            "api:{}".into(),
            "key-value store".into(),
        );
        add(
            "mailchimp_api_key",
            format!("{}-us21", c(HEX, 32, 90)),
            "mailchimp key {}".into(),
            "mailchimp list us21".into(),
        );
        add(
            "shopify_token",
            format!("shpat_{}", c(HEX, 32, 91)),
            "{}".into(),
            "shpat_".into(),
        );
        add(
            "anthropic_api_key",
            format!("sk-ant-api03-{}AA", c(URL, 93, 92)),
            "ANTHROPIC_API_KEY={}".into(),
            "sk-ant-api03-...".into(),
        );
        add(
            "openai_project_key",
            format!("sk-proj-{}", c(URL, 120, 93)),
            "OPENAI_API_KEY={}".into(),
            "sk-proj-XXXXXXXX".into(),
        );
        add(
            "openai_api_key",
            format!("sk-{}T3BlbkFJ{}", c(A62, 20, 94), c(A62, 20, 95)),
            "{}".into(),
            "sk-... (old style)".into(),
        );
        add(
            "deepseek_api_key",
            format!("sk-{}", c(HEX, 32, 96)),
            "{}".into(),
            "task-0123456789abcdef0123456789abcdef".into(),
        );
        add(
            "huggingface_token",
            format!("hf_{}", c(ALPHA, 34, 97)),
            "HF_TOKEN={}".into(),
            "hf_hub_download".into(),
        );
        add(
            "cohere_api_key",
            c(A62, 40, 98),
            "COHERE_API_KEY={}".into(),
            "cohere api key: <your key>".into(),
        );
        add(
            "groq_api_key",
            format!("gsk_{}", c(A62, 52, 99)),
            "{}".into(),
            "gsk_".into(),
        );
        add(
            "replicate_api_token",
            format!("r8_{}", c(A62, 37, 100)),
            "{}".into(),
            "r8_".into(),
        );
        add(
            "mistral_api_key",
            c(A62, 32, 101),
            "MISTRAL_API_KEY={}".into(),
            "mistral api_key=${MISTRAL_API_KEY}".into(),
        );
        add(
            "perplexity_api_key",
            format!("pplx-{}", c(A62, 48, 102)),
            "{}".into(),
            "pplx-".into(),
        );
        add(
            "xai_api_key",
            format!("xai-{}", c(A62, 80, 103)),
            "{}".into(),
            "xai-grok".into(),
        );
        let body = |seed| {
            let raw = c(B64, 256, seed);
            raw.as_bytes()
                .chunks(64)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        };
        add(
            "private_key_rsa",
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
                body(104)
            ),
            "key:\n{}\n".into(),
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n-----END RSA PRIVATE KEY-----".into(),
        );
        add(
            "private_key_ec",
            format!(
                "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----",
                body(105)
            ),
            "{}".into(),
            "-----BEGIN EC PRIVATE KEY-----".into(),
        );
        add(
            "private_key_dsa",
            format!(
                "-----BEGIN DSA PRIVATE KEY-----\n{}\n-----END DSA PRIVATE KEY-----",
                body(106)
            ),
            "{}".into(),
            "BEGIN DSA PRIVATE KEY".into(),
        );
        add("private_key_openssh", format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----", body(107)), "{}".into(), "-----BEGIN OPENSSH PRIVATE KEY-----\n<paste your key>\n-----END OPENSSH PRIVATE KEY-----".into());
        add("private_key_pkcs8", format!("-----BEGIN PRIVATE KEY-----\\n{}\\n-----END PRIVATE KEY-----", c(B64, 200, 108)), "{\"private_key\": \"{}\\n\"}".into(), "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----".into());
        add(
            "private_key_pgp",
            format!(
                "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{}\n-----END PGP PRIVATE KEY BLOCK-----",
                body(109)
            ),
            "{}".into(),
            "-----BEGIN PGP PUBLIC KEY BLOCK-----".into(),
        );
        add(
            "jwt",
            format!(
                "eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}",
                c(URL, 40, 110),
                c(URL, 43, 111)
            ),
            "Authorization: Bearer {}".into(),
            "eyJhbGciOiJub25lIn0 alone".into(),
        );
        add(
            "database_url_password",
            c(A62, 16, 112),
            "DATABASE_URL=postgres://app:{}@db.internal:5432/app".into(),
            "postgres://user:password@localhost/db".into(),
        );
        add(
            "password_assignment",
            "Tr0ub4dor&3x".to_owned(),
            "db_password = \"{}\"".into(),
            "password = \"changeme\"".into(),
        );
        add(
            "generic_secret_assignment",
            c(A62, 32, 113),
            "client_secret: \"{}\"".into(),
            "api_key = os.getenv(\"API_KEY\")".into(),
        );
        v
    }

    #[test]
    fn the_rule_set_covers_forty_formats() {
        let s = SecretScanner::new().unwrap();
        assert!(s.rule_count() >= 40, "{} rules", s.rule_count());
        let mut names: Vec<_> = RULES.iter().map(|r| r.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "rule names are unique");
    }

    #[test]
    fn every_rule_has_a_positive_and_a_negative() {
        let cases = cases();
        for def in RULES {
            assert!(
                cases.iter().any(|(r, ..)| *r == def.name),
                "rule {} has no test case",
                def.name
            );
        }
        for (rule, pos, secret, neg) in &cases {
            let got = scan(pos);
            assert!(
                got.iter().any(|(r, t)| r == rule && t == secret),
                "{rule}: positive not found exactly; got {got:?}"
            );
            let got = scan(neg);
            assert!(got.is_empty(), "{rule}: negative {neg:?} gave {got:?}");
        }
    }

    #[test]
    fn placeholders_and_code_do_not_fire() {
        for text in [
            "password = \"changeme\"",
            "password: <YOUR_PASSWORD>",
            "api_key = \"<YOUR_API_KEY>\"",
            "token = \"xxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
            "secret = \"${SECRET}\"",
            "password = os.environ[\"DB_PASSWORD\"]",
            "password=$DB_PASSWORD",
            "api_key: {{ api_key }}",
            "token = request.headers.get(\"Authorization\")",
            "secret_key = settings.SECRET_KEY",
            "PASSWORD_MIN_LENGTH = 12",
            "the token: a short-lived credential",
            "reset your password: click the link",
            "password = \"********\"",
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "token = \"abcdefghijklmnopqrstuvwxyz\"",
            "password = \"12345678\"",
            "access_token = None",
            "auth_token: true",
        ] {
            let got = scan(text);
            assert!(got.is_empty(), "{text:?} gave {got:?}");
        }
    }

    #[test]
    fn only_the_value_is_the_secret() {
        let v = chars(A62, 24, 7);
        let text = format!("DB_PASSWORD=\"{v}\"");
        let got = scan(&text);
        assert_eq!(got, vec![("password_assignment".to_owned(), v)]);
    }

    #[test]
    fn entropy_is_bits_per_byte() {
        assert_eq!(shannon_entropy(""), 0.0);
        assert_eq!(shannon_entropy("aaaa"), 0.0);
        assert!((shannon_entropy("abcd") - 2.0).abs() < 1e-6);
        assert!(shannon_entropy(&chars(B64, 64, 1)) > 4.5);
    }
}
