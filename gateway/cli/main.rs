//! The `switchyard` command: argument parsing and nothing else. Each subcommand calls into
//! the library; errors are reported here with `anyhow` and a non-zero exit.

/// mimalloc instead of glibc malloc: Pingora allocates per request (headers, tasks, bodies)
/// and glibc's allocator was ~15% of the proxy's CPU in profiles; with mimalloc a bare
/// Pingora proxy went from 11k to 19k req/s on one core (see CHANGELOG for the measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard::tools;
use switchyard_gateway::server;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A routing gateway for ML inference"
)]
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
        /// The region this instance runs in (a region of the policy), overriding
        /// `SWITCHYARD_REGION` and the policy's `gateway_region`.
        #[arg(long)]
        region: Option<String>,
    },
    /// Validate policy files: every error and warning with file:line:col; exit non-zero
    /// only if a file has errors.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format (`json` for CI).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Dry-run a request against a policy file, offline: the class, every candidate pool
    /// with its estimate, and the choice (estimates are the policy's baselines).
    Explain {
        /// The YAML routing policy.
        #[arg(long, short)]
        policy: PathBuf,
        /// The client address as the gateway would see it (looked up in the GeoIP database).
        #[arg(long, conflicts_with = "region", required_unless_present = "region")]
        client_ip: Option<std::net::IpAddr>,
        /// The client region, instead of an address.
        #[arg(long)]
        region: Option<String>,
        /// Decide as the instance in this region would (default: the policy's
        /// `gateway_region`).
        #[arg(long)]
        gateway_region: Option<String>,
        /// The SLO tier (sent as `x-slo-tier`); default: the route's.
        #[arg(long)]
        tier: Option<String>,
        /// The model asked for.
        #[arg(long)]
        model: String,
        /// The request path; default: the first route that can carry the model.
        #[arg(long)]
        path: Option<String>,
        /// Extra request header, `-H 'name: value'` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Which routing decisions change between two policies, over region × tier × model,
    /// and how estimated latency and cost move.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Decide as the instance in this region would (default: each policy's
        /// `gateway_region`).
        #[arg(long)]
        gateway_region: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the JSON Schema (draft 2020-12) of the policy file (shipped as policies/schema.json).
    Schema,
    /// Run the whole system on this machine: mock fleet, gateway and sample traffic.
    Demo {
        /// Print the traffic table and exit instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// The policy to serve and watch (default: the repository's policies/demo.yaml when
        /// run from the repository, else the embedded copy, written to a temporary file).
        #[arg(long, short)]
        policy: Option<PathBuf>,
        /// How many sample requests to send.
        #[arg(long, default_value_t = 600)]
        requests: usize,
        /// Record the demo's traffic as a decision log (JSON lines) to this file, for
        /// `switchyard simulate --trace FILE --policy policies/demo.yaml`.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Listen on free ports instead of the policy's (8080, 9090 and 9101… in the demo
        /// policy): the gateway, its admin listener and every mock backend get a port from
        /// the system, and the demo serves a copy of the policy naming them, written to its
        /// own directory (the path is printed). For tests, or beside another demo.
        #[arg(long)]
        free_ports: bool,
        /// Run a fault scenario instead (`fleet-faults`): Switchyard against round-robin and
        /// always-GPU on the same traffic while the fleet slows down, loses an endpoint and
        /// recovers; prints the report and exits.
        #[arg(long)]
        scenario: Option<String>,
        /// Seconds per scenario phase (four phases).
        #[arg(long, default_value_t = 10)]
        phase_secs: u64,
        /// Scenario requests per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Print the scenario report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Simulate policies on a virtual clock against a scenario's traffic and faults, beside
    /// round-robin, always-GPU and the exact offline bounds (`optimum` within the policy's
    /// pool lists, `relaxed` without): SLO attainment, latency, spend (capacity, usage,
    /// egress) and its distance to the bounds, pool utilisation, per phase, in seconds
    /// instead of minutes.
    Simulate {
        /// The built-in scenario (`fleet-faults`, as in `demo --scenario`).
        #[arg(long, default_value = "fleet-faults")]
        scenario: String,
        /// A scripted workload (YAML: phases with rates, region and tier mix, faults) played
        /// against the scenario's fleet, instead of the scenario's traffic.
        #[arg(long)]
        workload: Option<PathBuf>,
        /// A policy to simulate (repeatable); default: the scenario's own policy.
        #[arg(long, short)]
        policy: Vec<PathBuf>,
        /// Seconds per scenario phase (four phases).
        #[arg(long, default_value_t = 10)]
        phase_secs: u64,
        /// Requests per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seed of the service-time draws and the endpoint choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Multiply every phase's request rate (e.g. `3`: what if traffic triples?); with
        /// `--trace`, replay K times as fast.
        #[arg(long, default_value_t = 1.0)]
        rate_scale: f64,
        /// Replay a decision log (`observe.decision_log`) instead of the scenario.
        #[arg(long, conflicts_with = "workload")]
        trace: Option<PathBuf>,
        /// With `--trace`: the policy whose pools, regions and tiers are the fleet (default:
        /// the first `--policy`).
        #[arg(long)]
        fleet: Option<PathBuf>,
        /// With `--trace`: report phases (equal lengths of the trace's time span).
        #[arg(long, default_value_t = 1)]
        phases: usize,
        /// Print the report as JSON (the shape of `demo --scenario --json`).
        #[arg(long)]
        json: bool,
        /// Play the first `--policy`'s rollout of this model against a good, a 3× slower
        /// and a 5 %-error canary instead (`simulate/rollout.rs`).
        #[arg(long)]
        rollout: Option<String>,
        /// With `--rollout`: the most requests per canary.
        #[arg(long, default_value_t = 200_000)]
        requests: u64,
        /// Autoscale the workload's `capacity:` pool instead, four ways on the same arrivals
        /// (fixed for the peak, a CPU HPA at 70 %, Switchyard's desired replicas reactive
        /// and forecast): replica-hours, capacity cost, realtime attainment, misses during
        /// ramps (`simulate/capacity.rs`).
        #[arg(long, requires = "workload")]
        capacity: bool,
    },
    /// Search tier weights, `on_slo_miss`, hedging and pool lists, and provisioned pools'
    /// replicas, for the lowest spend that meets SLO targets in every phase of a simulated
    /// workload; print the best candidates, their attainment per phase and the YAML lines to
    /// change.
    Tune {
        /// The policy to tune.
        #[arg(long, short)]
        policy: PathBuf,
        /// Target SLO attainment, `TIER=PERCENT` (repeatable), e.g. `realtime=99.5%`.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// A scripted workload file; default: the `fleet-faults` scenario.
        #[arg(long)]
        workload: Option<PathBuf>,
        /// Tune on a replayed decision log instead (the fleet: `--fleet`, else the policy).
        #[arg(long, conflicts_with = "workload")]
        trace: Option<PathBuf>,
        /// With `--trace`: the policy describing the fleet (default: `--policy`).
        #[arg(long)]
        fleet: Option<PathBuf>,
        /// With `--trace`: phases, each of which must meet the targets.
        #[arg(long, default_value_t = 1)]
        phases: usize,
        /// Seconds per scenario phase (four phases).
        #[arg(long, default_value_t = 10)]
        phase_secs: u64,
        /// Scenario requests per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seed of the service-time draws and the endpoint choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the tuned policy here (`check` accepts it; the original is never touched).
        #[arg(long)]
        write: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
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
        Command::Check { files, format } => check(&files, format),
        Command::Explain {
            policy,
            client_ip,
            region,
            gateway_region,
            tier,
            model,
            path,
            headers,
            format,
        } => {
            let args = tools::ExplainArgs {
                client_ip,
                region,
                tier,
                model,
                path,
                headers,
            };
            report(explain(&policy, gateway_region.as_deref(), &args, format))
        }
        Command::Diff {
            old,
            new,
            gateway_region,
            format,
        } => report(diff(&old, &new, gateway_region.as_deref(), format)),
        Command::Simulate {
            scenario,
            workload,
            policy,
            phase_secs,
            rate,
            seed,
            rate_scale,
            trace,
            fleet,
            phases,
            json,
            rollout,
            requests,
            capacity,
        } => {
            if let Some(model) = rollout {
                return report(simulate_rollout(
                    &policy, &model, rate, requests, seed, json,
                ));
            }
            let opts = switchyard::simulate::SimOptions {
                scenario,
                workload,
                phase: std::time::Duration::from_secs(phase_secs.max(1)),
                rate: rate.clamp(1.0, 1_000_000.0),
                seed,
                policies: policy,
                rate_scale,
                trace,
                fleet,
                phases,
            };
            if capacity {
                return report(simulate_capacity(&opts, json));
            }
            report(simulate(&opts, json))
        }
        Command::Tune {
            policy,
            targets,
            workload,
            trace,
            fleet,
            phases,
            phase_secs,
            rate,
            seed,
            write,
            json,
        } => {
            let sim = switchyard::simulate::SimOptions {
                scenario: "fleet-faults".into(),
                workload,
                phase: std::time::Duration::from_secs(phase_secs.max(1)),
                rate: rate.clamp(1.0, 1_000_000.0),
                seed,
                fleet: fleet.or_else(|| trace.as_ref().map(|_| policy.clone())),
                policies: Vec::new(),
                rate_scale: 1.0,
                trace,
                phases,
            };
            report(tune(policy, &targets, sim, write, json))
        }
        Command::Schema => {
            print!("{}", tools::schema::render());
            ExitCode::SUCCESS
        }
        Command::Run {
            policy,
            listen,
            admin_listen,
            region,
        } => {
            init_logging();
            // The flag wins over the environment; an empty variable means unset.
            let region = region.or_else(|| {
                std::env::var("SWITCHYARD_REGION")
                    .ok()
                    .filter(|r| !r.is_empty())
            });
            match run(policy, listen, admin_listen, region) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            once,
            policy,
            requests,
            record,
            free_ports,
            scenario,
            phase_secs,
            rate,
            json,
        } => {
            if std::env::var_os("RUST_LOG").is_none() {
                std::env::set_var("RUST_LOG", "warn");
            }
            init_logging();
            if let Some(name) = scenario {
                let opts = switchyard::scenario::ScenarioOptions {
                    name,
                    phase: std::time::Duration::from_secs(phase_secs.max(1)),
                    rate: rate.clamp(1.0, 5000.0),
                    json,
                };
                return match switchyard::scenario::run(opts) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("switchyard demo: {e:#}");
                        ExitCode::FAILURE
                    }
                };
            }
            match switchyard::demo::run(switchyard::demo::DemoOptions {
                once,
                requests,
                policy,
                record,
                free_ports,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(files: &[PathBuf], format: Format) -> ExitCode {
    let reports: Vec<_> = files.iter().map(|f| tools::check::check_file(f)).collect();
    if format == Format::Json {
        println!("{}", tools::check::render_json(&reports));
    } else {
        let (out, err) = tools::check::render_text(&reports);
        print!("{out}");
        eprint!("{err}");
    }
    if reports.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `simulate --rollout MODEL`.
fn simulate_rollout(
    policy: &[PathBuf],
    model: &str,
    rate: f64,
    requests: u64,
    seed: u64,
    json: bool,
) -> Result<()> {
    let path = policy
        .first()
        .ok_or_else(|| anyhow::anyhow!("--rollout needs a --policy"))?;
    let r = switchyard::simulate::rollout::run(path, model, rate.max(0.001), requests, seed)
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", switchyard::simulate::rollout::render(&r));
    }
    Ok(())
}

fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn explain(
    policy: &std::path::Path,
    gateway_region: Option<&str>,
    args: &tools::ExplainArgs,
    format: Format,
) -> Result<()> {
    let table = tools::load_at(policy, gateway_region)?;
    let v = tools::explain(&table, args)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Format::Text => print!("{}", tools::render_explain(&v)),
    }
    Ok(())
}

/// `simulate --workload FILE --capacity`.
fn simulate_capacity(opts: &switchyard::simulate::SimOptions, json: bool) -> Result<()> {
    let r = switchyard::simulate::run_capacity(opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", switchyard::simulate::capacity::render(&r));
    }
    Ok(())
}

fn simulate(opts: &switchyard::simulate::SimOptions, json: bool) -> Result<()> {
    let r = switchyard::simulate::run(opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", switchyard::simulate::render(&r));
    }
    Ok(())
}

fn tune(
    policy: PathBuf,
    targets: &[String],
    sim: switchyard::simulate::SimOptions,
    write: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    use switchyard::simulate::tune;
    let targets = targets
        .iter()
        .map(|t| tune::parse_target(t).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let r = tune::tune(&tune::TuneOptions {
        policy,
        sim,
        targets,
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", tune::render(&r));
    }
    let Some(tuned) = &r.tuned else {
        anyhow::bail!("no candidate meets the targets");
    };
    if let Some(out) = write {
        std::fs::write(&out, tuned).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn diff(
    old: &std::path::Path,
    new: &std::path::Path,
    gateway_region: Option<&str>,
    format: Format,
) -> Result<()> {
    let a = tools::load_at(old, gateway_region)
        .with_context(|| format!("old policy {}", old.display()))?;
    let b = tools::load_at(new, gateway_region)
        .with_context(|| format!("new policy {}", new.display()))?;
    let r = tools::diff::diff(&a, &b);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Format::Text => print!("{}", tools::diff::render_text(&r)),
    }
    Ok(())
}

fn run(
    policy: PathBuf,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    region: Option<String>,
) -> Result<()> {
    let built = server::build_from_file(server::Options {
        policy_path: Some(policy.clone()),
        listen,
        admin_listen,
        region,
    })
    .with_context(|| format!("cannot start with policy {}", policy.display()))?;
    let table = built.control.snapshot.load();
    let region = table
        .gateway_region
        .map_or("unknown", |g| table.regions[g as usize].as_str());
    tracing::info!(proxy = %built.proxy_addr, admin = %built.admin_addr, version = %table.version, region, "switchyard serving");
    built.run_forever()
}
