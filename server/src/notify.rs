//! Service notification (`sd_notify(3)`): the server tells its service manager that it is
//! ready (`READY=1`), how it is doing (`STATUS=`, at most once a second), that it is alive
//! (`WATCHDOG=1` at half of `WATCHDOG_USEC`), that it is stopping (`STOPPING=1`), and that a
//! long start needs more time (`EXTEND_TIMEOUT_USEC=`).
//!
//! A notification is one datagram on the `AF_UNIX` socket named by `NOTIFY_SOCKET` (a path,
//! or an abstract name written `@name`). It is sent with `MSG_DONTWAIT` on a non-blocking
//! socket: a manager that does not read costs the server nothing, and a failed send is
//! logged and forgotten, never an error of the server. (No libsystemd; the `sd-notify` crate
//! sends on a blocking socket and reads the environment at each call, after the server has
//! removed the variables from it, so these few lines are our own.)
//!
//! [`parse_notify_socket`] and [`parse_watchdog`] are the decisions, without I/O; the
//! [`Notifier`] keeps what was sent, so that the event loop asks it each turn and it decides
//! whether a datagram is due, with the timers it sets in the event loop's table.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendto, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::timers::{Timer, TimerTable};

/// The manager's notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The watchdog interval, in microseconds.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The pid the watchdog is meant for.
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";
/// Every notification variable (all removed from the environment, whatever they say).
pub(crate) const NOTIFY_VARS: [&str; 3] = [NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV];
/// `STATUS=` is sent at most this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// `WATCHDOG=1` is sent at most this often, however short `WATCHDOG_USEC` is: a misconfigured
/// interval must not turn the event loop into a busy loop.
const MIN_WATCHDOG_PING: Duration = Duration::from_millis(1);

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket (`NOTIFY_SOCKET=@name`; the name without the `@`).
    Abstract(Vec<u8>),
}

/// Why a notification variable is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotifyEnvError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@name` (`vsock:` addresses, say).
    UnsupportedSocket(String),
    /// `WATCHDOG_USEC` is not a positive number of microseconds.
    BadWatchdogUsec(String),
    /// `WATCHDOG_PID` is not a pid.
    BadWatchdogPid(String),
}

impl fmt::Display for NotifyEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedSocket(v) => write!(
                f,
                "{NOTIFY_SOCKET_ENV}={v:?} is neither an absolute path nor @name: not notifying"
            ),
            Self::BadWatchdogUsec(v) => write!(
                f,
                "{WATCHDOG_USEC_ENV}={v:?} is not a positive number of microseconds: no watchdog"
            ),
            Self::BadWatchdogPid(v) => {
                write!(f, "{WATCHDOG_PID_ENV}={v:?} is not a pid: no watchdog")
            }
        }
    }
}

impl std::error::Error for NotifyEnvError {}

/// Where `NOTIFY_SOCKET` (its value, `None` when unset) says to send notifications; `None`
/// when unset or empty.
///
/// # Errors
/// [`NotifyEnvError::UnsupportedSocket`] for a value that is not `/path` or `@name`.
pub fn parse_notify_socket(value: Option<&OsStr>) -> Result<Option<NotifyAddr>, NotifyEnvError> {
    let Some(v) = value.map(OsStr::as_bytes).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match v {
        [b'/', ..] => Ok(Some(NotifyAddr::Path(PathBuf::from(OsStr::from_bytes(v))))),
        [b'@', name @ ..] if !name.is_empty() => Ok(Some(NotifyAddr::Abstract(name.to_vec()))),
        _ => Err(NotifyEnvError::UnsupportedSocket(
            String::from_utf8_lossy(v).into_owned(),
        )),
    }
}

