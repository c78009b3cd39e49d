//! The fork path's exec (step 5 of `child_main`, after `chdir`): argv and envp built in the
//! forked child (which may allocate), then `execve`, searching `PATH` as `execvp` does. The
//! `CLONE_VM` path does the same with what the server built before the clone (`plan.rs`).

use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use forkserver_protocol::ExecJob;
use nix::errno::Errno;

use super::identity;

/// Builds argv and envp and execs; returns only on failure, with the errno to report.
pub(super) fn exec(job: &ExecJob) -> Errno {
    // The protocol guarantees no NUL inside any of these strings.
    let cstr = |b: &[u8]| CString::new(b).unwrap_or_default();
    let argv: Vec<CString> = job.args().iter().map(|a| cstr(a)).collect();
    let inherited = (!job.env_clear()).then(std::env::vars_os);
    let env = identity::child_env(inherited.into_iter().flatten(), job);
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone().into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstr(&kv)
        })
        .collect();
    let program = job.program();
    if program.contains(&b'/') {
        return nix::unistd::execve(&cstr(program), &argv, &envp)
            .err()
            .unwrap_or(Errno::UnknownErrno);
    }
    // As execvp: search PATH (the child's), remembering EACCES.
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_bytes().to_vec())
        .unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin".to_vec());
    let mut err = Errno::ENOENT;
    let mut saw_eacces = false;
    for dir in path.split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(program);
        match nix::unistd::execve(&cstr(&full), &argv, &envp) {
            Err(Errno::EACCES) => saw_eacces = true,
            Err(e @ (Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG)) => {
                err = e
            }
            Err(e) => return e,
            Ok(_) => unreachable!("execve returned success"),
        }
    }
    if saw_eacces {
        Errno::EACCES
    } else {
        err
    }
}
