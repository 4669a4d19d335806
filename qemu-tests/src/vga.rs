//! The guest's VGA text console, seen and driven as a person at the PC
//! would: keys typed on its PS/2 keyboard and the 80x25 text screen read
//! back, both through QEMU's human monitor (HMP) on a unix socket.
//!
//! A guest started with [`crate::Guest::vga`] has a `-vga std` card, the
//! monitor socket, and [`VGA_CMDLINE`] appended to its kernel command
//! line. The screen is read from VGA text memory at physical `0xb8000`,
//! so the guest must stay in text mode (vgacon): no DRM or fbdev driver
//! may take the card over (our module profiles ship none, and SeaBIOS
//! leaves the card in text mode for `-kernel` boots).
//!
//! This module owns the monitor connection and the pure decoding of keys
//! and screens; it does not start or stop QEMU.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Result;

/// Appended to the kernel command line of a VGA guest.
///
/// - `no-scroll`: vgacon otherwise scrolls in hardware, moving the CRTC
///   start address through its 32 KiB of video memory, and the visible
///   screen is no longer at `0xb8000` after the first scroll. Without
///   hardware scrolling it copies rows and the screen stays put.
/// - `console=ttyS0,115200 console=tty0`: kernel messages go to both; the
///   last `console=` is `/dev/console`, which is PID 1's terminal, so the
///   init talks on the VGA screen and the PS/2 keyboard.
pub const VGA_CMDLINE: &str = "no-scroll console=ttyS0,115200 console=tty0";

/// Text mode geometry (mode 3, what SeaBIOS and vgacon use).
pub const COLUMNS: usize = 80;
pub const ROWS: usize = 25;
/// The text buffer's physical address: one (character, attribute) byte
/// pair per cell.
pub const TEXT_BASE: u64 = 0xb8000;

/// Between two keys: under TCG the guest needs a moment for each
/// interrupt, and QEMU holds every key down for 100 ms anyway.
const KEY_DELAY: Duration = Duration::from_millis(120);
/// How often `wait_screen` looks.
const POLL: Duration = Duration::from_millis(300);
/// HMP's prompt, which ends every answer.
const PROMPT: &str = "(qemu) ";

/// The QEMU key name (QKeyCode, as HMP `sendkey` takes it) that types
/// `c` on a US keyboard: `'a'` → `a`, `'A'` → `shift-a`, `' '` → `spc`,
/// `'\n'` → `ret`, `'\x1b'` → `esc`, Ctrl-C (`'\x03'`) → `ctrl-c`.
/// `None` for characters a US keyboard cannot type.
pub fn key_name(c: char) -> Option<String> {
    let plain = match c {
        'a'..='z' | '0'..='9' => return Some(c.to_string()),
        'A'..='Z' => return Some(format!("shift-{}", c.to_ascii_lowercase())),
        '\n' | '\r' => "ret",
        '\t' => "tab",
        '\x08' | '\x7f' => "backspace",
        '\x1b' => "esc",
        // Ctrl-A..Ctrl-Z (after the ones above, which have keys of their own).
        '\x01'..='\x1a' => return Some(format!("ctrl-{}", char::from(b'a' + c as u8 - 1))),
        ' ' => "spc",
        '-' => "minus",
        '=' => "equal",
        '[' => "bracket_left",
        ']' => "bracket_right",
        '\\' => "backslash",
        ';' => "semicolon",
        '\'' => "apostrophe",
        '`' => "grave_accent",
        ',' => "comma",
        '.' => "dot",
        '/' => "slash",
        _ => {
            let base = match c {
                '!' => "1",
                '@' => "2",
                '#' => "3",
                '$' => "4",
                '%' => "5",
                '^' => "6",
                '&' => "7",
                '*' => "8",
                '(' => "9",
                ')' => "0",
                '_' => "minus",
                '+' => "equal",
                '{' => "bracket_left",
                '}' => "bracket_right",
                '|' => "backslash",
                ':' => "semicolon",
                '"' => "apostrophe",
                '~' => "grave_accent",
                '<' => "comma",
                '>' => "dot",
                '?' => "slash",
                _ => return None,
            };
            return Some(format!("shift-{base}"));
        }
    };
    Some(plain.to_owned())
}

