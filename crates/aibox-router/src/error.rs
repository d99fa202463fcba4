//! Router errors. The gateway turns them into OpenAI error objects; nothing
//! here knows about HTTP responses.

/// One failed attempt at one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    /// The upstream's configured name.
    pub upstream: String,
    /// What went wrong, without secrets.
    pub reason: String,
    /// True when it was a timeout.
    pub timed_out: bool,
}

/// Why a request could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The client's request is malformed.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The offending parameter, if one.
        param: Option<&'static str>,
    },
    /// The model is neither configured nor listed by an upstream.
    #[error("the model '{model}' does not exist; GET /v1/models lists the models you can use")]
    ModelNotFound {
        /// The requested name.
        model: String,
    },
    /// Every target failed before anything reached the client.
    #[error("no upstream could serve the request: {}", describe(.attempts))]
    Unavailable {
        /// Each attempt, in order.
        attempts: Vec<AttemptFailure>,
    },
    /// An upstream answered something that is not the OpenAI protocol.
    #[error("upstream '{upstream}' sent an invalid response: {message}")]
    Protocol {
        /// The upstream.
        upstream: String,
        /// What is wrong.
        message: String,
    },
    /// The model list could not be fetched from any upstream.
    #[error("cannot list models: {}; fix: start the upstream, or list models under `models:` in the config", describe(.attempts))]
    Discovery {
        /// Each upstream's failure.
        attempts: Vec<AttemptFailure>,
    },
}

impl RouterError {
    /// True when every attempt timed out (the gateway answers 504 then).
    pub fn all_timed_out(&self) -> bool {
        match self {
            RouterError::Unavailable { attempts } => {
                !attempts.is_empty() && attempts.iter().all(|a| a.timed_out)
            }
            _ => false,
        }
    }
}

fn describe(attempts: &[AttemptFailure]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.upstream, a.reason))
        .collect::<Vec<_>>()
        .join("; ")
}
