//! Socket activation (`sd_listen_fds(3)`): a service manager (systemd, or anything that follows
//! its convention) binds the listening socket and passes it to the server as fd 3 onwards,
//! described by `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` (PROTOCOL.md §9.4).
//!
//! [`parse_listen_env`] is the decision, without I/O: from the variables' values and our pid,
//! which fd (if any) is ours to serve on. [`ServiceEnv`] is the thin shell around it: it takes
//! the manager's variables out of the environment (so that no child, exec'd, pooled or zygote,
//! ever sees them), takes the fd, and checks that it is an `AF_UNIX` `SOCK_STREAM` socket that
//! listens, in a directory that passes §9.3's check when it has a path. The socket is never
//! unlinked: the manager made it and keeps it.

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use forkserver_protocol::socket_dir::{self, DirError, Sharing, SocketDir};
use nix::errno::Errno;
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike};

use crate::notify::{Notifier, NotifyEnv, NOTIFY_VARS};

/// The pid the passed fds are meant for.
pub const LISTEN_PID_ENV: &str = "LISTEN_PID";
/// How many fds are passed, from fd 3 on.
pub const LISTEN_FDS_ENV: &str = "LISTEN_FDS";
/// Their names, `:`-separated (systemd's `FileDescriptorName=`).
pub const LISTEN_FDNAMES_ENV: &str = "LISTEN_FDNAMES";
/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// The name that picks our socket when several are passed.
pub const LISTEN_FD_NAME: &str = "forkserver";
/// The most fds a manager may say it passed; more is an error, not a loop over fd numbers.
const MAX_LISTEN_FDS: u32 = 4096;

/// What the `LISTEN_*` variables say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// No socket is passed: `LISTEN_PID` or `LISTEN_FDS` is unset, or `LISTEN_FDS=0`.
    None,
    /// `LISTEN_PID` names another process: the variables were inherited from a parent they
    /// were meant for, and are ignored (as `sd_listen_fds` does).
    OtherProcess(u32),
    /// Serve on `fd`, one of the `passed` fds from [`LISTEN_FDS_START`] on.
    Socket {
        /// Our socket.
        fd: RawFd,
        /// How many fds were passed in all.
        passed: u32,
    },
}

/// Why the manager's variables, or the socket they name, cannot be served on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActivationError {
    /// No socket is passed, where one is required ([`crate::Zygote::service`]).
    NoSocket,
    /// The passed socket's directory fails PROTOCOL.md §9.3's check.
    Dir(DirError),
    /// `LISTEN_PID` is not a pid.
    BadPid(String),
    /// `LISTEN_FDS` is not a count of at most 4096.
    BadCount(String),
    /// Several fds are passed, and `LISTEN_FDNAMES` does not name each of them.
    NamesMismatch {
        /// `LISTEN_FDS`.
        fds: u32,
        /// How many names `LISTEN_FDNAMES` holds (0 when unset).
        names: usize,
    },
    /// Several fds are passed and none is named `forkserver`.
    NotNamed(String),
    /// Several fds are named `forkserver`.
    NamedTwice(String),
    /// The passed fd is not open, or a call examining it failed.
    Sys(RawFd, &'static str, Errno),
    /// The passed fd is not an `AF_UNIX` socket.
    NotUnix(RawFd),
    /// The passed fd is not a `SOCK_STREAM` socket.
    NotStream(RawFd),
    /// The passed fd is a socket that does not listen (`SO_ACCEPTCONN` is 0).
    NotListening(RawFd),
    /// The passed socket was made to listen by a uid that is neither ours nor root.
    ForeignListener {
        /// The fd.
        fd: RawFd,
        /// The uid that called `listen(2)` (`SO_PEERCRED`).
        uid: u32,
    },
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSocket => write!(f, "no socket is passed ({LISTEN_FDS_ENV} is not set)"),
            Self::Dir(e) => write!(f, "{e}"),
            Self::BadPid(v) => write!(f, "{LISTEN_PID_ENV}={v:?} is not a pid"),
            Self::BadCount(v) => write!(
                f,
                "{LISTEN_FDS_ENV}={v:?} is not a count of fds (at most {MAX_LISTEN_FDS})"
            ),
            Self::NamesMismatch { fds, names } => write!(
                f,
                "{LISTEN_FDS_ENV}={fds} but {LISTEN_FDNAMES_ENV} has {names} names: cannot tell \
                 which fd is the {LISTEN_FD_NAME:?} socket"
            ),
            Self::NotNamed(names) => write!(
                f,
                "several sockets are passed and none is named {LISTEN_FD_NAME:?} \
                 ({LISTEN_FDNAMES_ENV}={names:?}; set FileDescriptorName={LISTEN_FD_NAME})"
            ),
            Self::NamedTwice(names) => write!(
                f,
                "several sockets are named {LISTEN_FD_NAME:?} ({LISTEN_FDNAMES_ENV}={names:?})"
            ),
            Self::Sys(fd, what, e) => write!(f, "passed fd {fd}: {what}: {}", e.desc()),
            Self::NotUnix(fd) => write!(f, "passed fd {fd} is not an AF_UNIX socket"),
            Self::NotStream(fd) => write!(f, "passed fd {fd} is not a SOCK_STREAM socket"),
            Self::NotListening(fd) => write!(
                f,
                "passed fd {fd} is not a listening socket (use ListenStream= with Accept=no)"
            ),
            Self::ForeignListener { fd, uid } => write!(
                f,
                "passed fd {fd} was made to listen by uid {uid}, neither this server's nor \
                 root: clients would see uid {uid} as the server's"
            ),
        }
    }
}

