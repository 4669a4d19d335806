//! Networking: pick a link, get an address (DHCP with smoltcp over an
//! AF_PACKET socket, or static from the config), then configure the
//! kernel's interface so ordinary sockets (the HTTP client) work.
//!
//! Owns: `ROOT/sys/class/net` reading, the DHCP exchange, the interface
//! address/route and `ROOT/etc/resolv.conf`. It must not touch other
//! interfaces than the chosen one, beyond bringing Ethernet links up to
//! see their carrier.
//!
//! smoltcp's own `phy::RawSocket` panics on I/O errors; [`PacketDevice`]
//! counts and reports them instead, so a NIC hiccup cannot kill PID 1.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant as StdInstant};

use bootvault_common::config::{Config, IpConfig};
use bootvault_common::units::{mac_string, parse_mac};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};

use crate::sys::{self, PacketSocket};

/// An Ethernet interface as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: [u8; 6],
    pub ifindex: i32,
}

/// Ethernet links (ARPHRD_ETHER, type 1) under `ROOT/sys/class/net`,
/// sorted by name. Loopback, tunnels and the like are skipped.
pub fn links(root: &Path) -> Vec<Link> {
    let dir = root.join("sys/class/net");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let read = |name: &str, file: &str| fs::read_to_string(dir.join(name).join(file)).ok();
    let mut out: Vec<Link> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            if read(&name, "type")?.trim() != "1" {
                return None;
            }
            let mac = parse_mac(&read(&name, "address")?)?;
            let ifindex = read(&name, "ifindex")?.trim().parse().ok()?;
            Some(Link { name, mac, ifindex })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether the link reports carrier (only readable while it is up).
pub fn has_carrier(root: &Path, name: &str) -> bool {
    fs::read_to_string(root.join("sys/class/net").join(name).join("carrier")).map(|s| s.trim() == "1").unwrap_or(false)
}

/// The address configuration the PC ended up with.
#[derive(Debug, Clone)]
pub struct Lease {
    pub link: Link,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub dhcp: bool,
    pub elapsed: Duration,
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) {} {}/{}",
            self.link.name,
            mac_string(self.link.mac),
            if self.dhcp { "leased" } else { "static" },
            self.addr,
            self.prefix
        )?;
        if let Some(r) = self.router {
            write!(f, " router {r}")?;
        }
        if !self.dns.is_empty() {
            let dns: Vec<String> = self.dns.iter().map(ToString::to_string).collect();
            write!(f, " dns {}", dns.join(","))?;
        }
        write!(f, " in {:.2} s", self.elapsed.as_secs_f64())
    }
}

