//! The plots of `--svg`.

use forkserver_benches::ballast::fmt_bytes;
use forkserver_benches::stats::Summary;
use forkserver_benches::svg::{Chart, Series};
use forkserver_benches::Result;

use crate::latency::FD_COUNTS;
use crate::plan::GIB;
use crate::results::Results;
use crate::zygote::BIG_ZYGOTE_MIB;

/// The two plots: latency against fds in the bundle, and against the client's RSS.
pub(crate) fn charts(r: &Results) -> Result<Vec<(&'static str, Chart)>> {
    let us = |s: &Summary| s.median_ns as f64 / 1e3;
    let l = &r.latency;
    let by_fds = |prefix: &str| -> Result<Vec<(f64, f64)>> {
        FD_COUNTS
            .iter()
            .map(|n| Ok((f64::from(*n), us(l.get(&format!("{prefix}{n}"))?))))
            .collect()
    };
    let flat = |name: &str| -> Result<Vec<(f64, f64)>> {
        let y = us(l.get(name)?);
        Ok(vec![(0.0, y), (256.0, y)])
    };
    let fds = Chart {
        title: "forkserver: latency vs fds in the bundle (medians)".into(),
        x_label: "fds in the bundle".into(),
        y_label: "µs".into(),
        x_ticks: [0, 64, 128, 192, 256]
            .iter()
            .map(|&x| (f64::from(x), x.to_string()))
            .collect(),
        log_y: false,
        series: vec![
            Series {
                name: "ours request→exit".into(),
                color: "#1f77b4",
                points: by_fds("ours_exit_fds")?,
                dashed: false,
            },
            Series {
                name: "ours request→pid".into(),
                color: "#2ca02c",
                points: by_fds("ours_pid_fds")?,
                dashed: false,
            },
            Series {
                name: "fork+_exit+waitpid".into(),
                color: "#d62728",
                points: flat("limit_fork_exit_wait")?,
                dashed: true,
            },
            Series {
                name: "fork→pid".into(),
                color: "#ff7f0e",
                points: flat("limit_fork_to_pid")?,
                dashed: true,
            },
        ],
    };
    let gib = |b: usize| b as f64 / GIB as f64;
    let by_size = |name: &str| -> Result<Vec<(f64, f64)>> {
        r.rss
            .iter()
            .map(|s| Ok((gib(s.bytes), us(s.group.get(name)?) / 1e3)))
            .collect()
    };
    let rss = Chart {
        title: "latency vs client RSS (medians, log scale)".into(),
        x_label: "touched heap in the client (GiB)".into(),
        y_label: "ms".into(),
        x_ticks: r
            .rss
            .iter()
            .map(|s| (gib(s.bytes), fmt_bytes(s.bytes)))
            .collect(),
        log_y: true,
        series: vec![
            Series {
                name: "direct fork+_exit+waitpid".into(),
                color: "#d62728",
                points: by_size("direct_fork_exit_wait")?,
                dashed: false,
            },
            Series {
                name: "ours request→exit".into(),
                color: "#1f77b4",
                points: by_size("ours_exit_fds0")?,
                dashed: false,
            },
            Series {
                name: "std Command /bin/true".into(),
                color: "#7f7f7f",
                points: by_size("std_command_true")?,
                dashed: false,
            },
        ],
    };
    let z = &r.zygote;
    let mib = BIG_ZYGOTE_MIB as f64;
    let by_zygote = |path: &str| -> Result<Vec<(f64, f64)>> {
        Ok(vec![
            (0.0, us(z.get(&format!("exec_small_zygote_{path}"))?) / 1e3),
            (mib, us(z.get(&format!("exec_big_zygote_{path}"))?) / 1e3),
        ])
    };
    let zygote = Chart {
        title: "exec /bin/true vs the server's RSS (medians, log scale)".into(),
        x_label: "touched preload in the zygote server (MiB)".into(),
        y_label: "ms".into(),
        x_ticks: vec![
            (0.0, "small".into()),
            (mib, format!("{BIG_ZYGOTE_MIB} MiB")),
        ],
        log_y: true,
        series: vec![
            Series {
                name: "CLONE_VM exec path".into(),
                color: "#1f77b4",
                points: by_zygote("clone_vm")?,
                dashed: false,
            },
            Series {
                name: "fork exec path (FORKSERVER_EXEC_FORK=1)".into(),
                color: "#d62728",
                points: by_zygote("fork")?,
                dashed: false,
            },
        ],
    };
    Ok(vec![
        ("latency_vs_fds.svg", fds),
        ("latency_vs_rss.svg", rss),
        ("exec_vs_zygote_rss.svg", zygote),
    ])
}
