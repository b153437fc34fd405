//! Layout of the agent's pins under its bpffs directory:
//!
//! ```text
//! <bpffs dir>/
//!   maps-v<layout>-<max entries>/EGRESS_ALLOW_V4 …   one generation of maps
//!   links/cgroup-<cgroup id>/egress_connect4 …      one link per program and cgroup
//! ```
//!
//! Pinned links keep the programs attached while no agent runs; pinned maps keep what they
//! enforce. A generation is named after the map layout and capacity, so an agent that needs
//! other maps (new layout, new `--max-entries`) creates a new generation beside the old one,
//! fills it, switches the links to it, and only then deletes the old one.

use std::path::{Path, PathBuf};

use aya::{
    maps::MapInfo,
    programs::{links::PinnedLink, loaded_programs},
};
use egress_common::{LAYOUT_VERSION, maps};

#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

/// One generation of pinned maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub dir: PathBuf,
    pub layout: u32,
    pub max_entries: u32,
}

impl Generation {
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether this agent binary can read the maps (same key and value layout).
    pub fn readable(&self) -> bool {
        self.layout == LAYOUT_VERSION
    }
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The generation this binary uses for `max_entries`.
    pub fn generation(&self, max_entries: u32) -> Generation {
        Generation {
            dir: self
                .root
                .join(format!("maps-v{LAYOUT_VERSION}-{max_entries}")),
            layout: LAYOUT_VERSION,
            max_entries,
        }
    }

    /// Every generation present, any layout.
    pub fn generations(&self) -> Vec<Generation> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut gens: Vec<Generation> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (layout, max) = name.strip_prefix("maps-v")?.split_once('-')?;
                Some(Generation {
                    dir: e.path(),
                    layout: layout.parse().ok()?,
                    max_entries: max.parse().ok()?,
                })
            })
            .collect();
        gens.sort_by(|a, b| a.dir.cmp(&b.dir));
        gens
    }

    pub fn links_dir(&self, cgroup_id: u64) -> PathBuf {
        self.root.join("links").join(format!("cgroup-{cgroup_id}"))
    }

    pub fn link_path(&self, cgroup_id: u64, program: &str) -> PathBuf {
        self.links_dir(cgroup_id).join(program)
    }

    /// Cgroup ids with pinned links, and their directories.
    pub fn link_dirs(&self) -> Vec<(u64, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, PathBuf)> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some((name.strip_prefix("cgroup-")?.parse().ok()?, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Pinned link files of every program, for every cgroup.
    pub fn link_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .link_dirs()
            .into_iter()
            .flat_map(|(_, dir)| std::fs::read_dir(dir).into_iter().flatten())
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files.sort();
        files
    }

    /// The generation whose maps the attached programs use: the only one there is, or, in the
    /// middle of a switch, the one whose config map a pinned link's program references.
    pub fn current_generation(&self) -> Option<Generation> {
        let mut gens = self.generations();
        if gens.len() <= 1 {
            return gens.pop();
        }
        let attached_maps: Vec<u32> = self
            .link_files()
            .iter()
            .filter_map(|p| PinnedLink::from_pin(p).ok())
            .filter_map(|l| aya::programs::links::FdLink::from(l).info().ok())
            .map(|info| info.program_id())
            .filter_map(|prog_id| {
                loaded_programs()
                    .filter_map(Result::ok)
                    .find(|p| p.id() == prog_id)
            })
            .filter_map(|p| p.map_ids().ok().flatten())
            .flatten()
            .collect();
        gens.iter()
            .find(|g| {
                MapInfo::from_pin(g.map_path(maps::CONFIG))
                    .is_ok_and(|m| attached_maps.contains(&m.id()))
            })
            .cloned()
            .or_else(|| gens.pop())
    }
}

/// Removes a generation's pins and directory (the maps live on while programs use them).
pub fn remove_generation(generation: &Generation) -> std::io::Result<()> {
    std::fs::remove_dir_all(&generation.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_parsed_from_directory_names() {
        let root = std::env::temp_dir().join(format!("egress-pins-{}", std::process::id()));
        let pins = Pins::new(&root);
        let current = format!("maps-v{LAYOUT_VERSION}-65536");
        for d in ["maps-v1-1024", &current, "links", "other"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(pins.links_dir(42)).unwrap();
        let gens = pins.generations();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            gens.iter()
                .map(|g| (g.layout, g.max_entries))
                .collect::<Vec<_>>(),
            vec![(1, 1024), (LAYOUT_VERSION, 65536)]
        );
        assert!(!gens[0].readable());
        assert_eq!(pins.generation(65536), gens[1]);
    }
}
