//! `egress-agent events`: the denied flows, from the running agent's local API.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use egress_agent::{
    agent::api::{Request, socket_path},
    events::FlowRecord,
};

use super::DEFAULT_STATE_DIR;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's state directory (its local API socket is there).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Keep printing flows as they are denied (again).
    #[arg(long, short)]
    follow: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Only flows denied within this long (e.g. `10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
}

/// Asks the agent for the flows denied since `since` (all of them without); `follow` keeps
/// the connection open. Calls `each` for every record received.
pub fn fetch(
    state_dir: &std::path::Path,
    since: Option<Duration>,
    follow: bool,
    mut each: impl FnMut(FlowRecord) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the agent at {} (is `egress-agent run` running with this --state-dir?)",
            path.display()
        )
    })?;
    let since_ms = since.map_or(0, |d| {
        (egress_agent::agent::now() * 1000).saturating_sub(d.as_millis() as u64)
    });
    let mut request = serde_json::to_vec(&Request::Events { since_ms, follow })?;
    request.push(b'\n');
    stream.write_all(&request)?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let value: serde_json::Value = serde_json::from_str(&line)?;
        if let Some(error) = value.get("error") {
            anyhow::bail!("the agent refused the request: {error}");
        }
        each(serde_json::from_value(value)?)?;
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        state_dir,
        follow,
        json,
        since,
    } = args;
    let mut header = !json;
    let mut out = std::io::stdout().lock();
    fetch(&state_dir, since, follow, |r| {
        if json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        } else {
            if header {
                writeln!(
                    out,
                    "{:<20} {:>6}  {:<10} {:<19} {:<44} {:<28} {:<22} CGROUP",
                    "LAST SEEN",
                    "COUNT",
                    "VERDICT",
                    "REASON",
                    "DESTINATION",
                    "HOSTNAMES",
                    "PROCESS"
                )?;
                header = false;
            }
            writeln!(out, "{}", row(&r))?;
        }
        out.flush()?;
        Ok(())
    })?;
    if header {
        println!("(no denied flows)");
    }
    Ok(ExitCode::SUCCESS)
}

fn row(r: &FlowRecord) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(r.last_seen_ms);
    let destination = match r.destination {
        _ if r.hook == "socket" => format!("{} socket, protocol {} (socket)", r.family, r.protocol),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}/{} ({})", r.port, r.protocol, r.hook),
        a => format!("{a}:{}/{} ({})", r.port, r.protocol, r.hook),
    };
    let names = if r.hostnames.is_empty() {
        "unknown".to_owned()
    } else {
        r.hostnames.join(",")
    };
    let process = if r.pid == 0 {
        "-".to_owned()
    } else {
        format!("{} ({})", r.comm, r.pid)
    };
    let cgroup = match (&r.pod, &r.pod_uid, &r.cgroup) {
        (Some(name), _, _) => format!("pod {name}"),
        (None, Some(pod), _) => format!("pod {pod}"),
        (None, None, Some(c)) => c.clone(),
        (None, None, None) => format!("cgroup id {}", r.cgroup_id),
    };
    format!(
        "{:<20} {:>6}  {:<10} {:<19} {:<44} {:<28} {:<22} {cgroup}",
        humantime::format_rfc3339_seconds(at).to_string(),
        r.count,
        r.verdict,
        r.reason,
        destination,
        names,
        process,
    )
}