/// How often the watchdog must be fed, from `WATCHDOG_USEC` and `WATCHDOG_PID` (values, `None`
/// when unset), as `sd_watchdog_enabled(3)` decides: `None` when unset, or when
/// `WATCHDOG_PID` names another process.
///
/// # Errors
/// A value that is set but malformed (`WATCHDOG_USEC=0` included).
pub fn parse_watchdog(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    our_pid: u32,
) -> Result<Option<Duration>, NotifyEnvError> {
    let Some(usec) = usec else { return Ok(None) };
    let lossy = |v: &OsStr| v.to_string_lossy().into_owned();
    if let Some(pid) = pid {
        let p: u32 = digits(pid)
            .filter(|&p| p > 0)
            .ok_or_else(|| NotifyEnvError::BadWatchdogPid(lossy(pid)))?;
        if p != our_pid {
            return Ok(None);
        }
    }
    let us: u64 = digits(usec)
        .filter(|&u| u > 0 && u != u64::MAX)
        .ok_or_else(|| NotifyEnvError::BadWatchdogUsec(lossy(usec)))?;
    Ok(Some(Duration::from_micros(us)))
}

fn digits<T: std::str::FromStr>(v: &OsStr) -> Option<T> {
    let s = v.to_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The values of the notification variables, taken out of the environment by
/// [`crate::ServiceEnv::take`], with the pid that read them.
#[derive(Debug, Default)]
pub(crate) struct NotifyEnv {
    socket: Option<OsString>,
    watchdog_usec: Option<OsString>,
    watchdog_pid: Option<OsString>,
    our_pid: u32,
}

impl NotifyEnv {
    pub(crate) fn from_env() -> NotifyEnv {
        NotifyEnv {
            socket: std::env::var_os(NOTIFY_SOCKET_ENV),
            watchdog_usec: std::env::var_os(WATCHDOG_USEC_ENV),
            watchdog_pid: std::env::var_os(WATCHDOG_PID_ENV),
            our_pid: std::process::id(),
        }
    }
}

/// The figures `STATUS=` reports (those of the `Status` reply, PROTOCOL.md §5.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServiceStats {
    pub(crate) children: usize,
    pub(crate) connections: usize,
    pub(crate) spawned: u64,
}

impl ServiceStats {
    fn status_line(&self) -> String {
        format!(
            "STATUS=children {}, connections {}, spawned {}",
            self.children, self.connections, self.spawned
        )
    }
}

/// Sends notifications to the service manager. Built by [`crate::ServiceEnv::notifier`];
/// given to the server in [`crate::Config::notify`].
pub struct Notifier {
    sock: OwnedFd,
    addr: UnixAddr,
    watchdog: Option<Duration>,
    ready: bool,
    stopping: bool,
    /// The figures of the last `STATUS=` sent, and when.
    last_status: Option<(ServiceStats, Instant)>,
    /// A [`Timer::Status`] is set (a change waits for the end of the interval).
    status_due: bool,
    /// A send failed (other than for a full queue) and that was logged.
    warned: bool,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("addr", &self.addr)
            .field("watchdog", &self.watchdog)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier for the variables in `env`; `None` when there is no notification socket
    /// (or it cannot be used: that is logged, and the server runs on without notifying).
    pub(crate) fn from_env(env: &NotifyEnv) -> Option<Notifier> {
        let addr = match parse_notify_socket(env.socket.as_deref()) {
            Ok(Some(a)) => a,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        let watchdog = parse_watchdog(
            env.watchdog_usec.as_deref(),
            env.watchdog_pid.as_deref(),
            env.our_pid,
        )
        .unwrap_or_else(|e| {
            tracing::warn!("{e}");
            None
        });
        let addr = match &addr {
            NotifyAddr::Path(p) => UnixAddr::new(p.as_path()),
            NotifyAddr::Abstract(name) => UnixAddr::new_abstract(name),
        };
        let made = addr.and_then(|addr| {
            let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
            let sock = socket(AddressFamily::Unix, SockType::Datagram, flags, None)?;
            Ok((sock, addr))
        });
        match made {
            Ok((sock, addr)) => Some(Notifier {
                sock,
                addr,
                watchdog,
                ready: false,
                stopping: false,
                last_status: None,
                status_due: false,
                warned: false,
            }),
            Err(e) => {
                tracing::warn!("{NOTIFY_SOCKET_ENV}: {}: not notifying", e.desc());
                None
            }
        }
    }

    /// The watchdog interval the manager asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (lines `VAR=value`). Never blocks and never fails: a full
    /// queue drops it, another error is logged once.
    pub fn send(&mut self, message: &str) {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match sendto(self.sock.as_raw_fd(), message.as_bytes(), &self.addr, flags) {
            Ok(_) => tracing::trace!(message, "notified the service manager"),
            Err(nix::errno::Errno::EAGAIN) => {
                tracing::debug!(message, "notification dropped: the manager's queue is full");
            }
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!("notifying the service manager: {}", e.desc());
            }
            Err(_) => {}
        }
    }

