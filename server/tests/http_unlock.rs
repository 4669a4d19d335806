//! Restore passwords over the real HTTP API (the server started in this
//! process): who may ask for a challenge, what an unlock answers (ticket,
//! 403 wrong password, 409 used nonce, 429 wait), that a PC reads a locked
//! backup's manifest and chunks only with its own ticket, the PCs' backup
//! list, locks sent when opening a backup, and jobs that carry passwords.

mod support;
use support::http;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use bootvault_common::image::{self, Chunk};
use bootvault_common::wire::{self, LockParams};
use bootvault_server::vault::{BackupLock, PcRow, Vault};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-http-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn start(data: &Path) -> u16 {
    bootvault_server::spawn_on_loopback(data, Default::default()).expect("the server starts")
}

fn kv(text: &str) -> HashMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    wire::hex_into(s, &mut out).expect("hex");
    out
}

struct Pc {
    name: &'static str,
    auth: String,
}

impl Pc {
    fn headers(&self) -> [(&str, &str); 2] {
        [("x-bootvault-pc", self.name), ("authorization", &self.auth)]
    }

    fn get(&self, port: u16, path: &str, extra: &[(&str, &str)]) -> (u16, String) {
        http(port, "GET", path, &[&self.headers()[..], extra].concat(), b"")
    }

    fn post(&self, port: u16, path: &str, body: &str) -> (u16, String) {
        http(port, "POST", path, &self.headers(), body.as_bytes())
    }

    /// Asks for a challenge and answers it as if the password gave `key`.
    fn unlock(&self, port: u16, id: i64, key: &[u8; 32]) -> (u16, String) {
        let (status, ch) = self.get(port, &format!("/backups/{id}/challenge"), &[]);
        if status != 200 {
            return (status, ch);
        }
        let nonce = hex32(&kv(&ch)["nonce"]);
        let proof = wire::unlock_proof(key, &nonce, self.name, id);
        self.post(
            port,
            &format!("/backups/{id}/unlock"),
            &format!("nonce={}\nproof={}\n", wire::to_hex(&nonce), wire::to_hex(&proof)),
        )
    }
}

