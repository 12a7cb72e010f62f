//! `lifeboat man [--dir DIR]`: the manual page, generated from the clap definitions (every
//! command with its summary, every global option) plus what `--help` cannot say (exit
//! status, environment, files), as roff on stdout; with `--dir`, lifeboat.1 and one page
//! per command (lifeboat-stream.1, ...) written into DIR. Needs no configuration.
//!
//!   lifeboat man > /usr/local/share/man/man1/lifeboat.1
//!   lifeboat man --dir /usr/local/share/man/man1

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Write lifeboat.1 and a page per command (lifeboat-COMMAND.1) into this directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The sections clap cannot generate.
const EXTRA: &str = r#".SH "EXIT STATUS"
0 success; 1 the operation failed (the message is on standard error); 2 bad usage or
configuration.
.B wal\-fetch
follows PostgreSQL's restore_command contract: 1 and silent when the file is not in the
archive, 126 when it is there but no copy can be read or verified.
.B status
exits 0 healthy, 1 degraded, 2 failing;
.B check
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
.SH ENVIRONMENT
.TP
.B LIFEBOAT_CONFIG
the configuration file (default /etc/lifeboat/lifeboat.toml), as \-\-config.
.TP
.B LIFEBOAT_IDENTITY_FILE
the age identity of the commands that decrypt, as \-\-identity.
.TP
.B LIFEBOAT_LOG
a tracing filter (e.g. lifeboat=debug) instead of \-v / \-q.
.TP
.B PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE, PGPASSFILE, ...
the connection settings libpq reads, and ~/.pgpass.
.TP
.B NOTIFY_SOCKET, WATCHDOG_USEC
set by systemd for a Type=notify service: lifeboat stream reports READY=1 once WAL
streams, feeds the watchdog and keeps STATUS= current.
.SH FILES
.TP
.I /etc/lifeboat/lifeboat.toml
the configuration (one TOML file; unknown keys are errors).
.TP
.I <wal.spool_dir>/status.json
what the running streamer reports, read by status and check.
.SH "SEE ALSO"
.BR pg_receivewal (1),
.BR pg_basebackup (1),
.BR age (1),
.BR systemd.service (5)
"#;

pub fn run(a: &Args, cli: clap::Command) -> ExitCode {
    let cli = cli.name("lifeboat").bin_name("lifeboat");
    match &a.dir {
        None => {
            let mut out = Vec::new();
            if let Err(e) = render(cli, &mut out) {
                eprintln!("error: cannot render the manual page: {e}");
                return ExitCode::from(1);
            }
            super::write_stdout(&out)
        }
        Some(dir) => {
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| clap_mangen::generate_to(cli.clone(), dir))
                .and_then(|()| {
                    // The main page again, with the sections clap cannot generate.
                    let mut out = Vec::new();
                    render(cli, &mut out)?;
                    std::fs::write(dir.join("lifeboat.1"), out)
                });
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "error: cannot write the manual pages into {}: {e}\nhint: give --dir a writable directory",
                        dir.display()
                    );
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn render(cli: clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    clap_mangen::Man::new(cli).render(out)?;
    out.write_all(EXTRA.as_bytes())
}
