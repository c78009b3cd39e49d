//! The command line: `--quick`, `--json FILE`, `--svg DIR`, `--only typed`,
//! `--profile-loop N`, `--fds K`, `--threads T`, `--exec`, `--wait-stdin` (and the internal
//! `--small-client`).

use std::path::PathBuf;

pub(crate) const USAGE: &str = "\
usage: compare [--quick] [--json FILE] [--svg DIR] [--only typed]
               [--profile-loop N [--fds K] [--threads T] [--exec] [--wait-stdin]]

  --quick           fewer iterations and smaller client RSS (256 MiB, 1 GiB): under a minute
  --json FILE       write every summary and the ratios as JSON to FILE
  --svg DIR         write latency_vs_fds.svg and latency_vs_rss.svg into DIR
  --only typed      only group 8: typed calls against procspawn and zygote (no --svg)
  --profile-loop N  only run N noop spawns (spawn+wait) and print the server's pid
                    (for strace/perf; nothing is measured)
  --fds K           fds in the bundle of --profile-loop (default 3)
  --threads T       client threads of --profile-loop, sharing one Client (default 1)
  --exec            --profile-loop spawns /bin/true (stdio on /dev/null) instead of noop
  --wait-stdin      --profile-loop waits for a line on stdin after its 10 warm-up spawns
                    (attach strace to the printed pid, then send the line)
";

/// Command-line options.
#[derive(Debug, Default)]
pub(crate) struct Args {
    pub(crate) quick: bool,
    pub(crate) json: Option<PathBuf>,
    pub(crate) svg: Option<PathBuf>,
    /// `--only typed`: group 8 alone.
    pub(crate) only_typed: bool,
    pub(crate) profile_loop: Option<usize>,
    pub(crate) profile_fds: Option<u32>,
    pub(crate) profile_threads: Option<usize>,
    pub(crate) profile_exec: bool,
    pub(crate) profile_wait: bool,
    /// Internal: run as the small client of the RSS group (`small_client::serve`).
    pub(crate) small_client: Option<PathBuf>,
}

pub(crate) fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = Some(value("--json")?.into()),
            "--svg" => args.svg = Some(value("--svg")?.into()),
            "--only" => match value("--only")?.as_str() {
                "typed" => args.only_typed = true,
                other => return Err(format!("unknown section {other:?} (known: typed)")),
            },
            "--profile-loop" => {
                let v = value("--profile-loop")?;
                args.profile_loop = Some(v.parse().map_err(|_| format!("bad count {v:?}"))?);
            }
            "--fds" => {
                let v = value("--fds")?;
                args.profile_fds = Some(v.parse().map_err(|_| format!("bad count {v:?}"))?);
            }
            "--threads" => {
                let v = value("--threads")?;
                let t = v.parse().ok().filter(|&t| t > 0);
                args.profile_threads = Some(t.ok_or_else(|| format!("bad count {v:?}"))?);
            }
            "--exec" => args.profile_exec = true,
            "--wait-stdin" => args.profile_wait = true,
            "--small-client" => args.small_client = Some(value("--small-client")?.into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.only_typed && (args.svg.is_some() || args.profile_loop.is_some()) {
        return Err("--only typed takes neither --svg nor --profile-loop".into());
    }
    Ok(args)
}
