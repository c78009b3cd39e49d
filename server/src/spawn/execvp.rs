//! The fork path's exec (step 7 of `child_main`, after `chdir`): argv, envp and every `PATH`
//! candidate built in the forked child (which may allocate), then the seccomp filter (the last
//! step before `execve`, PROTOCOL.md §6.5), then `execve` of each candidate, as `execvp` does.
//! Nothing is allocated between the filter and `execve`, so a filter that forbids `brk` or
//! `mmap` does not stop the exec. The `CLONE_VM` path does the same with what the server built
//! before the clone (`plan.rs`).

use std::ffi::{c_char, CString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use forkserver_protocol::ExecJob;
use nix::errno::Errno;

use super::identity;
use super::raw;
use super::sandbox::Sandbox;
use super::stage::Stage;

/// Builds argv, envp and the candidates, installs `sandbox`'s filter and execs; returns only
/// on failure, with the stage (the filter's, or `Exec`) and the errno to report.
pub(super) fn exec(job: &ExecJob, sandbox: &Sandbox<'_>) -> (Stage, Errno) {
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
    // As execvp: a program without a slash is searched in PATH (the child's).
    let search = !program.contains(&b'/');
    let candidates: Vec<CString> = match search {
        false => vec![cstr(program)],
        true => {
            let path = env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_bytes().to_vec())
                .unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin".to_vec());
            path.split(|&b| b == b':')
                .map(|dir| {
                    let mut full = if dir.is_empty() {
                        b".".to_vec()
                    } else {
                        dir.to_vec()
                    };
                    full.push(b'/');
                    full.extend_from_slice(program);
                    cstr(&full)
                })
                .collect()
        }
    };
    let ptrs = |v: &[CString]| {
        let mut p: Vec<*const c_char> = v.iter().map(|s| s.as_ptr()).collect();
        p.push(std::ptr::null());
        p
    };
    let (argv_ptrs, envp_ptrs) = (ptrs(&argv), ptrs(&envp));
    if let Err(failed) = sandbox.install_filter() {
        return failed;
    }
    let (argv, envp) = (argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
    let mut err = Errno::ENOENT;
    let mut saw_eacces = false;
    for candidate in &candidates {
        match raw::execve(candidate, argv, envp) {
            e if !search => return (Stage::Exec, e),
            Errno::EACCES => saw_eacces = true,
            e @ (Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG) => err = e,
            e => return (Stage::Exec, e),
        }
    }
    (Stage::Exec, if saw_eacces { Errno::EACCES } else { err })
}