/// Brings the network up as the config says. `log` receives progress lines.
pub fn bring_up(root: &Path, config: &Config, log: &mut dyn FnMut(String)) -> Result<Lease, String> {
    let start = StdInstant::now();
    let all = links(root);
    if all.is_empty() {
        return Err("no Ethernet interface found (no driver for the NIC?)".into());
    }
    let candidates: Vec<Link> = match &config.iface {
        Some(want) => {
            let found: Vec<Link> = all.iter().filter(|l| &l.name == want).cloned().collect();
            if found.is_empty() {
                let names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
                return Err(format!("interface {want} not found (have {})", names.join(", ")));
            }
            found
        }
        None => all,
    };
    for l in &candidates {
        if let Err(e) = sys::link_up(&l.name) {
            log(format!("cannot bring {} up: {e}", l.name));
        }
    }
    let deadline = StdInstant::now() + Duration::from_secs(u64::from(config.link_timeout));
    let link = loop {
        if let Some(l) = candidates.iter().find(|l| has_carrier(root, &l.name)) {
            break l.clone();
        }
        if StdInstant::now() >= deadline {
            let names: Vec<&str> = candidates.iter().map(|l| l.name.as_str()).collect();
            return Err(format!(
                "no carrier on {} after {} s (cable unplugged?)",
                names.join(", "),
                config.link_timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    log(format!("link {} ({}) has carrier", link.name, mac_string(link.mac)));

    let mut lease = match &config.ip {
        IpConfig::Dhcp => dhcp(&link, Duration::from_secs(u64::from(config.dhcp_timeout)), log)?,
        IpConfig::Static { addr, prefix } => Lease {
            link: link.clone(),
            addr: *addr,
            prefix: *prefix,
            router: config.gateway,
            dns: config.dns.clone(),
            dhcp: false,
            elapsed: Duration::ZERO,
        },
    };
    // Settings in the config win over what DHCP offered.
    if config.gateway.is_some() {
        lease.router = config.gateway;
    }
    if !config.dns.is_empty() {
        lease.dns = config.dns.clone();
    }
    configure_kernel(root, &lease)?;
    lease.elapsed = start.elapsed();
    Ok(lease)
}

/// Gives the kernel interface the address, the default route and the
/// resolvers.
pub fn configure_kernel(root: &Path, lease: &Lease) -> Result<(), String> {
    let name = &lease.link.name;
    sys::link_up("lo").map_err(|e| e.to_string())?;
    sys::set_address(name, lease.addr, lease.prefix).map_err(|e| e.to_string())?;
    if let Some(gw) = lease.router {
        sys::add_default_route(name, gw).map_err(|e| e.to_string())?;
    }
    let resolv = root.join("etc/resolv.conf");
    let text: String = lease.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    fs::create_dir_all(root.join("etc"))
        .and_then(|()| fs::write(&resolv, text))
        .map_err(|e| format!("writing {}: {e}", resolv.display()))
}

/// smoltcp device over an AF_PACKET socket. I/O errors are counted and the
/// last one kept, never panicked on.
pub struct PacketDevice {
    sock: PacketSocket,
    rx: Vec<u8>,
    tx: Vec<u8>,
    pub errors: u64,
    pub last_error: Option<String>,
}

const FRAME: usize = 1514;

impl PacketDevice {
    pub fn new(sock: PacketSocket) -> Self {
        PacketDevice { sock, rx: vec![0; FRAME + 4], tx: vec![0; FRAME], errors: 0, last_error: None }
    }
}

pub struct Rx<'a>(&'a [u8]);

pub struct Tx<'a> {
    sock: &'a PacketSocket,
    buf: &'a mut Vec<u8>,
    errors: &'a mut u64,
    last_error: &'a mut Option<String>,
}

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.buf.resize(len, 0);
        let r = f(&mut self.buf[..len]);
        if let Err(e) = self.sock.send(&self.buf[..len]) {
            *self.errors += 1;
            *self.last_error = Some(format!("sending on {}: {e}", self.sock.name()));
        }
        r
    }
}

impl Device for PacketDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        match self.sock.recv(&mut self.rx) {
            Ok(Some(n)) => Some((
                Rx(&self.rx[..n.min(self.rx.len())]),
                Tx { sock: &self.sock, buf: &mut self.tx, errors: &mut self.errors, last_error: &mut self.last_error },
            )),
            Ok(None) => None,
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(format!("receiving on {}: {e}", self.sock.name()));
                None
            }
        }
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx { sock: &self.sock, buf: &mut self.tx, errors: &mut self.errors, last_error: &mut self.last_error })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME;
        caps
    }
}

