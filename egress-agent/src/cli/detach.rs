//! `egress-agent detach`: stop enforcing. Each pinned link is detached at once
//! (`BPF_LINK_DETACH`), then the pins go, dropping the last references to the links and the
//! maps.

use std::{os::fd::AsFd as _, process::ExitCode};

use anyhow::Context as _;
use egress_agent::bpf::{Pins, sys};

use super::BpffsArg;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    bpffs: BpffsArg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pins = Pins::new(&args.bpffs.bpffs);
    if !pins.root().exists() {
        println!(
            "nothing pinned at {}: nothing to detach",
            pins.root().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let _lock = egress_agent::agent::lock(pins.root())
        .context("stop the agent (SIGTERM) before detaching")?;
    for link in pins.link_files() {
        // Without BPF_LINK_DETACH (Linux < 5.9) the program detaches when bpffs frees the
        // unlinked pin, a moment later.
        if let Err(e) = sys::obj_get(&link).and_then(|fd| sys::link_detach(fd.as_fd())) {
            eprintln!("{}: cannot detach at once ({e}); unpinning", link.display());
        }
        std::fs::remove_file(&link)
            .with_context(|| format!("failed to unpin {}", link.display()))?;
        println!("detached {}", link.display());
    }
    for (_, dir) in pins.link_dirs() {
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_dir(pins.root().join("links"));
    for generation in pins.generations() {
        std::fs::remove_dir_all(&generation.dir)
            .with_context(|| format!("failed to remove {}", generation.dir.display()))?;
        println!("removed maps {}", generation.dir.display());
    }
    std::fs::remove_dir(pins.root())
        .with_context(|| format!("failed to remove {}", pins.root().display()))?;
    println!("enforcement removed");
    Ok(ExitCode::SUCCESS)
}