impl std::error::Error for ActivationError {}

impl From<DirError> for ActivationError {
    fn from(e: DirError) -> Self {
        ActivationError::Dir(e)
    }
}

fn decimal<T: std::str::FromStr>(v: &OsStr) -> Option<T> {
    let s = v.to_str()?;
    // Digits only: no sign, no spaces (`str::parse` accepts a leading `+`).
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The decision of `sd_listen_fds(3)`, without I/O: from the values of `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` (`None` when unset) and our pid, which passed fd is ours.
/// One passed fd is ours whatever its name; of several, the one named `forkserver`.
///
/// # Errors
/// A variable that is set but malformed, or several fds without exactly one named
/// `forkserver`.
pub fn parse_listen_env(
    pid: Option<&OsStr>,
    fds: Option<&OsStr>,
    names: Option<&OsStr>,
    our_pid: u32,
) -> Result<Activation, ActivationError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Activation::None);
    };
    let lossy = |v: &OsStr| v.to_string_lossy().into_owned();
    let pid: u32 = decimal(pid)
        .filter(|&p| p > 0)
        .ok_or_else(|| ActivationError::BadPid(lossy(pid)))?;
    if pid != our_pid {
        return Ok(Activation::OtherProcess(pid));
    }
    let passed: u32 = decimal(fds)
        .filter(|&n| n <= MAX_LISTEN_FDS)
        .ok_or_else(|| ActivationError::BadCount(lossy(fds)))?;
    let index = match passed {
        0 => return Ok(Activation::None),
        1 => 0,
        _ => {
            let names = names.unwrap_or_default();
            let list: Vec<&[u8]> = if names.is_empty() {
                Vec::new()
            } else {
                names.as_bytes().split(|&b| b == b':').collect()
            };
            if list.len() != passed as usize {
                return Err(ActivationError::NamesMismatch {
                    fds: passed,
                    names: list.len(),
                });
            }
            let mut ours = list
                .iter()
                .enumerate()
                .filter(|(_, n)| **n == LISTEN_FD_NAME.as_bytes())
                .map(|(i, _)| i);
            match (ours.next(), ours.next()) {
                (Some(i), None) => i,
                (None, _) => return Err(ActivationError::NotNamed(lossy(names))),
                (Some(_), Some(_)) => return Err(ActivationError::NamedTwice(lossy(names))),
            }
        }
    };
    Ok(Activation::Socket {
        fd: LISTEN_FDS_START + index as RawFd,
        passed,
    })
}

/// What a service manager handed the server through its environment: the passed socket
/// (`LISTEN_*`) and the notification socket (`NOTIFY_SOCKET`, `WATCHDOG_*`).
#[derive(Debug)]
pub struct ServiceEnv {
    activation: Result<Activation, ActivationError>,
    listener: Option<OwnedFd>,
    notify: NotifyEnv,
}

