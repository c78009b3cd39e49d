//! What `forkserver status` and `forkserver run --time` print: the server's `Status` and
//! `Metrics` as text, JSON or the Prometheus text exposition format, and a child's resource
//! usage as `time -v` prints it.
//!
//! One table, [`METRICS`], says how each field of `Metrics` (PROTOCOL.md §5.16) is exposed:
//! its Prometheus family, kind and labels. JSON and text use the field names of the wire.

use std::fmt::Write as _;
use std::time::Duration;

use forkserver_client::{ExitStatus, Metrics, Status};

/// How a `Metrics` field is exposed to Prometheus: the family (without `forkserver_`), whether
/// it is a counter (`_total` is appended) and its labels.
struct Exposed {
    field: &'static str,
    family: &'static str,
    counter: bool,
    labels: &'static str,
    help: &'static str,
}

const fn counter(
    field: &'static str,
    family: &'static str,
    labels: &'static str,
    help: &'static str,
) -> Exposed {
    Exposed {
        field,
        family,
        counter: true,
        labels,
        help,
    }
}

const fn gauge(field: &'static str, family: &'static str, help: &'static str) -> Exposed {
    Exposed {
        field,
        family,
        counter: false,
        labels: "",
        help,
    }
}

const SPAWNS: &str = "Spawn requests by job kind and result, counted when the result is known.";
const KILLS: &str = "Children the server killed, by reason.";
const REFUSED: &str = "Connections or spawns refused before any child existed, by reason.";
const SETUP: &str = "Children that failed before their job ran (ChildSetupFailed), by stage.";

