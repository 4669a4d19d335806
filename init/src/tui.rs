//! The console's pure parts: key decoding, screens rendered into strings,
//! line editing and input validation. No I/O here, so every screen and
//! every rule is unit-tested on the host; `console` does the talking.
//!
//! Screens use only the escape sequences both a serial terminal and the
//! Linux VGA text console understand (clear, home, erase to end of line,
//! reverse video, cursor position), fit in 80×25, and always end the text
//! a person must read with a newline, so a serial log shows every prompt.

use bootvault_common::config::check_backup_name;
use bootvault_common::units::{human_bytes, utc_date};
use bootvault_engine::progress::{format_duration, Progress};
use zeroize::Zeroizing;

/// Clear the screen and go home.
pub const CLEAR: &str = "\x1b[H\x1b[2J";
pub const REVERSE: &str = "\x1b[7m";
pub const NORMAL: &str = "\x1b[0m";
/// Erase to the end of the line.
pub const ERASE: &str = "\x1b[K";
/// Width of every line a screen draws (VGA text mode is 80 columns); the
/// longest screen is 22 rows, so none scrolls on a 24-row terminal.
pub const WIDTH: usize = 78;

/// One key press, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Left,
    Right,
    Enter,
    /// Esc: one step back.
    Back,
    /// Ctrl-C: leave this task.
    Cancel,
    Backspace,
    /// Ctrl-U: clear the line.
    Clear,
    Char(char),
}

/// Bytes to keys: arrows as `ESC [ A` or `ESC O A`, Enter as CR, LF or
/// CR LF (serial terminals send either), UTF-8 characters whole.
#[derive(Debug, Default)]
pub struct Decoder {
    state: State,
    /// A UTF-8 character being read (wiped once decoded: it may be part
    /// of a password).
    utf8: [u8; 4],
    utf8_len: usize,
    after_cr: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Ground,
    Esc,
    /// Inside `ESC [` or `ESC O`, skipping parameter bytes.
    Seq,
}

impl Decoder {
    pub fn feed(&mut self, b: u8) -> Option<Key> {
        let after_cr = std::mem::take(&mut self.after_cr);
        match self.state {
            State::Esc => {
                if b == b'[' || b == b'O' {
                    self.state = State::Seq;
                    return None;
                }
                // A lone Esc followed by something else: Esc, and the byte is lost
                // (rare: only when a person types Esc then a key within one read).
                self.state = State::Ground;
                return Some(Key::Back);
            }
            State::Seq => {
                if (0x30..=0x3f).contains(&b) {
                    return None;
                }
                self.state = State::Ground;
                return match b {
                    b'A' => Some(Key::Up),
                    b'B' => Some(Key::Down),
                    b'C' => Some(Key::Right),
                    b'D' => Some(Key::Left),
                    _ => None,
                };
            }
            State::Ground => {}
        }
        if self.utf8_len > 0 || b >= 0x80 {
            self.utf8[self.utf8_len] = b;
            self.utf8_len += 1;
            let (key, done) = match std::str::from_utf8(&self.utf8[..self.utf8_len]) {
                Ok(s) => (s.chars().next().map(Key::Char), true),
                Err(e) => (None, e.error_len().is_some() || self.utf8_len >= 4),
            };
            if done {
                self.utf8 = [0; 4];
                self.utf8_len = 0;
            }
            return key;
        }
        match b {
            0x1b => {
                self.state = State::Esc;
                None
            }
            0x03 => Some(Key::Cancel),
            b'\r' => {
                self.after_cr = true;
                Some(Key::Enter)
            }
            b'\n' if after_cr => None,
            b'\n' => Some(Key::Enter),
            0x7f | 0x08 => Some(Key::Backspace),
            0x15 => Some(Key::Clear),
            0x20..=0x7e => Some(Key::Char(b as char)),
            _ => None,
        }
    }

    /// Whether a key is half-read (an Esc that may start a sequence).
    pub fn pending(&self) -> bool {
        self.state != State::Ground
    }

    /// No more bytes came after a pause: a pending Esc was a lone Esc.
    pub fn idle(&mut self) -> Option<Key> {
        (std::mem::take(&mut self.state) == State::Esc).then_some(Key::Back)
    }
}