/// The key names for typing `text`; an error names the first character
/// that has no key.
pub fn key_names(text: &str) -> Result<Vec<String>> {
    text.chars().map(|c| key_name(c).ok_or_else(|| format!("no key types {c:?} (in {text:?})"))).collect()
}

/// The bytes of an HMP `xp /Nbx ADDR` answer, in address order. Lines
/// that are not `ADDRESS: 0xNN 0xNN ...` (the echoed command, the prompt)
/// are skipped.
pub fn parse_xp(dump: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in dump.lines() {
        let Some((addr, bytes)) = line.trim_end_matches('\r').split_once(": ") else { continue };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let parsed: Option<Vec<u8>> = bytes
            .split_whitespace()
            .map(|b| b.strip_prefix("0x").and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        if let Some(p) = parsed {
            out.extend(p);
        }
    }
    out
}

/// The text on a VGA text screen from its memory (character, attribute
/// pairs, row by row): printable ASCII as itself, NUL (never written
/// cells) as a blank, anything else in CP437 (box drawing, accents) as
/// `?`. Rows are trimmed at the end, trailing blank rows dropped.
pub fn text_screen(vram: &[u8]) -> String {
    let chars: Vec<char> = vram
        .iter()
        .step_by(2)
        .take(COLUMNS * ROWS)
        .map(|&b| match b {
            0 => ' ',
            0x20..=0x7e => char::from(b),
            _ => '?',
        })
        .collect();
    let mut rows: Vec<String> =
        chars.chunks(COLUMNS).map(|r| r.iter().collect::<String>().trim_end().to_owned()).collect();
    while rows.last().is_some_and(|r| r.is_empty()) {
        rows.pop();
    }
    rows.join("\n")
}

/// A connection to a guest's HMP monitor socket.
pub struct Monitor {
    stream: UnixStream,
    path: PathBuf,
}

impl Monitor {
    /// Connects to the monitor QEMU listens on at `socket`, retrying
    /// until `timeout` (QEMU creates the socket while it starts).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Monitor> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("connecting to the QEMU monitor at {}: {e}", socket.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| format!("monitor {}: setting a read timeout: {e}", socket.display()))?;
        let mut m = Monitor { stream, path: socket.to_owned() };
        m.read_answer("the greeting")?;
        Ok(m)
    }

    /// Reads up to and including the next prompt; returns what came before.
    fn read_answer(&mut self, what: &str) -> Result<String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        while !buf.ends_with(PROMPT.as_bytes()) {
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("monitor {}: reading the answer to {what}: {e}", self.path.display()))?;
            if n == 0 {
                return Err(format!("monitor {}: closed while answering {what} (QEMU exited?)", self.path.display()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.truncate(buf.len() - PROMPT.len());
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Runs one HMP command; returns its output without the echoed
    /// command line (HMP echoes what it is sent, with line-editing
    /// escapes, up to the first CR LF).
    pub fn command(&mut self, line: &str) -> Result<String> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("monitor {}: sending {line:?}: {e}", self.path.display()))?;
        let answer = self.read_answer(line)?;
        Ok(answer.split_once("\r\n").map(|(_, out)| out.to_owned()).unwrap_or_default())
    }

    /// Presses and releases one key or combination by its QEMU name:
    /// `ret`, `esc`, `up`, `down`, `ctrl-c`, `shift-a`...
    pub fn sendkey(&mut self, key: &str) -> Result<()> {
        let out = self.command(&format!("sendkey {key}"))?;
        if !out.trim().is_empty() {
            return Err(format!("sendkey {key}: {}", out.trim()));
        }
        std::thread::sleep(KEY_DELAY);
        Ok(())
    }

    /// Types `text` key by key (`\n` is Enter; see [`key_name`]).
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        for key in key_names(text)? {
            self.sendkey(&key)?;
        }
        Ok(())
    }

    /// The text on the screen now (see [`text_screen`]).
    pub fn screen(&mut self) -> Result<String> {
        let cells = COLUMNS * ROWS * 2;
        let out = self.command(&format!("xp /{cells}bx {TEXT_BASE:#x}"))?;
        let vram = parse_xp(&out);
        if vram.len() != cells {
            return Err(format!(
                "monitor {}: xp gave {} of {cells} bytes of text memory: {}",
                self.path.display(),
                vram.len(),
                out.lines().next().unwrap_or("")
            ));
        }
        Ok(text_screen(&vram))
    }

    /// Waits until the screen shows `needle`; returns that screen.
    pub fn wait_screen(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_screen_fn(needle, timeout, |s| s.contains(needle))
    }

    /// Waits until `f` accepts the screen; returns it. The error shows the
    /// last screen seen.
    pub fn wait_screen_fn(&mut self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen()?;
            if f(&screen) {
                return Ok(screen);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {what:?} on the VGA screen within {} s; it shows:\n{screen}",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_map_to_qemu_key_names() {
        let table: &[(char, Option<&str>)] = &[
            ('a', Some("a")),
            ('z', Some("z")),
            ('1', Some("1")),
            ('0', Some("0")),
            ('A', Some("shift-a")),
            (' ', Some("spc")),
            ('-', Some("minus")),
            ('_', Some("shift-minus")),
            ('.', Some("dot")),
            ('/', Some("slash")),
            (':', Some("shift-semicolon")),
            ('?', Some("shift-slash")),
            ('\n', Some("ret")),
            ('\t', Some("tab")),
            ('\x1b', Some("esc")),
            ('\x03', Some("ctrl-c")),
            ('\x15', Some("ctrl-u")),
            ('\x08', Some("backspace")),
            ('é', None),
            ('\0', None),
        ];
        for &(c, want) in table {
            assert_eq!(key_name(c).as_deref(), want, "{c:?}");
        }
        assert_eq!(key_names("Help 5\n").expect("typeable"), ["shift-h", "e", "l", "p", "spc", "5", "ret"]);
        assert!(key_names("naïve").expect_err("ï has no key").contains("'ï'"));
    }

    /// An `xp` answer as HMP sends it, for a screen holding `rows`.
    fn fake_xp(rows: &[&str]) -> String {
        let mut vram = vec![0u8; COLUMNS * ROWS * 2];
        for (r, text) in rows.iter().enumerate() {
            for (c, b) in text.bytes().enumerate() {
                vram[(r * COLUMNS + c) * 2] = b;
                vram[(r * COLUMNS + c) * 2 + 1] = 0x07;
            }
        }
        let mut out = String::new();
        for (i, line) in vram.chunks(8).enumerate() {
            let bytes: Vec<String> = line.iter().map(|b| format!("{b:#04x}")).collect();
            out.push_str(&format!("{:016x}: {}\r\n", TEXT_BASE + 8 * i as u64, bytes.join(" ")));
        }
        out
    }

    #[test]
    fn an_xp_dump_decodes_into_the_screen() {
        let mut dump = "x\x1b[K\x1b[Dxp /4000bx 0xb8000\x1b[K\r\n".to_owned();
        dump.push_str(&fake_xp(&["rescue> help", "", "  menu \u{c4}\u{c4} done  ", "x".repeat(80).as_str()]));
        let vram = parse_xp(&dump);
        assert_eq!(vram.len(), 4000);
        assert_eq!(&vram[..4], &[b'r', 0x07, b'e', 0x07]);
        // U+00C4 is two UTF-8 bytes: each is outside ASCII, so '?'.
        assert_eq!(text_screen(&vram), format!("rescue> help\n\n  menu ???? done\n{}", "x".repeat(80)));
    }

    #[test]
    fn a_blank_screen_is_empty_and_bad_lines_are_skipped() {
        assert_eq!(text_screen(&[0u8; 4000]), "");
        assert_eq!(parse_xp("(qemu) \r\n00000000000b8000: 0x41 0x07\r\nb8002: 0xzz\r\nnot: hex\r\n"), [0x41, 0x07]);
    }
}