impl ServiceEnv {
    /// Takes the manager's variables out of the environment, all of them whatever they say
    /// (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, `NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`), so that no child ever inherits them, and takes the passed socket if
    /// it is ours. Other passed fds are left alone (a child closes every fd not in its
    /// request's bundle, §6.5).
    ///
    /// Call it first thing in `main`: it changes the environment, which another thread could
    /// be reading, and takes ownership of a passed fd by its number.
    ///
    /// # Safety
    /// The passed fds (from fd 3 on, when `LISTEN_PID` is ours) are owned by nothing else in
    /// the process: nothing has opened, closed or taken them since the manager passed them
    /// (true at the top of `main`). And no other thread runs.
    #[allow(unsafe_code)]
    pub unsafe fn take() -> ServiceEnv {
        let var = |name: &str| std::env::var_os(name);
        let (pid, fds, names) = (
            var(LISTEN_PID_ENV),
            var(LISTEN_FDS_ENV),
            var(LISTEN_FDNAMES_ENV),
        );
        let notify = NotifyEnv::from_env();
        scrub_env();
        let mut activation =
            parse_listen_env(pid.as_deref(), fds.as_deref(), names.as_deref(), our_pid());
        let mut listener = None;
        if let Ok(Activation::Socket { fd, .. }) = activation {
            // SAFETY: the fd was passed to us and nothing else owns it (our caller's promise);
            // the variables naming it are gone, so this is the one place that takes it.
            match unsafe { take_passed_fd(fd) } {
                Ok(owned) => listener = Some(owned),
                Err(e) => activation = Err(e),
            }
        }
        ServiceEnv {
            activation,
            listener,
            notify,
        }
    }

    /// What the `LISTEN_*` variables said.
    pub fn activation(&self) -> Result<Activation, ActivationError> {
        self.activation.clone()
    }

    /// The passed socket, checked: an `AF_UNIX` `SOCK_STREAM` socket that listens, made to
    /// listen by our effective uid or root (the manager: clients see that uid as the
    /// server's), and, when it has a path, in a directory that passes PROTOCOL.md §9.3's check
    /// for that uid (`shared`: other uids are allowed, so the directory may be readable by
    /// others). `None` when no socket was passed to us; the second call also gets `None`.
    ///
    /// # Errors
    /// [`ActivationError`] for malformed variables, a socket of the wrong kind, or
    /// ([`ActivationError::Dir`]) a directory that fails PROTOCOL.md §9.3's check.
    pub fn take_listener(&mut self, shared: bool) -> Result<Option<OwnedFd>, ActivationError> {
        self.activation.clone()?;
        let Some(fd) = self.listener.take() else {
            return Ok(None);
        };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let sys = |what| move |e| ActivationError::Sys(raw, what, e);
        let addr: nix::sys::socket::SockaddrStorage =
            getsockname(raw).map_err(sys("getsockname"))?;
        if addr.family() != Some(AddressFamily::Unix) {
            return Err(ActivationError::NotUnix(raw));
        }
        match getsockopt(&fd, sockopt::SockType) {
            Ok(SockType::Stream) => {}
            Ok(_) | Err(Errno::EINVAL) => return Err(ActivationError::NotStream(raw)),
            Err(e) => return Err(sys("getsockopt(SO_TYPE)")(e)),
        }
        if !getsockopt(&fd, sockopt::AcceptConn).map_err(sys("getsockopt(SO_ACCEPTCONN)"))? {
            return Err(ActivationError::NotListening(raw));
        }
        // PROTOCOL.md §9.4: a client sees as the server's uid (SO_PEERCRED) the uid of
        // whoever called listen(2), the manager: a user's manager runs as us, the system's as
        // root. Those two are trusted; a socket made to listen by anyone else is refused.
        let euid = nix::unistd::geteuid().as_raw();
        let listener_uid = getsockopt(&fd, sockopt::PeerCredentials)
            .map_err(sys("getsockopt(SO_PEERCRED)"))?
            .uid();
        if listener_uid != euid && listener_uid != 0 {
            return Err(ActivationError::ForeignListener {
                fd: raw,
                uid: listener_uid,
            });
        }
        // PROTOCOL.md §9.3 applies to the directory of a socket with a path: the manager bound
        // it, but a client checks that directory (for the uid above) before it connects, and
        // whoever could write to it could put their own socket in its place. An abstract
        // socket has no directory (only the peer-uid check and the key guard it, as for
        // `--abstract`).
        if let Some(path) = addr.as_unix_addr().and_then(|a| a.path()) {
            let (dir, _) = socket_dir::split(path)?;
            let sharing = if shared {
                Sharing::Readable
            } else {
                Sharing::Private
            };
            SocketDir::open(dir, listener_uid, sharing)?;
            tracing::info!(socket = %path.display(), "serving on the socket passed by the service manager");
        }
        Ok(Some(fd))
    }

    /// A notifier for the manager's `NOTIFY_SOCKET` (with the watchdog of `WATCHDOG_USEC`),
    /// to put in [`crate::Config::notify`]; `None` when there is none, or it is unusable
    /// (that is logged: the server runs on without notifying).
    pub fn notifier(&self) -> Option<Notifier> {
        Notifier::from_env(&self.notify)
    }
}

