//! The console service: a person at the PC backs up a disk or restores a
//! backup, step by step, on the serial or VGA text console.
//!
//! Owns: the flow of screens, the terminal (raw mode, keys), and running
//! the engine's pipelines with a live progress block and Ctrl-C. The
//! screens themselves and every input rule are pure, in `tui`.
//!
//! Cancelling: Esc goes one step back, Ctrl-C leaves the task at any
//! step. Nothing is written to a disk before the person has typed its
//! name, and nothing is stored as a complete backup unless it finished:
//! a cancelled backup is marked failed on the server, a cancelled restore
//! says plainly that the disk is now incomplete.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bootvault_common::config::{check_backup_name, Config};
use bootvault_common::units::{human_bytes, utc_datetime};
use bootvault_engine::backup::{backup, BackupOptions};
use bootvault_engine::client::{BackupInfo, Client};
use bootvault_engine::device::Device;
use bootvault_engine::local_store::DRIVE_DIR;
use bootvault_engine::lock::Lock;
use bootvault_engine::progress::Progress;
use bootvault_engine::restore::{restore, RestoreOptions, PARTLY_OVERWRITTEN};
use bootvault_engine::store::Store;
use zeroize::Zeroizing;

use crate::disks::{self, Disk};
use crate::jobs;
use crate::sys;
use crate::tui::{self, frame, Edit, Item, Key, LineEdit, Menu, Pick, ERASE, MENU_KEYS};
use crate::volumes::{self, Volume};

/// What the person chose to do when leaving the menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Reboot,
    Poweroff,
    /// The rescue prompt (also where we go when the console has no input).
    Rescue,
}

/// How a step ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nav {
    /// Esc: one step back.
    Back,
    /// Ctrl-C: leave the task.
    Cancel,
    /// The console has no input any more.
    Closed,
}

/// The console in raw mode; the old mode comes back on drop.
struct Term {
    saved: Option<libc::termios>,
    decoder: tui::Decoder,
    keys: VecDeque<Key>,
}

const STDIN: i32 = 0;

impl Term {
    fn open() -> Term {
        Term { saved: sys::raw_mode(STDIN), decoder: tui::Decoder::default(), keys: VecDeque::new() }
    }

