//! The fork path's exec (PROTOCOL.md §6.5 step 6, in `child_main` after `chdir`): argv, envp
//! and every `PATH` candidate built in the forked child (which may allocate), then the seccomp
//! filter (the last step before `execve`), then `execve` of each candidate, as `execvp` does.
//! Nothing is allocated between the filter and `execve`, so a filter that forbids `brk` or
//! `mmap` does not stop the exec. The `CLONE_VM` path does the same with what the server built
//! before the clone (`plan.rs`), through the same [`Candidates`].

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
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_bytes());
    let candidates = Candidates::new(job.program(), path);
    let (argv_ptrs, envp_ptrs) = (null_terminated(&argv), null_terminated(&envp));
    if let Err(failed) = sandbox.install_filter() {
        return failed;
    }
    (Stage::Exec, candidates.exec(&argv_ptrs, &envp_ptrs))
}

/// The `PATH` used when the child's environment has none (as glibc's `execvp`).
const DEFAULT_PATH: &[u8] = b"/usr/local/bin:/usr/bin:/bin";

/// The files an exec of one program tries, in order, each as a full path (PROTOCOL.md
/// §5.5.3): built before the exec, in the forked child or by the server before a `CLONE_VM`
/// clone (`plan.rs`), so that [`Candidates::exec`] allocates nothing.
#[derive(Debug)]
pub(super) struct Candidates {
    /// The program itself if it names a path; else `dir/program` for each `dir` of `PATH`.
    paths: Vec<CString>,
    /// Whether `paths` come from a `PATH` search (as execvp: `EACCES` remembered, "not found"
    /// errors go on to the next).
    search: bool,
}

impl Candidates {
    /// The candidates of `program` under `path` (the child's `PATH`, if it has one): as
    /// execvp, a program without a slash is searched in each directory of `path` (an empty
    /// one is `.`), else it is the one file tried.
    pub(super) fn new(program: &[u8], path: Option<&[u8]>) -> Self {
        // The protocol guarantees no NUL inside a program or an environment entry.
        let cstr = |b: Vec<u8>| CString::new(b).unwrap_or_default();
        let search = !program.contains(&b'/');
        let paths = match search {
            false => vec![cstr(program.to_vec())],
            true => path
                .unwrap_or(DEFAULT_PATH)
                .split(|&b| b == b':')
                .map(|dir| {
                    let mut full = if dir.is_empty() {
                        b".".to_vec()
                    } else {
                        dir.to_vec()
                    };
                    full.push(b'/');
                    full.extend_from_slice(program);
                    cstr(full)
                })
                .collect(),
        };
        Self { paths, search }
    }

    /// The paths, in the order they are tried.
    #[cfg(test)]
    pub(super) fn paths(&self) -> &[CString] {
        &self.paths
    }

    /// `execve` of each candidate in turn with the null-terminated `argv` and `envp`
    /// ([`null_terminated`]), as execvp does; returns only on failure, with the errno to
    /// report (`EACCES` if any candidate gave it, else the last "not found" error). Raw
    /// system calls, no allocation: the `CLONE_VM` child and a filtered child may run it.
    pub(super) fn exec(&self, argv: &[*const c_char], envp: &[*const c_char]) -> Errno {
        let (argv, envp) = (argv.as_ptr(), envp.as_ptr());
        let mut err = Errno::ENOENT;
        let mut saw_eacces = false;
        for candidate in &self.paths {
            match raw::execve(candidate, argv, envp) {
                e if !self.search => return e,
                Errno::EACCES => saw_eacces = true,
                e @ (Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG) => {
                    err = e
                }
                e => return e,
            }
        }
        if saw_eacces {
            Errno::EACCES
        } else {
            err
        }
    }
}

/// The pointers of `strings`, then a null pointer: an `argv` or `envp` for `execve`, valid
/// while `strings` lives.
pub(super) fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    let mut p: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    p.push(std::ptr::null());
    p
}
