//! The console's pages, as HTML made by maud (escaped by construction;
//! compiled into the binary). Forms POST to the handlers in
//! [`super`] with the session's form token; the script only follows live
//! progress, so every page works without it.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bootvault_common::units::{human_bytes, utc_datetime};
use maud::{html, Markup, DOCTYPE};

use super::progress::Progress;
use super::{notes, Console};
use crate::api::{internal, run, Shared};
use crate::vault::admins::Session;
use crate::vault::{self, BackupRow, JobRow, PcRow, PendingRow, ResultRow};

const PAGES: [(&str, &str); 6] = [
    ("/admin/", "Dashboard"),
    ("/admin/pcs", "PCs"),
    ("/admin/backups", "Backups"),
    ("/admin/jobs", "Jobs"),
    ("/admin/history", "History"),
    ("/admin/store", "Store"),
];

/// Every page's `<head>`; the script (live progress, questions before
/// deleting) on the signed-in pages.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · bootvault" }
            link rel="stylesheet" href="/admin/static/console.css";
            @if script { script src="/admin/static/console.js" defer {} }
        }
    }
}

fn layout(title: &str, here: &str, s: &Session, q: &HashMap<String, String>, body: Markup) -> Response {
    let (note, error) = notes(q);
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                header {
                    span.brand { "bootvault" }
                    nav aria-label="pages" {
                        @for (href, name) in PAGES {
                            @if href == here { a href=(href) aria-current="page" { (name) } } @else { a href=(href) { (name) } }
                        }
                    }
                    form.inline method="post" action="/admin/sign-out" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        span.muted { (s.admin) " " }
                        button.quiet type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(n) = note { p.note role="status" { (n) } }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    (body)
                }
            }
        }
    };
    page.into_response()
}

fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

fn when(t: Option<i64>) -> String {
    t.map(utc_datetime).unwrap_or_else(|| "never".into())
}

pub async fn sign_in_page() -> Response {
    sign_in_answer(StatusCode::OK, "")
}

/// The sign-in page, with why the last try failed.
pub fn sign_in_answer(status: StatusCode, error: &str) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", false))
            body {
                main.signin {
                    h1 { "bootvault: sign in" }
                    @if !error.is_empty() { p.error role="alert" id="signin-error" { (error) } }
                    form method="post" action="/admin/sign-in" {
                        label for="name" { "Admin name" }
                        input id="name" name="name" autocomplete="username" required autofocus;
                        label for="password" { "Password" }
                        input id="password" name="password" type="password" autocomplete="current-password" required;
                        p { button type="submit" id="sign-in" { "Sign in" } }
                    }
                    p.muted { "Accounts: " code { "bootvault admin add NAME --data DIR" } " on the server." }
                }
            }
        }
    };
    (status, page).into_response()
}

fn running_table(now: &[Progress]) -> Markup {
    html! {
        div.table-wrap {
            table id="running" {
                thead { tr { th { "PC" } th { "Doing" } th { "Step" } th { "Progress" } th.rate { "Speed" } th.moved { "Moved" } th.eta { "Left" } } }
                tbody {
                    @for p in now {
                        tr data-pc=(p.pc) data-step=(p.step) {
                            td.pc { (p.pc) }
                            td.action { (p.action) @if let Some(j) = p.job { " (job " (j) ")" } }
                            td.step { (p.step) }
                            td.bar { progress max="100" value=(format!("{:.1}", p.percent())) {} " " span.pct { (format!("{:.1} %", p.percent())) } }
                            td.rate { (format!("{:.1} MB/s", p.rate as f64 / 1e6)) }
                            td.moved { (human_bytes(p.moved)) }
                            td.eta { @if let Some(e) = p.eta { (e) " s" } }
                        }
                    }
                }
            }
        }
        p.muted id="running-empty" hidden[!now.is_empty()] { "Nothing is running." }
    }
}