    /// Asks the manager for `by` more to finish starting (`EXTEND_TIMEOUT_USEC=`), as a long
    /// preload should, before it begins.
    pub fn extend_timeout(&mut self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    /// Called by the event loop at each turn, once the pool is filled: the first call sends
    /// `READY=1` (with the status) and starts the watchdog; later ones send `STATUS=` when the
    /// figures changed, at most once per [`STATUS_INTERVAL`] (setting a [`Timer::Status`]
    /// for a change that comes sooner).
    pub(crate) fn turn(&mut self, now: Instant, stats: ServiceStats, timers: &mut TimerTable) {
        if !self.ready {
            self.ready = true;
            self.send(&format!("READY=1\n{}", stats.status_line()));
            self.last_status = Some((stats, now));
            if let Some(at) = self.next_ping(now) {
                timers.set(at, Timer::Watchdog);
            }
            return;
        }
        let Some((last, at)) = self.last_status else {
            return;
        };
        if last == stats || self.status_due {
            return;
        }
        match at.checked_add(STATUS_INTERVAL) {
            Some(due) if due > now => {
                self.status_due = true;
                timers.set(due, Timer::Status);
            }
            _ => self.send_status(now, stats),
        }
    }

    /// Acts on an expired [`Timer::Status`] or [`Timer::Watchdog`] (the watchdog is set again).
    pub(crate) fn on_timer(
        &mut self,
        timer: Timer,
        now: Instant,
        stats: ServiceStats,
        timers: &mut TimerTable,
    ) {
        match timer {
            Timer::Status => {
                self.status_due = false;
                if self.last_status.is_some_and(|(last, _)| last != stats) {
                    self.send_status(now, stats);
                }
            }
            Timer::Watchdog => {
                self.send("WATCHDOG=1");
                if let Some(at) = self.next_ping(now) {
                    timers.set(at, Timer::Watchdog);
                }
            }
            _ => {}
        }
    }

    /// Sends `STOPPING=1`, once.
    pub(crate) fn stopping(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.send("STOPPING=1\nSTATUS=stopping");
        }
    }

    /// When `WATCHDOG=1` is next due: half the interval from `now`.
    fn next_ping(&self, now: Instant) -> Option<Instant> {
        let w = self.watchdog?;
        now.checked_add((w / 2).max(MIN_WATCHDOG_PING))
    }

    fn send_status(&mut self, now: Instant, stats: ServiceStats) {
        self.send(&stats.status_line());
        self.last_status = Some((stats, now));
    }
}

#[cfg(test)]
mod tests {
    use super::{
        parse_notify_socket, parse_watchdog, Notifier, NotifyAddr, NotifyEnv, NotifyEnvError,
        ServiceStats,
    };
    use crate::timers::{Timer, TimerTable};
    use std::ffi::OsStr;
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// What arrived on `sock` so far (it is non-blocking: a send is in its queue on return).
    fn received(sock: &UnixDatagram) -> Vec<String> {
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        while let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        got
    }