#[test]
fn challenge_unlock_ticket_matrix() {
    let dir = temp("matrix");
    let v = Vault::open(&dir).expect("vault");
    let tokens: Vec<String> = ["pc-one", "pc-two", "pc-three"]
        .iter()
        .enumerate()
        .map(|(i, n)| v.add_pc(&PcRow::new(n, &format!("52:54:00:00:01:{i:02x}"))).expect("add").token)
        .collect();
    let admin = Pc { name: "-", auth: format!("Bearer {}", v.admin_token().expect("admin")) };
    let one = Pc { name: "pc-one", auth: format!("Bearer {}", tokens[0]) };
    let two = Pc { name: "pc-two", auth: format!("Bearer {}", tokens[1]) };
    let three = Pc { name: "pc-three", auth: format!("Bearer {}", tokens[2]) };
    // A locked and an open complete backup of pc-one, one chunk each.
    let plain: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let cid = image::chunk_id(&plain);
    let blob = image::encode_blob(&plain, 1);
    let mut m =
        bootvault_common::testdata::manifest_of("pc-one", vec![Chunk::Data { id: cid, blob_len: blob.len() as u32 }]);
    m.model = "Disk\tModel 1".into();
    let key = [42u8; 32];
    let lock = BackupLock {
        kdf: bootvault_common::wire::Kdf::Argon2id,
        params: LockParams { m_kib: 64, t_cost: 1, p: 1 },
        salt: [3; 16],
        key,
    };
    let mut ids = Vec::new();
    for l in [None, Some(&lock)] {
        let id = v.create_backup_locked("pc-one", "full", 4096, 4096, l).expect("create");
        v.put_chunk(&cid, &blob, Some(id)).expect("chunk");
        v.finish_backup(id, "pc-one", &m.encode()).expect("finish");
        ids.push(id);
    }
    let (open, id) = (ids[0], ids[1]);
    v.grant(id, "pc-two").expect("grant");
    drop(v);
    let port = start(&dir);
    let chunk_path = format!("/chunks/{}?backup={id}", image::hex(&cid));

    // Challenges: the owner, a grantee and the admin get one; others not.
    assert_eq!(one.get(port, &format!("/backups/{open}/challenge"), &[]), (200, "locked=no\n".into()));
    let (status, ch) = one.get(port, &format!("/backups/{id}/challenge"), &[]);
    let ch = kv(&ch);
    assert_eq!(status, 200);
    assert_eq!(
        (ch["locked"].as_str(), ch["kdf"].as_str(), ch["m"].as_str(), ch["t"].as_str()),
        ("yes", "argon2id", "64", "1")
    );
    assert_eq!((ch["salt"].as_str(), ch["nonce"].len()), ("03".repeat(16).as_str(), 64));
    assert!(!ch.values().any(|v| v.contains(&wire::to_hex(&key))), "never the key");
    assert_eq!(three.get(port, &format!("/backups/{id}/challenge"), &[]).0, 403);
    assert_eq!(http(port, "GET", &format!("/backups/{id}/challenge"), &[], b"").0, 401);
    assert_eq!(one.get(port, "/backups/999/challenge", &[]).0, 404);

    // Without a ticket a PC reads neither the manifest nor a chunk; the admin does.
    let locked_line = format!(
        "backup {id} is protected by a password; restore it at the PC's console, or through a server job made with \
         --password-file\n"
    );
    assert_eq!(one.get(port, &format!("/backups/{id}/manifest"), &[]), (423, locked_line.clone()));
    assert_eq!(one.get(port, &chunk_path, &[]), (423, locked_line.clone()));
    assert_eq!(one.get(port, &format!("/backups/{id}/manifest"), &[("x-bootvault-unlock", "00ff")]).0, 423);
    assert_eq!(admin.get(port, &format!("/backups/{id}/manifest"), &[]).0, 200);
    assert_eq!(one.get(port, &format!("/backups/{open}/manifest"), &[]).0, 200);

    // Unlocking: a bad body, a wrong proof, a used nonce, then the right one.
    assert_eq!(one.post(port, &format!("/backups/{id}/unlock"), "nonce=xyz\nproof=00").0, 400);
    let (status, body) = one.unlock(port, id, &[0; 32]);
    assert_eq!((status, body), (403, format!("wrong password for backup {id} (4 tries left before a wait)\n")));
    let nonce = hex32(&ch["nonce"]);
    let proof = wire::to_hex(&wire::unlock_proof(&key, &nonce, "pc-one", id));
    let replay = format!("nonce={}\nproof={proof}\n", ch["nonce"]);
    let (status, body) = one.post(port, &format!("/backups/{id}/unlock"), &replay);
    assert!(status == 409 && body.contains("no open challenge"), "{status} {body}");
    let (status, body) = one.unlock(port, id, &key);
    assert_eq!(status, 200, "{body}");
    let ticket = kv(&body)["ticket"].clone();
    assert!(kv(&body)["expires"].parse::<i64>().is_ok());
    let with = [("x-bootvault-unlock", ticket.as_str())];
    assert_eq!(one.get(port, &format!("/backups/{id}/manifest"), &with).0, 200);
    assert_eq!(one.get(port, &chunk_path, &with).0, 200);
    // The ticket is pc-one's and this backup's.
    assert_eq!(two.get(port, &format!("/backups/{id}/manifest"), &with).0, 423);
    assert_eq!(two.unlock(port, id, &key).0, 200, "pc-two proves it on its own");

    // Five wrong passwords, then a wait the right one cannot skip.
    for _ in 0..5 {
        assert_eq!(two.unlock(port, id, &[1; 32]).0, 403);
    }
    let (status, body) = two.unlock(port, id, &key);
    assert_eq!(status, 429);
    assert!(
        body.starts_with(&format!("too many wrong passwords for backup {id} from pc-two; try again in ")),
        "{body}"
    );

    // The PCs' list: newest first, tab-separated, locked flag, no secrets.
    let (status, lines) = one.get(port, "/backups?format=lines", &[]);
    assert_eq!(status, 200);
    let rows: Vec<&str> = lines.lines().collect();
    assert_eq!(rows.len(), 2, "{lines}");
    assert!(rows[0].starts_with(&format!("id={id}\tpc=pc-one\tname=full\tcreated=")), "{lines}");
    assert!(
        rows[0].contains("\tdisk_bytes=4096\tstored_bytes=") && rows[0].ends_with("\tlocked=yes\tmodel=Disk Model 1")
    );
    assert!(rows[1].starts_with(&format!("id={open}\t")) && rows[1].contains("\tlocked=no\t"), "{lines}");
    let (_, json) = one.get(port, "/backups", &[]);
    assert!(json.contains("\"locked\":true") && json.contains("\"locked\":false"), "{json}");
    assert!(!json.contains("salt") && !json.contains(&wire::to_hex(&key)), "{json}");
    assert_eq!(three.get(port, "/backups?format=lines", &[]), (200, String::new()));

    // Opening a backup with a lock: checked, stored.
    let open_path = "/backups?name=new&disk_bytes=4096&chunk_size=4096";
    let bad = lock.to_text().replace("m=64", "m=99999999");
    let (status, body) = one.post(port, open_path, &format!("lock={bad}\n"));
    assert!(status == 422 && body.contains("memory"), "{status} {body}");
    let (status, body) = one.post(port, open_path, &format!("lock={}\n", lock.to_text()));
    assert_eq!(status, 201, "{body}");
    let new_id: i64 = kv(&body)["id"].parse().expect("id");
    let v = Vault::open(&dir).expect("vault");
    assert_eq!(v.backup_lock(new_id).expect("lock"), Some(lock.clone()));

    // Jobs: a restore of a locked backup needs the admin's proof (as the
    // target PC); the PC then gets a ticket with the job. A backup job
    // hands the PC its lock.
    let json_headers = [&admin.headers()[..], &[("content-type", "application/json")]].concat();
    let job = |body: String| http(port, "POST", "/jobs", &json_headers, body.as_bytes());
    let (status, body) = job(format!(r#"{{"pc":"pc-one","action":"restore","backup":{id}}}"#));
    assert!(status == 422 && body.contains("protected by a password"), "{status} {body}");
    let (_, ch) = admin.get(port, &format!("/backups/{id}/challenge?pc=pc-one"), &[]);
    let n = kv(&ch)["nonce"].clone();
    let wrong = wire::to_hex(&wire::unlock_proof(&key, &hex32(&n), "pc-three", id));
    let (status, body) =
        job(format!(r#"{{"pc":"pc-one","action":"restore","backup":{id},"nonce":"{n}","proof":"{wrong}"}}"#));
    assert!(status == 403 && body.starts_with("wrong password"), "{status} {body}");
    let (_, ch) = admin.get(port, &format!("/backups/{id}/challenge?pc=pc-one"), &[]);
    let n = kv(&ch)["nonce"].clone();
    let right = wire::to_hex(&wire::unlock_proof(&key, &hex32(&n), "pc-one", id));
    let (status, body) =
        job(format!(r#"{{"pc":"pc-one","action":"restore","backup":{id},"nonce":"{n}","proof":"{right}"}}"#));
    assert_eq!(status, 201, "{body}");
    let (status, body) = job(format!(r#"{{"pc":"pc-one","action":"backup","lock":"{}"}}"#, lock.to_text()));
    assert_eq!(status, 201, "{body}");
    let (status, next) = one.get(port, "/jobs/next", &[]);
    assert_eq!(status, 200);
    let ticket = kv(&next)["ticket"].clone();
    assert_eq!(one.get(port, &format!("/backups/{id}/manifest"), &[("x-bootvault-unlock", &ticket)]).0, 200);
    let (_, next) = one.get(port, "/jobs/next", &[]);
    assert_eq!(kv(&next)["lock"], lock.to_text());
    let (_, listed) = admin.get(port, "/jobs", &[]);
    assert!(!listed.contains("argon2id"), "{listed}");

    let events = fs::read_to_string(dir.join("events.log")).expect("events");
    for want in [
        format!("unlock-ok pc=pc-one backup={id} by=pc-one"),
        format!("unlock-ok pc=pc-one backup={id} by=admin"),
        format!("unlock-refused pc=pc-two backup={id} by=pc-two reason=\"too many wrong passwords"),
        format!("access-refused pc=pc-one backup={id} reason=\"locked, no unlock ticket\""),
        format!("backup-open id={new_id} pc=pc-one name=\"new\" disk_bytes=4096 locked=yes"),
    ] {
        assert!(events.contains(&want), "{want}\n{events}");
    }
    let _ = fs::remove_dir_all(&dir);
}
