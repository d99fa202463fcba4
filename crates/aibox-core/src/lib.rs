//! Shared, pure types of aibox.
//!
//! Every trust boundary of aibox (edge, router, guardrail, audit, MCP gateway,
//! vault) speaks in these types, so they live in one crate that does no IO:
//! identifiers that are validated once at the edge ([`ids`]), the
//! authenticated [`principal::Principal`], the [`audit`] event model that every
//! part writes into the tamper-evident log, versioned [`keyring`]s and the
//! [`secret::Secret`] wrapper that keeps key material out of logs.

pub mod audit;
pub mod ids;
pub mod keyring;
pub mod principal;
pub mod secret;
pub mod yamlpath;

pub use ids::{IdError, RequestId, TenantId, TurnId, UserId};
pub use principal::{AuthMethod, Principal};
pub use secret::Secret;