pub async fn dashboard(
    State(app): State<Shared>,
    Console(s): Console,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let now = app.progress.current(vault::now());
    let counts = run(&app, |app| {
        let v = &app.vault;
        let pcs = v.list_pcs().map_err(internal)?.len();
        let pending = v.list_pending(vault::now()).map_err(internal)?.len();
        let backups = v.list_backups(None, false).map_err(internal)?;
        let queued = v.list_jobs(None).map_err(internal)?.iter().filter(|j| j.state == "queued").count();
        Ok((pcs, pending, backups.len(), backups.iter().map(|b| b.blob_bytes).sum::<u64>(), queued))
    })
    .await;
    let (pcs, pending, backups, stored, queued) = match counts {
        Ok(c) => c,
        Err(r) => return r,
    };
    layout(
        "Dashboard",
        "/admin/",
        &s,
        &q,
        html! {
            div.cards {
                div.card { b { (pcs) } "PCs registered" }
                div.card { b { (pending) } a href="/admin/pcs#pending" { "waiting for approval" } }
                div.card { b { (backups) } "complete backups" }
                div.card { b { (human_bytes(stored)) } "new data they stored" }
                div.card { b { (queued) } a href="/admin/jobs" { "jobs waiting" } }
            }
            h2 { "Running, and just finished" }
            (running_table(&now))
        },
    )
}

pub async fn pcs(State(app): State<Shared>, Console(s): Console, Query(q): Query<HashMap<String, String>>) -> Response {
    let rows: Result<(Vec<PcRow>, Vec<PendingRow>), Response> = run(&app, |app| {
        Ok((app.vault.list_pcs().map_err(internal)?, app.vault.list_pending(vault::now()).map_err(internal)?))
    })
    .await;
    let (pcs, pending) = match rows {
        Ok(r) => r,
        Err(r) => return r,
    };
    layout(
        "PCs",
        "/admin/pcs",
        &s,
        &q,
        html! {
            h2 id="pending" { "Waiting for approval" }
            @if pending.is_empty() {
                p.muted { "No unknown PC has network-booted (they are listed with " code { "bootvault settings register-unknown yes" } ")." }
            } @else {
                div.table-wrap { table id="pending-pcs" {
                    thead { tr { th { "MAC" } th { "Address" } th.wide { "First seen" } th { "Boots" } th { "Approve as" } } }
                    tbody { @for p in &pending {
                        tr data-mac=(p.mac) {
                            td { code { (p.mac) } } td { (p.addr) } td.wide { (when(Some(p.first_seen))) } td.num { (p.count) }
                            td { form.inline method="post" action="/admin/pcs/approve" {
                                (csrf(&s))
                                input type="hidden" name="mac" value=(p.mac);
                                label { span.muted { "name " } input name="name" required pattern="[A-Za-z0-9._-]{1,64}" aria-label={ "name for " (p.mac) }; }
                                " " button type="submit" { "Approve" }
                            } }
                        }
                    } }
                } }
            }
            h2 { "Registered" }
            div.table-wrap { table id="pcs" {
                thead { tr { th { "PC" } th { "MAC" } th.wide { "IP" } th.wide { "Mode" } th { "Action" } th { "Last seen" } } }
                tbody { @for p in &pcs {
                    tr data-pc=(p.name) {
                        td { a href={ "/admin/pcs/" (p.name) } { (p.name) } } td { code { (p.mac) } } td.wide { (p.ip) } td.wide { (p.mode) } td { (p.default_action) }
                        td { (when(p.last_seen)) @if !p.last_addr.is_empty() { span.muted { " from " (p.last_addr) } } }
                    }
                } }
            } }
        },
    )
}