/// Removes the service manager's variables from the environment.
///
/// The caller is single-threaded (no other thread can read the environment meanwhile): at the
/// top of `main` ([`ServiceEnv::take`]), or in [`crate::Server::bind`] after it checked that
/// the process has one thread. `remove_var` is safe in this crate's edition (2021), but that
/// is the condition under which it is sound in every edition.
pub(crate) fn scrub_env() {
    for name in [LISTEN_PID_ENV, LISTEN_FDS_ENV, LISTEN_FDNAMES_ENV]
        .iter()
        .chain(NOTIFY_VARS.iter())
    {
        std::env::remove_var(name);
    }
}

fn our_pid() -> u32 {
    std::process::id()
}

/// Takes ownership of the passed fd `fd` and makes it close-on-exec.
///
/// # Safety
/// `fd` was passed to this process and nothing else in it owns it or will take it.
#[allow(unsafe_code)]
unsafe fn take_passed_fd(fd: RawFd) -> Result<OwnedFd, ActivationError> {
    // SAFETY: nothing else owns `fd` (our caller's promise).
    let owned = unsafe { crate::sys::take_inherited_fd(fd) }
        .map_err(|e| ActivationError::Sys(fd, "not open", e))?;
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| ActivationError::Sys(fd, "fcntl(F_SETFD)", e))?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::{parse_listen_env, Activation, ActivationError};
    use std::ffi::OsStr;

    fn parse(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
    ) -> Result<Activation, ActivationError> {
        parse_listen_env(
            pid.map(OsStr::new),
            fds.map(OsStr::new),
            names.map(OsStr::new),
            4242,
        )
    }

    #[test]
    fn unset_or_zero_is_no_activation() {
        assert_eq!(parse(None, None, None), Ok(Activation::None));
        // sd_listen_fds: both variables are needed.
        assert_eq!(parse(None, Some("1"), None), Ok(Activation::None));
        assert_eq!(parse(Some("4242"), None, None), Ok(Activation::None));
        assert_eq!(parse(Some("4242"), Some("0"), None), Ok(Activation::None));
    }

    #[test]
    fn another_pid_is_ignored_whatever_the_rest_says() {
        assert_eq!(
            parse(Some("1"), Some("1"), None),
            Ok(Activation::OtherProcess(1))
        );
        assert_eq!(
            parse(Some("99"), Some("junk"), Some("a:b")),
            Ok(Activation::OtherProcess(99))
        );
    }

    #[test]
    fn one_fd_is_ours_whatever_its_name() {
        let one = Ok(Activation::Socket { fd: 3, passed: 1 });
        assert_eq!(parse(Some("4242"), Some("1"), None), one);
        assert_eq!(
            parse(Some("4242"), Some("1"), Some("forkserver.socket")),
            one
        );
    }

    #[test]
    fn of_several_fds_the_one_named_forkserver() {
        assert_eq!(
            parse(Some("4242"), Some("3"), Some("a:forkserver:b")),
            Ok(Activation::Socket { fd: 4, passed: 3 })
        );
        assert_eq!(
            parse(Some("4242"), Some("2"), Some("x:forkserver")),
            Ok(Activation::Socket { fd: 4, passed: 2 })
        );
        assert!(matches!(
            parse(Some("4242"), Some("2"), Some("a:b")),
            Err(ActivationError::NotNamed(_))
        ));
        assert!(matches!(
            parse(Some("4242"), Some("2"), Some("forkserver:forkserver")),
            Err(ActivationError::NamedTwice(_))
        ));
        for (names, n) in [
            (None, 0),
            (Some(""), 0),
            (Some("forkserver"), 1),
            (Some("a:b:forkserver"), 3),
        ] {
            assert_eq!(
                parse(Some("4242"), Some("2"), names),
                Err(ActivationError::NamesMismatch { fds: 2, names: n })
            );
        }
    }

    #[test]
    fn malformed_values_are_errors() {
        for pid in ["", "0", "-1", "+4242", " 4242", "42x", "99999999999"] {
            assert!(
                matches!(
                    parse(Some(pid), Some("1"), None),
                    Err(ActivationError::BadPid(_))
                ),
                "{pid:?}"
            );
        }
        for fds in ["", "-1", "+1", "1 ", "x", "4097", "18446744073709551617"] {
            assert!(
                matches!(
                    parse(Some("4242"), Some(fds), None),
                    Err(ActivationError::BadCount(_))
                ),
                "{fds:?}"
            );
        }
        assert_eq!(
            parse(Some("4242"), Some("4096"), None),
            Err(ActivationError::NamesMismatch {
                fds: 4096,
                names: 0
            })
        );
        let e = parse(Some("4242"), Some("2"), Some("a:b")).unwrap_err();
        assert!(
            e.to_string().contains("FileDescriptorName=forkserver"),
            "{e}"
        );
    }
}
