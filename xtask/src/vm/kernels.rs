//! Debian cloud kernels for the VM matrix, fetched with a private apt configuration (own
//! sources list, lists and cache under `target/vm-test/apt`; /etc/apt and the system's package
//! state are never touched) from the mirror the machine already uses.
//!
//! Each matrix entry names a Debian suite; its kernel is the one the suite's
//! `linux-image-cloud-amd64` meta-package points at. Packages are cached by version, so a
//! run with the same package lists downloads nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The configured matrix: (series as the user names it, Debian suite that ships it).
/// 5.10 is the oldest kernel Debian still serves (4.19 is gone, 5.15 was never packaged).
pub const MATRIX: [(&str, Suite); 4] = [
    ("5.10", Suite::Security("bullseye-security")),
    ("6.1", Suite::Security("bookworm-security")),
    ("6.12", Suite::Main("trixie")),
    ("newest", Suite::Main("sid")),
];

#[derive(Clone, Copy, Debug)]
pub enum Suite {
    /// A suite of the main archive (`…/debian`).
    Main(&'static str),
    /// A suite of the security archive (`…/debian-security`).
    Security(&'static str),
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Self::Main(s) | Self::Security(s) => s,
        }
    }
}

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub series: String,
    /// The image package and its version, e.g. `linux-image-6.1.0-57-cloud-amd64 6.1.192-3`.
    pub package: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the extracted packages.
    pub modules: PathBuf,
}

/// A private apt: `apt-get`/`apt-cache` with every path redirected under `dir`.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let (main, security) = mirrors();
        let mut list = String::new();
        for (_, suite) in MATRIX {
            let uri = match suite {
                Suite::Main(_) => &main,
                Suite::Security(_) => &security,
            };
            list.push_str(&format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {} main\n",
                suite.name()
            ));
        }
        std::fs::write(dir.join("sources.list"), list)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        for (key, value) in [
            ("Dir::State", d("state")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::State::status", "/dev/null".to_owned()),
            ("Dir::Cache", d("cache")),
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", "/dev/null".to_owned()),
            ("Dir::Etc::Preferences", "/dev/null".to_owned()),
            ("Dir::Etc::PreferencesParts", "/dev/null".to_owned()),
            ("APT::Architecture", "amd64".to_owned()),
            ("Debug::NoLocking", "1".to_owned()),
            // Downloads land in a root-owned directory; apt's sandbox user could not write there.
            ("APT::Sandbox::User", "root".to_owned()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    /// Refreshes the package lists. Failure (no network) is not fatal while cached lists
    /// exist: kernels already downloaded can still be tested.
    pub fn update(&self) -> anyhow::Result<()> {
        let out = self.command("apt-get").args(["update", "-q"]).output()?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let cached = std::fs::read_dir(self.dir.join("lists"))?.count() > 2;
        if cached {
            eprintln!("vm-test: apt-get update failed, using cached package lists: {err}");
            Ok(())
        } else {
            bail!("apt-get update failed and no package lists are cached: {err}")
        }
    }

    /// The kernel of `suite`, downloaded (or found in the cache) and extracted under `dir`.
    pub fn kernel(&self, series: &str, suite: Suite, dir: &Path) -> anyhow::Result<Kernel> {
        let meta = "linux-image-cloud-amd64";
        let madison = output(self.command("apt-cache").args(["madison", meta]))?;
        let version = madison
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split('|').map(str::trim).collect();
                (cols.len() == 3).then(|| (cols[1], cols[2]))
            })
            .find(|(_, source)| {
                source
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|s| s.split('/').next() == Some(suite.name()))
            })
            .map(|(v, _)| v.to_owned())
            .with_context(|| format!("{meta} is not in {}", suite.name()))?;
        let image = depends(&self.show(meta, &version)?)
            .into_iter()
            .find(|d| d.starts_with("linux-image-"))
            .with_context(|| format!("{meta} {version} depends on no linux-image package"))?;
        // Newer kernels split the image package into linux-binary-* and linux-modules-*.
        let mut packages = vec![image.clone()];
        packages.extend(
            depends(&self.show(&image, &version)?)
                .into_iter()
                .filter(|d| d.starts_with("linux-binary-") || d.starts_with("linux-modules-")),
        );
        let extracted = dir.join(format!("{image}_{version}"));
        if !extracted.join(".complete").exists() {
            let _ = std::fs::remove_dir_all(&extracted);
            std::fs::create_dir_all(&extracted)?;
            for package in &packages {
                let deb = self.download(package, &version)?;
                run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
            }
            std::fs::write(extracted.join(".complete"), "")?;
        }
        let (vmlinuz, modules) = find_kernel(&extracted)?;
        Ok(Kernel {
            series: series.to_owned(),
            package: format!("{image} {version}"),
            vmlinuz,
            modules,
        })
    }

    fn show(&self, package: &str, version: &str) -> anyhow::Result<String> {
        output(
            self.command("apt-cache")
                .args(["show", "--no-all-versions"])
                .arg(format!("{package}={version}")),
        )
    }

    /// The .deb of `package` at `version`, from the cache or downloaded into it.
    fn download(&self, package: &str, version: &str) -> anyhow::Result<PathBuf> {
        let debs = self.dir.join("debs");
        // apt writes `<package>_<version with ':' escaped>_<arch>.deb`.
        let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
        let find = || {
            std::fs::read_dir(&debs)
                .ok()?
                .filter_map(Result::ok)
                .find_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| e.path())
                })
        };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        eprintln!("vm-test: downloading {package} {version}");
        run(self
            .command("apt-get")
            .args(["download", "-q"])
            .arg(format!("{package}={version}"))
            .current_dir(&debs))?;
        find().with_context(|| format!("apt-get download left no .deb for {package}"))
    }
}