    fn write(&mut self, s: &str) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    }

    /// Reads what is there within `timeout_ms` into the key queue.
    /// Err(()) when the input is gone.
    fn fill(&mut self, timeout_ms: i32) -> Result<(), Nav> {
        if !sys::wait_readable(STDIN, timeout_ms) {
            self.keys.extend(self.decoder.idle());
            return Ok(());
        }
        let mut buf = [0u8; 64];
        match sys::read_some(STDIN, &mut buf) {
            Ok(0) | Err(_) => Err(Nav::Closed),
            Ok(n) => {
                self.keys.extend(buf[..n].iter().filter_map(|&b| self.decoder.feed(b)));
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// The next key, waiting as long as it takes.
    fn key(&mut self) -> Result<Key, Nav> {
        loop {
            if let Some(k) = self.keys.pop_front() {
                return Ok(k);
            }
            // A pending Esc becomes a key after 60 ms of quiet.
            self.fill(if self.decoder.pending() { 60 } else { 60_000 })?;
        }
    }

    /// A key if one was typed, without waiting.
    fn poll(&mut self) -> Option<Key> {
        if self.keys.is_empty() {
            let _ = self.fill(if self.decoder.pending() { 60 } else { 0 });
        }
        self.keys.pop_front()
    }

    /// Forgets keys typed ahead (before a question that matters), and
    /// overwrites every slot of the key queue: typed secrets passed
    /// through it.
    fn discard_typeahead(&mut self) {
        sys::flush_input(STDIN);
        self.wipe();
        self.decoder = tui::Decoder::default();
    }

    fn wipe(&mut self) {
        let slots = self.keys.capacity();
        self.keys.clear();
        self.keys.extend(std::iter::repeat_n(Key::Enter, slots));
        self.keys.clear();
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        self.wipe();
        if let Some(m) = &self.saved {
            sys::restore_mode(STDIN, m);
        }
    }
}

/// The console session: the PC's configuration, the server (when the
/// network and the server answered), the terminal.
struct Session<'a> {
    config: &'a Config,
    client: Option<&'a Client>,
    term: Term,
    header: String,
}

/// Where a backup goes or a restore comes from.
#[derive(Clone)]
enum Place {
    Server,
    Drive(Volume),
}

/// Runs the console until the person chooses to leave.
pub fn run(config: &Config, client: Option<&Client>) -> Exit {
    let place = match client {
        Some(c) => format!("server {}", c.base()),
        None => "no server".to_owned(),
    };
    let mut s = Session {
        config,
        client,
        term: Term::open(),
        header: format!("bootvault {} - PC {} - {place}", env!("CARGO_PKG_VERSION"), config.pc),
    };
    let exit = s.welcome();
    s.term.write("\n");
    exit
}

impl Session<'_> {
    /// Draws a menu screen and waits for a choice.
    fn choose(&mut self, title: &str, intro: &str, menu: &mut Menu) -> Result<usize, Nav> {
        let mut message = String::new();
        loop {
            let mut body = String::new();
            if !intro.is_empty() {
                body.push_str(intro);
                body.push_str("\n\n");
            }
            body.push_str(&menu.render());
            if !message.is_empty() {
                body.push('\n');
                body.push_str(&tui::fit(&format!("! {message}")));
                body.push('\n');
            }
            let screen = frame(&self.header, title, &body, MENU_KEYS);
            self.term.write(&screen);
            loop {
                let before = menu.selected;
                match menu.key(self.term.key()?) {
                    Pick::Stay if menu.selected == before => continue,
                    Pick::Stay => message.clear(),
                    Pick::Chosen(i) => return Ok(i),
                    Pick::Refused(why) => message = why,
                    Pick::Back => return Err(Nav::Back),
                    Pick::Cancel => return Err(Nav::Cancel),
                }
                break;
            }
        }
    }

    /// Draws a screen with a question and reads one line. `message` is
    /// shown above the prompt (the last answer's problem).
    fn ask(&mut self, title: &str, body: &str, prompt: &str, edit: &mut LineEdit, message: &str) -> Result<(), Nav> {
        let mut text = String::from(body);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if !message.is_empty() {
            text.push_str(&format!("! {message}\n"));
        }
        // The keys go above the prompt: the cursor stays on the input line.
        text.push_str("\nEnter to confirm, Esc to go back, Ctrl-C to cancel\n\n");
        text.push_str(prompt);
        let mut screen = frame(&self.header, title, &text, "");
        screen.push_str("> ");
        if !edit.secret {
            screen.push_str(&edit.text);
        }
        self.term.write(&screen);
        loop {
            match edit.key(self.term.key()?) {
                Edit::Echo(e) => {
                    if !e.is_empty() {
                        self.term.write(&e);
                    }
                }
                Edit::Submit => {
                    self.term.write("\n");
                    return Ok(());
                }
                Edit::Back => return Err(Nav::Back),
                Edit::Cancel => return Err(Nav::Cancel),
            }
        }
    }

    /// A screen to read, then a menu of what to do next.
    fn message(&mut self, title: &str, body: &str) -> Result<(), Nav> {
        let mut menu = Menu::new(vec![Item::new("OK")]);
        self.choose(title, body, &mut menu).map(|_| ())
    }

    fn welcome(&mut self) -> Exit {
        let mut note = String::new();
        loop {
            let mut menu = Menu::new(vec![
                Item::new("Back up a disk of this PC"),
                Item::new("Restore a backup onto this PC"),
                Item::new("Shell: the rescue prompt (disks, network, logs)"),
                Item::new("Reboot"),
                Item::new("Power off"),
            ]);
            let intro = if note.is_empty() { "What do you want to do?".to_owned() } else { note.clone() };
            let choice = match self.choose("Welcome", &intro, &mut menu) {
                Ok(c) => c,
                Err(Nav::Closed) => return Exit::Rescue,
                // Esc or Ctrl-C on the first screen: stay here.
                Err(_) => continue,
            };
            let outcome = match choice {
                0 => self.backup_flow(),
                1 => self.restore_flow(),
                2 => return Exit::Rescue,
                3 => return Exit::Reboot,
                _ => return Exit::Poweroff,
            };
            note = match outcome {
                Ok(Some(exit)) => return exit,
                Ok(None) => String::new(),
                Err(Nav::Closed) => return Exit::Rescue,
                Err(Nav::Cancel) | Err(Nav::Back) => "Cancelled; nothing was changed. What do you want to do?".into(),
            };
        }
    }

    /// The disks as menu items; `refuse` says why a disk cannot be chosen.
    fn disk_items(all: &[Disk], refuse: &dyn Fn(&Disk) -> Option<String>) -> Vec<Item> {
        all.iter()
            .map(|d| {
                let mut label = format!("{:<8} {:>10}", d.name, human_bytes(d.bytes));
                if let Some(model) = known_model(&d.model) {
                    label.push_str(&format!("  {model}"));
                }
                if d.removable {
                    label.push_str("  (removable)");
                }
                let item = Item::new(label).detail(disks::contents(d));
                match refuse(d) {
                    Some(why) => item.unavailable(why),
                    None => item,
                }
            })
            .collect()
    }

    /// The whole backup: disk, destination, name, password, summary, run.
    /// Ok(Some) when the person chose to reboot or power off at the end.
    fn backup_flow(&mut self) -> Result<Option<Exit>, Nav> {
        let all = disks::probe(Path::new("/"));
        if all.iter().all(|d| d.bytes == 0) {
            self.message("Back up: no disks", "This PC has no disk to back up (no driver for its disk controller?).")?;
            return Ok(None);
        }
        let mut disk_menu = Menu::new(Self::disk_items(&all, &|d| (d.bytes == 0).then(|| "empty drive".into())));
        let mut dest_menu = Menu::new(Vec::new());
        let mut dests: Vec<Place> = Vec::new();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let mut name = tui::default_backup_name(&self.config.pc, now);
        let mut lock: Option<Lock> = None;
        let mut step = 0;
        loop {
            let r: Result<(), Nav> = match step {
                0 => {
                    self.choose("Back up - 1/5: which disk?", "Choose the disk to back up:", &mut disk_menu).map(|_| ())
                }
                1 => {
                    let d = &all[disk_menu.selected];
                    (dests, dest_menu) = self.destinations(d);
                    self.choose("Back up - 2/5: where to?", "Choose where to store the backup:", &mut dest_menu)
                        .map(|_| ())
                }
                2 => self.ask_name(&mut name),
                3 => self.ask_new_password().map(|l| lock = l),
                4 => {
                    let d = &all[disk_menu.selected];
                    let dest = &dests[dest_menu.selected];
                    let summary = format!(
                        "Disk:        {}\n{}Destination: {}\nName:        {name}\nPassword:    {}\nCopy:        {}\nEncrypted:   {}\n\nThe disk is only read; nothing on it changes.",
                        disk_title(d),
                        disks::contents(d).iter().map(|l| format!("             {l}\n")).collect::<String>(),
                        self.place_text(dest),
                        if lock.is_some() {
                            "set (needed to restore this backup)"
                        } else {
                            "none (anyone allowed to restore this PC's backups can restore it)"
                        },
                        if self.config.raw {
                            "every byte (mode=raw), free space and deleted files included"
                        } else {
                            "used space only (free space and deleted files left out)"
                        },
                        match jobs::data_key() {
                            Ok(Some(k)) => format!("yes, here on the PC (data key {})", k.fingerprint()),
                            Ok(None) => "no (this PC has no data key)".to_owned(),
                            Err(e) => format!("cannot start: {e}"),
                        },
                    );
                    let mut menu = Menu::new(vec![
                        Item::new("Start the backup"),
                        Item::new("Go back and change something"),
                        Item::new(if self.config.raw {
                            "Start a used-space backup instead (free space left out)"
                        } else {
                            "Start a raw backup instead (every byte, for a forensic copy)"
                        }),
                    ]);
                    match self.choose("Back up - 5/5: ready?", &summary, &mut menu) {
                        Ok(choice @ (0 | 2)) => {
                            let raw = self.config.raw != (choice == 2);
                            let dest = dest.clone();
                            let exit = self.run_backup(&all[disk_menu.selected], &dest, &name, lock.take(), raw)?;
                            return Ok(exit);
                        }
                        Ok(_) => Err(Nav::Back),
                        Err(e) => Err(e),
                    }
                }
                _ => return Ok(None),
            };
            advance(&mut step, r)?;
        }
    }

    /// `the bootvault server at http://…` or `drive sdb1 exfat "BACKUPS"`.
    fn place_text(&self, p: &Place) -> String {
        match (p, self.client) {
            (Place::Server, Some(c)) => format!("the bootvault server at {}", c.base()),
            (Place::Server, None) => "the bootvault server".to_owned(),
            (Place::Drive(v), _) => format!("drive {} (folder {DRIVE_DIR})", v.title()),
        }
    }

    /// The destination menu for a backup of `d`: the server, then every
    /// filesystem a backup can be written to, each with its free space
    /// and whether the backup fits; the disk being backed up, and drives
    /// too small, are refused. Each drive is only mounted read-only, for
    /// a moment.
    fn destinations(&mut self, d: &Disk) -> (Vec<Place>, Menu) {
        self.term.write(&frame(&self.header, "Back up - 2/5: where to?", "Looking at the drives of this PC...", ""));
        let need = Device::open(&Path::new("/dev").join(&d.name), false)
            .map(|dev| jobs::backup_need(&dev, self.config.raw))
            .unwrap_or(d.bytes);
        let mut places = vec![Place::Server];
        let mut items = vec![match self.client {
            Some(c) => Item::new(format!("The bootvault server at {}", c.base())),
            None if self.config.server.is_none() => Item::new("The bootvault server").unavailable("none configured"),
            None => Item::new("The bootvault server").unavailable("not reachable (no network?)"),
        }];
        for v in volumes::volumes(&disks::probe(Path::new("/"))) {
            let mut label = format!("Drive {} {} {}", v.dev, human_bytes(v.bytes), v.kind);
            if !v.label.is_empty() {
                label.push_str(&format!("  {:?}", v.label));
            }
            let mut detail = vec![format!("{} disk {}", if v.removable { "on removable" } else { "on" }, v.disk)];
            let refused = if v.disk == d.name {
                Some(format!("on the disk being backed up ({})", d.name))
            } else if read_only(&v.disk) {
                Some("read-only".to_owned())
            } else {
                let look = volumes::look(&v, &|_| {});
                if !look.backups.is_empty() {
                    detail.push(format!("holds {} backup(s) already", look.backups.len()));
                }
                // The short reason on the item's line, the numbers under it.
                match look.free.map(|free| (free, volumes::fit_text(free, need))) {
                    Ok((_, Ok(fits))) => {
                        detail.push(fits);
                        None
                    }
                    Ok((free, Err(_))) => {
                        detail.push(volumes::space_line(free, need));
                        Some("too small".to_owned())
                    }
                    Err(e) => Some(e),
                }
            };
            let item = Item::new(label).detail(detail);
            items.push(match refused {
                Some(why) => item.unavailable(why),
                None => item,
            });
            places.push(Place::Drive(v));
        }
        let mut menu = Menu::new(items);
        // The first usable place is selected.
        if let Some(i) = menu.items.iter().position(|i| i.unavailable.is_none()) {
            menu.selected = i;
        }
        (places, menu)
    }

    fn ask_name(&mut self, name: &mut String) -> Result<(), Nav> {
        let mut message = String::new();
        let suggested = name.clone();
        loop {
            let mut edit = LineEdit::new(name, false, 64);
            self.ask(
                "Back up - 3/5: name",
                &format!("Give the backup a name you will recognise when restoring\n(letters, digits, '-', '_' and '.'; at most 64).\nSuggested: {suggested}"),
                "Backup name:\n",
                &mut edit,
                &message,
            )?;
            *name = edit.text.trim().to_owned();
            match check_backup_name(name) {
                Ok(()) => return Ok(()),
                Err(e) => message = format!("{e}."),
            }
        }
    }

    /// Asks for a new restore password twice; derives the lock from it
    /// and wipes the typed text. None: no password.
    fn ask_new_password(&mut self) -> Result<Option<Lock>, Nav> {
        let mut message = String::new();
        let body = format!(
            "Set a password that will be asked for before this backup can be restored.\nAt least {} characters. Press Enter twice for no password.\nWhat you type is not shown.",
            tui::MIN_PASSWORD
        );
        loop {
            self.term.discard_typeahead();
            let mut first = LineEdit::new("", true, tui::MAX_PASSWORD);
            self.ask("Back up - 4/5: restore password", &body, "Password:\n", &mut first, &message)?;
            let mut second = LineEdit::new("", true, tui::MAX_PASSWORD);
            let asked =
                self.ask("Back up - 4/5: restore password", &body, "The same password again:\n", &mut second, "");
            self.term.wipe();
            asked?;
            if let Err(e) = tui::check_new_password(&first.text, &second.text) {
                message = format!("{e}.");
                continue;
            }
            drop(second);
            if first.text.is_empty() {
                return Ok(None);
            }
            self.term.write(&frame(&self.header, "Back up - 4/5: restore password", "Preparing the password...", ""));
            let password: Zeroizing<Vec<u8>> = Zeroizing::new(first.text.as_bytes().to_vec());
            drop(first);
            match Lock::new(&password) {
                Ok(l) => return Ok(Some(l)),
                Err(e) => message = format!("could not prepare the password: {e}"),
            }
        }
    }

    /// Draws the progress screen's frame; returns the row the progress
    /// block (`Watch`) redraws itself at.
    fn progress_screen(&mut self, title: &str, intro: &str) -> u16 {
        let screen = frame(&self.header, title, intro, "");
        // One blank row under the intro, then the progress block.
        let row = screen.matches('\n').count() as u16 + 2;
        self.term.write(&screen);
        row
    }

    fn run_backup(
        &mut self,
        d: &Disk,
        dest: &Place,
        name: &str,
        lock: Option<Lock>,
        raw: bool,
    ) -> Result<Option<Exit>, Nav> {
        let title = "Back up: running";
        let intro = format!(
            "Backing up {} ({}) to {} as {name:?}.\nPress Ctrl-C twice to cancel.",
            d.name,
            human_bytes(d.bytes),
            self.place_text(dest)
        );
        let row = self.progress_screen(title, &intro);
        let cancel = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let had_lock = lock.is_some();
        // A drive: mounted for writing only now, its store opened (which
        // cleans up what an interrupted backup left).
        let mut note = String::new();
        let drive = match dest {
            Place::Server => None,
            Place::Drive(v) => match volumes::open_store(v, true, &|_| {}) {
                Ok((m, store)) => {
                    if !store.cleaned().is_empty() {
                        note = format!("Cleaned up first: {}.\n", store.cleaned().line());
                    }
                    Some((m, store))
                }
                Err(e) => {
                    let body = format!("Could not use the drive:\n  {e}\n\nNothing was written.");
                    return self.finish_screen("Back up: FAILED", &body);
                }
            },
        };
        let store: &dyn Store = match (&drive, self.client) {
            (Some((_, s)), _) => s,
            (None, Some(c)) => c,
            (None, None) => return self.finish_screen("Back up: FAILED", "There is no server to back up to."),
        };
        let result = Device::open(&Path::new("/dev").join(&d.name), false).map_err(|e| e.to_string()).and_then(|dev| {
            let mut opts = BackupOptions::new(&self.config.pc, name);
            opts.level = self.config.level;
            opts.raw = raw;
            opts.model = d.model.clone();
            opts.serial = d.serial.clone();
            opts.lock = lock;
            opts.escrow = self.config.escrow;
            opts.cancel = cancel.clone();
            opts.key = jobs::data_key()?;
            let mut watch = Watch::new(&mut self.term, row, &cancel, "backup");
            jobs::with_reports(self.client, "backup", None, &mut |p| watch.update(p), |progress| {
                backup(&dev, store, &opts, progress).map_err(|e| e.to_string())
            })
        });
        // The drive written out and unmounted before anything is said.
        let unmounted = drive.map(|(m, store)| {
            drop(store);
            m.unmount()
        });
        let summary = match &result {
            Ok(r) => r.summary(),
            Err(e) => e.clone(),
        };
        if let Some(client) = self.client {
            jobs::Report {
                job: None,
                action: "backup",
                disk: &d.name,
                backup: result.as_ref().map(|r| r.id.to_string()).unwrap_or_default(),
                ok: result.is_ok(),
                message: &summary,
                bytes: result.as_ref().map_or(0, |r| r.disk_bytes),
                sent: result.as_ref().map_or(0, |r| r.sent_bytes),
                elapsed: start.elapsed(),
            }
            .send(client);
        }
        let (stored_on, kept_failed, check) = match dest {
            Place::Server => ("on the server", "the server keeps it marked as failed", "the network and the server"),
            Place::Drive(_) => ("on the drive", "the drive keeps it marked as failed", "the drive and its free space"),
        };
        let removal = match &unmounted {
            None => String::new(),
            Some(Ok(())) => "\nThe drive was written out and unmounted: you can remove it.".to_owned(),
            Some(Err(e)) => {
                format!("\nWARNING: {e}.\nDo not remove the drive yet: choose Power off, which writes it out.")
            }
        };
        let (title, body) = match result {
            Ok(r) => (
                "Back up: done",
                format!(
                    "{note}The backup is complete and stored {stored_on}.\n\n  Name:     {name}\n  Number:   {}\n  Disk:     {} ({} read)\n  Sent:     {} (after deduplication and compression)\n  Stored:   {} for this backup\n  Time:     {:.0} s ({:.1} MB/s)\n  Password: {}\n{}\n{}",
                    r.id,
                    d.name,
                    human_bytes(r.disk_bytes.saturating_sub(r.unused_bytes)),
                    human_bytes(r.sent_bytes),
                    human_bytes(r.blob_bytes),
                    r.elapsed.as_secs_f64(),
                    r.disk_bytes as f64 / 1e6 / r.elapsed.as_secs_f64().max(1e-9),
                    if had_lock { "set" } else { "none" },
                    r.partition_lines().iter().map(|l| format!("  {l}\n")).collect::<String>(),
                    match &unmounted {
                        None => "What next: you can power off this PC. To put this disk back as it is now,\nboot bootvault on this PC (or another one) and choose Restore.".to_owned(),
                        Some(Ok(())) => "The drive was written out and unmounted: you can remove it. To put this\ndisk back as it is now, boot bootvault with the drive plugged in: Restore.".to_owned(),
                        Some(Err(_)) => removal.trim_start().to_owned(),
                    },
                ),
            ),
            Err(_) if cancel.load(Ordering::Relaxed) => (
                "Back up: cancelled",
                format!("The backup was cancelled. Nothing was stored as a complete backup\n({kept_failed}). The disk was only read.{removal}"),
            ),
            Err(e) => (
                "Back up: FAILED",
                format!("The backup failed:\n  {e}\n\nNothing was stored as a complete backup ({kept_failed}).\nThe disk was only read. Check {check}, then try again.{removal}"),
            ),
        };
        self.finish_screen(title, &body)
    }

    /// The last screen of a task: what happened, then where to go.
    fn finish_screen(&mut self, title: &str, body: &str) -> Result<Option<Exit>, Nav> {
        self.term.discard_typeahead();
        let mut menu = Menu::new(vec![Item::new("Back to the main menu"), Item::new("Power off"), Item::new("Reboot")]);
        match self.choose(title, body, &mut menu) {
            Ok(0) => Ok(None),
            Ok(1) => Ok(Some(Exit::Poweroff)),
            Ok(_) => Ok(Some(Exit::Reboot)),
            Err(Nav::Closed) => Err(Nav::Closed),
            // The task is over; Esc and Ctrl-C just go back to the menu.
            Err(_) => Ok(None),
        }
    }

    /// The backups this PC can restore: the server's (when it answers),
    /// then those on every drive. The second value says what could not
    /// be asked.
    fn find_backups(&mut self) -> (Vec<(Place, BackupInfo)>, Vec<String>) {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        match self.client {
            Some(c) => match c.backups() {
                Ok(list) => found.extend(list.into_iter().map(|b| (Place::Server, b))),
                Err(e) => problems.push(format!("the server did not answer: {e}")),
            },
            None => problems.push("no server: no network, or none configured".to_owned()),
        }
        for v in volumes::volumes(&disks::probe(Path::new("/"))) {
            let look = volumes::look(&v, &|_| {});
            found.extend(look.backups.into_iter().map(|b| (Place::Drive(v.clone()), b)));
        }
        (found, problems)
    }

    /// The whole restore: backup, target disk, confirmation, password, run.
    fn restore_flow(&mut self) -> Result<Option<Exit>, Nav> {
        self.term.write(&frame(
            &self.header,
            "Restore",
            "Looking for backups on the server and on the drives of this PC...",
            "",
        ));
        let (backups, problems) = self.find_backups();
        if backups.is_empty() {
            self.message(
                "Restore: no backups",
                &format!(
                    "No complete backup that PC {} may restore was found on the server or on a drive\nof this PC{}.\nBack this PC up first, plug in the drive holding its backups, or ask the\nadministrator to make a backup available.",
                    self.config.pc,
                    if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) }
                ),
            )?;
            return Ok(None);
        }
        let items = backups.iter().map(|(p, b)| backup_item(b, &self.config.pc).on(p)).collect();
        let mut backup_menu = Menu::new(items);
        let intro = if problems.is_empty() {
            "Choose the backup to restore:".to_owned()
        } else {
            format!("Choose the backup to restore ({}):", problems.join("; "))
        };
        let mut all: Vec<Disk> = Vec::new();
        let mut disk_menu = Menu::new(Vec::new());
        let mut step = 0;
        loop {
            let (origin, b) = &backups[backup_menu.selected];
            let r: Result<(), Nav> = match step {
                0 => self.choose("Restore - 1/4: which backup?", &intro, &mut backup_menu).map(|_| ()),
                1 => {
                    all = disks::probe(Path::new("/"));
                    let need = b.disk_bytes;
                    let refuse = |d: &Disk| {
                        if d.bytes == 0 {
                            Some("empty drive".into())
                        } else if matches!(origin, Place::Drive(v) if v.disk == d.name) {
                            Some("holds this backup".into())
                        } else if read_only(&d.name) {
                            Some("read-only".into())
                        } else {
                            tui::fits(need, d.bytes).err()
                        }
                    };
                    disk_menu = Menu::new(Self::disk_items(&all, &refuse));
                    let intro = format!(
                        "Choose the disk to overwrite with {:?} ({}).\nUnder each disk: what is on it now.",
                        b.name,
                        human_bytes(b.disk_bytes)
                    );
                    self.choose("Restore - 2/4: onto which disk?", &intro, &mut disk_menu).map(|_| ())
                }
                2 => self.confirm_overwrite(b, &all[disk_menu.selected]),
                3 => {
                    let (origin, b) = (origin.clone(), b.clone());
                    let d = all[disk_menu.selected].clone();
                    match origin {
                        Place::Server => match self.client {
                            Some(c) => match self.ask_password(c, &b) {
                                Ok(()) => return self.run_restore(c, &origin, &b, &d),
                                Err(e) => Err(e),
                            },
                            None => return Ok(None),
                        },
                        Place::Drive(ref v) => {
                            self.term.write(&frame(
                                &self.header,
                                "Restore",
                                &format!("Opening drive {}...", v.title()),
                                "",
                            ));
                            match volumes::open_store(v, false, &|_| {}) {
                                Err(e) => {
                                    self.message(
                                        "Restore: the drive cannot be used",
                                        &format!("Could not open the drive:\n  {e}"),
                                    )?;
                                    Err(Nav::Back)
                                }
                                Ok((m, store)) => {
                                    let asked = self.ask_password(&store, &b);
                                    let done = match asked {
                                        Ok(()) => Some(self.run_restore(&store, &origin, &b, &d)),
                                        Err(e) => {
                                            drop(store);
                                            drop(m);
                                            if e == Nav::Back {
                                                None
                                            } else {
                                                return Err(e);
                                            }
                                        }
                                    };
                                    match done {
                                        Some(r) => return r,
                                        None => Err(Nav::Back),
                                    }
                                }
                            }
                        }
                    }
                }
                _ => return Ok(None),
            };
            advance(&mut step, r)?;
        }
    }

    fn confirm_overwrite(&mut self, b: &BackupInfo, d: &Disk) -> Result<(), Nav> {
        let mut message = String::new();
        loop {
            self.term.discard_typeahead();
            let body = format!(
                "EVERYTHING on {} will be replaced by backup {:?}\nmade {} from PC {}. Now on {}:\n{}",
                disk_title(d),
                b.name,
                utc_datetime(b.created),
                b.pc,
                d.name,
                disks::contents(d).iter().map(|l| format!("  {l}\n")).collect::<String>()
            );
            let mut edit = LineEdit::new("", false, 32);
            let prompt = format!("Type the disk name ({}) to overwrite it:\n", d.name);
            self.ask("Restore - 3/4: are you sure?", &body, &prompt, &mut edit, &message)?;
            if tui::confirms_disk(&edit.text, &d.name) {
                return Ok(());
            }
            message = format!("You typed {:?}, not {:?}; nothing was written.", edit.text.trim(), d.name);
        }
    }

    /// Asks the backup's password until the store accepts it (the server
    /// counts and rate-limits wrong ones). Nothing to ask when there is none.
    fn ask_password(&mut self, store: &dyn Store, b: &BackupInfo) -> Result<(), Nav> {
        if !b.locked {
            return Ok(());
        }
        let mut message = String::new();
        loop {
            self.term.discard_typeahead();
            let mut edit = LineEdit::new("", true, tui::MAX_PASSWORD);
            let asked = self.ask(
                "Restore - 4/4: password",
                &format!("Backup {:?} is protected by a password. What you type is not shown.", b.name),
                "Password:\n",
                &mut edit,
                &message,
            );
            self.term.wipe();
            asked?;
            self.term.write(&frame(&self.header, "Restore - 4/4: password", "Checking the password...", ""));
            let password: Zeroizing<Vec<u8>> = Zeroizing::new(edit.text.as_bytes().to_vec());
            drop(edit);
            match store.unlock(b.id, &password) {
                Ok(_) => return Ok(()),
                Err(e) => message = e.to_string(),
            }
        }
    }

    fn run_restore(
        &mut self,
        store: &dyn Store,
        origin: &Place,
        b: &BackupInfo,
        d: &Disk,
    ) -> Result<Option<Exit>, Nav> {
        let intro = format!(
            "Restoring {:?} onto {} ({}).\nPress Ctrl-C twice to cancel (the disk would be left incomplete).",
            b.name,
            d.name,
            human_bytes(d.bytes)
        );
        let row = self.progress_screen("Restore: running", &intro);
        let cancel = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let result = Device::open(&Path::new("/dev").join(&d.name), true).map_err(|e| e.to_string()).and_then(|dev| {
            let opts = RestoreOptions {
                verify: self.config.verify,
                cancel: cancel.clone(),
                key: jobs::data_key()?,
                ..RestoreOptions::default()
            };
            let mut watch = Watch::new(&mut self.term, row, &cancel, "restore");
            jobs::with_reports(self.client, "restore", None, &mut |p| watch.update(p), |progress| {
                restore(&dev, store, b.id, &opts, progress).map_err(|e| e.to_string())
            })
        });
        let summary = match &result {
            Ok(r) => r.summary(&d.name),
            Err(e) => e.clone(),
        };
        let from = match origin {
            Place::Server => "from the server".to_owned(),
            Place::Drive(v) => format!("from drive {}", v.dev),
        };
        if let Some(client) = self.client {
            jobs::Report {
                job: None,
                action: "restore",
                disk: &d.name,
                backup: b.id.to_string(),
                ok: result.is_ok(),
                message: &summary,
                bytes: result.as_ref().map_or(0, |r| r.disk_bytes),
                sent: result.as_ref().map_or(0, |r| r.fetched_bytes),
                elapsed: start.elapsed(),
            }
            .send(client);
        }
        let (title, body) = match result {
            Ok(r) => (
                "Restore: done",
                format!(
                    "Backup {:?} is now on {}.\n\n  Restored: {} in {:.0} s\n  Fetched:  {} {from} ({} chunks; {} were already right){}{}\n\nWhat next: remove the bootvault USB stick or CD, then choose Reboot\nto start the restored system.",
                    b.name,
                    d.name,
                    human_bytes(r.disk_bytes),
                    r.elapsed.as_secs_f64(),
                    human_bytes(r.fetched_bytes),
                    r.fetched_chunks,
                    r.skipped_chunks,
                    if r.verified { "\n  Verified: every chunk read back and compared" } else { "" },
                    r.reread_error.map(|e| format!("\n  Note: the kernel did not re-read the partition table ({e})")).unwrap_or_default()
                ),
            ),
            // The engine's error says whether this run wrote to the disk.
            Err(e) if cancel.load(Ordering::Relaxed) && !e.contains(PARTLY_OVERWRITTEN) => (
                "Restore: cancelled",
                format!("The restore was cancelled before anything was written:\n  {e}\n\n{} is unchanged.", d.name),
            ),
            Err(e) if cancel.load(Ordering::Relaxed) => (
                "Restore: CANCELLED - the disk is incomplete",
                format!(
                    "The restore was cancelled:\n  {e}\n\nThe disk {} is now INCOMPLETE: it holds part of the backup and will not\nwork as it is. Restore a backup onto it again before using it (again\nthe same backup writes only what still differs).",
                    d.name
                ),
            ),
            Err(e) if e.contains(PARTLY_OVERWRITTEN) => (
                "Restore: FAILED - the disk is incomplete",
                format!(
                    "The restore failed:\n  {e}\n\nThe disk {} is now INCOMPLETE: it holds part of the backup and will not\nwork as it is. Restore again before using it: the same backup writes only\nwhat still differs, or choose another backup.",
                    d.name
                ),
            ),
            Err(e) => (
                "Restore: FAILED",
                format!("The restore failed:\n  {e}\n\nNothing was written: {} is unchanged.", d.name),
            ),
        };
        self.finish_screen(title, &body)
    }
}

