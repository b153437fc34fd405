//! The initramfs a test VM boots: an uncompressed cpio archive (the kernel takes one as is)
//! with `/init`, the test binaries, the system tools they call with their shared libraries,
//! kernel modules and a few files of `/etc`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

enum Node {
    Dir,
    File { source: PathBuf, mode: u32 },
    Text(Vec<u8>),
    CharDev { major: u32, minor: u32 },
    Symlink(String),
}

/// What the archive will hold, by absolute path inside the guest.
#[derive(Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

impl Initramfs {
    pub fn new() -> Self {
        let mut fs = Self::default();
        for dir in [
            "/proc", "/sys", "/dev", "/tmp", "/run", "/etc", "/var", "/vm",
        ] {
            fs.dir(dir);
        }
        // The kernel opens /dev/console for init before anything is mounted.
        fs.nodes
            .insert("/dev/console".into(), Node::CharDev { major: 5, minor: 1 });
        fs.nodes
            .insert("/var/run".into(), Node::Symlink("/run".into()));
        fs
    }

    pub fn dir(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.trim_start_matches('/').split('/') {
            at.push('/');
            at.push_str(part);
            self.nodes.entry(at.clone()).or_insert(Node::Dir);
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
        {
            self.dir(parent);
        }
    }

    pub fn text(&mut self, path: &str, content: impl Into<Vec<u8>>) {
        self.parent(path);
        self.nodes.insert(path.into(), Node::Text(content.into()));
    }

    pub fn file(&mut self, path: &str, source: &Path, mode: u32) {
        self.parent(path);
        self.nodes.insert(
            path.into(),
            Node::File {
                source: source.to_owned(),
                mode,
            },
        );
    }

    /// An executable at `path` and every shared library it needs (as `ldd` resolves them
    /// on this host, at the same paths, so the guest's dynamic loader finds them).
    pub fn executable(&mut self, path: &str, source: &Path) -> anyhow::Result<()> {
        self.file(path, source, 0o755);
        for lib in shared_libraries(source)? {
            let guest = lib.display().to_string();
            if !self.nodes.contains_key(&guest) {
                let real = std::fs::canonicalize(&lib)?;
                self.file(&guest, &real, 0o755);
            }
        }
        Ok(())
    }

    /// Writes the archive (cpio "newc", uncompressed).
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
        for (ino, (path, node)) in self.nodes.iter().enumerate() {
            let name = path.trim_start_matches('/');
            let (mode, data, rdev): (u32, Vec<u8>, (u32, u32)) = match node {
                Node::Dir => (0o040_755, Vec::new(), (0, 0)),
                Node::File { source, mode } => (
                    0o100_000 | mode,
                    std::fs::read(source).with_context(|| format!("read {}", source.display()))?,
                    (0, 0),
                ),
                Node::Text(t) => (0o100_644, t.clone(), (0, 0)),
                Node::CharDev { major, minor } => (0o020_600, Vec::new(), (*major, *minor)),
                Node::Symlink(target) => (0o120_777, target.as_bytes().to_vec(), (0, 0)),
            };
            entry(&mut w, ino as u32 + 1, name, mode, &data, rdev)?;
        }
        entry(&mut w, 0, "TRAILER!!!", 0, &[], (0, 0))?;
        w.flush()?;
        Ok(())
    }
}

/// One cpio newc record: a 110-byte ASCII header, the NUL-terminated name and the data, each
/// padded to four bytes.
fn entry(
    w: &mut impl std::io::Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> std::io::Result<()> {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + name.len() + 1)?;
    w.write_all(data)?;
    pad(w, data.len())
}

fn pad(w: &mut impl std::io::Write, len: usize) -> std::io::Result<()> {
    w.write_all(&[0; 3][..(4 - len % 4) % 4])
}

/// The shared libraries `ldd` lists for `binary`, the dynamic loader included.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static executables: nothing to copy.
        if text.contains("not a dynamic executable") || out.stderr.is_empty() {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            _ if line.contains("not found") => bail!("{}: {line}", binary.display()),
            _ => {}
        }
    }
    Ok(libs)
}

/// `name.ko` from `modules` (decompressed into `staging` when the tree holds it compressed),
/// preceded by the modules it depends on, in load order.
pub fn module_with_dependencies(
    modules: &Path,
    name: &str,
    staging: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut order = Vec::new();
    add_module(modules, name, staging, &mut order, 0)?;
    Ok(order)
}

fn add_module(
    modules: &Path,
    name: &str,
    staging: &Path,
    order: &mut Vec<PathBuf>,
    depth: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(depth < 16, "module dependencies of {name} loop");
    let staged = staging.join(format!("{name}.ko"));
    if order.contains(&staged) {
        return Ok(());
    }
    let found = find_file(modules, &|n| {
        n.strip_prefix(name)
            .and_then(|r| r.strip_prefix(".ko"))
            .is_some_and(|ext| ["", ".xz", ".zst", ".gz"].contains(&ext))
    })
    .with_context(|| format!("module {name} not in {}", modules.display()))?;
    let decompress = match found.extension().and_then(|e| e.to_str()) {
        Some("xz") => Some("xz"),
        Some("zst") => Some("zstd"),
        Some("gz") => Some("gzip"),
        _ => None,
    };
    let bytes = match decompress {
        Some(tool) => {
            let out = Command::new(tool).arg("-dc").arg(&found).output()?;
            anyhow::ensure!(out.status.success(), "{tool} -dc {}", found.display());
            out.stdout
        }
        None => std::fs::read(&found)?,
    };
    for dep in modinfo_depends(&bytes) {
        add_module(modules, &dep, staging, order, depth + 1)?;
    }
    std::fs::create_dir_all(staging)?;
    std::fs::write(&staged, &bytes)?;
    order.push(staged);
    Ok(())
}

/// The `depends=` entry of a module's .modinfo section (NUL-separated `key=value` strings).
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    module
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

fn find_file(dir: &Path, matches: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = e.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, matches) {
                return Some(found);
            }
        } else if matches(&e.file_name().to_string_lossy()) {
            return Some(path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_records_are_padded_to_four_bytes() {
        let mut out = Vec::new();
        entry(&mut out, 1, "init", 0o100_755, b"abcde", (0, 0)).unwrap();
        // header 110 + "init\0" 5 = 115 → 116; data 5 → 8.
        assert_eq!(out.len(), 116 + 8);
        assert!(out.starts_with(b"070701"));
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..121], b"abcde");
    }

    #[test]
    fn modinfo_depends_reads_the_list() {
        let m = b"\0license=GPL\0depends=nf_tables,nfnetlink\0vermagic=6.1\0";
        assert_eq!(modinfo_depends(m), ["nf_tables", "nfnetlink"]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
    }
}