/// Backups, with who else may restore each (`grants`, per row) and a
/// form to let one more PC (`pcs`: the choices; none: no form).
fn backup_rows(s: &Session, rows: &[BackupRow], grants: &[Vec<String>], pcs: &[String]) -> Markup {
    html! {
        div.table-wrap { table id="backups" {
            thead { tr { th { "Id" } th { "PC" } th { "Name" } th { "State" } th.wide { "Made" } th { "Disk" } th { "New data" } th { "Password" } th { "Also restored by" } th { "" } } }
            tbody { @for (i, b) in rows.iter().enumerate() {
                tr data-backup=(b.id) {
                    td.num { (b.id) } td { (b.pc) } td { (b.name) }
                    td { (b.state) @if !b.reason.is_empty() { span.muted { ": " (b.reason) } } }
                    td.wide { (when(Some(b.created))) }
                    td.num { (human_bytes(b.disk_bytes)) } td.num { (human_bytes(b.blob_bytes)) }
                    td { @if b.locked { "protected" } @else { span.muted { "no" } } }
                    td {
                        @for g in grants.get(i).map(Vec::as_slice).unwrap_or_default() {
                            form.inline method="post" action={ "/admin/backups/" (b.id) "/revoke" } {
                                (csrf(s)) input type="hidden" name="pc" value=(g);
                                (if g == "*" { "every PC" } else { g.as_str() }) " "
                                button.quiet type="submit" aria-label={ "revoke " (g) } { "×" }
                            }
                            " "
                        }
                        @if b.state == "complete" && !pcs.is_empty() {
                            form.inline method="post" action={ "/admin/backups/" (b.id) "/grant" } {
                                (csrf(s))
                                select name="pc" aria-label={ "PC to let restore backup " (b.id) } {
                                    option value="*" { "every PC" }
                                    @for p in pcs { @if *p != b.pc { option value=(p) { (p) } } }
                                }
                                " " button.quiet type="submit" { "Grant" }
                            }
                        }
                    }
                    td {
                        @if b.state == "complete" {
                            form.inline method="post" action={ "/admin/backups/" (b.id) "/verify" } { (csrf(s)) button.quiet type="submit" { "Verify" } }
                            " "
                        }
                        form.inline method="post" action={ "/admin/backups/" (b.id) "/delete" } data-confirm={ "Delete backup " (b.id) " of " (b.pc) "? Its chunks go at the next garbage collection." } {
                            (csrf(s)) button.danger type="submit" { "Delete" }
                        }
                    }
                }
            } }
        } }
    }
}

pub async fn backups(
    State(app): State<Shared>,
    Console(s): Console,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let found = run(&app, |app| {
        let rows = app.vault.list_backups(None, true).map_err(internal)?;
        let grants =
            rows.iter().map(|b| app.vault.grants(b.id)).collect::<anyhow::Result<Vec<_>>>().map_err(internal)?;
        let pcs = app.vault.list_pcs().map_err(internal)?.into_iter().map(|p| p.name).collect::<Vec<_>>();
        Ok((rows, grants, pcs))
    })
    .await;
    let (rows, grants, pcs) = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    layout("Backups", "/admin/backups", &s, &q, backup_rows(&s, &rows, &grants, &pcs))
}

fn job_rows(s: &Session, jobs: &[JobRow]) -> Markup {
    html! {
        div.table-wrap { table id="jobs" {
            thead { tr { th { "Job" } th { "PC" } th { "Action" } th { "Backup" } th { "State" } th.wide { "Queued" } th { "" } } }
            tbody { @for j in jobs.iter().rev() {
                tr data-job=(j.id) data-state=(j.state) {
                    td.num { (j.id) } td { (j.pc) } td { (j.action) @if !j.name.is_empty() { " “" (j.name) "”" } }
                    td { @if let Some(b) = j.backup { (b) } }
                    td { (j.state) } td.wide { (when(Some(j.created))) }
                    td { @if j.state == "queued" {
                        form.inline method="post" action={ "/admin/jobs/" (j.id) "/cancel" } { (csrf(s)) button.danger type="submit" { "Cancel" } }
                    } }
                }
            } }
        } }
    }
}

pub async fn jobs(
    State(app): State<Shared>,
    Console(s): Console,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let rows = run(&app, |app| {
        Ok((
            app.vault.list_pcs().map_err(internal)?,
            app.vault.list_backups(None, false).map_err(internal)?,
            app.vault.list_jobs(None).map_err(internal)?,
        ))
    })
    .await;
    let (pcs, backups, jobs) = match rows {
        Ok(r) => r,
        Err(r) => return r,
    };
    let now = app.progress.current(vault::now());
    layout(
        "Jobs",
        "/admin/jobs",
        &s,
        &q,
        html! {
            form method="post" action="/admin/jobs" id="queue" {
                (csrf(&s))
                fieldset {
                    legend { "PCs" }
                    @for p in &pcs { label { input type="checkbox" name="pc" value=(p.name); " " (p.name) } }
                    @if pcs.is_empty() { span.muted { "No PC is registered." } }
                }
                fieldset {
                    legend { "Job" }
                    label { "Action " select name="action" id="action" { option value="backup" { "back up" } option value="restore" { "restore" } } }
                    label { "Backup to restore " select name="backup" id="backup" {
                        option value="" { "—" }
                        @for b in &backups { option value=(b.id) { (b.id) ": " (b.pc) " “" (b.name) "” " (utc_datetime(b.created)) } }
                    } }
                    label { "Disk " input name="disk" value="auto" size="8"; }
                    label { "Backup name " input name="name" size="12"; }
                }
                button type="submit" id="queue-jobs" { "Queue for the ticked PCs" }
            }
            h2 { "Running, and just finished" }
            (running_table(&now))
            h2 { "All jobs" }
            (job_rows(&s, &jobs))
        },
    )
}