/// A frame around every screen: who and where on top, the keys below.
pub fn frame(header: &str, title: &str, body: &str, keys: &str) -> String {
    let mut out = String::from(CLEAR);
    out.push_str(&fit(header));
    out.push('\n');
    out.push_str(&"=".repeat(WIDTH.min(header.chars().count().max(title.chars().count()))));
    out.push('\n');
    out.push_str(&fit(title));
    out.push_str("\n\n");
    out.push_str(&wrap(body));
    if !body.ends_with('\n') && !body.is_empty() {
        out.push('\n');
    }
    if !keys.is_empty() {
        out.push('\n');
        out.push_str(&fit(keys));
        out.push('\n');
    }
    out
}

/// Breaks body lines longer than the screen at spaces (an error from the
/// engine can be long), continuing with the line's own indent; a word
/// longer than the screen is cut by [`fit`].
pub fn wrap(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 16);
    for (n, line) in body.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let indent: String = line.chars().take_while(|c| *c == ' ').collect();
        let mut current = String::new();
        for word in line[indent.len()..].split(' ') {
            let used = current.chars().count();
            if used > indent.len() && used + 1 + word.chars().count() > WIDTH {
                out.push_str(&fit(&current));
                out.push('\n');
                current.clear();
            }
            if current.is_empty() {
                current.push_str(&indent);
            } else {
                current.push(' ');
            }
            current.push_str(word);
        }
        out.push_str(&fit(&current));
    }
    out
}

/// Cuts a line to the screen width.
pub fn fit(line: &str) -> String {
    if line.chars().count() <= WIDTH {
        line.to_owned()
    } else {
        let mut s: String = line.chars().take(WIDTH - 1).collect();
        s.push('~');
        s
    }
}

/// One choice on a menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub label: String,
    /// Lines shown indented under the label.
    pub detail: Vec<String>,
    /// Why this choice cannot be taken (shown, not hidden).
    pub unavailable: Option<String>,
}

impl Item {
    pub fn new(label: impl Into<String>) -> Item {
        Item { label: label.into(), detail: Vec::new(), unavailable: None }
    }

    pub fn detail(mut self, lines: Vec<String>) -> Item {
        self.detail = lines;
        self
    }

    pub fn unavailable(mut self, why: impl Into<String>) -> Item {
        self.unavailable = Some(why.into());
        self
    }
}

/// A list to pick from with the arrows or the item's number, then Enter.
#[derive(Debug, Clone)]
pub struct Menu {
    pub items: Vec<Item>,
    pub selected: usize,
}

/// What a key did to a menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Redraw (the highlight moved) or nothing happened.
    Stay,
    Chosen(usize),
    /// The person chose an item that cannot be taken: say why.
    Refused(String),
    Back,
    Cancel,
}

impl Menu {
    pub fn new(items: Vec<Item>) -> Menu {
        let selected = items.iter().position(|i| i.unavailable.is_none()).unwrap_or(0);
        Menu { items, selected }
    }

    pub fn key(&mut self, k: Key) -> Pick {
        let n = self.items.len();
        match k {
            Key::Up if n > 0 => self.selected = (self.selected + n - 1) % n,
            Key::Down if n > 0 => self.selected = (self.selected + 1) % n,
            Key::Char(c) => {
                if let Some(d) = c.to_digit(10) {
                    let i = d as usize;
                    if (1..=n).contains(&i) {
                        self.selected = i - 1;
                    }
                }
            }
            Key::Enter if n > 0 => {
                let item = &self.items[self.selected];
                return match &item.unavailable {
                    // The label without its column padding.
                    Some(why) => {
                        Pick::Refused(format!("{}: {why}", item.label.split_whitespace().collect::<Vec<_>>().join(" ")))
                    }
                    None => Pick::Chosen(self.selected),
                };
            }
            Key::Back => return Pick::Back,
            Key::Cancel => return Pick::Cancel,
            _ => {}
        }
        Pick::Stay
    }

    /// Numbered items, the highlighted one in reverse video and marked `>`
    /// (so it shows on terminals without attributes too).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, item) in self.items.iter().enumerate() {
            let mark = if i == self.selected { ">" } else { " " };
            let mut label = format!("{mark} {}) {}", i + 1, item.label);
            if let Some(why) = &item.unavailable {
                label.push_str(&format!("  ({why})"));
            }
            let label = fit(&label);
            if i == self.selected {
                out.push_str(&format!("{REVERSE}{label}{NORMAL}\n"));
            } else {
                out.push_str(&label);
                out.push('\n');
            }
            for d in &item.detail {
                out.push_str(&fit(&format!("       {d}")));
                out.push('\n');
            }
        }
        out
    }
}

