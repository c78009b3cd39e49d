//! Every per-child control of protocol rev 0.6 (issue 17) on one exec job, for the cost of
//! the controls against none: `compare`'s `ours_exec_true_controls` (ratio
//! `controls_vs_none`) and `examples/controls.rs`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use forkserver_client::Command;
use forkserver_protocol::RLIM_INFINITY;
use nix::libc;

/// The sandbox fds, made once: a seccomp program of the usual shape (the architecture checked,
/// one call refused with `EPERM`: 6 instructions) and a landlock ruleset that handles writing
/// files (no rule: `/bin/true` writes nothing).
fn sandbox() -> &'static (std::fs::File, OwnedFd) {
    static FDS: OnceLock<(std::fs::File, OwnedFd)> = OnceLock::new();
    FDS.get_or_init(|| {
        use std::io::Write;
        let insn = |code: u16, jt: u8, jf: u8, k: u32| {
            let mut b = code.to_ne_bytes().to_vec();
            b.extend_from_slice(&[jt, jf]);
            b.extend_from_slice(&k.to_ne_bytes());
            b
        };
        let program = [
            insn(0x20, 0, 0, 4),           // ld seccomp_data.arch
            insn(0x15, 0, 3, 0xC000_003E), // AUDIT_ARCH_X86_64, else allow
            insn(0x20, 0, 0, 0),           // ld seccomp_data.nr
            insn(0x15, 0, 1, libc::SYS_getpid as u32),
            insn(0x06, 0, 0, 0x0005_0000 | libc::EPERM as u32), // SECCOMP_RET_ERRNO
            insn(0x06, 0, 0, 0x7fff_0000),                      // SECCOMP_RET_ALLOW
        ]
        .concat();
        let path = std::env::temp_dir().join(format!("bench-filter-{}", std::process::id()));
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("the filter's file");
        let _ = std::fs::remove_file(&path);
        file.write_all(&program).expect("the filter written");
        let write_file: u64 = 1 << 1;
        let attr: *const u64 = &write_file;
        // SAFETY: `attr` points to a `struct landlock_ruleset_attr` of its first field (8
        // bytes, the size passed), alive for the call; the kernel returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, attr, 8usize, 0u32) };
        assert!(fd >= 0, "landlock: {}", std::io::Error::last_os_error());
        // SAFETY: a new fd, owned by nothing else.
        (file, unsafe { OwnedFd::from_raw_fd(fd as i32) })
    })
}

/// Sets every per-child control on `cmd`: five resource limits, a umask, `setpriority` (to 0,
/// so the child is not scheduled differently), the OOM score written (500), `no_new_privs`,
/// a 60 s deadline with a 5 s grace period (a timer, no signal when the child ends first), a
/// 6-instruction seccomp filter (read by the server per spawn) and a landlock ruleset.
pub fn with_controls(cmd: &mut Command) -> &mut Command {
    let (filter, ruleset) = sandbox();
    cmd.seccomp_filter(filter).landlock_ruleset(ruleset);
    cmd.rlimit(libc::RLIMIT_NOFILE, 1024, 4096)
        .rlimit(libc::RLIMIT_CORE, 0, 0)
        .rlimit(libc::RLIMIT_NPROC, 4096, 4096)
        .rlimit(libc::RLIMIT_AS, RLIM_INFINITY, RLIM_INFINITY)
        .rlimit(libc::RLIMIT_FSIZE, RLIM_INFINITY, RLIM_INFINITY)
        .umask(0o077)
        .nice(0)
        .oom_score_adj(500)
        .no_new_privs(true)
        .deadline(Duration::from_secs(60))
        .grace(Duration::from_secs(5))
}