/// Every field of `Metrics`, in wire order (a test checks it against `Metrics::fields`).
const METRICS: [Exposed; Metrics::LEN] = [
    gauge(
        "uptime_s",
        "uptime_seconds",
        "Seconds since the server started.",
    ),
    counter(
        "spawns_exec_ok",
        "spawns",
        r#"kind="exec",result="ok""#,
        SPAWNS,
    ),
    counter(
        "spawns_exec_failed",
        "spawns",
        r#"kind="exec",result="exec_failed""#,
        SPAWNS,
    ),
    counter(
        "spawns_exec_setup_failed",
        "spawns",
        r#"kind="exec",result="setup_failed""#,
        SPAWNS,
    ),
    counter(
        "spawns_entry_ok",
        "spawns",
        r#"kind="entry",result="ok""#,
        SPAWNS,
    ),
    counter(
        "spawns_entry_setup_failed",
        "spawns",
        r#"kind="entry",result="setup_failed""#,
        SPAWNS,
    ),
    counter("kills_deadline", "kills", r#"reason="deadline""#, KILLS),
    counter("kills_disconnect", "kills", r#"reason="disconnect""#, KILLS),
    counter("refused_quota", "refused", r#"reason="quota""#, REFUSED),
    counter("refused_peer", "refused", r#"reason="peer""#, REFUSED),
    counter(
        "refused_max_children",
        "refused",
        r#"reason="max_children""#,
        REFUSED,
    ),
    counter(
        "auth_failures",
        "auth_failures",
        "",
        "Handshakes that failed authentication.",
    ),
    counter(
        "orphans_reaped",
        "orphans_reaped",
        "",
        "Children reaped that no request waited for.",
    ),
    gauge(
        "pool_size",
        "pool_size",
        "Pooled children the server keeps (--prefork).",
    ),
    gauge(
        "pool_idle",
        "pool_idle",
        "Pooled children waiting for a job.",
    ),
    counter(
        "setup_failed_setup",
        "setup_failures",
        r#"stage="setup""#,
        SETUP,
    ),
    counter(
        "setup_failed_session",
        "setup_failures",
        r#"stage="session""#,
        SETUP,
    ),
    counter(
        "setup_failed_limits",
        "setup_failures",
        r#"stage="limits""#,
        SETUP,
    ),
    counter(
        "setup_failed_credentials",
        "setup_failures",
        r#"stage="credentials""#,
        SETUP,
    ),
    counter(
        "setup_failed_sandbox",
        "setup_failures",
        r#"stage="sandbox""#,
        SETUP,
    ),
    counter(
        "setup_failed_chdir",
        "setup_failures",
        r#"stage="chdir""#,
        SETUP,
    ),
];

/// The output formats of `forkserver status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
    Prometheus,
}

/// The report in `format`; `metrics` is `None` for a server before rev 0.6.
pub(crate) fn status(format: Format, s: &Status, metrics: Option<&Metrics>) -> String {
    match format {
        Format::Text => text(s, metrics),
        Format::Json => json(s, metrics),
        Format::Prometheus => prometheus(s, metrics),
    }
}

fn text(s: &Status, metrics: Option<&Metrics>) -> String {
    let mut out = String::new();
    // The status's lines as before rev 0.6 (a column of 17), then the metrics' (of 27).
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let width = if k.contains('_') { 27 } else { 17 };
        let _ = writeln!(out, "{:<width$}{v}", format!("{k}:"));
    };
    line("server", &s.server_version());
    line("protocol", &s.protocol_version());
    line("pid", &s.server_pid());
    line("live children", &s.live_children());
    line("connections", &s.connections());
    line("spawned (total)", &s.spawned_total());
    if let Some(m) = metrics {
        for (name, value) in m.fields() {
            line(name, &value);
        }
    }
    out
}

fn json(s: &Status, metrics: Option<&Metrics>) -> String {
    let mut v = serde_json::json!({
        "server_version": s.server_version(),
        "protocol_version": s.protocol_version(),
        "server_pid": s.server_pid(),
        "live_children": s.live_children(),
        "connections": s.connections(),
        "spawned_total": s.spawned_total(),
    });
    if let (Some(m), Some(obj)) = (metrics, v.as_object_mut()) {
        for (name, value) in m.fields() {
            obj.insert(name.to_owned(), value.into());
        }
    }
    format!("{v}\n")
}

/// One Prometheus family: its name (without `forkserver_`), kind, help and samples (labels,
/// value).
type Family = (String, &'static str, &'static str, Vec<(&'static str, u64)>);

fn prometheus(s: &Status, metrics: Option<&Metrics>) -> String {
    let one = |name: &str, kind, help, v: u64| (name.to_owned(), kind, help, vec![("", v)]);
    let mut families: Vec<Family> = vec![
        one(
            "live_children",
            "gauge",
            "Children forked and not yet reaped.",
            s.live_children().into(),
        ),
        one(
            "connections",
            "gauge",
            "Open client connections.",
            s.connections().into(),
        ),
        one(
            "spawned_total",
            "counter",
            "Spawn requests that got a child.",
            s.spawned_total(),
        ),
    ];
    let values = metrics.map(Metrics::fields).into_iter().flatten();
    for (e, (field, value)) in METRICS.iter().zip(values) {
        debug_assert_eq!(e.field, field, "METRICS follows the wire order");
        let (name, kind) = match e.counter {
            true => (format!("{}_total", e.family), "counter"),
            false => (e.family.to_owned(), "gauge"),
        };
        match families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.push((e.labels, value)),
            None => families.push((name, kind, e.help, vec![(e.labels, value)])),
        }
    }
    let mut out = String::new();
    for (name, kind, help, samples) in families {
        let _ = writeln!(out, "# HELP forkserver_{name} {help}");
        let _ = writeln!(out, "# TYPE forkserver_{name} {kind}");
        for (labels, value) in samples {
            let labels = match labels.is_empty() {
                true => String::new(),
                false => format!("{{{labels}}}"),
            };
            let _ = writeln!(out, "forkserver_{name}{labels} {value}");
        }
    }
    out
}

/// A child's end and usage as GNU `time -v` prints them (the lines it has that the server
/// knows).
pub(crate) fn time_v(command: &str, status: &ExitStatus, elapsed: Duration) -> String {
    let usage = status.resource_usage();
    let mut out = String::new();
    if let Some(sig) = status.signal() {
        let _ = writeln!(out, "Command terminated by signal {sig}");
    }
    let _ = writeln!(out, "\tCommand being timed: \"{command}\"");
    if let Some(u) = usage {
        let _ = writeln!(
            out,
            "\tUser time (seconds): {:.2}",
            u.user_time().as_secs_f64()
        );
        let _ = writeln!(
            out,
            "\tSystem time (seconds): {:.2}",
            u.system_time().as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "\tElapsed (wall clock) time (h:mm:ss or m:ss): {}",
        wall(elapsed)
    );
    if let Some(u) = usage {
        let _ = writeln!(
            out,
            "\tMaximum resident set size (kbytes): {}",
            u.max_rss_kib()
        );
    }
    if let Some(code) = status.code() {
        let _ = writeln!(out, "\tExit status: {code}");
    }
    out
}

/// `time -v`'s wall clock: `m:ss.cc`, or `h:mm:ss` from an hour on.
fn wall(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        return format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    }
    let cs = d.subsec_millis() / 10;
    format!("{}:{:02}.{cs:02}", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_the_wire() {
        let names: Vec<_> = Metrics::default().fields().iter().map(|f| f.0).collect();
        let table: Vec<_> = METRICS.iter().map(|e| e.field).collect();
        assert_eq!(names, table);
    }

    #[test]
    fn wall_clock_as_time_does() {
        assert_eq!(wall(Duration::from_millis(1234)), "0:01.23");
        assert_eq!(wall(Duration::from_secs(3725)), "1:02:05");
    }
}