pub const MENU_KEYS: &str = "Arrows or a number to choose, Enter to confirm, Esc: back, Ctrl-C: cancel";

/// A line being typed. Secret lines are never echoed and live in a
/// zeroizing buffer.
pub struct LineEdit {
    pub text: Zeroizing<String>,
    pub secret: bool,
    pub max: usize,
}

/// What a key did to a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Print this to the terminal (the echo; empty for secrets).
    Echo(String),
    Submit,
    Back,
    Cancel,
}

impl LineEdit {
    pub fn new(initial: &str, secret: bool, max: usize) -> LineEdit {
        // Room for `max` characters of up to 4 bytes from the start: the
        // buffer never grows, so no copy of a secret is left behind in
        // memory freed by a reallocation.
        let mut text = Zeroizing::new(String::with_capacity(max * 4 + initial.len()));
        text.push_str(initial);
        LineEdit { text, secret, max }
    }

    pub fn key(&mut self, k: Key) -> Edit {
        match k {
            Key::Enter => Edit::Submit,
            Key::Back => Edit::Back,
            Key::Cancel => Edit::Cancel,
            Key::Backspace => match self.text.pop() {
                Some(_) if !self.secret => Edit::Echo("\x08 \x08".into()),
                _ => Edit::Echo(String::new()),
            },
            Key::Clear => {
                let n = self.text.chars().count();
                self.text.clear();
                Edit::Echo(if self.secret { String::new() } else { "\x08 \x08".repeat(n) })
            }
            Key::Char(c) if self.text.chars().count() < self.max => {
                self.text.push(c);
                Edit::Echo(if self.secret { String::new() } else { c.to_string() })
            }
            _ => Edit::Echo(String::new()),
        }
    }
}

/// The name offered by default: the PC's name and today's date.
pub fn default_backup_name(pc: &str, unix: i64) -> String {
    let mut name = format!("{pc}-{}", utc_date(unix));
    if check_backup_name(&name).is_err() {
        name = format!("backup-{}", utc_date(unix));
    }
    name
}

/// Shortest restore password accepted (an empty one means "no password").
pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 128;

/// The two entries of a new password agree and are long enough. Both
/// empty: no password.
pub fn check_new_password(first: &str, second: &str) -> Result<(), String> {
    if first != second {
        return Err("the two passwords differ; type them again".into());
    }
    let n = first.chars().count();
    if n > 0 && n < MIN_PASSWORD {
        return Err(format!(
            "the password has {n} characters; use at least {MIN_PASSWORD} (or none: press Enter twice)"
        ));
    }
    Ok(())
}

/// The strong confirmation: the exact disk name, nothing else.
pub fn confirms_disk(typed: &str, disk: &str) -> bool {
    typed.trim() == disk
}

/// Whether a disk of `disk_bytes` can hold a backup of `backup_bytes`.
pub fn fits(backup_bytes: u64, disk_bytes: u64) -> Result<(), String> {
    if disk_bytes < backup_bytes {
        return Err(format!("too small: the backup needs {}", human_bytes(backup_bytes)));
    }
    Ok(())
}