/// One DHCPv4 exchange on `link`, bounded by `timeout`. smoltcp retransmits
/// DISCOVER/REQUEST with its own backoff inside that bound.
pub fn dhcp(link: &Link, timeout: Duration, log: &mut dyn FnMut(String)) -> Result<Lease, String> {
    let start = StdInstant::now();
    let sock = PacketSocket::open(&link.name, link.ifindex).map_err(|e| e.to_string())?;
    let fd = sock.raw_fd();
    let mut device = PacketDevice::new(sock);
    let mut iface_config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(link.mac)));
    // The seed picks DHCP transaction ids: differ per PC and per boot.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    iface_config.random_seed = nanos
        ^ u64::from_le_bytes([link.mac[0], link.mac[1], link.mac[2], link.mac[3], link.mac[4], link.mac[5], 0, 0]);
    let now = || Instant::from_micros(start.elapsed().as_micros() as i64);
    let mut iface = Interface::new(iface_config, &mut device, now());
    let mut sockets = SocketSet::new(Vec::new());
    let handle = sockets.add(dhcpv4::Socket::new());
    let mut reported_errors = 0;
    loop {
        let ts = now();
        iface.poll(ts, &mut device, &mut sockets);
        if let Some(dhcpv4::Event::Configured(c)) = sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            return Ok(Lease {
                link: link.clone(),
                addr: c.address.address(),
                prefix: c.address.prefix_len(),
                router: c.router,
                dns: c.dns_servers.iter().copied().collect(),
                dhcp: true,
                elapsed: start.elapsed(),
            });
        }
        if device.errors > reported_errors {
            reported_errors = device.errors;
            if let Some(e) = &device.last_error {
                log(format!("network error ({} so far): {e}", device.errors));
            }
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!(
                "no DHCP lease on {} after {} s (is a DHCP server on this network?)",
                link.name,
                timeout.as_secs()
            ));
        }
        let delay = iface
            .poll_delay(ts, &sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(left)
            .min(left)
            .min(Duration::from_millis(500));
        sys::wait_readable(fd, delay.as_millis() as i32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn iface(root: &Path, name: &str, ty: &str, mac: &str, idx: u32, carrier: Option<&str>) {
        let d = root.join("sys/class/net").join(name);
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("type"), format!("{ty}\n")).expect("write");
        fs::write(d.join("address"), format!("{mac}\n")).expect("write");
        fs::write(d.join("ifindex"), format!("{idx}\n")).expect("write");
        if let Some(c) = carrier {
            fs::write(d.join("carrier"), c).expect("write");
        }
    }

    #[test]
    fn finds_ethernet_links_sorted_with_carrier() {
        let tmp = TempDir::new("net");
        let root = tmp.path();
        iface(root, "lo", "772", "00:00:00:00:00:00", 1, Some("1\n"));
        iface(root, "enp0s3", "1", "52:54:00:12:34:56", 3, Some("0\n"));
        iface(root, "eth0", "1", "52:54:00:12:34:57", 2, Some("1\n"));
        iface(root, "sit0", "776", "00:00:00:00", 4, None);
        let l = links(root);
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec!["enp0s3", "eth0"]);
        assert_eq!(l[1].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x57]);
        assert_eq!(l[1].ifindex, 2);
        assert!(!has_carrier(root, "enp0s3"));
        assert!(has_carrier(root, "eth0"));
        assert!(!has_carrier(root, "sit0"));
        assert!(links(&root.join("nowhere")).is_empty());
    }

    /// A send error (here: a frame far over lo's MTU) is counted and
    /// reported, never a panic, and the device keeps working afterwards.
    #[test]
    fn packet_device_survives_send_errors() {
        let lo = fs::read_to_string("/sys/class/net/lo/ifindex").ok().and_then(|s| s.trim().parse::<i32>().ok());
        let sock = match lo.map(|i| PacketSocket::open("lo", i)) {
            Some(Ok(s)) => s,
            _ => {
                eprintln!("no AF_PACKET on lo here (not root?); skipping");
                return;
            }
        };
        let mut dev = PacketDevice::new(sock);
        let now = Instant::from_millis(0);
        let tx = dev.transmit(now).expect("a token");
        tx.consume(200_000, |buf| buf.fill(0xFF));
        assert_eq!(dev.errors, 1);
        assert!(dev.last_error.as_deref().is_some_and(|e| e.starts_with("sending on lo:")), "{:?}", dev.last_error);
        // A normal-sized frame still goes out.
        let tx = dev.transmit(now).expect("a token");
        tx.consume(60, |buf| buf.fill(0xFF));
        assert_eq!(dev.errors, 1);
    }
}
