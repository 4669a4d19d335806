//! `bootvault pc|jobs|backups|gc --server URL`: the same admin commands as on
//! the data directory, over the server's admin API (docs/PROTOCOL.md
//! "Admin (JSON)") with the admin token and the server's pinned
//! certificate, for an admin who is not on the server machine. The
//! answers are printed as the data-directory commands print them.
//!
//! Not over HTTP yet: jobs with a restore password (the CLI derives the
//! lock or answers the challenge itself), a backup's partitions (`show`
//! needs the manifest and the site key), export, import, the directory
//! copies and the settings: those refuse with a line saying to use
//! `--data`.

use anyhow::{bail, Context, Result};
use bootvault_engine::client::{url_escape, Client};
use bootvault_server::vault::{BackupRow, JobRow, PcRow, PcView, PendingRow, ResultRow};

use crate::admin::{self, BackupsCmd, JobsCmd, PcCmd};

/// Where a running server is, for the admin commands.
#[derive(clap::Args, Clone, Default)]
pub struct Remote {
    /// A running server's URL: work over HTTP with the admin token
    /// instead of opening --data.
    #[arg(long)]
    pub server: Option<String>,
    /// The admin token (DATA/admin.token on the server).
    #[arg(long, env = "BOOTVAULT_ADMIN_TOKEN", hide_env_values = true, requires = "server")]
    pub admin_token: Option<String>,
    /// The SHA-256 fingerprint of the server's certificate (`bootvault
    /// fingerprint` on the server); else the known-servers file.
    #[arg(long, env = "BOOTVAULT_FINGERPRINT", requires = "server")]
    pub fingerprint: Option<String>,
}

impl Remote {
    /// The admin's client of the server, if `--server` was given.
    pub fn client(&self) -> Result<Option<Client>> {
        let Some(url) = &self.server else { return Ok(None) };
        let token = self.admin_token.as_deref().context(
            "--server needs the admin token: --admin-token (or BOOTVAULT_ADMIN_TOKEN), from DATA/admin.token on the server",
        )?;
        let pin = crate::known::pin_for(url, self.fingerprint.as_deref())?;
        Ok(Some(Client::new(url, "admin", token).pinned(pin)))
    }
}

fn get<T: serde::de::DeserializeOwned>(c: &Client, path: &str) -> Result<T> {
    let body = c.admin_call("GET", path, None)?;
    serde_json::from_slice(&body).with_context(|| format!("the server's answer to GET {path}"))
}