fn result_rows(rows: &[ResultRow]) -> Markup {
    html! {
        div.table-wrap { table id="results" {
            thead { tr { th { "When" } th { "PC" } th { "Job" } th { "Action" } th { "Backup" } th { "Result" } th.wide { "Bytes" } th.wide { "Time" } } }
            tbody { @for r in rows.iter().rev() {
                tr data-result=(r.id) {
                    td { (utc_datetime(r.at)) } td { (r.pc) } td { @if let Some(j) = r.job { (j) } } td { (r.action) }
                    td { @if let Some(b) = r.backup { (b) } }
                    td { @if r.ok { "ok" } @else { "failed" } @if !r.message.is_empty() { span.muted { ": " (r.message) } } }
                    td.wide.num { (human_bytes(r.bytes)) } td.wide.num { (format!("{:.1} s", r.seconds)) }
                }
            } }
        } }
    }
}

pub async fn history(
    State(app): State<Shared>,
    Console(s): Console,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let rows = match run(&app, |app| app.vault.list_results(None).map_err(internal)).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    layout("History", "/admin/history", &s, &q, result_rows(&rows))
}

/// One PC: its settings (a form), its token, its boot files, its backups.
pub async fn pc(
    State(app): State<Shared>,
    Console(s): Console,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let found = run(&app, move |app| {
        let Some(pc) = app.vault.pc(&name).map_err(internal)? else { return Ok(None) };
        let quota = app.vault.pc_quota(&name).map_err(internal)?;
        let backups = app.vault.list_backups(Some(&name), true).map_err(internal)?;
        let boot = app.vault.boot_files().ready(&name).is_some();
        Ok(Some((pc, quota, backups, boot)))
    })
    .await;
    let (pc, quota, backups, boot) = match found {
        Ok(Some(f)) => f,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such PC\n").into_response(),
        Err(r) => return r,
    };
    let select = |name: &str, options: &[&str], value: &str| {
        html! {
            select name=(name) id=(name) {
                @for o in options { option value=(o) selected[*o == value] { (o) } }
            }
        }
    };
    let title = format!("PC {}", pc.name);
    layout(
        &title,
        "/admin/pcs",
        &s,
        &q,
        html! {
            form method="post" action={ "/admin/pcs/" (pc.name) } id="pc-settings" {
                (csrf(&s))
                fieldset {
                    legend { "Settings" }
                    label { "MAC " input name="mac" value=(pc.mac) size="17"; }
                    label { "Address " input name="ip" value=(pc.ip) size="18" aria-describedby="ip-help"; }
                    span.muted id="ip-help" { "dhcp, or ADDR/PREFIX" }
                    br;
                    label { "Gateway " input name="gateway" value=(pc.gateway) size="15"; }
                    label { "DNS " input name="dns" value=(pc.dns) size="24"; }
                    br;
                    label { "Boots " (select("mode", &["network", "local"], &pc.mode)) }
                    label { "Disk " input name="disk" value=(pc.disk) size="8"; }
                    label { "At boot " (select("default_action", &["menu", "backup", "restore"], &pc.default_action)) }
                    label { "Quota " input name="quota" value=(quota.map(quota_text).unwrap_or_else(|| "none".into())) size="8"; }
                }
                button type="submit" id="save-pc" { "Save" }
            }
            h2 { "Boot" }
            p {
                @if pc.mode == "local" { "Boots from its own media (ISO or USB image made by " code { "bootvault build" } ")." }
                @else if boot { "Its network-boot files are published." }
                @else { "No network-boot files yet." }
                " Last seen: " (when(pc.last_seen)) @if !pc.last_addr.is_empty() { " from " (pc.last_addr) } "."
            }
            p {
                "Boot media made now from the network-boot template, with this PC's settings: "
                a href={ "/admin/pcs/" (pc.name) "/media/iso" } id="download-iso" download { "ISO" }
                " · "
                a href={ "/admin/pcs/" (pc.name) "/media/usb" } id="download-usb" download { "USB image" }
                ". Like network boot they hold no data key, so the PC's backups are not encrypted on it; "
                code { "bootvault build " (pc.name) " --data DIR --media iso" } " makes media that encrypt."
            }
            form method="post" action={ "/admin/pcs/" (pc.name) "/token" } data-confirm={ "Give " (pc.name) " a new token? Its USB and ISO media stop working." } {
                (csrf(&s))
                p.muted { "A new token locks out the PC's boot media made before (network-boot files are made again)." }
                button.danger type="submit" id="rotate-token" { "New token" }
            }
            h2 { "Its backups" }
            (backup_rows(&s, &backups, &[], &[]))
        },
    )
}

