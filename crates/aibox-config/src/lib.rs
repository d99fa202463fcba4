//! Configuration of aibox.
//!
//! Loading happens in two steps. [`raw`] mirrors the YAML file exactly, with
//! `deny_unknown_fields` everywhere so a misspelt key is an error and not a
//! silently ignored setting. [`load`] then applies environment overrides
//! ([`env`] names every variable) and validates the whole into the typed
//! [`Config`] the rest of the program reads. Every error names the file, the
//! line when it is known, the key and the fix ([`ConfigError`]).

pub mod env;
mod error;
pub mod raw;
mod validated;

pub use error::ConfigError;
pub use validated::{
    ALLOWED_JWT_ALGORITHMS, AuthConfig, CaptokenConfig, ClaimsConfig, Config,
    DEFAULT_AUDIT_MAX_CONNECTIONS, DEFAULT_STORE_MAX_CONNECTIONS, DEFAULT_STRIP_HEADERS,
    DashboardOidcConfig, DatabaseConfig, DatabaseUrl, LimitsConfig, LogConfig, LogFormat,
    MAX_POOL_CONNECTIONS, ModelConfig, PrincipalAlgorithm, PrincipalConfig, Rate, RouteConfig,
    ServerConfig, ServiceAuthConfig, TargetConfig, Timeouts, TokenFor, UpstreamConfig, load,
    load_from_str,
};

/// The config file path the seed documents, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "deploy/config/gateway/config.yaml";
