//! The comparative benchmark harness: forkserver against `fork()` in the caller,
//! `std::process::Command`, and CPython's `multiprocessing` forkserver, in one run.
//!
//! ```sh
//! cargo run --release -p forkserver-benches --bin compare -- [--quick] [--json FILE] [--svg DIR]
//! cargo run --release -p forkserver-benches --bin compare -- --only typed [--quick] [--json FILE]
//! ```
//!
//! This binary is its own zygote server: launched by itself (`Client::launch(current_exe)`), it
//! serves the entry point `noop`, which returns 0 at once, and the typed entries and the worker
//! of group 8 (`peers`). It is also procspawn's child (group 8 measures `procspawn::spawn`,
//! which re-executes it) and the parent of `zygote`'s zygote process. Scenarios of a group run
//! interleaved (round-robin, or shuffled rounds in group 8) after a warm-up; each reports
//! median, p90 and p99. What each group measures and why is in `benches/BENCHMARKS.md`.
#![deny(clippy::undocumented_unsafe_blocks)]

mod args;
mod charts;
mod exec;
mod footprint;
mod latency;
mod peers;
mod plan;
mod profile;
mod python;
mod results;
mod rss;
mod scenarios;
mod tables;
mod throughput;
mod zygote;

use std::process::ExitCode;
use std::time::Instant;

use forkserver_benches::{procfs, Result};
use forkserver_client::Client;

use crate::args::{parse_args, Args, USAGE};
use crate::charts::charts;
use crate::exec::exec_group;
use crate::footprint::{footprint, footprint_after};
use crate::latency::latency_group;
use crate::plan::Plan;
use crate::profile::profile_loop;
use crate::python::cpython_group;
use crate::results::{machine_json, ratios, to_json, Results};
use crate::rss::rss_group;
use crate::tables::{print_ratios, print_tables};
use crate::throughput::throughput_group;
use crate::zygote::zygote_group;

fn main() -> ExitCode {
    // Launched by ourselves as the server: serve and never return.
    peers::register(
        forkserver_server::Zygote::new()
            .preload(zygote::preload)
            .entry("noop", |_| 0),
    )
    .serve_if_requested();
    // Started by procspawn (group 8): run the function and exit.
    peers::init_procspawn();

    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("compare: {msg}");
            }
            eprint!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let result = match (&args.small_client, args.profile_loop) {
        (Some(socket), _) => forkserver_benches::small_client::serve(socket),
        (None, Some(n)) => profile_loop(n, &args),
        (None, None) => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

// ----- the run -------------------------------------------------------------------------------

fn run(args: &Args) -> Result<()> {
    let plan = Plan::new(args.quick);
    let t0 = Instant::now();
    // Before any thread, connection or launched server (group 8).
    peers::init_zygote();
    if args.only_typed {
        return run_typed_only(args, &plan, t0);
    }
    raise_nofile_limit();
    let client = Client::launch(std::env::current_exe()?)?;
    let server_pid = client.launched_server_pid().ok_or("no server pid")?;
    let idle = footprint(&client, server_pid)?;
    let harness_rss_kib = procfs::vm_rss_kib("self").unwrap_or(0);

    eprintln!("[1-2/8] latency: fork limit vs ours, 0/3/64/256 fds");
    let cold = Client::connect_with_key(
        client.socket_path(),
        client.auth_key().ok_or("the launched server has no key")?,
    )?;
    cold.set_max_idle_connections(0);
    let cold_noauth = Client::launcher(std::env::current_exe()?)
        .authenticate(false)
        .launch()?;
    cold_noauth.set_max_idle_connections(0);
    let prefork = Client::launcher(std::env::current_exe()?)
        .env(forkserver_server::PREFORK_ENV, "4")
        .launch()?;
    let latency = latency_group(&client, &cold, &cold_noauth, &prefork, &plan)?;
    drop(cold);
    drop(cold_noauth);
    drop(prefork);
    eprintln!("[3/8] exec: /bin/true through the server vs std::process::Command");
    let exec = exec_group(&client, &plan)?;
    eprintln!("[3b/8] exec from a small and a 512 MiB zygote, CLONE_VM and fork paths");
    let zygote = zygote_group(&plan)?;
    eprintln!("[4/8] client RSS");
    let rss = rss_group(&client, &plan)?;
    eprintln!("[5/8] CPython multiprocessing forkserver");
    let cpython = cpython_group(&client, &plan)?;
    if cpython.is_none() {
        eprintln!("  python3 not found: skipped");
    }
    eprintln!("[6/8] throughput: 1, 2, 4 client threads");
    let throughput = throughput_group(&client, &plan)?;
    eprintln!("[7/8] server footprint");
    let after = footprint_after(&client, server_pid, plan.footprint_spawns)?;
    eprintln!("[8/8] typed calls: ours vs procspawn, a worker's call vs zygote, 8 threads");
    let peers = peers::peers_group(&client, &plan)?;

    let results = Results {
        quick: args.quick,
        harness_rss_kib,
        latency,
        exec,
        zygote,
        rss,
        cpython,
        throughput,
        server_pid,
        idle,
        after,
        peers,
    };
    let ratios = ratios(&results)?;
    print_tables(&results, &ratios);
    eprintln!("total time {:.1} s", t0.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let doc = to_json(&results, &plan, ratios);
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir)?;
        for (name, chart) in charts(&results)? {
            let path = dir.join(name);
            std::fs::write(&path, chart.render()?)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// `--only typed`: group 8 alone, its tables, ratios and JSON.
fn run_typed_only(args: &Args, plan: &Plan, t0: Instant) -> Result<()> {
    let client = Client::launch(std::env::current_exe()?)?;
    eprintln!("[8] typed calls: ours vs procspawn, a worker's call vs zygote, 8 threads");
    let peers = peers::peers_group(&client, plan)?;
    let mut ratios = serde_json::Map::new();
    peers::put_ratios(&peers, &mut ratios)?;
    println!(
        "# forkserver compare --only typed ({})",
        if args.quick { "quick" } else { "full" }
    );
    peers::print(&peers);
    print_ratios(&ratios);
    eprintln!("total time {:.1} s", t0.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "mode": if args.quick { "quick" } else { "full" },
            "only": "typed",
            "machine": machine_json(),
            "plan": plan.to_json(),
            "typed_peers": peers::to_json(&peers),
            "ratios": ratios,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The 256-fd scenarios hold 256 fds in the builder and 256 more per spawn: make sure the
/// soft fd limit allows it (raised to the hard limit).
pub(crate) fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
