//! Everything that touches the kernel's BPF objects: finding the file systems, loading the
//! object, pinning, attaching, and the maps as a [`crate::enforce::MapStore`].

pub mod fs;
pub mod kernel;
pub mod loader;
pub mod maps;
pub mod object;
pub mod pins;
pub mod sys;

pub use fs::{Cgroup, cgroup2_root};
pub use loader::{Attached, Loaded, load};
pub use maps::PinnedMaps;
pub use pins::{Generation, Pins};
