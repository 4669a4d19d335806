//! The web console over real HTTP (the server started in this process):
//! sign-in with an admin account, refused without a session, with a
//! forged form token, from another site's form or with a PC's token;
//! sign-ins rate-limited; what the pages do (approve a pending PC, queue
//! jobs for several PCs at once, cancel one) reaching the database the CLI
//! reads; a PC's progress reaching the console's event stream; names from
//! PCs escaped on the pages.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bootvault_server::vault::{PcRow, Vault};

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-web-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request (`Connection: close`).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_owned(), b.to_owned())).unwrap_or_default();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).expect("status line");
    Answer { status, head, body }
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Signs in; the cookie header to send back.
fn sign_in(port: u16, name: &str, password: &str) -> String {
    let a = http(port, "POST", "/admin/sign-in", &[FORM], &format!("name={}&password={}", enc(name), enc(password)));
    assert_eq!(a.status, 303, "{}{}", a.head, a.body);
    let set = a.header("set-cookie").expect("a session cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/admin"), "{set}");
    set.split(';').next().expect("cookie").to_owned()
}

/// The form token on a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form token on the page") + 19;
    page[at..at + 64].to_owned()
}

fn start(dir: &Path) -> (u16, Vault) {
    let v = Vault::open(dir).expect("vault");
    v.add_admin("ann", "correct horse battery").expect("admin");
    let port = bootvault_server::spawn_on_loopback(dir, Default::default()).expect("server");
    (port, v)
}

#[test]
fn pages_need_a_session_and_forms_their_token() {
    let dir = temp("auth");
    let (port, v) = start(&dir);
    let pc = v.add_pc(&PcRow::new("lab1", "52:54:00:00:0a:01")).expect("pc");

    // No session: pages send to the sign-in page, forms and events are refused.
    let a = http(port, "GET", "/admin/", &[], "");
    assert_eq!((a.status, a.header("location").as_deref()), (303, Some("/admin/sign-in")));
    assert_eq!(http(port, "POST", "/admin/jobs", &[FORM], "pc=lab1&action=backup").status, 401);
    assert_eq!(http(port, "GET", "/admin/events", &[], "").status, 401);
    // A PC's token opens nothing here.
    let bearer = format!("Bearer {}", pc.token);
    let pc_headers = [("authorization", bearer.as_str()), ("x-bootvault-pc", "lab1")];
    let a = http(port, "GET", "/admin/pcs", &pc_headers, "");
    assert_eq!(a.status, 303);
    assert!(!a.body.contains("lab1"));
    // Nor does the admin API's token.
    let admin = format!("Bearer {}", v.admin_token().expect("token"));
    assert_eq!(http(port, "GET", "/admin/backups", &[("authorization", &admin)], "").status, 303);

    let cookie = sign_in(port, "ann", "correct horse battery");
    let page = http(port, "GET", "/admin/", &[("cookie", &cookie)], "");
    assert_eq!(page.status, 200, "{}", page.body);
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'")
    );
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    assert!(!page.body.contains("<script>") && !page.body.contains("style="), "nothing inline");
    let token = csrf_of(&page.body);

    let queue = format!("csrf={token}&pc=lab1&action=backup&disk=auto");
    // A forged token, no token, another site's form: refused, nothing queued.
    let forged = format!("csrf={}&pc=lab1&action=backup", "0".repeat(64));
    assert_eq!(http(port, "POST", "/admin/jobs", &[FORM, ("cookie", &cookie)], &forged).status, 403);
    assert_eq!(http(port, "POST", "/admin/jobs", &[FORM, ("cookie", &cookie)], "pc=lab1&action=backup").status, 403);
    let evil = [FORM, ("cookie", cookie.as_str()), ("origin", "https://evil.example")];
    assert_eq!(http(port, "POST", "/admin/jobs", &evil, &queue).status, 403);
    assert!(v.list_jobs(None).expect("jobs").is_empty());
    // The page's own form: queued.
    let origin = format!("http://127.0.0.1:{port}");
    let ok = http(port, "POST", "/admin/jobs", &[FORM, ("cookie", &cookie), ("origin", &origin)], &queue);
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert!(ok.header("location").is_some_and(|l| l.contains("note=")), "{:?}", ok.header("location"));
    assert_eq!(v.list_jobs(None).expect("jobs").len(), 1);

    // Signing out ends the session on the server, not just in the browser.
    let out = http(port, "POST", "/admin/sign-out", &[FORM, ("cookie", &cookie)], &format!("csrf={token}"));
    assert_eq!(out.status, 303);
    assert_eq!(http(port, "GET", "/admin/", &[("cookie", &cookie)], "").status, 303);
}

