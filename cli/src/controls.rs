//! The per-child controls of `forkserver run` (protocol rev 0.6): the flags, their parsing and
//! how they go on the client's [`Command`].

use clap::Args;
use forkserver_client::Command;
use forkserver_protocol::{Rlimit, RLIMIT_NAMES, RLIM_INFINITY};

/// What the command's process gets besides its argv, environment and fds.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Controls {
    /// Set a resource limit of the command before it runs: NAME is an RLIMIT_* resource
    /// lowercased without the prefix (nofile, nproc, core, as, cpu, ...), SOFT and HARD a
    /// number or `infinity`; HARD defaults to SOFT, as `prlimit --nofile=64` and systemd's
    /// `LimitNOFILE=64` do (repeatable).
    #[arg(long = "rlimit", value_name = "NAME=SOFT[:HARD]", value_parser = parse_rlimit)]
    pub rlimits: Vec<Rlimit>,
    /// The command's umask, in octal (e.g. 077).
    #[arg(long, value_name = "MODE", value_parser = parse_umask)]
    pub umask: Option<u16>,
    /// The command's nice value, -20 (most favourable) to 19.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: Option<i32>,
    /// The command cannot gain privileges through execve (PR_SET_NO_NEW_PRIVS).
    #[arg(long)]
    pub no_new_privs: bool,
    /// The command's OOM score adjustment, -1000 (never killed) to 1000.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub oom_score_adj: Option<i32>,
    /// With --deadline: send SIGTERM at the deadline and SIGKILL this many seconds later
    /// (a decimal number above 0, at most 4294967 s).
    #[arg(long, value_name = "SECS", value_parser = parse_grace)]
    pub grace: Option<std::time::Duration>,
    /// Install the compiled classic-BPF program in FILE (1 to 4096 8-byte struct sock_filter
    /// instructions, as `seccompiler` or `bpfc` write them) as the command's seccomp filter,
    /// the last step before its execve; implies --no-new-privs.
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<std::path::PathBuf>,
    /// Confine the command with landlock: it may write (create, change, rename, remove
    /// files) only beneath DIR (repeatable); reading and executing are not restricted.
    /// Implies --no-new-privs.
    #[arg(long, value_name = "DIR")]
    pub landlock_allow_write: Vec<std::path::PathBuf>,
}

impl Controls {
    /// Puts the controls on `cmd`.
    ///
    /// # Errors
    /// The `--seccomp-filter` file cannot be opened, or the `--landlock-allow-write`
    /// ruleset cannot be built: the message names the flag and the path.
    pub(crate) fn apply(&self, cmd: &mut Command) -> Result<(), String> {
        for l in &self.rlimits {
            cmd.rlimit(l.resource, l.soft, l.hard);
        }
        if let Some(m) = self.umask {
            cmd.umask(m);
        }
        if let Some(n) = self.nice {
            cmd.nice(n);
        }
        cmd.no_new_privs(self.no_new_privs);
        if let Some(n) = self.oom_score_adj {
            cmd.oom_score_adj(n);
        }
        if let Some(g) = self.grace {
            cmd.grace(g);
        }
        if let Some(path) = &self.seccomp_filter {
            let file = std::fs::File::open(path)
                .map_err(|e| format!("--seccomp-filter {}: {e}", path.display()))?;
            cmd.seccomp_filter(file);
        }
        if !self.landlock_allow_write.is_empty() {
            let ruleset = crate::landlock::allow_writes_beneath(&self.landlock_allow_write)?;
            cmd.landlock_ruleset(ruleset);
        }
        Ok(())
    }
}

/// A grace period: above 0, at most `u32::MAX` milliseconds (the wire's field).
fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    let max = u64::from(u32::MAX) / 1000;
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= max as f64 => {
            Ok(std::time::Duration::from_secs_f64(secs))
        }
        _ => Err(format!("`{s}`: seconds above 0 and at most {max}")),
    }
}

/// An octal mode of at most 0o777 (`077`, `0o077`).
fn parse_umask(s: &str) -> Result<u16, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u16::from_str_radix(digits, 8) {
        Ok(m) if m <= forkserver_protocol::MAX_UMASK => Ok(m),
        _ => Err(format!("`{s}`: an octal mode of at most 777")),
    }
}

/// `NAME=SOFT[:HARD]`, e.g. `nofile=64:128`, `core=0`, `as=infinity`.
fn parse_rlimit(s: &str) -> Result<Rlimit, String> {
    let (name, values) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=SOFT[:HARD], e.g. nofile=64:128"))?;
    let resource = Rlimit::resource_by_name(&name.to_ascii_lowercase()).ok_or_else(|| {
        format!(
            "`{name}` is not a resource limit; one of {}",
            RLIMIT_NAMES.join(", ")
        )
    })?;
    let value = |v: &str| match v {
        "infinity" | "unlimited" => Ok(RLIM_INFINITY),
        v => v
            .parse::<u64>()
            .map_err(|e| format!("`{v}`: {e} (a number or `infinity`)")),
    };
    let (soft, hard) = match values.split_once(':') {
        Some((soft, hard)) => (value(soft)?, value(hard)?),
        None => {
            let v = value(values)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err(format!(
            "{name}: the soft limit {soft} is above the hard limit {hard}"
        ));
    }
    Ok(Rlimit {
        resource,
        soft,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_parse_as_prlimit_takes_them() {
        let l = parse_rlimit("nofile=64:128").unwrap();
        assert_eq!((l.resource, l.soft, l.hard), (7, 64, 128));
        let l = parse_rlimit("core=0").unwrap();
        assert_eq!((l.resource, l.soft, l.hard), (4, 0, 0));
        let l = parse_rlimit("AS=1024:infinity").unwrap();
        assert_eq!((l.resource, l.soft, l.hard), (9, 1024, RLIM_INFINITY));
        assert!(parse_rlimit("nofile=128:64").is_err());
        assert!(parse_rlimit("files=1").unwrap_err().contains("nofile"));
        assert!(parse_rlimit("nofile").is_err());
        assert!(parse_rlimit("nofile=x").is_err());
    }

    #[test]
    fn umasks_are_octal() {
        assert_eq!(parse_umask("077"), Ok(0o077));
        assert_eq!(parse_umask("0o027"), Ok(0o027));
        assert!(parse_umask("1000").is_err());
        assert!(parse_umask("8").is_err());
    }
}
