//! The syscall edge of the init: everything that talks to the kernel
//! directly (mounts, module loading, gzipped or not, power, interface
//! ioctls, raw packet sockets). Nothing else here decides anything;
//! callers do.
//!
//! Every error names the operation and the object, e.g.
//! `finit_module /lib/modules/6.1.0/kernel/drivers/net/virtio_net.ko: File exists`.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// An OS error with the operation and object it happened to.
#[derive(Debug)]
pub struct SysError {
    pub op: &'static str,
    pub what: String,
    pub err: io::Error,
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.what, self.err)
    }
}

impl std::error::Error for SysError {}

pub type Result<T> = std::result::Result<T, SysError>;

fn check(rc: libc::c_int, op: &'static str, what: impl fmt::Display) -> Result<libc::c_int> {
    if rc < 0 {
        Err(SysError { op, what: what.to_string(), err: io::Error::last_os_error() })
    } else {
        Ok(rc)
    }
}

fn cstr(op: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| SysError {
        op,
        what: s.escape_debug().to_string(),
        err: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// mount(2). `EBUSY` (already mounted there) counts as success.
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let what = format!("{fstype} on {target}");
    let (s, t, f, d) = (cstr("mount", source)?, cstr("mount", target)?, cstr("mount", fstype)?, cstr("mount", data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    match check(rc, "mount", what) {
        Err(e) if e.err.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// umount2(2) with MNT_DETACH, so a busy mount does not stop a power-off.
pub fn umount_lazy(target: &str) -> Result<()> {
    let t = cstr("umount", target)?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) }, "umount", target).map(|_| ())
}

/// umount2(2), waiting for the filesystem to be written out: an error
/// (`EBUSY`) leaves it mounted.
pub fn umount(target: &str) -> Result<()> {
    let t = cstr("umount", target)?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::umount2(t.as_ptr(), 0) }, "umount", target).map(|_| ())
}

/// Bytes free for writing and total bytes of the filesystem at `path`
/// (statvfs(2): `f_bavail` and `f_blocks` in `f_frsize` units).
pub fn space(path: &str) -> Result<(u64, u64)> {
    let p = cstr("statvfs", path)?;
    // SAFETY: statvfs is plain old data filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a struct to fill.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, "statvfs", path)?;
    let unit = st.f_frsize as u64;
    Ok(((st.f_bavail as u64).saturating_mul(unit), (st.f_blocks as u64).saturating_mul(unit)))
}

/// Loads a kernel module from a file: a `.ko.gz` the builder shipped is
/// unpacked in memory and handed to `init_module`, a plain `.ko` to
/// `finit_module`. `EEXIST` (already loaded, or built in) counts as
/// success.
pub fn load_module(path: &Path) -> std::result::Result<(), String> {
    use bootvault_common::modules::{gunzip, GZ};
    if !path.to_str().is_some_and(|p| p.ends_with(GZ)) {
        return finit_module(path).map_err(|e| e.to_string());
    }
    let what = path.display().to_string();
    let packed =
        std::fs::read(path).map_err(|err| SysError { op: "opening module", what: what.clone(), err }.to_string())?;
    let image = gunzip(&packed).map_err(|e| format!("unpacking module {what}: {e}"))?;
    drop(packed);
    let params = c"";
    // SAFETY: image and params outlive the call; the kernel copies the image.
    let rc = unsafe { libc::syscall(libc::SYS_init_module, image.as_ptr(), image.len(), params.as_ptr()) };
    match check(rc as libc::c_int, "init_module", what) {
        Err(e) if e.err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()).map_err(|e| e.to_string()),
    }
}

fn finit_module(path: &Path) -> Result<()> {
    let what = path.display().to_string();
    let file = File::open(path).map_err(|err| SysError { op: "opening module", what: what.clone(), err })?;
    let params = c"";
    // SAFETY: fd is open for the duration of the call; params is a valid C string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    match check(rc as libc::c_int, "finit_module", what) {
        Err(e) if e.err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()),
    }
}

pub fn sethostname(name: &str) -> Result<()> {
    // SAFETY: pointer and length describe `name`'s bytes.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(rc, "sethostname", name).map(|_| ())
}

pub fn sync() {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::sync() }
}

/// Power off or reboot. Only returns on failure.
pub fn reboot(poweroff: bool) -> SysError {
    let cmd = if poweroff { libc::LINUX_REBOOT_CMD_POWER_OFF } else { libc::LINUX_REBOOT_CMD_RESTART };
    // SAFETY: reboot(2) with a valid command.
    let rc = unsafe { libc::reboot(cmd) };
    match check(rc, "reboot", if poweroff { "power off" } else { "restart" }) {
        Err(e) => e,
        Ok(_) => SysError { op: "reboot", what: "returned".into(), err: io::Error::other("reboot returned") },
    }
}