/// What each PC's backups take, against its quota, and garbage collection.
pub async fn store(
    State(app): State<Shared>,
    Console(s): Console,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let found = run(&app, |app| {
        let v = &app.vault;
        let mut rows = Vec::new();
        for p in v.list_pcs().map_err(internal)? {
            let used = v.pc_usage(&p.name).map_err(internal)?;
            let quota = v.pc_quota(&p.name).map_err(internal)?;
            rows.push((p.name, used, quota));
        }
        let backups = v.list_backups(None, true).map_err(internal)?;
        Ok((rows, backups, v.last_gc().map_err(internal)?))
    })
    .await;
    let (rows, backups, last_gc) = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    let complete = backups.iter().filter(|b| b.state == "complete").count();
    let uploading = backups.iter().filter(|b| b.state == "uploading").count();
    let stored: u64 = backups.iter().filter(|b| b.state == "complete").map(|b| b.blob_bytes).sum();
    layout(
        "Store",
        "/admin/store",
        &s,
        &q,
        html! {
            div.cards {
                div.card { b { (complete) } "complete backups" }
                div.card { b { (uploading) } "uploading now" }
                div.card { b { (human_bytes(stored)) } "new data of the complete ones" }
                div.card { b { (if last_gc > 0 { utc_datetime(last_gc) } else { "never".into() }) } "last garbage collection" }
            }
            h2 { "By PC" }
            div.table-wrap { table id="usage" {
                thead { tr { th { "PC" } th { "Stores" } th { "Quota" } } }
                tbody { @for (pc, used, quota) in &rows {
                    tr data-pc=(pc) {
                        td { a href={ "/admin/pcs/" (pc) } { (pc) } }
                        td.num { (human_bytes(*used)) }
                        td { @if let Some(q) = quota { (human_bytes(*q)) " (" (format!("{:.0} %", *used as f64 * 100.0 / (*q).max(1) as f64)) ")" } @else { span.muted { "none" } } }
                    }
                } }
            } }
            h2 { "Garbage collection" }
            p.muted {
                "Removes the chunks no complete backup names (a deleted backup's, a failed upload's), and fails uploads idle for an hour. "
                "Chunks that running backups use are kept (docs/DESIGN.md)."
            }
            form method="post" action="/admin/store/gc" {
                (csrf(&s))
                button type="submit" id="gc" { "Collect garbage now" }
            }
        },
    )
}

/// A quota as the form shows it and takes it back unchanged: whole units
/// (`500G`), else bytes.
fn quota_text(q: u64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if q >= 1 << shift && q.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", q >> shift);
        }
    }
    q.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotas_round_trip_through_the_form() {
        for q in [500u64 << 30, 3 << 40, 1536 << 20, 1_000_000_007, 4096] {
            assert_eq!(bootvault_common::units::parse_size(&super::quota_text(q)), Some(q));
        }
    }
}
