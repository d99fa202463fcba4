//! The admin dashboard: its credentials and sessions (`auth`).

pub mod auth;

pub use auth::{DashboardAuth, DashboardAuthError, DashboardHandle};