/// The Debian mirrors of this machine's own apt sources (main archive, security archive).
fn mirrors() -> (String, String) {
    let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.filter_map(Result::ok) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    let uris: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .collect();
    let pick = |security: bool| {
        uris.iter()
            .find(|u| {
                let u = u.trim_end_matches('/');
                if security {
                    u.ends_with("/debian-security")
                } else {
                    u.ends_with("/debian")
                }
            })
            .map(|u| u.trim_end_matches('/').to_owned())
    };
    (
        pick(false).unwrap_or_else(|| "http://deb.debian.org/debian".to_owned()),
        pick(true).unwrap_or_else(|| "http://deb.debian.org/debian-security".to_owned()),
    )
}

/// Package names in the `Depends:` field of `apt-cache show` output.
fn depends(show: &str) -> Vec<String> {
    show.lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .map(|d| {
            d.split(',')
                .filter_map(|alt| alt.split('|').next())
                .filter_map(|p| p.split_whitespace().next())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `boot/vmlinuz-*` (or `usr/lib/modules/<release>/vmlinuz`) and the modules directory.
fn find_kernel(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    for lib in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = std::fs::read_dir(root.join(lib)) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let modules = e.path();
            let release = e.file_name().to_string_lossy().into_owned();
            let candidates = [
                root.join("boot").join(format!("vmlinuz-{release}")),
                modules.join("vmlinuz"),
            ];
            if let Some(vmlinuz) = candidates.into_iter().find(|p| p.is_file()) {
                return Ok((vmlinuz, modules));
            }
        }
    }
    bail!("no vmlinuz with a modules directory in {}", root.display())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_takes_the_first_alternative_without_versions() {
        let show = "Package: x\nDepends: dracut | initramfs-tools (>= 0.120), linux-binary-7.2 (= 7.2-1), linux-modules-7.2 (= 7.2-1)\n";
        assert_eq!(
            depends(show),
            ["dracut", "linux-binary-7.2", "linux-modules-7.2"]
        );
    }
}
