//! Kernel modules: what the builder needs to pick them and what the init
//! needs to load them.
//!
//! * [`modinfo`] reads the `.modinfo` section of a `.ko` ELF file (the
//!   builder's own depmod: Debian's package ships no `modules.dep`, depmod
//!   writes it at install time).
//! * [`Index`] is the `modules.dep` + `modules.alias` pair, in the standard
//!   text formats, so the init can equally read files made by a real depmod.
//! * [`glob_match`] is the fnmatch subset modalias patterns use.
//! * [`Index::load_order`] puts dependencies before their users.
//! * [`gunzip`] unpacks the `.ko.gz` files the builder ships, which the
//!   init loads from memory: in the initramfs's tmpfs, the modules then
//!   hold about a quarter of the memory they would unpacked, for the whole
//!   run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleError(pub String);

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ModuleError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ModuleError> {
    Err(ModuleError(msg.into()))
}

fn rd<const N: usize>(b: &[u8], off: u64) -> Option<[u8; N]> {
    let off = usize::try_from(off).ok()?;
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: u64) -> Option<u64> {
    rd::<2>(b, off).map(|x| u64::from(u16::from_le_bytes(x)))
}
fn u32_at(b: &[u8], off: u64) -> Option<u64> {
    rd::<4>(b, off).map(|x| u64::from(u32::from_le_bytes(x)))
}
fn u64_at(b: &[u8], off: u64) -> Option<u64> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}

/// The largest module [`gunzip`] unpacks (the largest in Debian's 6.1
/// kernel is under 10 MiB); a bigger claim is refused, not allocated.
pub const MAX_MODULE: usize = 64 << 20;

/// The suffix of the modules the builder ships compressed.
pub const GZ: &str = ".gz";

/// Unpacks a `.ko.gz`, at most [`MAX_MODULE`] bytes.
pub fn gunzip(gz: &[u8]) -> Result<Vec<u8>, ModuleError> {
    crate::gz::gunzip(gz, MAX_MODULE).map_err(ModuleError)
}

