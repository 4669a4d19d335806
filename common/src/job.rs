//! A server job for a PC: the answer to `GET /api/v1/jobs/next`
//! (docs/PROTOCOL.md), written by the server ([`JobMessage::encode`]) and
//! read by the init ([`JobMessage::parse`]), both here.
//!
//! The answer is `key=value` lines. Every field is checked on both sides
//! with the PC's own rules (the `disk` setting, the console's backup-name
//! rule, positive ids, the lock's wire form), and no value may hold a
//! control character, so no value can start a line (a setting) of its own.
//! The parser refuses unknown and repeated keys: a line it did not expect
//! is a bug or an attack, never something to skip. The server checks a
//! job's fields with [`check_fields`] when the job is made, so the admin
//! hears of a bad field then, not the PC later.
//!
//! Owns: the job message and the rules of its fields. Not the HTTP request
//! (the engine's client) nor what the PC does with a job (the init's
//! `jobs`).

use std::fmt;

use crate::config::{check_backup_id, check_backup_name, check_disk, parse_backup_ref, Action, BackupRef};
use crate::wire;

/// The keys of a job, in the order [`JobMessage::encode`] writes them.
pub const KEYS: &[&str] = &["job", "action", "disk", "name", "backup", "lock", "ticket", "wrap"];

/// One job for one PC.
#[derive(Clone, PartialEq, Eq)]
pub struct JobMessage {
    /// The server's job id.
    pub id: i64,
    /// [`Action::Backup`] or [`Action::Restore`].
    pub action: Action,
    /// `auto` or a disk name; `None`: the PC's own `disk` setting.
    pub disk: Option<String>,
    /// Backup name, empty for none (a backup is then called `full`, a
    /// restore takes the latest of any name); `None`: the PC's own setting.
    pub name: Option<String>,
    /// Which backup a restore takes.
    pub backup: BackupRef,
    /// A backup job's lock, [`wire::lock_text`]. It holds the key.
    pub lock: Option<String>,
    /// A restore job's unlock ticket, 64 hex digits.
    pub ticket: Option<String>,
    /// The password's wrap key, sealed with the site's data key
    /// (`DataKey::seal_secret`, hex): lets the PC wrap (backup) or open
    /// (restore) a locked backup's own key. The server cannot open it.
    pub wrap: Option<String>,
}

/// The secrets stay out of logs and panic messages.
impl fmt::Debug for JobMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobMessage")
            .field("id", &self.id)
            .field("action", &self.action)
            .field("disk", &self.disk)
            .field("name", &self.name)
            .field("backup", &self.backup)
            .field("lock", &self.lock.as_ref().map(|_| "…"))
            .field("ticket", &self.ticket.as_ref().map(|_| "…"))
            .field("wrap", &self.wrap.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A job's action: `backup` or `restore` (the other actions of the `action`
/// setting are the PC's own, never a job's).
pub fn parse_action(v: &str) -> Result<Action, String> {
    match Action::parse(v) {
        Some(a @ (Action::Backup | Action::Restore)) => Ok(a),
        _ => Err(format!("action={v:?}: expected backup or restore")),
    }
}

/// The fields an admin gives a new job, checked as the PC will check them;
/// the error is one line that starts with the field's name. An empty
/// `disk` or `name` is none given.
pub fn check_fields(disk: &str, name: &str, backup: Option<i64>) -> Result<(), String> {
    if !disk.is_empty() {
        check_disk(disk).map_err(|e| format!("disk={disk:?}: {e}"))?;
    }
    check_name(name)?;
    if let Some(b) = backup {
        check_backup_id(b).map_err(|e| format!("backup={b}: {e}"))?;
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Ok(());
    }
    check_backup_name(name).map_err(|e| format!("name={name:?}: {e}"))
}

/// The lock's wire form, parameters within bounds. The key goes into a
/// scratch buffer that is cleared (the text holds it anyway).
fn check_lock(text: &str) -> Result<(), String> {
    let mut key = [0u8; 32];
    let checked = wire::parse_lock_text(text, &mut key).map(|_| ());
    key.fill(0);
    checked
}

/// The value is a secret: the error never echoes it.
fn check_ticket(t: &str) -> Result<(), String> {
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("ticket: expected 64 hex digits".into())
    }
}

