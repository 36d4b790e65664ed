//! The `switchyard` command: argument parsing and nothing else. Each subcommand calls into
//! the library; errors are reported here with `anyhow` and a non-zero exit.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard::{policy, route::state::Fleet, server};

#[derive(Parser)]
#[command(name = "switchyard", version, about = "A routing gateway for ML inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with a policy file.
    Run {
        /// The YAML routing policy.
        #[arg(long, short)]
        policy: PathBuf,
        /// Proxy listener, overriding the policy's `listeners.proxy`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin listener, overriding the policy's `listeners.admin`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Validate policy files; exit non-zero and list every error if any is invalid.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the whole system on this machine: mock fleet, gateway and sample traffic.
    Demo {
        /// Print the traffic table and exit instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// How many sample requests to send.
        #[arg(long, default_value_t = 600)]
        requests: usize,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Run {
            policy,
            listen,
            admin_listen,
        } => {
            init_logging();
            match run(policy, listen, admin_listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { once, requests } => {
            if std::env::var_os("RUST_LOG").is_none() {
                std::env::set_var("RUST_LOG", "warn");
            }
            init_logging();
            let _ = (once, requests);
            ExitCode::FAILURE
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let fleet = Fleet::default();
        match policy::load_file(file, &fleet) {
            Ok(table) => println!(
                "{}: ok (version {}, {} pools, {} routes, {} tiers)",
                file.display(),
                table.version,
                table.pools.len(),
                table.routes.len(),
                table.tiers.len()
            ),
            Err(errors) => {
                failed = true;
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                eprintln!("{}: {} error(s)", file.display(), errors.0.len());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run(policy: PathBuf, listen: Option<SocketAddr>, admin_listen: Option<SocketAddr>) -> Result<()> {
    let built = server::build_from_file(server::Options {
        policy_path: Some(policy.clone()),
        listen,
        admin_listen,
    })
    .with_context(|| format!("cannot start with policy {}", policy.display()))?;
    tracing::info!(proxy = %built.proxy_addr, admin = %built.admin_addr, version = %built.control.snapshot.load().version, "switchyard serving");
    built.server.run_forever()
}
