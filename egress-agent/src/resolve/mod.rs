//! Hostname resolution: what the agent knows about each name ([`cache`]) and how it asks
//! the upstream servers ([`dns`]).

pub mod cache;
pub mod dns;

pub use cache::{HostCache, HostState, Outcome, ResolverSettings};
pub use dns::{Upstream, UpstreamError, servers_from_resolv_conf};
