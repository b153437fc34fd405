//! `egress-agent`: the node agent and its CLI. Parsing and logging happen here; each
//! subcommand lives in its own module under `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Run(_)) {
        // A CLI command whose output is piped into `head` ends quietly when the pipe closes,
        // as Unix tools do, instead of panicking on the failed write. (Not the agent: it
        // writes to sockets whose clients may go, and must get EPIPE, not die.)
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    cli::init_logging(args.log_format, args.verbose);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