#[test]
fn sign_ins_are_limited() {
    let dir = temp("limit");
    let (port, _v) = start(&dir);
    for _ in 0..5 {
        let a = http(port, "POST", "/admin/sign-in", &[FORM], "name=ann&password=not+the+password");
        assert_eq!(a.status, 401);
        assert!(a.body.contains("wrong name or password"), "{}", a.body);
    }
    let a = http(port, "POST", "/admin/sign-in", &[FORM], "name=ann&password=correct+horse+battery");
    assert_eq!(a.status, 429, "the right password waits too");
    assert!(a.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)));
    assert!(a.header("set-cookie").is_none());
    // Another site's sign-in form is refused before any password is looked at.
    let evil = [FORM, ("origin", "https://evil.example")];
    let evil_answer = http(port, "POST", "/admin/sign-in", &evil, "name=eve&password=whatever+it+is");
    assert_eq!(evil_answer.status, 403);
}

#[test]
fn approve_queue_for_many_cancel_and_escape() {
    let dir = temp("flow");
    let (port, v) = start(&dir);
    v.note_pending("52:54:00:00:0b:01", "10.0.2.15", bootvault_server::vault::now(), true).expect("pending");
    v.add_pc(&PcRow::new("lab2", "52:54:00:00:0b:02")).expect("pc");
    v.add_pc(&PcRow::new("lab3", "52:54:00:00:0b:03")).expect("pc");
    let id = v.create_backup("lab2", "<script>alert(1)</script>", 1 << 20, 1 << 20).expect("backup");
    let cookie = sign_in(port, "ann", "correct horse battery");

    let page = http(port, "GET", "/admin/pcs", &[("cookie", &cookie)], "").body;
    assert!(page.contains("52:54:00:00:0b:01"), "the pending MAC is listed");
    let token = csrf_of(&page);
    let approve = format!("csrf={token}&mac=52:54:00:00:0b:01&name=lab1");
    assert_eq!(http(port, "POST", "/admin/pcs/approve", &[FORM, ("cookie", &cookie)], &approve).status, 303);
    let lab1 = v.pc("lab1").expect("db").expect("registered");
    assert_eq!(lab1.mac, "52:54:00:00:0b:01");
    assert!(v.list_pending(bootvault_server::vault::now()).expect("db").is_empty());

    // One image to many PCs: a restore job each, in one form.
    let form = format!("csrf={token}&pc=lab1&pc=lab3&action=restore&backup={id}&disk=auto");
    let a = http(port, "POST", "/admin/jobs", &[FORM, ("cookie", &cookie)], &form);
    assert!(a.header("location").is_some_and(|l| l.contains("2+queued")), "{:?}", a.header("location"));
    let jobs = v.list_jobs(None).expect("jobs");
    assert_eq!(
        jobs.iter().map(|j| (j.pc.as_str(), j.backup)).collect::<Vec<_>>(),
        [("lab1", Some(id)), ("lab3", Some(id))]
    );

    // Cancel one before its PC takes it: failed, with a result saying who.
    let cancel = format!("/admin/jobs/{}/cancel", jobs[0].id);
    assert_eq!(http(port, "POST", &cancel, &[FORM, ("cookie", &cookie)], &format!("csrf={token}")).status, 303);
    let results = v.list_results(None).expect("results");
    assert_eq!(results.len(), 1);
    assert!(results[0].message.contains("cancelled by ann"), "{:?}", results[0]);
    assert_eq!(v.list_jobs(None).expect("jobs")[0].state, "failed");
    let again = http(port, "POST", &cancel, &[FORM, ("cookie", &cookie)], &format!("csrf={token}"));
    assert!(again.header("location").is_some_and(|l| l.contains("error=")));

    // A name a PC chose is text on the page, never markup.
    let backups = http(port, "GET", "/admin/backups", &[("cookie", &cookie)], "").body;
    assert!(backups.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{backups}");
    assert!(!backups.contains("<script>alert"));
    for page in ["/admin/", "/admin/jobs", "/admin/history"] {
        assert_eq!(http(port, "GET", page, &[("cookie", &cookie)], "").status, 200, "{page}");
    }
}

#[test]
fn a_pcs_progress_reaches_the_event_stream() {
    let dir = temp("events");
    let (port, v) = start(&dir);
    let pc = v.add_pc(&PcRow::new("lab1", "52:54:00:00:0c:01")).expect("pc");
    let cookie = sign_in(port, "ann", "correct horse battery");
    let bearer = format!("Bearer {}", pc.token);
    let pc_headers = [("authorization", bearer.as_str()), ("x-bootvault-pc", "lab1")];
    let bad = http(port, "POST", "/api/v1/progress", &pc_headers, "action=backup\nstep=sending\ndone=9\ntotal=3\n");
    assert_eq!(bad.status, 422, "{}", bad.body);
    let report = "action=backup\njob=4\nstep=sending\ndone=50\ntotal=200\nmoved=20\nrate=1000000\neta=9\n";
    assert_eq!(http(port, "POST", "/api/v1/progress", &pc_headers, report).status, 200);
    // The admin's token is not a PC: it reports nothing.
    let admin = format!("Bearer {}", v.admin_token().expect("token"));
    assert_eq!(http(port, "POST", "/api/v1/progress", &[("authorization", &admin)], report).status, 400);

    // The stream starts with what is running, then follows new reports.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET /admin/events HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n").expect("send");
    let mut lines = BufReader::new(s.try_clone().expect("clone")).lines();
    let mut next_data = || loop {
        let l = lines.next().expect("the stream goes on").expect("read");
        if let Some(d) = l.strip_prefix("data: ") {
            return d.to_owned();
        }
    };
    let first = next_data();
    assert!(first.contains("\"pc\":\"lab1\"") && first.contains("\"done\":50"), "{first}");
    let report = "action=backup\njob=4\nstep=done\ndone=200\ntotal=200\nmoved=80\nrate=1000000\n";
    assert_eq!(http(port, "POST", "/api/v1/progress", &pc_headers, report).status, 200);
    let second = next_data();
    assert!(second.contains("\"step\":\"done\"") && second.contains("\"done\":200"), "{second}");
    // The dashboard shows it without the script too.
    let page = http(port, "GET", "/admin/", &[("cookie", &cookie)], "").body;
    assert!(page.contains("data-pc=\"lab1\"") && page.contains("100.0 %"), "{page}");
}

#[test]
fn pc_settings_token_and_grants() {
    let dir = temp("pc");
    let (port, v) = start(&dir);
    let old = v.add_pc(&PcRow::new("lab1", "52:54:00:00:0d:01")).expect("pc").token;
    v.add_pc(&PcRow::new("lab2", "52:54:00:00:0d:02")).expect("pc");
    let id = v.create_backup("lab1", "golden", 1 << 20, 1 << 20).expect("backup");
    let cookie = sign_in(port, "ann", "correct horse battery");
    let page = http(port, "GET", "/admin/pcs/lab1", &[("cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("value=\"52:54:00:00:0d:01\""), "{}", page.body);
    let token = csrf_of(&page.body);
    let post = |path: &str, form: &str| {
        http(port, "POST", path, &[FORM, ("cookie", &cookie)], &format!("csrf={token}&{form}"))
    };

    // Settings, checked as the init checks them; a bad one changes nothing.
    let bad = post("/admin/pcs/lab1", "ip=10.1.1.300/24&gateway=&dns=&mode=network&disk=auto&default_action=menu");
    assert!(bad.header("location").is_some_and(|l| l.contains("error=")), "{:?}", bad.header("location"));
    assert_eq!(v.pc("lab1").expect("db").expect("pc").ip, "dhcp");
    let ok = post(
        "/admin/pcs/lab1",
        "mac=52:54:00:00:0d:01&ip=10.1.1.30/24&gateway=10.1.1.1&dns=10.1.1.1&mode=network&disk=sda&default_action=backup&quota=20G",
    );
    assert!(ok.header("location").is_some_and(|l| l.contains("note=")), "{:?}", ok.header("location"));
    let pc = v.pc("lab1").expect("db").expect("pc");
    assert_eq!((pc.ip.as_str(), pc.gateway.as_str(), pc.disk.as_str()), ("10.1.1.30/24", "10.1.1.1", "sda"));
    assert_eq!(v.pc_quota("lab1").expect("db"), Some(20 << 30));
    let page = http(port, "GET", "/admin/pcs/lab1", &[("cookie", &cookie)], "").body;
    assert!(page.contains("value=\"20G\""), "the quota shows as it was given");

    // A new token: the old one is refused from now on.
    post("/admin/pcs/lab1/token", "");
    let new = v.pc("lab1").expect("db").expect("pc").token;
    assert_ne!(new, old);
    let hello = |t: &str| {
        let bearer = format!("Bearer {t}");
        http(port, "GET", "/api/v1/hello", &[("authorization", &bearer), ("x-bootvault-pc", "lab1")], "").status
    };
    assert_eq!((hello(&old), hello(&new)), (401, 200));

    // Grants: lab2 may restore lab1's backup, then may not.
    post(&format!("/admin/backups/{id}/grant"), "pc=lab2");
    assert_eq!(v.grants(id).expect("grants"), ["lab2"]);
    let page = http(port, "GET", "/admin/backups", &[("cookie", &cookie)], "").body;
    assert!(page.contains("revoke lab2"), "{page}");
    post(&format!("/admin/backups/{id}/revoke"), "pc=lab2");
    assert!(v.grants(id).expect("grants").is_empty());
    let nobody = post(&format!("/admin/backups/{id}/grant"), "pc=nobody");
    assert!(nobody.header("location").is_some_and(|l| l.contains("error=")));

    // The store page and gc from it: the same gc as `bootvault gc`.
    let store = http(port, "GET", "/admin/store", &[("cookie", &cookie)], "");
    assert!(
        store.status == 200 && store.body.contains("data-pc=\"lab1\"") && store.body.contains("20.0 GiB"),
        "{}",
        store.body
    );
    let gc = post("/admin/store/gc", "");
    assert!(gc.header("location").is_some_and(|l| l.contains("garbage+collected")), "{:?}", gc.header("location"));
    assert!(v.last_gc().expect("db") > 0);
}

/// The PC API (`bootvault pc --server`) takes the admin's token only.
#[test]
fn the_pc_api_is_the_admins() {
    let dir = temp("pcapi");
    let (port, v) = start(&dir);
    let pc = v.add_pc(&PcRow::new("lab1", "52:54:00:00:0e:01")).expect("pc");
    let bearer = format!("Bearer {}", pc.token);
    let as_pc = [("authorization", bearer.as_str()), ("x-bootvault-pc", "lab1")];
    for (method, path) in [
        ("GET", "/api/v1/pcs"),
        ("GET", "/api/v1/pcs/lab1"),
        ("POST", "/api/v1/pcs/lab1/token"),
        ("DELETE", "/api/v1/pcs/lab1"),
    ] {
        assert_eq!(http(port, method, path, &as_pc, "").status, 403, "{method} {path}");
    }
    let cookie = sign_in(port, "ann", "correct horse battery");
    assert_eq!(http(port, "GET", "/api/v1/pcs", &[("cookie", &cookie)], "").status, 401, "a session opens no API");
    let admin = format!("Bearer {}", v.admin_token().expect("token"));
    let list = http(port, "GET", "/api/v1/pcs", &[("authorization", &admin)], "");
    assert!(list.status == 200 && list.body.contains("\"lab1\"") && !list.body.contains(&pc.token), "{}", list.body);
    let bad =
        http(port, "POST", "/api/v1/pcs/lab1", &[("authorization", &admin)], "{\"ip\": \"10.0.0.1\", \"evil\": 1}");
    assert_eq!(bad.status, 422, "unknown fields are refused: {}", bad.body);
}
