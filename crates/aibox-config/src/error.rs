//! Configuration errors: each names where, what and the fix.

use std::path::PathBuf;

/// Where a config value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A key in the config file, with its line when known.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: Option<usize>,
    },
    /// An environment variable.
    Env(&'static str),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// A configuration error. Messages never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; fix: check the path given by --config or {var}", var = crate::env::AIBOX_CONFIG)]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML or does not match the schema.
    #[error("{origin}: key `{key}`: {message}; fix: {fix}")]
    Parse {
        /// File and line.
        origin: Origin,
        /// The dotted key path.
        key: String,
        /// What is wrong.
        message: String,
        /// What to do.
        fix: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{origin}: key `{key}`: {message}; fix: {fix}")]
    Invalid {
        /// Where the value came from.
        origin: Origin,
        /// The dotted key path.
        key: String,
        /// What is wrong.
        message: String,
        /// What to do.
        fix: String,
    },
    /// The `.env` file is malformed.
    #[error("{path}: {message}; fix: correct or remove the file", path = path.display())]
    DotEnv {
        /// The file.
        path: PathBuf,
        /// What is wrong, by position only.
        message: String,
    },
}
