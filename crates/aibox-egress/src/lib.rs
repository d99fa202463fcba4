//! Egress control for aibox: what tools and remote MCP servers may reach.
//!
//! Two layers, both following seed 004 §1 ("SSRF egress blocks"):
//!
//! - **In process**, [`EgressGuard`] is the one HTTP client for every
//!   outbound call a tool or an MCP server can influence (HTTP MCP
//!   upstreams, the built-in `fetch` tool, OAuth metadata discovery). It
//!   parses URLs with the WHATWG parser, allows only http(s) and configured
//!   ports, resolves names itself and checks every address, connects only to
//!   the checked addresses, ignores proxy variables, re-checks every
//!   redirect, and caps hops, size and time. A refusal names its rule.
//! - **On the host**, [`rules`] generates the `DOCKER-USER` iptables rules of
//!   the seed (and their ip6tables and nftables equivalents) for the subnet
//!   of the tool containers, and [`firewall`] installs and removes them:
//!   `aibox egress apply` / `remove`.
//!
//! Layering: [`classify`], [`policy`], [`check`] and [`rules`] are pure (no
//! IO) and hold the security logic; [`resolve`], [`guard`] and [`firewall`]
//! do the IO around them.

pub mod check;
pub mod classify;
mod error;
pub mod firewall;
mod guard;
pub mod policy;
pub mod resolve;
pub mod rules;

pub use check::{CheckedHost, CheckedUrl};
pub use classify::{BlockRule, Embedding, Ipv4Rule, Ipv6Rule, NameRule, classify, classify_name};
pub use error::{EgressError, redact};
pub use guard::{EgressGuard, FetchRequest, FetchedResponse};
pub use policy::{AllowList, EgressPolicy, EgressPolicyBuilder, PolicyError};
pub use resolve::{Resolve, ResolveError, ResolveFuture, StaticResolver, SystemResolver};