/// The `key=value` strings of a module's `.modinfo` section, in order.
/// Only 64-bit little-endian ELF (x86_64 modules) is understood.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, ModuleError> {
    if elf.get(..4) != Some(b"\x7fELF") {
        if elf.starts_with(&[0xFD, b'7', b'z', b'X', b'Z']) || elf.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            return err("compressed module (.ko.xz/.ko.zst): unpack the modules first");
        }
        return err("not an ELF file");
    }
    // 64-bit PCs' modules, and 32-bit ones (Debian's 686 kernel).
    let wide = match (elf.get(4), elf.get(5)) {
        (Some(2), Some(1)) => true,
        (Some(1), Some(1)) => false,
        _ => return err("not a little-endian ELF file"),
    };
    let trunc = || ModuleError("truncated ELF header".into());
    let word = |at: u64| if wide { u64_at(elf, at) } else { u32_at(elf, at) };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (word(0x28), u16_at(elf, 0x3A), u16_at(elf, 0x3C), u16_at(elf, 0x3E))
    } else {
        (word(0x20), u16_at(elf, 0x2E), u16_at(elf, 0x30), u16_at(elf, 0x32))
    };
    let (shoff, shentsize, shnum, shstrndx) =
        (shoff.ok_or_else(trunc)?, shentsize.ok_or_else(trunc)?, shnum.ok_or_else(trunc)?, shstrndx.ok_or_else(trunc)?);
    if shentsize < if wide { 64 } else { 40 } {
        return err("bad ELF section header size");
    }
    let section = |i: u64| -> Option<(u64, u64, u64)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(elf, base)?;
        let (off, size) =
            if wide { (word(base + 0x18)?, word(base + 0x20)?) } else { (word(base + 0x10)?, word(base + 0x14)?) };
        Some((name, off, size))
    };
    let bytes_of = |off: u64, size: u64| -> Option<&[u8]> {
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        elf.get(start..end)
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or_else(|| ModuleError("bad ELF section string table".into()))?;
    let strtab = bytes_of(stroff, strsize).ok_or_else(|| ModuleError("bad ELF section string table".into()))?;
    for i in 0..shnum {
        let Some((name, off, size)) = section(i) else {
            return err(format!("truncated ELF section header {i}"));
        };
        let name = usize::try_from(name).ok().and_then(|n| strtab.get(n..)).unwrap_or_default();
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let data = bytes_of(off, size).ok_or_else(|| ModuleError("truncated .modinfo section".into()))?;
        return Ok(data
            .split(|&b| b == 0)
            .filter_map(|s| {
                let s = std::str::from_utf8(s).ok()?;
                let (k, v) = s.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect());
    }
    err("no .modinfo section (not a kernel module?)")
}

/// The module name for a path: `kernel/drivers/net/virtio_net.ko` ->
/// `virtio_net`. The kernel treats `-` and `_` alike; we store `_`.
pub fn name_from_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// fnmatch(3) without flags, as modprobe uses for aliases: `*`, `?`, and
/// bracket expressions `[abc]`, `[a-z]`, `[!x]`/`[^x]`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position after the last `*` and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match bracket(p, pi, t[ti]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                // An unclosed `[` matches itself literally.
                None => (t[ti] == b'[').then_some(pi + 1),
            },
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression starting at `p[start] == '['`.
/// Returns (matched, index after `]`), or None if the bracket is unclosed.
fn bracket(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&hi| hi != b']') {
            let hi = p[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// One module known to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Path relative to `/lib/modules/VERSION`, e.g. `kernel/drivers/net/virtio_net.ko`.
    pub path: String,
    /// Names of modules this one needs, as modinfo `depends=` lists them.
    pub depends: Vec<String>,
}

/// `modules.dep` + `modules.alias`: which module serves a device and what
/// it needs loaded first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    pub modules: BTreeMap<String, Module>,
    /// (pattern, module name), in file order.
    pub aliases: Vec<(String, String)>,
}

impl Index {
    /// Builds the index from each module's path and modinfo pairs (the
    /// builder's depmod). Soft dependencies (`softdep=pre: x`) are treated
    /// as hard ones, so e.g. a crc implementation is loaded first.
    pub fn from_modinfo<'a>(mods: impl IntoIterator<Item = (String, &'a [(String, String)])>) -> Index {
        let mut index = Index::default();
        for (path, info) in mods {
            let name = info
                .iter()
                .find(|(k, _)| k == "name")
                .map(|(_, v)| normalize(v))
                .unwrap_or_else(|| name_from_path(&path));
            let mut depends = Vec::new();
            for (k, v) in info {
                match k.as_str() {
                    "depends" => depends.extend(v.split(',').filter(|s| !s.is_empty()).map(normalize)),
                    "softdep" => depends.extend(v.split_whitespace().filter(|w| !w.ends_with(':')).map(normalize)),
                    "alias" => index.aliases.push((v.clone(), name.clone())),
                    _ => {}
                }
            }
            index.modules.insert(name, Module { path, depends });
        }
        index
    }

    /// Parses `modules.dep` text (`path: dep-path dep-path`) and
    /// `modules.alias` text (`alias PATTERN NAME`).
    pub fn parse(dep: &str, alias: &str) -> Result<Index, ModuleError> {
        let mut index = Index::default();
        for (n, line) in dep.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return err(format!("modules.dep line {}: expected 'path: deps'", n + 1));
            };
            let path = path.trim().to_owned();
            // depmod lists the deepest dependency last and modprobe loads
            // from the end of the list: keep that order.
            let depends = deps.split_whitespace().rev().map(name_from_path).collect();
            index.modules.insert(name_from_path(&path), Module { path, depends });
        }
        for (n, line) in alias.lines().enumerate() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (None, ..) => {}
                (Some(w), ..) if w.starts_with('#') => {}
                (Some("alias"), Some(pattern), Some(name)) => index.aliases.push((pattern.to_owned(), normalize(name))),
                _ => return err(format!("modules.alias line {}: expected 'alias PATTERN MODULE'", n + 1)),
            }
        }
        Ok(index)
    }

    /// `modules.dep` text. Dependencies are listed as paths, deepest last,
    /// like depmod writes them; names missing from the index are skipped.
    pub fn dep_text(&self) -> String {
        let mut out = String::new();
        for (name, m) in &self.modules {
            out.push_str(&m.path);
            out.push(':');
            for dep in self.load_order(name).iter().rev().skip(1) {
                if let Some(d) = self.modules.get(dep) {
                    out.push(' ');
                    out.push_str(&d.path);
                }
            }
            out.push('\n');
        }
        out
    }

    /// `modules.alias` text, sorted for reproducibility.
    pub fn alias_text(&self) -> String {
        let mut lines: Vec<String> = self.aliases.iter().map(|(p, n)| format!("alias {p} {n}\n")).collect();
        lines.sort();
        lines.dedup();
        lines.concat()
    }

    /// Modules whose alias pattern matches a device's modalias.
    pub fn lookup(&self, modalias: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (pattern, name) in &self.aliases {
            if glob_match(pattern, modalias) && !out.contains(&name.as_str()) {
                out.push(name);
            }
        }
        out
    }

    /// `name` and everything it needs, dependencies first (post-order DFS).
    /// Cycles are broken rather than followed; unknown names are kept (the
    /// caller reports them).
    pub fn load_order(&self, name: &str) -> Vec<String> {
        fn visit(index: &Index, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
            if !seen.insert(name.to_owned()) {
                return;
            }
            if let Some(m) = index.modules.get(name) {
                for dep in &m.depends {
                    visit(index, dep, seen, out);
                }
            }
            out.push(name.to_owned());
        }
        let mut out = Vec::new();
        visit(self, &normalize(name), &mut BTreeSet::new(), &mut out);
        out
    }

    /// The closure of `names` over dependencies: the set the image ships.
    /// Returns the names the index does not know, too.
    pub fn closure<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> (BTreeSet<String>, Vec<String>) {
        let mut set = BTreeSet::new();
        let mut missing = Vec::new();
        for name in names {
            for m in self.load_order(name) {
                if self.modules.contains_key(&m) {
                    set.insert(m);
                } else if !missing.contains(&m) {
                    missing.push(m);
                }
            }
        }
        (set, missing)
    }

    /// The index restricted to `keep` (aliases of dropped modules go too).
    pub fn restrict(&self, keep: &BTreeSet<String>) -> Index {
        Index {
            modules: self
                .modules
                .iter()
                .filter(|(n, _)| keep.contains(*n))
                .map(|(n, m)| (n.clone(), m.clone()))
                .collect(),
            aliases: self.aliases.iter().filter(|(_, n)| keep.contains(n)).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases = [
            ("pci:v00001AF4d00001000sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", true),
            ("pci:v00001AF4d00001000sv*sd*bc*sc*i*", "pci:v00001AF4d00001001sv00001AF4sd00000001bc02sc00i00", false),
            ("virtio:d00000001v*", "virtio:d00000001v00001AF4", true),
            ("virtio:d00000002v*", "virtio:d00000001v00001AF4", false),
            ("scsi:t-0x00*", "scsi:t-0x00", true),
            ("scsi:t-0x0[07]*", "scsi:t-0x07", true),
            ("scsi:t-0x0[07]*", "scsi:t-0x05", false),
            ("a[!b]c", "axc", true),
            ("a[!b]c", "abc", false),
            ("a[^b]c", "abc", false),
            ("a[a-c]d", "abd", true),
            ("a[]]b", "a]b", true),
            ("a[", "a[", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("**x", "abx", true),
            ("*a*b", "xxaxxb", true),
            ("*a*b", "xxaxxbc", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }

    fn sample() -> Index {
        let dep = "kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko\n\
                   kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko\n\
                   kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko\n\
                   kernel/drivers/scsi/scsi_mod.ko:\n\
                   kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko\n";
        let alias = "# Aliases extracted from modules themselves.\n\
                     alias pci:v*d*sv*sd*bc01sc06i01* ahci\n\
                     alias scsi:t-0x00* sd_mod\n\
                     alias scsi:t-0x0e* sd_mod\n";
        Index::parse(dep, alias).expect("parses")
    }

    #[test]
    fn dep_alias_parse_and_order() {
        let i = sample();
        assert_eq!(i.lookup("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"), vec!["ahci"]);
        assert_eq!(i.lookup("scsi:t-0x00"), vec!["sd_mod"]);
        assert!(i.lookup("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00").is_empty());
        let order = i.load_order("ahci");
        assert_eq!(order.last().map(String::as_str), Some("ahci"));
        assert_eq!(order[0], "scsi_mod");
        let pos = |n: &str| order.iter().position(|m| m == n).expect("present");
        assert!(pos("libata") < pos("libahci"));
        // dep_text / alias_text round-trip through parse.
        let again = Index::parse(&i.dep_text(), &i.alias_text()).expect("round trip");
        assert_eq!(again.modules, i.modules.iter().map(|(n, m)| (n.clone(), m.clone())).collect());
        assert_eq!(again.load_order("ahci"), order);
    }

    #[test]
    fn closure_and_restrict() {
        let i = sample();
        let (set, missing) = i.closure(["sd_mod", "nosuch"]);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec!["scsi_mod", "sd_mod"]);
        assert_eq!(missing, vec!["nosuch"]);
        let (set, _) = i.closure(["sd_mod"]);
        let r = i.restrict(&set);
        assert_eq!(r.aliases.len(), 2);
        assert!(r.lookup("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01").is_empty());
    }

    #[test]
    fn cycles_terminate() {
        let i = Index::parse("a.ko: b.ko\nb.ko: a.ko\n", "").expect("parses");
        assert_eq!(i.load_order("a"), vec!["b", "a"]);
    }

    #[test]
    fn bad_files_name_the_line() {
        assert_eq!(Index::parse("nonsense\n", "").unwrap_err().0, "modules.dep line 1: expected 'path: deps'");
        assert!(Index::parse("", "alias onlyone\n").unwrap_err().0.contains("line 1"));
    }

    /// A minimal module: an ELF64 (or, not `wide`, an ELF32: a 32-bit PC's)
    /// with a section string table and a .modinfo section.
    fn tiny_module(modinfo: &[u8], wide: bool) -> Vec<u8> {
        // Header size, section header size; where e_shoff, e_shentsize
        // (then e_shnum, e_shstrndx) and a section's sh_offset (then
        // sh_size) are; the width of an address.
        let (header, section, shoff_at, shentsize_at, offset_at, w) =
            if wide { (64, 64, 0x28, 0x3A, 0x18, 8) } else { (52, 40, 0x20, 0x2E, 0x10, 4) };
        let word = |v: u64| v.to_le_bytes()[..w].to_vec();
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; header];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = if wide { 2 } else { 1 };
        elf[5] = 1;
        let shstr_off = elf.len() as u64;
        elf.extend_from_slice(shstr);
        let info_off = elf.len() as u64;
        elf.extend_from_slice(modinfo);
        let shoff = elf.len() as u64;
        for (name, off, size) in
            [(0u32, 0, 0), (1, shstr_off, shstr.len() as u64), (11, info_off, modinfo.len() as u64)]
        {
            let mut s = vec![0u8; section];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[offset_at..offset_at + w].copy_from_slice(&word(off));
            s[offset_at + w..offset_at + 2 * w].copy_from_slice(&word(size));
            elf.extend_from_slice(&s);
        }
        elf[shoff_at..shoff_at + w].copy_from_slice(&word(shoff));
        for (i, v) in [section as u16, 3, 1].into_iter().enumerate() {
            elf[shentsize_at + 2 * i..shentsize_at + 2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }
        elf
    }

    #[test]
    fn modinfo_from_elf32() {
        let elf = tiny_module(b"license=GPL\0alias=pci:v00008086d0000100Esv*\0depends=\0name=e1000\0\0", false);
        let info = modinfo(&elf).expect("parses");
        assert!(info.contains(&("name".to_owned(), "e1000".to_owned())), "{info:?}");
        assert!(info.contains(&("alias".to_owned(), "pci:v00008086d0000100Esv*".to_owned())), "{info:?}");
        let mut big_endian = elf.clone();
        big_endian[5] = 2;
        assert!(modinfo(&big_endian).is_err());
        for n in 0..elf.len() {
            let _ = modinfo(&elf[..n]);
        }
    }

    #[test]
    fn modinfo_from_elf() {
        let elf = tiny_module(b"license=GPL\0alias=virtio:d00000001v*\0depends=virtio,virtio_ring\0softdep=pre: crc32c\0name=virtio_net\0\0", true);
        let info = modinfo(&elf).expect("parses");
        assert_eq!(info.len(), 5);
        let index = Index::from_modinfo([("kernel/drivers/net/virtio_net.ko".to_string(), info.as_slice())]);
        let m = &index.modules["virtio_net"];
        assert_eq!(m.depends, vec!["virtio", "virtio_ring", "crc32c"]);
        assert_eq!(index.lookup("virtio:d00000001v00001AF4"), vec!["virtio_net"]);
        assert!(modinfo(b"\x7fELF").is_err());
        assert!(modinfo(b"\xFD7zXZ\0").unwrap_err().0.contains("compressed"));
        // Truncations never panic.
        for n in 0..elf.len() {
            let _ = modinfo(&elf[..n]);
        }
    }
}
