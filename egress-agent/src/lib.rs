//! The egress enforcer's user space: policy parsing, name resolution, the kernel maps, and
//! the agent loop that keeps them in line.

pub mod policy;
pub mod ports;
pub mod resolve;
pub mod enforce;
