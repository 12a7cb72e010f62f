//! `lifeboat keys check`: key custody.
//!
//! - Without an identity (the database host): warn when an age identity that decrypts the
//!   archive is readable on this host (`ingest::custody` says where it looks), and say
//!   whether the archive holds the canary of the configured recipients. Exit 0 OK,
//!   1 WARNING (the status convention).
//! - With `--identity FILE` (or `LIFEBOAT_IDENTITY_FILE`; the restore host): prove the
//!   identity opens the archive's canary. Exit 0 when it does, 1 when it does not (the
//!   message names the recipients it cannot match).

use anyhow::anyhow;
use serde::Serialize;

use super::{print_json, Ctx, Failure};
use crate::archive::{keys, Archive};
use crate::core::custody::{self, KeyCheck};
use crate::ingest::custody::{self as host, Scan};

#[derive(clap::Subcommand)]
pub enum Action {
    /// On the database host: no identity that decrypts the archive may be readable here
    /// (WARNING, exit 1). With --identity on the restore host: the identity opens the
    /// archive's canary.
    Check,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Serialize)]
struct HostReport {
    /// OK or WARNING.
    state: &'static str,
    scan: Scan,
    canary: Option<String>,
    canary_providers: Vec<String>,
    canary_error: Option<String>,
}

pub async fn run(ctx: &Ctx<'_>, a: &Args) -> Result<(), Failure> {
    match a.action {
        Action::Check => match &ctx.global.identity {
            Some(_) => restore_host(ctx).await,
            None => db_host(ctx).await,
        },
    }
}

/// The restore host: the identity opens the canary.
async fn restore_host(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let path = ctx.identity_path()?;
    let opener = ctx.opener()?;
    let archive = Archive::open(&ctx.cfg).map_err(|e| Failure {
        code: 2,
        err: e,
        quiet: false,
    })?;
    let check: KeyCheck = keys::prove(
        &archive,
        &opener,
        &path.display().to_string(),
        &ctx.cfg.encryption.recipients,
    )
    .await;
    if ctx.json() {
        print_json(&check)?;
    } else if check.ok {
        println!(
            "ok: identity {} ({}) opens {} (recipients: {})",
            path.display(),
            check.identity_recipients.join(", "),
            check.canary.as_deref().unwrap_or("-"),
            check.recipients.join(", ")
        );
    }
    if !ctx.json() {
        for o in check.other_canaries.iter().filter(|o| !o.opens) {
            println!(
                "note: {} (recipients: {}, from {}) does not open with this identity: what was written for that set needs its identity",
                o.canary,
                o.recipients.join(", "),
                o.created_at
            );
        }
    }
    if check.ok {
        return Ok(());
    }
    Err(Failure {
        code: 1,
        err: anyhow!(
            "{}",
            check.error.unwrap_or_else(|| "the key check failed".into())
        ),
        quiet: false,
    })
}

/// The database host: no identity that decrypts the archive is readable here.
async fn db_host(ctx: &Ctx<'_>) -> Result<(), Failure> {
    let scan = host::scan(&ctx.cfg, &ctx.cfg_path);
    let warn = scan.decrypting().next().is_some();
    let mut rep = HostReport {
        state: if warn { "WARNING" } else { "OK" },
        scan,
        canary: None,
        canary_providers: Vec::new(),
        canary_error: None,
    };
    if !ctx.cfg.encryption.recipients.is_empty() {
        let digest = custody::recipients_digest(&ctx.cfg.encryption.recipients);
        match Archive::open(&ctx.cfg) {
            Ok(archive) => {
                let c = archive.canaries().await;
                if c.answered.is_empty() {
                    rep.canary_error = c
                        .unreachable
                        .first()
                        .map(|(p, e)| format!("storage \"{p}\": {e}"));
                }
                if let Some(f) = c.found.get(&digest) {
                    rep.canary_providers = f.holders.clone();
                }
                rep.canary = Some(custody::canary_key(&digest));
            }
            Err(e) => rep.canary_error = Some(format!("{e:#}")),
        }
    }
    if ctx.json() {
        print_json(&rep)?;
    } else {
        print!("{}", render(&rep, ctx.cfg.storage.len()));
    }
    if warn {
        return Err(Failure {
            code: 1,
            err: anyhow!("keys: WARNING"),
            quiet: true,
        });
    }
    Ok(())
}

fn render(r: &HostReport, providers: usize) -> String {
    let mut s = String::new();
    for f in r.scan.decrypting() {
        s.push_str(&format!("WARNING: {}\n", host::warning(f)));
    }
    if r.state == "OK" {
        s.push_str("ok: no identity that decrypts the archive is readable on this host\n");
    }
    for f in r.scan.found.iter().filter(|f| !f.decrypts) {
        s.push_str(&format!(
            "note: {} ({}) holds an identity of recipient {}, which is not a recipient of this archive\n",
            f.path, f.source, f.recipient
        ));
    }
    match (&r.canary, &r.canary_error) {
        (_, Some(e)) => s.push_str(&format!("canary: cannot read the archive: {e}\n")),
        (Some(k), None) if r.canary_providers.is_empty() => s.push_str(&format!(
            "canary: {k} is not in the archive yet (lifeboat stream, backup and init write it)\n"
        )),
        (Some(k), None) => s.push_str(&format!(
            "canary: {k} on {} of {providers} providers; prove the restore host's identity with lifeboat keys check --identity FILE there\n",
            r.canary_providers.len()
        )),
        (None, None) => {}
    }
    s.push_str(&format!("keys: {}\n", r.state));
    s
}
