//! The egress enforcer's user space: policy parsing, name resolution, the kernel maps, and
//! the agent loop that keeps them in line.

pub mod agent;
pub mod bpf;
pub mod enforce;
pub mod events;
pub mod explain;
mod hash;
pub mod learn;
pub mod pods;
pub mod policy;
pub mod ports;
pub mod preflight;
pub mod resolve;