fn check_wrap(w: &str) -> Result<(), String> {
    if w.len() == 2 * crate::seal::SEALED_SECRET_BYTES && w.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("wrap: expected {} hex digits", 2 * crate::seal::SEALED_SECRET_BYTES))
    }
}

/// A control character would end the line (`\n`), hide the rest of it from
/// a person (`\r`, escapes), or be trimmed away by a reader.
fn check_text(key: &str, value: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{key}: a control character in the value"));
    }
    Ok(())
}

impl JobMessage {
    /// Every field by its rule; the error starts with the field's name
    /// and never echoes the lock or the ticket.
    pub fn check(&self) -> Result<(), String> {
        let fields = [
            ("disk", &self.disk),
            ("name", &self.name),
            ("lock", &self.lock),
            ("ticket", &self.ticket),
            ("wrap", &self.wrap),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                check_text(key, v)?;
            }
        }
        if self.id <= 0 {
            return Err(format!("job={}: expected a job id (a positive number)", self.id));
        }
        parse_action(self.action.as_str())?;
        if let Some(d) = &self.disk {
            check_disk(d).map_err(|e| format!("disk={d:?}: {e}"))?;
        }
        if let Some(n) = &self.name {
            check_name(n)?;
        }
        if let BackupRef::Id(b) = self.backup {
            check_backup_id(b).map_err(|e| format!("backup={b}: {e}"))?;
        }
        if let Some(l) = &self.lock {
            check_lock(l)?;
        }
        if let Some(t) = &self.ticket {
            check_ticket(t)?;
        }
        if let Some(w) = &self.wrap {
            check_wrap(w)?;
        }
        Ok(())
    }

    /// The server's answer: `key=value` lines in [`KEYS`] order, absent
    /// fields left out. A job [`JobMessage::check`] refuses is not
    /// written: the PC would refuse it too.
    pub fn encode(&self) -> Result<String, String> {
        self.check()?;
        let mut out = String::new();
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push('=');
            out.push_str(value);
            out.push('\n');
        };
        line("job", &self.id.to_string());
        line("action", self.action.as_str());
        if let Some(d) = &self.disk {
            line("disk", d);
        }
        if let Some(n) = &self.name {
            line("name", n);
        }
        if let BackupRef::Id(b) = self.backup {
            line("backup", &b.to_string());
        }
        if let Some(l) = &self.lock {
            line("lock", l);
        }
        if let Some(t) = &self.ticket {
            line("ticket", t);
        }
        if let Some(w) = &self.wrap {
            line("wrap", w);
        }
        Ok(out)
    }

    /// Reads [`JobMessage::encode`]'s answer: every line `key=value`, taken
    /// as it is (nothing trimmed).
    pub fn parse(text: &str) -> Result<JobMessage, String> {
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut pairs = Vec::new();
        if !body.is_empty() {
            for (i, line) in body.split('\n').enumerate() {
                let kv =
                    line.split_once('=').ok_or_else(|| format!("the server's job: line {} is not key=value", i + 1))?;
                pairs.push(kv);
            }
        }
        JobMessage::from_pairs(pairs)
    }

    /// The same from lines already split into keys and values (as the
    /// engine's client hands answers over). Unknown and repeated keys are
    /// refused; `job` and `action` are required.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<JobMessage, String> {
        let mut seen: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
        for (key, value) in pairs {
            let i =
                KEYS.iter().position(|k| *k == key).ok_or_else(|| format!("the server's job: unknown key {key:?}"))?;
            if seen[i].replace(value).is_some() {
                return Err(format!("the server's job: {key}= given twice"));
            }
            check_text(key, value).map_err(|e| format!("the server's job: {e}"))?;
        }
        let [job, action, disk, name, backup, lock, ticket, wrap] = seen;
        let id = job.ok_or("the server's job has no id")?;
        let id = id
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("the server's job: job={id:?}: expected a job id (a positive number)"))?;
        let fields = || -> Result<JobMessage, String> {
            let message = JobMessage {
                id,
                action: parse_action(action.ok_or("action= missing")?)?,
                disk: disk.map(str::to_owned),
                name: name.map(str::to_owned),
                backup: backup
                    .map(|b| parse_backup_ref(b).map_err(|e| format!("backup={b:?}: {e}")))
                    .transpose()?
                    .unwrap_or(BackupRef::Latest),
                lock: lock.map(str::to_owned),
                ticket: ticket.map(str::to_owned),
                wrap: wrap.map(str::to_owned),
            };
            message.check()?;
            Ok(message)
        };
        fields().map_err(|e| format!("job {id}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = "argon2id m=19456 t=2 p=1 salt=000102030405060708090a0b0c0d0e0f \
                        key=abababababababababababababababababababababababababababababababab";

    fn restore_job() -> JobMessage {
        JobMessage {
            id: 7,
            action: Action::Restore,
            disk: Some("sda".into()),
            name: Some("nightly".into()),
            backup: BackupRef::Id(1),
            lock: None,
            ticket: Some("0f".repeat(32)),
            wrap: None,
        }
    }

    #[test]
    fn round_trip() {
        let j = restore_job();
        let text = j.encode().unwrap();
        assert_eq!(
            text,
            format!("job=7\naction=restore\ndisk=sda\nname=nightly\nbackup=1\nticket={}\n", "0f".repeat(32))
        );
        assert_eq!(JobMessage::parse(&text), Ok(j));
        let backup = JobMessage {
            id: 8,
            action: Action::Backup,
            disk: None,
            name: Some(String::new()),
            backup: BackupRef::Latest,
            lock: Some(LOCK.into()),
            ticket: None,
            wrap: Some("ab".repeat(crate::seal::SEALED_SECRET_BYTES)),
        };
        let text = backup.encode().unwrap();
        let wrap = "ab".repeat(crate::seal::SEALED_SECRET_BYTES);
        assert_eq!(text, format!("job=8\naction=backup\nname=\nlock={LOCK}\nwrap={wrap}\n"));
        assert_eq!(JobMessage::parse(&text), Ok(backup.clone()));
        let pairs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
        assert_eq!(JobMessage::from_pairs(pairs), Ok(backup));
        // `latest` is what the PC's own setting says too.
        assert_eq!(JobMessage::parse("job=9\naction=restore\nbackup=latest").map(|j| j.backup), Ok(BackupRef::Latest));
    }

    #[test]
    fn encode_refuses_what_would_add_a_line() {
        let injected = JobMessage { disk: Some("sda\nbackup=3".into()), ..restore_job() };
        assert_eq!(injected.encode().unwrap_err(), "disk: a control character in the value");
        for (j, why) in [
            (JobMessage { name: Some("nightly\nbackup=3".into()), ..restore_job() }, "name: a control character"),
            (JobMessage { name: Some("nightly\r".into()), ..restore_job() }, "name: a control character"),
            (JobMessage { lock: Some(format!("{LOCK}\nbackup=3")), ..restore_job() }, "lock: a control character"),
            (JobMessage { ticket: Some("ab\ncd".into()), ..restore_job() }, "ticket: a control character"),
            (JobMessage { disk: Some("sda backup=3".into()), ..restore_job() }, "disk=\"sda backup=3\": expected auto"),
            (JobMessage { name: Some("a/b".into()), ..restore_job() }, "name=\"a/b\": '/' is not allowed"),
            (JobMessage { backup: BackupRef::Id(0), ..restore_job() }, "backup=0: expected a backup id"),
            (JobMessage { id: -1, ..restore_job() }, "job=-1: expected a job id"),
            (JobMessage { action: Action::Menu, ..restore_job() }, "action=\"menu\": expected backup or restore"),
            (JobMessage { lock: Some(LOCK.replace("m=19456", "m=4194304")), ..restore_job() }, "lock: argon2id memory"),
            (JobMessage { ticket: Some("secret".into()), ..restore_job() }, "ticket: expected 64 hex digits"),
            (JobMessage { wrap: Some("secret".into()), ..restore_job() }, "wrap: expected 146 hex digits"),
        ] {
            let e = j.encode().unwrap_err();
            assert!(e.starts_with(why), "{j:?}: {e}");
            assert!(!e.contains("secret") && !e.contains("abab"), "no secret echoed: {e}");
        }
        assert!(!format!("{:?}", restore_job()).contains("0f0f"), "Debug hides the ticket");
    }

    #[test]
    fn parse_refuses_repeated_unknown_and_bad_lines() {
        let ok = "job=7\naction=restore\ndisk=sda\nbackup=1\n";
        assert!(JobMessage::parse(ok).is_ok());
        for (text, why) in [
            // What the injected disk of the report turned into.
            ("job=7\naction=restore\ndisk=sda\nbackup=3\nname=\nbackup=1\n", "the server's job: backup= given twice"),
            ("job=7\njob=8\naction=restore\n", "job= given twice"),
            ("job=7\naction=restore\nverify=yes\n", "unknown key \"verify\""),
            ("job=7\naction=restore\nDisk=sda\n", "unknown key \"Disk\""),
            ("job=7\naction=restore\nsda\n", "line 3 is not key=value"),
            ("job=7\naction=restore\n\n", "line 3 is not key=value"),
            ("job=7\r\naction=restore\n", "job: a control character"),
            ("action=restore\n", "the server's job has no id"),
            ("", "the server's job has no id"),
            ("job=0\naction=restore\n", "job=\"0\": expected a job id"),
            ("job=7\n", "job 7: action= missing"),
            ("job=7\naction=format\n", "job 7: action=\"format\": expected backup or restore"),
            ("job=7\naction=probe\n", "job 7: action=\"probe\""),
            ("job=7\naction=restore\ndisk=\n", "job 7: disk=\"\": expected auto"),
            ("job=7\naction=restore\ndisk= sda\n", "job 7: disk=\" sda\""),
            ("job=7\naction=restore\ndisk=/dev/sda\n", "job 7: disk=\"/dev/sda\""),
            ("job=7\naction=restore\nname=-x\n", "job 7: name=\"-x\": the name must start"),
            ("job=7\naction=restore\nbackup=-1\n", "job 7: backup=\"-1\": expected latest or a backup id"),
            ("job=7\naction=restore\nbackup=\n", "job 7: backup=\"\""),
            ("job=7\naction=restore\nticket=xyz\n", "job 7: ticket: expected 64 hex digits"),
            ("job=7\naction=backup\nlock=argon2id m=1\n", "job 7: lock: t= missing"),
        ] {
            let e = JobMessage::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn fields_of_a_new_job() {
        assert_eq!(check_fields("auto", "", None), Ok(()));
        assert_eq!(check_fields("", "nightly-2.1_x", Some(3)), Ok(()), "empty disk: the PC's own setting");
        for (disk, name, backup, why) in [
            ("sda\nbackup=3", "", None, "disk=\"sda\\nbackup=3\": expected auto or a disk name like sda"),
            ("auto", "a\nb", None, "name=\"a\\nb\": '\\n' is not allowed"),
            ("auto", "", Some(0), "backup=0: expected a backup id"),
        ] {
            let e = check_fields(disk, name, backup).unwrap_err();
            assert!(e.starts_with(why), "{disk:?} {name:?} {backup:?}: {e}");
        }
        assert_eq!(parse_action("backup"), Ok(Action::Backup));
        assert!(parse_action("job").is_err());
    }
}