/// Makes `path` (a console device) the standard input, output and error.
pub fn attach_console(path: &str) -> Result<()> {
    let p = cstr("open", path)?;
    // SAFETY: valid path; the fd is checked.
    let fd = check(unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) }, "open", path)?;
    for target in 0..3 {
        // SAFETY: fd is a valid open descriptor.
        check(unsafe { libc::dup2(fd, target) }, "dup2", path)?;
    }
    if fd > 2 {
        // SAFETY: fd is ours and no longer needed.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Waits up to `timeout_ms` for `fd` to be readable. Interrupted waits
/// count as "not readable".
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

/// Puts terminal `fd` in raw mode (no echo, no line editing, Ctrl-C as a
/// byte, CR not turned into LF) but keeps output processing, so `\n`
/// still starts a new line. Returns the old mode to restore; `None` when
/// `fd` is not a terminal (a pipe, as in tests).
pub fn raw_mode(fd: RawFd) -> Option<libc::termios> {
    // SAFETY: termios is plain old data filled by tcgetattr.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a termios.
    if unsafe { libc::tcgetattr(fd, &mut old) } != 0 {
        return None;
    }
    let mut raw = old;
    raw.c_iflag &= !(libc::ICRNL | libc::INLCR | libc::IGNCR | libc::IXON | libc::ISTRIP | libc::BRKINT);
    raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN);
    raw.c_oflag |= libc::OPOST | libc::ONLCR;
    raw.c_cc[libc::VMIN] = 1;
    raw.c_cc[libc::VTIME] = 0;
    // SAFETY: valid termios for a valid fd.
    (unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } == 0).then_some(old)
}

/// Restores a mode `raw_mode` returned.
pub fn restore_mode(fd: RawFd, mode: &libc::termios) {
    // SAFETY: valid termios for a valid fd; failure leaves the mode as is.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, mode) };
}

/// Drops keys typed ahead, so a key pressed during a long wait cannot
/// answer a question that has not been asked yet.
pub fn flush_input(fd: RawFd) {
    // SAFETY: plain ioctl on a valid fd; failure (not a tty) is harmless.
    unsafe { libc::tcflush(fd, libc::TCIFLUSH) };
}

/// read(2) of whatever is there (after `wait_readable`); Ok(0) = end of input.
pub fn read_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps any exited child without blocking; returns how many were reaped.
pub fn reap_children() -> usize {
    let mut n = 0;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return n;
        }
        n += 1;
    }
}

// ---------------------------------------------------------------------------
// Network interfaces (ioctl on an AF_INET datagram socket).

fn inet_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }, "socket", "AF_INET")?;
    // SAFETY: fd was just created and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(SysError { op: "interface", what: name.into(), err: io::Error::from(io::ErrorKind::InvalidInput) });
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void, op: &'static str, what: &str) -> Result<()> {
    // SAFETY: `arg` points at the structure `req` expects, owned by the caller.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) }, op, what).map(|_| ())
}

/// Sets IFF_UP on an interface.
pub fn link_up(name: &str) -> Result<()> {
    let s = inet_socket()?;
    let mut req = ifreq(name)?;
    ioctl(&s, libc::SIOCGIFFLAGS, (&mut req as *mut libc::ifreq).cast(), "SIOCGIFFLAGS", name)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&s, libc::SIOCSIFFLAGS, (&mut req as *mut libc::ifreq).cast(), "SIOCSIFFLAGS", name)
}

/// Gives an interface an address and netmask.
pub fn set_address(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    let s = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&s, libc::SIOCSIFADDR, (&mut req as *mut libc::ifreq).cast(), "SIOCSIFADDR", name)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(&s, libc::SIOCSIFNETMASK, (&mut req as *mut libc::ifreq).cast(), "SIOCSIFNETMASK", name)
}

/// Linux `struct rtentry` (not in libc for glibc targets).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Adds the default route via `gateway` on `dev`. An existing identical
/// route (`EEXIST`) counts as success.
pub fn add_default_route(dev: &str, gateway: Ipv4Addr) -> Result<()> {
    let s = inet_socket()?;
    let mut devname = cstr("route", dev)?.into_bytes_with_nul();
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: devname.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    let what = format!("default via {gateway} dev {dev}");
    match ioctl(&s, libc::SIOCADDRT, (&mut rt as *mut RtEntry).cast(), "SIOCADDRT", &what) {
        Err(e) if e.err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

// ---------------------------------------------------------------------------
// AF_PACKET raw socket: whole Ethernet frames on one interface.

pub struct PacketSocket {
    fd: OwnedFd,
    name: String,
}

impl PacketSocket {
    /// Opens a non-blocking raw socket bound to interface `ifindex`.
    pub fn open(name: &str, ifindex: i32) -> Result<PacketSocket> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked and owned.
        let fd = check(
            unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::c_int::from(proto),
                )
            },
            "socket AF_PACKET",
            name,
        )?;
        // SAFETY: fd was just created and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(rc, "bind AF_PACKET", name)?;
        Ok(PacketSocket { fd, name: name.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receives one frame; `Ok(None)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        }
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is valid for reads of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
