//! Group 7: the launched server's footprint, idle and after many spawns.

use std::time::Duration;

use forkserver_benches::{procfs, Result};
use forkserver_client::Client;
use serde_json::{json, Value};

use crate::scenarios::check;

/// The launched server's memory and fds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Footprint {
    pub(crate) spawned_total: u64,
    pub(crate) vm_rss_kib: u64,
    pub(crate) vm_hwm_kib: u64,
    pub(crate) fds: usize,
}

/// The server's footprint, read from `/proc` once it has had a moment to close the last
/// connection; then its spawn counter (whose connection is not counted in `fds`).
pub(crate) fn footprint(client: &Client, pid: u32) -> Result<Footprint> {
    std::thread::sleep(Duration::from_millis(50));
    let p = pid.to_string();
    let vm_rss_kib = procfs::vm_rss_kib(&p).ok_or("server VmRSS")?;
    let vm_hwm_kib = procfs::vm_hwm_kib(&p).ok_or("server VmHWM")?;
    let fds = procfs::fd_count(&p).ok_or("server fds")?;
    Ok(Footprint {
        spawned_total: client.status()?.spawned_total(),
        vm_rss_kib,
        vm_hwm_kib,
        fds,
    })
}

impl Footprint {
    pub(crate) fn to_json(self) -> Value {
        json!({
            "spawned_total": self.spawned_total,
            "vm_rss_kib": self.vm_rss_kib,
            "vm_hwm_kib": self.vm_hwm_kib,
            "fds": self.fds,
        })
    }
}

/// Group 7, second half: spawns until the server has forked `target` children in all, then
/// its footprint.
pub(crate) fn footprint_after(client: &Client, pid: u32, target: u64) -> Result<Footprint> {
    let done = client.status()?.spawned_total();
    let mut call = client.call("noop", Vec::new());
    for _ in done..target {
        check(call.spawn()?.wait()?)?;
    }
    footprint(client, pid)
}