/// How long a first Ctrl-C waits for the second that cancels.
const CONFIRM_CANCEL: Duration = Duration::from_secs(5);

/// The engine's progress callback on the console: redraws the progress
/// block in place and turns two Ctrl-C into a cancel.
struct Watch<'a> {
    term: &'a mut Term,
    row: u16,
    cancel: &'a AtomicBool,
    action: &'static str,
    armed: Option<Instant>,
}

impl<'a> Watch<'a> {
    fn new(term: &'a mut Term, row: u16, cancel: &'a AtomicBool, action: &'static str) -> Watch<'a> {
        Watch { term, row, cancel, action, armed: None }
    }

    fn update(&mut self, p: &Progress) {
        while let Some(k) = self.term.poll() {
            if k != Key::Cancel {
                continue;
            }
            match self.armed {
                Some(t) if t.elapsed() < CONFIRM_CANCEL => self.cancel.store(true, Ordering::Relaxed),
                _ => self.armed = Some(Instant::now()),
            }
        }
        let mut out = format!("\x1b[{};1H", self.row);
        for line in tui::progress_lines(p) {
            out.push_str(&line);
            out.push_str(ERASE);
            out.push('\n');
        }
        let note = if self.cancel.load(Ordering::Relaxed) {
            format!("Cancelling the {}...", self.action)
        } else if self.armed.is_some_and(|t| t.elapsed() < CONFIRM_CANCEL) {
            format!("Press Ctrl-C again to cancel the {}.", self.action)
        } else {
            String::new()
        };
        out.push('\n');
        out.push_str(&note);
        out.push_str(ERASE);
        out.push('\n');
        self.term.write(&out);
    }
}

/// Moves a task's steps on: an answer goes to the next step, Esc to the
/// one before (out of the task from the first), anything else leaves.
fn advance(step: &mut usize, answer: Result<(), Nav>) -> Result<(), Nav> {
    match answer {
        Ok(()) => *step += 1,
        Err(Nav::Back) if *step == 0 => return Err(Nav::Back),
        Err(Nav::Back) => *step -= 1,
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Whether the kernel says the disk is read-only (a CD, a locked card).
fn read_only(name: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/block").join(name).join("ro")).is_ok_and(|s| s.trim() == "1")
}

/// `vda (96.0 MiB, QEMU HARDDISK)`; the model only when the disk has one.
fn disk_title(d: &Disk) -> String {
    match known_model(&d.model) {
        Some(model) => format!("{} ({}, {model})", d.name, human_bytes(d.bytes)),
        None => format!("{} ({})", d.name, human_bytes(d.bytes)),
    }
}

/// A disk model worth showing: the probe (and so a backup's manifest)
/// says `-` when the disk did not name one.
fn known_model(model: &str) -> Option<&str> {
    (!model.is_empty() && model != "-").then_some(model)
}

/// One backup on the restore list: name, date and whether it has a
/// password on the line; sizes and origin under it.
fn backup_item(b: &BackupInfo, pc: &str) -> Item {
    let mut label = format!("{}  {}", b.name, utc_datetime(b.created));
    if b.locked {
        label.push_str("  [password]");
    }
    let mut detail =
        vec![format!("backup {}: disk {}, stored {}", b.id, human_bytes(b.disk_bytes), human_bytes(b.stored_bytes))];
    if b.pc != pc {
        detail.push(format!("from PC {}, made available to this PC by the administrator", b.pc));
    }
    if let Some(model) = known_model(&b.model) {
        detail.push(format!("disk model {model}"));
    }
    Item::new(label).detail(detail)
}

/// Says where a listed backup is.
trait On {
    fn on(self, p: &Place) -> Self;
}

impl On for Item {
    fn on(mut self, p: &Place) -> Item {
        match p {
            Place::Server => self.detail.push("on the server".to_owned()),
            Place::Drive(v) => self.detail.push(format!("on drive {} (disk {})", v.title(), v.disk)),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_on_back_and_out() {
        let mut step = 0;
        assert_eq!(advance(&mut step, Ok(())), Ok(()));
        assert_eq!(advance(&mut step, Ok(())), Ok(()));
        assert_eq!(step, 2);
        assert_eq!(advance(&mut step, Err(Nav::Back)), Ok(()));
        assert_eq!(step, 1);
        assert_eq!(advance(&mut step, Err(Nav::Cancel)), Err(Nav::Cancel));
        assert_eq!(advance(&mut step, Err(Nav::Closed)), Err(Nav::Closed));
        assert_eq!(step, 1, "leaving does not move");
        assert_eq!(advance(&mut step, Err(Nav::Back)), Ok(()));
        assert_eq!(advance(&mut step, Err(Nav::Back)), Err(Nav::Back), "Esc on the first step leaves the task");
    }

    #[test]
    fn backup_items() {
        let b = BackupInfo {
            id: 7,
            pc: "pc-one".into(),
            name: "nightly".into(),
            created: 1_795_546_469,
            disk_bytes: 96 << 20,
            stored_bytes: 12 << 20,
            locked: true,
            model: String::new(),
        };
        let own = backup_item(&b, "pc-one");
        assert_eq!(own.label, "nightly  2026-11-24 18:54  [password]");
        assert_eq!(own.detail, vec!["backup 7: disk 96.0 MiB, stored 12.0 MiB".to_owned()]);
        let granted = backup_item(&BackupInfo { locked: false, model: "QEMU HARDDISK".into(), ..b }, "pc-two");
        assert_eq!(granted.label, "nightly  2026-11-24 18:54");
        assert_eq!(
            granted.detail[1..],
            [
                "from PC pc-one, made available to this PC by the administrator".to_owned(),
                "disk model QEMU HARDDISK".to_owned()
            ]
        );
    }
}