    #[test]
    fn ready_once_then_status_at_most_once_a_second_and_the_watchdog_on_its_timer() {
        let dir = std::env::temp_dir().join(format!("fs-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let env = NotifyEnv {
            socket: Some(path.clone().into()),
            watchdog_usec: Some("4000000".into()),
            watchdog_pid: None,
            our_pid: 1,
        };
        let mut n = Notifier::from_env(&env).unwrap();
        assert_eq!(n.watchdog(), Some(Duration::from_secs(4)));
        let (t0, mut timers) = (Instant::now(), TimerTable::default());
        let at = |ms| t0 + Duration::from_millis(ms);
        let stats = |spawned| ServiceStats {
            children: 0,
            connections: 1,
            spawned,
        };
        n.turn(t0, stats(0), &mut timers);
        n.turn(t0, stats(0), &mut timers);
        assert_eq!(
            received(&sock),
            ["READY=1\nSTATUS=children 0, connections 1, spawned 0"]
        );
        // The watchdog timer is at half the interval.
        assert_eq!(timers.next(), Some(at(2000)));
        // A change within the second waits for a timer at its end; more changes meanwhile
        // set no second timer.
        n.turn(at(300), stats(1), &mut timers);
        n.turn(at(400), stats(2), &mut timers);
        assert!(received(&sock).is_empty());
        assert_eq!(timers.pop_expired(at(999)), None);
        let (_, timer) = timers.pop_expired(at(1000)).unwrap();
        assert_eq!(timer, Timer::Status);
        n.on_timer(timer, at(1000), stats(2), &mut timers);
        assert_eq!(
            received(&sock),
            ["STATUS=children 0, connections 1, spawned 2"]
        );
        // Unchanged: nothing; changed a second later: sent at once.
        n.turn(at(1500), stats(2), &mut timers);
        n.turn(at(2100), stats(3), &mut timers);
        assert_eq!(
            received(&sock),
            ["STATUS=children 0, connections 1, spawned 3"]
        );
        let (_, timer) = timers.pop_expired(at(2100)).unwrap();
        assert_eq!(timer, Timer::Watchdog);
        n.on_timer(timer, at(2100), stats(3), &mut timers);
        assert_eq!(received(&sock), ["WATCHDOG=1"]);
        assert_eq!(timers.next(), Some(at(4100)));
        n.extend_timeout(Duration::from_secs(90));
        n.stopping();
        n.stopping();
        assert_eq!(
            received(&sock),
            [
                "EXTEND_TIMEOUT_USEC=90000000",
                "STOPPING=1\nSTATUS=stopping"
            ]
        );
        // A manager that is gone costs nothing: sends fail quietly.
        drop(sock);
        n.send("STATUS=x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("forkserver-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_nonblocking(true).unwrap();
        let env = NotifyEnv {
            socket: Some(format!("@{name}").into()),
            ..NotifyEnv::default()
        };
        let mut n = Notifier::from_env(&env).unwrap();
        assert_eq!(n.watchdog(), None);
        n.stopping();
        assert_eq!(received(&sock), ["STOPPING=1\nSTATUS=stopping"]);
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        let p = |v: &str| parse_notify_socket(Some(OsStr::new(v)));
        assert_eq!(parse_notify_socket(None), Ok(None));
        assert_eq!(p(""), Ok(None));
        assert_eq!(
            p("/run/systemd/notify"),
            Ok(Some(NotifyAddr::Path(PathBuf::from("/run/systemd/notify"))))
        );
        assert_eq!(
            p("@/org/freedesktop/systemd1/notify/123"),
            Ok(Some(NotifyAddr::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            )))
        );
        for bad in ["@", "relative/path", "vsock:2:1234"] {
            assert!(
                matches!(p(bad), Err(NotifyEnvError::UnsupportedSocket(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn watchdog_as_sd_watchdog_enabled_decides() {
        let w = |u: Option<&str>, p: Option<&str>| {
            parse_watchdog(u.map(OsStr::new), p.map(OsStr::new), 77)
        };
        assert_eq!(w(None, None), Ok(None));
        assert_eq!(w(None, Some("77")), Ok(None));
        assert_eq!(
            w(Some("200000"), None),
            Ok(Some(Duration::from_millis(200)))
        );
        assert_eq!(
            w(Some("200000"), Some("77")),
            Ok(Some(Duration::from_millis(200)))
        );
        // Meant for another process (a parent's, inherited).
        assert_eq!(w(Some("200000"), Some("78")), Ok(None));
        for bad in ["0", "", "-5", "+5", "1.5", "18446744073709551615", "x"] {
            assert!(
                matches!(w(Some(bad), None), Err(NotifyEnvError::BadWatchdogUsec(_))),
                "{bad:?}"
            );
        }
        for bad in ["0", "", "x", "-1"] {
            assert!(
                matches!(
                    w(Some("1000"), Some(bad)),
                    Err(NotifyEnvError::BadWatchdogPid(_))
                ),
                "{bad:?}"
            );
        }
    }
}
