//! The early filesystem: what must exist before anything else runs.
//!
//! A declarative table (as u-root's libinit does) run by one loop, so the
//! list of mounts is data, readable at a glance, and the order is explicit.

use crate::sys;

pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: &'static str,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

pub const MOUNTS: &[Mount] = &[
    Mount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID | NODEV | NOEXEC, data: "" },
    Mount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID | NODEV | NOEXEC, data: "" },
    Mount { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: NOSUID, data: "mode=0755" },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: NOSUID | NOEXEC,
        data: "mode=0620,ptmxmode=0666",
    },
    Mount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: NOSUID | NODEV, data: "mode=0755" },
    Mount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: NOSUID | NODEV, data: "mode=1777" },
];

/// Creates each mount point and mounts it. Returns the problems; a missing
/// /proc or /sys is reported but does not stop the boot here (the steps
/// that need them fail with their own message).
pub fn mount_all() -> Vec<String> {
    let mut problems = Vec::new();
    for m in MOUNTS {
        if let Err(e) = std::fs::create_dir_all(m.target) {
            problems.push(format!("creating {}: {e}", m.target));
            continue;
        }
        if let Err(e) = sys::mount(m.source, m.target, m.fstype, m.flags, m.data) {
            problems.push(e.to_string());
        }
    }
    problems
}

/// Unmounts the table in reverse order (lazily), after a sync.
pub fn unmount_all() {
    sys::sync();
    for m in MOUNTS.iter().rev() {
        let _ = sys::umount_lazy(m.target);
    }
}