/// The progress block: a bar, then the figures.
pub fn progress_lines(p: &Progress) -> [String; 3] {
    let pct = p.percent().clamp(0.0, 100.0);
    let width = 60usize;
    let full = ((pct / 100.0) * width as f64).round() as usize;
    let bar = format!("[{}{}] {:5.1}%", "#".repeat(full.min(width)), ".".repeat(width - full.min(width)), pct);
    let eta = match p.eta() {
        Some(d) if p.done < p.total => format_duration(d),
        Some(_) => "0s".into(),
        None => "?".into(),
    };
    let figures = format!(
        "{} of {}   {:.1} MB/s   {} elapsed   {} left",
        human_bytes(p.done),
        human_bytes(p.total),
        p.mb_per_s(),
        format_duration(p.elapsed),
        eta
    );
    let net = if p.action == "backup" {
        format!("{} new data sent (after deduplication and compression)", human_bytes(p.sent))
    } else {
        format!("{} fetched from the backup", human_bytes(p.sent))
    };
    [bar, figures, net]
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_body_lines_wrap_at_spaces_with_their_indent() {
        let long = format!("  restore cancelled; {}", "the target disk is now partly overwritten ".repeat(3));
        let w = super::wrap(&format!("Title line\n{long}\n\nshort"));
        let lines: Vec<&str> = w.split('\n').collect();
        assert!(lines.iter().all(|l| l.chars().count() <= super::WIDTH), "{w}");
        assert_eq!(lines[0], "Title line");
        assert!(
            lines[1].starts_with("  restore cancelled;") && lines[2].starts_with("  is now") && lines.len() == 5,
            "{w}"
        );
        assert_eq!(lines[lines.len() - 1], "short");
        assert_eq!(lines[lines.len() - 2], "");
        let words: Vec<&str> = long.split_whitespace().collect();
        assert_eq!(w.split_whitespace().skip(2).take(words.len()).collect::<Vec<_>>(), words, "no word lost");
        assert_eq!(super::wrap("a\nb"), "a\nb");
    }

    use super::*;
    use std::time::Duration;

    fn keys(bytes: &[u8]) -> Vec<Key> {
        let mut d = Decoder::default();
        let mut out: Vec<Key> = bytes.iter().filter_map(|&b| d.feed(b)).collect();
        out.extend(d.idle());
        assert!(!d.pending());
        out
    }

    #[test]
    fn decodes_keys() {
        assert_eq!(keys(b"\x1b[A\x1b[B\x1bOC\x1b[D"), vec![Key::Up, Key::Down, Key::Right, Key::Left]);
        // Enter as CR, LF, or CR LF (one Enter, not two).
        assert_eq!(
            keys(b"a\r\nb\nc\r"),
            vec![Key::Char('a'), Key::Enter, Key::Char('b'), Key::Enter, Key::Char('c'), Key::Enter]
        );
        assert_eq!(keys(b"\r\r"), vec![Key::Enter, Key::Enter]);
        assert_eq!(keys(b"\x03\x7f\x08\x15"), vec![Key::Cancel, Key::Backspace, Key::Backspace, Key::Clear]);
        // A lone Esc is seen once the input goes quiet.
        assert_eq!(keys(b"\x1b"), vec![Key::Back]);
        // Home/End style sequences with parameters are skipped whole.
        assert_eq!(keys(b"\x1b[1;5Hx"), vec![Key::Char('x')]);
        assert_eq!(keys("é€".as_bytes()), vec![Key::Char('é'), Key::Char('€')]);
        // Broken UTF-8 is dropped, not a panic.
        assert_eq!(keys(b"\xff\xfeok"), vec![Key::Char('o'), Key::Char('k')]);
    }

    #[test]
    fn menus_move_choose_and_refuse() {
        let mut m = Menu::new(vec![
            Item::new("Server"),
            Item::new("Local disk").unavailable("not available yet"),
            Item::new("Third"),
        ]);
        assert_eq!(m.selected, 0);
        assert_eq!(m.key(Key::Down), Pick::Stay);
        assert_eq!(m.key(Key::Enter), Pick::Refused("Local disk: not available yet".into()));
        assert_eq!(m.key(Key::Char('3')), Pick::Stay);
        assert_eq!(m.key(Key::Enter), Pick::Chosen(2));
        assert_eq!(m.key(Key::Down), Pick::Stay);
        assert_eq!(m.selected, 0, "wraps around");
        assert_eq!(m.key(Key::Up), Pick::Stay);
        assert_eq!(m.selected, 2);
        assert_eq!(m.key(Key::Char('9')), Pick::Stay);
        assert_eq!(m.selected, 2, "no item 9");
        assert_eq!(m.key(Key::Back), Pick::Back);
        assert_eq!(m.key(Key::Cancel), Pick::Cancel);
        // The first available item starts highlighted.
        let mut m = Menu::new(vec![Item::new("a").unavailable("no"), Item::new("b")]);
        assert_eq!(m.selected, 1);
        let mut padded = Menu::new(vec![Item::new("vdb        16.0 MiB").unavailable("too small")]);
        assert_eq!(padded.key(Key::Enter), Pick::Refused("vdb 16.0 MiB: too small".into()));
        m.selected = 0;
        // An empty menu only goes back.
        let mut e = Menu::new(Vec::new());
        assert_eq!(e.key(Key::Enter), Pick::Stay);
        assert_eq!(e.key(Key::Down), Pick::Stay);
    }

    #[test]
    fn menu_rendering() {
        let mut m = Menu::new(vec![
            Item::new("vda  100.0 MiB  QEMU disk").detail(vec!["vda1  99.0 MiB  ext4 \"root\"".into()]),
            Item::new("Local disk").unavailable("not available yet"),
        ]);
        m.selected = 0;
        assert_eq!(
            m.render(),
            "\x1b[7m> 1) vda  100.0 MiB  QEMU disk\x1b[0m\n       vda1  99.0 MiB  ext4 \"root\"\n  2) Local disk  (not available yet)\n"
        );
        let long = Menu::new(vec![Item::new("x".repeat(200))]).render();
        assert!(long.lines().all(|l| l.replace(REVERSE, "").replace(NORMAL, "").chars().count() <= WIDTH), "{long}");
    }

    #[test]
    fn frames() {
        let f = frame("bootvault - PC pc-one", "Back up", "body\n", "Enter to go on");
        assert_eq!(f, "\x1b[H\x1b[2Jbootvault - PC pc-one\n=====================\nBack up\n\nbody\n\nEnter to go on\n");
        assert!(frame("h", "t", "no newline", "").ends_with("no newline\n"));
    }

    #[test]
    fn line_editing_and_secrets() {
        let mut e = LineEdit::new("ab", false, 4);
        assert_eq!(e.key(Key::Char('c')), Edit::Echo("c".into()));
        assert_eq!(e.key(Key::Char('d')), Edit::Echo("d".into()));
        assert_eq!(e.key(Key::Char('e')), Edit::Echo(String::new()), "at most 4");
        assert_eq!(e.key(Key::Backspace), Edit::Echo("\x08 \x08".into()));
        assert_eq!(e.text.as_str(), "abc");
        assert_eq!(e.key(Key::Clear), Edit::Echo("\x08 \x08".repeat(3)));
        assert_eq!(e.key(Key::Enter), Edit::Submit);
        assert_eq!(e.key(Key::Back), Edit::Back);
        assert_eq!(e.key(Key::Cancel), Edit::Cancel);
        let mut s = LineEdit::new("", true, 128);
        for c in "hunter22".chars() {
            assert_eq!(s.key(Key::Char(c)), Edit::Echo(String::new()), "never echoed");
        }
        assert_eq!(s.key(Key::Backspace), Edit::Echo(String::new()));
        assert_eq!(s.text.as_str(), "hunter2");
        // The buffer never moves while typing (no stale copies).
        let mut full = LineEdit::new("", true, 8);
        let at = full.text.as_ptr();
        for c in "éééééééé".chars() {
            full.key(Key::Char(c));
        }
        assert_eq!((full.text.as_ptr(), full.text.chars().count()), (at, 8));
    }

    #[test]
    fn validation() {
        assert_eq!(default_backup_name("pc-one", 1_795_546_469), "pc-one-2026-11-24");
        assert_eq!(default_backup_name(&"p".repeat(60), 0), "backup-1970-01-01");

        assert!(check_new_password("", "").is_ok(), "no password");
        assert!(check_new_password("correct horse", "correct horse").is_ok());
        assert!(check_new_password("correct horse", "correct hors").unwrap_err().contains("differ"));
        assert!(check_new_password("short", "short").unwrap_err().contains("at least 8"));

        assert!(confirms_disk("vda", "vda"));
        assert!(confirms_disk(" vda ", "vda"));
        assert!(!confirms_disk("vd", "vda"));
        assert!(!confirms_disk("yes", "vda"));
        assert!(!confirms_disk("VDA", "vda"));

        assert!(fits(64 << 20, 64 << 20).is_ok());
        assert_eq!(fits(64 << 20, 32 << 20).unwrap_err(), "too small: the backup needs 64.0 MiB");
    }

    #[test]
    fn progress_block() {
        let p = Progress {
            action: "backup",
            done: 50 << 20,
            total: 100 << 20,
            sent: 3 << 20,
            elapsed: Duration::from_secs(4),
        };
        let [bar, figures, net] = progress_lines(&p);
        assert_eq!(bar, format!("[{}{}]  50.0%", "#".repeat(30), ".".repeat(30)));
        assert_eq!(figures, "50.0 MiB of 100.0 MiB   13.1 MB/s   4s elapsed   4s left");
        assert_eq!(net, "3.0 MiB new data sent (after deduplication and compression)");
        let done = Progress { action: "restore", done: 100 << 20, ..p.clone() };
        let [bar, figures, net] = progress_lines(&done);
        assert_eq!(bar, format!("[{}] 100.0%", "#".repeat(60)));
        assert!(figures.ends_with("0s left"), "{figures}");
        assert_eq!(net, "3.0 MiB fetched from the backup");
        let start = Progress { done: 0, elapsed: Duration::ZERO, ..p };
        assert!(progress_lines(&start)[1].ends_with("? left"));
    }
}