fn query(pc: Option<&str>, extra: &str) -> String {
    let mut q: Vec<String> = pc.map(|p| format!("pc={}", url_escape(p))).into_iter().collect();
    if !extra.is_empty() {
        q.push(extra.to_owned());
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub fn jobs(c: &Client, as_json: bool, cmd: JobsCmd) -> Result<()> {
    match cmd {
        JobsCmd::List { pc } => {
            let rows: Vec<JobRow> = get(c, &format!("/jobs{}", query(pc.as_deref(), "")))?;
            admin::print_jobs(&rows, as_json)
        }
        JobsCmd::Add { pc, action, disk, name, backup, password_file, key_file: _ } => {
            if password_file.is_some() {
                bail!("jobs with a restore password are not made over --server yet: run `bootvault jobs --data DIR add ...` on the server");
            }
            if action == "restore" && backup.is_none() {
                eprintln!("note: no --backup given; the PC restores its latest backup");
            }
            let job = serde_json::json!({ "pc": pc, "action": action, "disk": disk, "name": name, "backup": backup });
            let body = c.admin_call("POST", "/jobs", Some(job.to_string().as_bytes()))?;
            let answer: serde_json::Value =
                serde_json::from_slice(&body).context("the server's answer to POST /jobs")?;
            let id = answer["id"].as_i64().context("no job id in the server's answer")?;
            println!("job {id} queued for {pc}");
            Ok(())
        }
        JobsCmd::Results { pc } => {
            let rows: Vec<ResultRow> = get(c, &format!("/results{}", query(pc.as_deref(), "")))?;
            admin::print_results(&rows, as_json)
        }
    }
}

pub fn backups(c: &Client, as_json: bool, cmd: BackupsCmd) -> Result<()> {
    match cmd {
        BackupsCmd::List { pc, all } => {
            let rows: Vec<BackupRow> =
                get(c, &format!("/backups{}", query(pc.as_deref(), if all { "all=1" } else { "" })))?;
            if as_json {
                return admin::json(&rows);
            }
            admin::print_backups(&rows);
            Ok(())
        }
        BackupsCmd::Rm { id } => {
            c.admin_call("DELETE", &format!("/backups/{id}"), None)?;
            println!("backup {id} deleted (its chunks go at the next gc)");
            Ok(())
        }
        BackupsCmd::Verify { id } => {
            let answer: serde_json::Value =
                serde_json::from_slice(&c.admin_call("POST", &format!("/backups/{id}/verify"), None)?)?;
            if as_json {
                return admin::json(&answer);
            }
            println!("backup {id}: {} stored chunks verified", answer["chunks_checked"].as_u64().unwrap_or(0));
            Ok(())
        }
        BackupsCmd::Grant { id, pcs, all } => {
            let who = if all { vec!["*".to_string()] } else { pcs };
            if who.is_empty() {
                bail!("backups grant {id}: name the PCs, or --all");
            }
            let answer: serde_json::Value =
                send(c, "POST", &format!("/backups/{id}/grants"), &serde_json::json!({ "pcs": who }))?;
            println!("backup {id} may be restored by {}", grants(&answer));
            Ok(())
        }
        BackupsCmd::Revoke { id, pcs, all } => {
            let who = if all { vec!["*".to_string()] } else { pcs };
            let mut answer = serde_json::Value::Null;
            for p in &who {
                answer = serde_json::from_slice(&c.admin_call(
                    "DELETE",
                    &format!("/backups/{id}/grants/{}", url_escape(p)),
                    None,
                )?)?;
            }
            let left = grants(&answer);
            println!("backup {id} grants: {}", if left.is_empty() { "none (owner only)".into() } else { left });
            Ok(())
        }
        _ => bail!("this backups command is not made over --server yet: run it with --data DIR on the server"),
    }
}

fn send<T: serde::de::DeserializeOwned>(
    c: &Client,
    method: &'static str,
    path: &str,
    body: &serde_json::Value,
) -> Result<T> {
    let answer = c.admin_call(method, path, Some(body.to_string().as_bytes()))?;
    serde_json::from_slice(&answer).with_context(|| format!("the server's answer to {method} {path}"))
}

pub fn pcs(c: &Client, as_json: bool, cmd: PcCmd) -> Result<()> {
    match cmd {
        PcCmd::Add { name, settings } => {
            let body = serde_json::json!({ "name": name, "changes": settings.changes() });
            admin::print_added(&send::<PcView>(c, "POST", "/pcs", &body)?, as_json)
        }
        PcCmd::List => admin::print_pc_list(&get::<Vec<PcRow>>(c, "/pcs")?, as_json),
        PcCmd::Show { name, token } => {
            let path = format!("/pcs/{}{}", url_escape(&name), if token { "?token=1" } else { "" });
            admin::print_view(&get::<PcView>(c, &path)?, token, as_json)
        }
        PcCmd::Edit { name, settings } => {
            let body = serde_json::to_value(settings.changes())?;
            admin::print_view(
                &send::<PcView>(c, "POST", &format!("/pcs/{}", url_escape(&name)), &body)?,
                false,
                as_json,
            )
        }
        PcCmd::Pending => admin::print_pending(&get::<Vec<PendingRow>>(c, "/pcs/pending")?, as_json),
        PcCmd::Rm { name, with_backups } => {
            let path = format!("/pcs/{}{}", url_escape(&name), if with_backups { "?with_backups=1" } else { "" });
            let answer: serde_json::Value = serde_json::from_slice(&c.admin_call("DELETE", &path, None)?)?;
            admin::print_removed(&name, answer["backups_removed"].as_u64().unwrap_or(0));
            Ok(())
        }
    }
}

/// `{"grants": [...]}` as the CLI prints it.
fn grants(answer: &serde_json::Value) -> String {
    answer["grants"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g.as_str()).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn gc(c: &Client, as_json: bool, max_age: i64) -> Result<()> {
    if max_age < 0 {
        bail!("--max-age must not be negative");
    }
    let answer = c.admin_call("POST", &format!("/gc?max_age={max_age}"), None)?;
    let report: bootvault_server::vault::GcReport =
        serde_json::from_slice(&answer).context("the server's gc report")?;
    admin::print_gc(&report, as_json)
}
