//! Real PostgreSQL clusters in temporary directories: start, query, stop, crash, standby,
//! promote. Where the binaries come from and who runs them: `host`.
//!
//! Layout of one cluster's temp dir (`PgCluster::base_dir`, under /tmp when root, else
//! `$TMPDIR`; `LIFEBOAT_TEST_TMP` overrides):
//!   data/          the data directory (`datadir`)
//!   sock/          unix socket directory (`socket_dir`)
//!   postgres.log   server log (`log_path`; outside datadir so base backups don't copy it)
//!   tls/           CA + server cert/key when `ssl: true` (`ca_cert_path()`)
//!
//! Env knobs: `LIFEBOAT_KEEP_PG=1` keeps temp dirs (always); `LIFEBOAT_KEEP_PG_ON_FAILURE=1`
//! keeps them when the test panics. On a panic the server log tail is printed to stderr.
//! Temp dirs are removed by a detached `rm -rf` (deleting a fresh data dir takes seconds
//! on this box's ext4+discard); `LIFEBOAT_SYNC_CLEANUP=1` removes them synchronously.
//!
//! Server settings (postgresql.conf additions): listen_addresses='127.0.0.1',
//! wal_level=replica, max_wal_senders=10, max_replication_slots=10, wal_keep_size=0,
//! fsync=on, shared_buffers=32MB, password_encryption=scram-sha-256, log_connections,
//! log_replication_commands, timezone=UTC, recovery_init_sync_method=syncfs (else every
//! crash/backup recovery start fsyncs each file: ~3 s per standby here), then
//! `include 'lifeboat_local.conf'` (port, unix_socket_directories), then
//! `ClusterOpts::extra_conf`. initdb: `-U postgres --auth=trust --no-locale -E UTF8 -N`.
//!
//! pg_hba.conf, in order:
//!   local all all trust / local replication all trust
//!   host {replication,all} rejected 127.0.0.1/32 reject
//!   host {replication,all} md5user 127.0.0.1/32 md5
//!   host {replication,all} plainuser 127.0.0.1/32 password
//!   (ssl only) hostssl {replication,all} tlsonly 127.0.0.1/32 scram-sha-256
//!   hostnossl {replication,all} tlsonly 127.0.0.1/32 reject
//!   host replication all 127.0.0.1/32 scram-sha-256
//!   host all all 127.0.0.1/32 scram-sha-256
//!
//! Roles (created by `start`):
//!   postgres    superuser, trust over the unix socket only
//!   lifeboat    LOGIN REPLICATION, scram-sha-256, password `lifeboat-secret`
//!   md5user     LOGIN REPLICATION, md5-hashed password `md5-secret`, pg_hba method md5
//!   plainuser   LOGIN REPLICATION, password `plain-secret`, pg_hba method `password` (cleartext)
//!   norepl      LOGIN (no REPLICATION), password `norepl-secret`
//!   rejected    LOGIN REPLICATION, password `x`, pg_hba `reject` over TCP
//!   tlsonly     LOGIN REPLICATION, password `tls-secret`; `hostssl` scram, `hostnossl` reject

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use super::host::{
    append_file, chown_to_pg_user, chown_tree_to_pg_user, pg_bin_dir, pg_tempdir, set_mode,
    write_pg_file,
};
use super::ports::free_port;
use super::process::{
    as_pg_user, children_of, clean_command, pid_alive, run_ok, run_timeout, send_signal, wait_dead,
};
use super::tls::generate_tls;

pub const SUPERUSER: &str = "postgres";

pub const REPL_USER: &str = "lifeboat";
pub const REPL_PASSWORD: &str = "lifeboat-secret";
pub const MD5_USER: &str = "md5user";
pub const MD5_PASSWORD: &str = "md5-secret";
pub const PLAIN_USER: &str = "plainuser";
pub const PLAIN_PASSWORD: &str = "plain-secret";
pub const NOREPL_USER: &str = "norepl";
pub const NOREPL_PASSWORD: &str = "norepl-secret";
pub const REJECTED_USER: &str = "rejected";
pub const REJECTED_PASSWORD: &str = "x";
pub const TLS_USER: &str = "tlsonly";
pub const TLS_PASSWORD: &str = "tls-secret";

/// Timeout for pg_ctl waits (seconds).
const PG_CTL_TIMEOUT_S: u32 = 60;
/// Default timeout for one client command (psql etc.).
const CMD_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Default)]
pub struct ClusterOpts {
    /// Enable TLS with a freshly generated CA + server cert (CN/SAN localhost, IP 127.0.0.1).
    pub ssl: bool,
    /// Extra postgresql.conf lines, appended last (they override the harness defaults).
    pub extra_conf: Vec<String>,
}

impl ClusterOpts {
    pub fn ssl() -> Self {
        ClusterOpts {
            ssl: true,
            ..Default::default()
        }
    }
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }
}

/// Where a standby's replication slot lives (dropped when the standby is dropped).
struct UpstreamSlot {
    psql: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    slot: String,
}

pub struct PgCluster {
    pub major: u32,
    pub port: u16,
    pub datadir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_path: PathBuf,
    /// The cluster's temp dir (parent of datadir/socket_dir/log).
    pub base_dir: PathBuf,
    pub bin_dir: PathBuf,
    ca_cert: Option<PathBuf>,
    upstream_slot: Option<UpstreamSlot>,
    tmp: Option<tempfile::TempDir>,
}

const LOCAL_CONF: &str = "lifeboat_local.conf";

fn harness_conf(opts: &ClusterOpts) -> String {
    let mut s = String::from(
        "\n# ---- lifeboat test harness ----\n\
         listen_addresses = '127.0.0.1'\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         wal_keep_size = 0\n\
         fsync = on\n\
         shared_buffers = 32MB\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] %q%a %u@%d '\n\
         log_connections = on\n\
         log_replication_commands = on\n\
         password_encryption = 'scram-sha-256'\n\
         datestyle = 'iso, mdy'\n\
         timezone = 'UTC'\n\
         recovery_init_sync_method = syncfs\n",
    );
    if opts.ssl {
        // Relative to the data dir, so base backups / standbys carry them along.
        s.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    }
    // port + unix_socket_directories (rewritten for standbys / adopted data dirs)
    s.push_str(&format!("include '{LOCAL_CONF}'\n"));
    for l in &opts.extra_conf {
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn hba_conf(ssl: bool) -> String {
    let mut s = String::from(
        "# lifeboat test harness (order matters: first match wins)\n\
         local all all trust\n\
         local replication all trust\n\
         host replication rejected 127.0.0.1/32 reject\n\
         host all rejected 127.0.0.1/32 reject\n\
         host replication md5user 127.0.0.1/32 md5\n\
         host all md5user 127.0.0.1/32 md5\n\
         host replication plainuser 127.0.0.1/32 password\n\
         host all plainuser 127.0.0.1/32 password\n",
    );
    if ssl {
        s.push_str("hostssl replication tlsonly 127.0.0.1/32 scram-sha-256\n");
        s.push_str("hostssl all tlsonly 127.0.0.1/32 scram-sha-256\n");
    }
    s.push_str(
        "hostnossl replication tlsonly 127.0.0.1/32 reject\n\
         hostnossl all tlsonly 127.0.0.1/32 reject\n\
         host replication all 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    );
    s
}

const ROLES_SQL: &str = "\
CREATE ROLE lifeboat LOGIN REPLICATION PASSWORD 'lifeboat-secret';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5-secret';
RESET password_encryption;
CREATE ROLE plainuser LOGIN REPLICATION PASSWORD 'plain-secret';
CREATE ROLE norepl LOGIN PASSWORD 'norepl-secret';
CREATE ROLE rejected LOGIN REPLICATION PASSWORD 'x';
CREATE ROLE tlsonly LOGIN REPLICATION PASSWORD 'tls-secret';
";

impl PgCluster {
    /// initdb + configure + start a new cluster; creates the test roles.
    pub fn start(major: u32, opts: ClusterOpts) -> PgCluster {
        let bin_dir = pg_bin_dir(major);
        assert!(
            bin_dir.join("initdb").is_file(),
            "PostgreSQL {major} not installed at {} (run scripts/install-pg.sh or set LIFEBOAT_PG_BIN_{major})",
            bin_dir.display()
        );
        let tmp = pg_tempdir(&format!("lbpg{major}-"));
        let mut pg = PgCluster::new_layout(major, bin_dir, tmp);

        let mut c = clean_command(pg.bin("initdb"));
        c.arg("-D").arg(&pg.datadir);
        c.args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        c.current_dir(&pg.base_dir);
        let out = run_timeout(&mut as_pg_user(&c), Duration::from_secs(180), None)
            .unwrap_or_else(|e| panic!("{e}"));
        if !out.status.success() {
            panic!(
                "initdb (PostgreSQL {major}) failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        if opts.ssl {
            let tls = pg.base_dir.join("tls");
            generate_tls(&tls);
            write_pg_file(
                &pg.datadir.join("server.crt"),
                &fs::read(tls.join("server.crt")).unwrap(),
                0o644,
            );
            write_pg_file(
                &pg.datadir.join("server.key"),
                &fs::read(tls.join("server.key")).unwrap(),
                0o600,
            );
            pg.ca_cert = Some(tls.join("ca.crt"));
        }
        append_file(&pg.datadir.join("postgresql.conf"), &harness_conf(&opts));
        write_pg_file(
            &pg.datadir.join("pg_hba.conf"),
            hba_conf(opts.ssl).as_bytes(),
            0o600,
        );

        pg.start_fresh_port(Duration::from_secs(PG_CTL_TIMEOUT_S as u64));
        pg.psql(ROLES_SQL);
        pg
    }

    /// Start a server on an existing data directory (e.g. one lifeboat restored). The
    /// directory is moved (or copied, across file systems) into a new temp dir, chowned to
    /// the server user, given a fresh port/socket dir, and started with `pg_ctl -w`
    /// (waiting up to `timeout` for recovery to reach a state that accepts connections).
    /// Recovery settings (recovery.signal, restore_command...) are the caller's business.
    pub fn start_from_datadir(major: u32, src: &Path, timeout: Duration) -> PgCluster {
        let bin_dir = pg_bin_dir(major);
        let tmp = pg_tempdir(&format!("lbpg{major}r-"));
        let mut pg = PgCluster::new_layout(major, bin_dir, tmp);
        if fs::rename(src, &pg.datadir).is_err() {
            fs::create_dir_all(&pg.datadir).unwrap();
            let mut c = Command::new("cp");
            c.arg("-a")
                .arg(format!("{}/.", src.display()))
                .arg(&pg.datadir);
            run_ok(&mut c, Duration::from_secs(600));
        }
        chown_tree_to_pg_user(&pg.datadir);
        set_mode(&pg.datadir, 0o700);
        let _ = fs::remove_file(pg.datadir.join("postmaster.pid"));
        let conf = pg.datadir.join("postgresql.conf");
        let text = fs::read_to_string(&conf).unwrap_or_default();
        if !text.contains(&format!("include '{LOCAL_CONF}'")) {
            if conf.exists() {
                append_file(&conf, &format!("\ninclude '{LOCAL_CONF}'\n"));
            } else {
                write_pg_file(&conf, format!("include '{LOCAL_CONF}'\n").as_bytes(), 0o600);
            }
        }
        pg.start_fresh_port(timeout);
        pg
    }

    fn new_layout(major: u32, bin_dir: PathBuf, tmp: tempfile::TempDir) -> PgCluster {
        let base = tmp.path().to_path_buf();
        let socket_dir = base.join("sock");
        fs::create_dir(&socket_dir).unwrap();
        chown_to_pg_user(&socket_dir);
        set_mode(&socket_dir, 0o755);
        PgCluster {
            major,
            port: 0,
            datadir: base.join("data"),
            socket_dir,
            log_path: base.join("postgres.log"),
            base_dir: base,
            bin_dir,
            ca_cert: None,
            upstream_slot: None,
            tmp: Some(tmp),
        }
    }

    fn write_local_conf(&self) {
        let conf = format!(
            "# written by the lifeboat test harness\nport = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.socket_dir.display()
        );
        write_pg_file(&self.datadir.join(LOCAL_CONF), conf.as_bytes(), 0o600);
    }

    /// Pick a port, start; retry with another port if the bind failed (port race).
    fn start_fresh_port(&mut self, timeout: Duration) {
        let mut last = String::new();
        for _attempt in 0..5 {
            self.port = free_port();
            self.write_local_conf();
            let log_before = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            match self.pg_ctl_start(timeout) {
                Ok(()) => return,
                Err(e) => {
                    let log = fs::read(&self.log_path).unwrap_or_default();
                    let new = String::from_utf8_lossy(&log[(log_before as usize).min(log.len())..])
                        .into_owned();
                    if new.contains("could not bind") || new.contains("Address already in use") {
                        last = e;
                        continue;
                    }
                    panic!("{e}");
                }
            }
        }
        panic!(
            "could not start PostgreSQL {} after 5 port attempts: {last}",
            self.major
        );
    }

    fn pg_ctl_start(&self, timeout: Duration) -> Result<(), String> {
        let secs = timeout.as_secs().max(1);
        let mut c = clean_command(self.bin("pg_ctl"));
        c.arg("-D").arg(&self.datadir).arg("-l").arg(&self.log_path);
        c.args(["-w", "-t", &secs.to_string(), "start"]);
        c.current_dir(&self.base_dir);
        let out = run_timeout(&mut as_pg_user(&c), timeout + Duration::from_secs(30), None)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start (PostgreSQL {}, port {}) failed ({}):\nstdout: {}\nstderr: {}\n--- server log tail ({}) ---\n{}",
                self.major,
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_path.display(),
                self.log_tail()
            ))
        }
    }

    fn pg_ctl(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut c = clean_command(self.bin("pg_ctl"));
        c.arg("-D").arg(&self.datadir).args(args);
        c.current_dir(&self.base_dir);
        run_timeout(&mut as_pg_user(&c), timeout, None)
    }

    fn pg_ctl_ok(&self, args: &[&str]) {
        let mut a: Vec<&str> = args.to_vec();
        let t = PG_CTL_TIMEOUT_S.to_string();
        a.extend(["-w", "-t", &t]);
        let out = self
            .pg_ctl(&a, Duration::from_secs(PG_CTL_TIMEOUT_S as u64 + 30))
            .unwrap_or_else(|e| panic!("{e}\n--- server log tail ---\n{}", self.log_tail()));
        if !out.status.success() {
            panic!(
                "pg_ctl {} (PostgreSQL {}) failed ({}):\nstdout: {}\nstderr: {}\n--- server log tail ---\n{}",
                args.join(" "),
                self.major,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
    }

    /// Path of a program in this cluster's bin dir.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A clean Command (see `clean_command`) for a program of this cluster's bin dir, with
    /// PGHOST/PGPORT/PGUSER/PGDATABASE pointing at this cluster's unix socket as superuser.
    /// Runs as the invoking user (root in CI).
    pub fn command(&self, name: &str) -> Command {
        let mut c = clean_command(self.bin(name));
        c.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", "postgres");
        c
    }

    /// psql as superuser over the unix socket; Err(stderr) on failure.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_db("postgres", sql)
    }

    pub fn try_psql_db(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = clean_command(self.bin("psql"));
        c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-f",
                "-",
            ]);
        let out = run_timeout(&mut c, CMD_TIMEOUT, Some(sql.as_bytes()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "psql failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// psql as superuser over the unix socket (`-X -At -v ON_ERROR_STOP=1`, SQL fed on
    /// stdin so multiple statements run separately); panics on failure; trimmed stdout.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL {} port {}: {e}\nSQL: {sql}\n--- server log tail ---\n{}",
                self.major,
                self.port,
                self.log_tail()
            )
        })
    }

    /// psql with an arbitrary libpq connection string (e.g. from `conninfo`), to check
    /// authentication paths. Err(stderr) on failure.
    pub fn psql_conninfo(&self, conninfo: &str, sql: &str) -> Result<String, String> {
        let mut c = clean_command(self.bin("psql"));
        c.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-f",
            "-",
        ]);
        let out = run_timeout(&mut c, CMD_TIMEOUT, Some(sql.as_bytes()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Poll `sql` until its output equals `expected`; panics after `timeout`.
    pub fn wait_for(&self, sql: &str, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            last = self.try_psql(sql);
            if matches!(&last, Ok(v) if v == expected) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "PostgreSQL {} port {}: `{sql}` did not return {expected:?} within {timeout:?} (last: {last:?})\n--- server log tail ---\n{}",
                    self.major,
                    self.port,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// libpq keyword string over TCP: `host=127.0.0.1 port=N user=U [password=P]
    /// dbname=postgres sslmode=disable`.
    pub fn conninfo(&self, user: &str, password: Option<&str>) -> String {
        self.conninfo_sslmode(user, password, "disable")
    }

    /// Like `conninfo` with another sslmode; adds `sslrootcert=<ca>` when the cluster has
    /// TLS. For verify-full use `conninfo_verify_full`.
    pub fn conninfo_sslmode(&self, user: &str, password: Option<&str>, sslmode: &str) -> String {
        let mut s = format!("host=127.0.0.1 port={} user={user}", self.port);
        if let Some(p) = password {
            s.push_str(&format!(" password={p}"));
        }
        s.push_str(&format!(" dbname=postgres sslmode={sslmode}"));
        if sslmode != "disable" {
            if let Some(ca) = &self.ca_cert {
                s.push_str(&format!(" sslrootcert={}", ca.display()));
            }
        }
        s
    }

    /// TLS with certificate + host name verification: `host=localhost hostaddr=127.0.0.1
    /// ... sslmode=verify-full sslrootcert=<ca>`.
    pub fn conninfo_verify_full(&self, user: &str, password: Option<&str>) -> String {
        let ca = self
            .ca_cert
            .as_ref()
            .expect("cluster was not started with ssl: true");
        let mut s = format!(
            "host=localhost hostaddr=127.0.0.1 port={} user={user}",
            self.port
        );
        if let Some(p) = password {
            s.push_str(&format!(" password={p}"));
        }
        s.push_str(&format!(
            " dbname=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        ));
        s
    }

    /// libpq keyword string over the unix socket (trust auth for every role).
    pub fn socket_conninfo(&self, user: &str) -> String {
        format!(
            "host={} port={} user={user} dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.datadir.join("pg_wal")
    }

    /// PID of the postmaster from postmaster.pid, if the file exists.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let s = fs::read_to_string(self.datadir.join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// `pg_ctl stop -m fast -w`.
    pub fn stop(&self) {
        self.pg_ctl_ok(&["stop", "-m", "fast"]);
    }

    /// `pg_ctl stop -m fast -w -t SECS`, which may fail (e.g. when the server has not
    /// stopped within SECS): its output and how long it took.
    pub fn try_stop_fast(&self, secs: u32) -> (Output, Duration) {
        let t = Instant::now();
        let out = self
            .pg_ctl(
                &["stop", "-m", "fast", "-w", "-t", &secs.to_string()],
                Duration::from_secs(u64::from(secs) + 30),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        (out, t.elapsed())
    }

    /// Start a stopped cluster again (same port, same config).
    pub fn start_again(&self) {
        if let Some(pid) = self.postmaster_pid() {
            if !pid_alive(pid) {
                // stale lock files of a dead (possibly zombie) postmaster
                self.remove_stale_lock_files();
            }
        }
        self.pg_ctl_start(Duration::from_secs(PG_CTL_TIMEOUT_S as u64))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Remove postmaster.pid and the socket lock file of a dead postmaster.
    fn remove_stale_lock_files(&self) {
        let _ = fs::remove_file(self.datadir.join("postmaster.pid"));
        let _ = fs::remove_file(self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)));
    }

    /// `pgbench -i -s scale` (as superuser over the socket).
    pub fn pgbench_init(&self, scale: u32) {
        let mut c = self.command("pgbench");
        c.args(["-i", "-q", "-s", &scale.to_string(), "postgres"]);
        run_ok(&mut c, Duration::from_secs(900));
    }

    /// Background `pgbench -n -T seconds -c clients` (stdout/stderr piped). The caller
    /// waits for or kills the child. Runs as the invoking user (a direct child, so
    /// `kill()` really stops it).
    pub fn pgbench(&self, seconds: u32, clients: u32) -> Child {
        let clients = clients.max(1);
        let mut c = self.command("pgbench");
        c.args([
            "-n",
            "-T",
            &seconds.to_string(),
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "postgres",
        ]);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap_or_else(|e| panic!("spawn pgbench: {e}"))
    }

    /// New streaming standby of this cluster: `pg_basebackup -R -X stream -C -S <slot>`
    /// (a physical slot on this primary keeps the WAL the standby needs; it is dropped
    /// when the standby is dropped), own port/socket dir, started, and waited for until
    /// it is in recovery and its WAL receiver is streaming.
    pub fn create_standby(&self) -> PgCluster {
        let tmp = pg_tempdir(&format!("lbpg{}s-", self.major));
        let mut sb = PgCluster::new_layout(self.major, self.bin_dir.clone(), tmp);
        let slot = format!("lb_standby_{}", rand::thread_rng().gen::<u32>());
        let mut c = clean_command(self.bin("pg_basebackup"));
        c.arg("-D").arg(&sb.datadir);
        c.arg("-h").arg(&self.socket_dir);
        c.args([
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-C",
            "-S",
            &slot,
            "--no-sync",
        ]);
        c.current_dir(&sb.base_dir);
        let out = run_timeout(&mut as_pg_user(&c), Duration::from_secs(600), None)
            .unwrap_or_else(|e| panic!("{e}"));
        if !out.status.success() {
            panic!(
                "pg_basebackup for standby failed ({}):\nstdout: {}\nstderr: {}\n--- primary log tail ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        sb.upstream_slot = Some(UpstreamSlot {
            psql: self.bin("psql"),
            socket_dir: self.socket_dir.clone(),
            port: self.port,
            slot,
        });
        if let Some(ca) = &self.ca_cert {
            let dst = sb.base_dir.join("tls");
            fs::create_dir_all(&dst).unwrap();
            fs::copy(ca, dst.join("ca.crt")).unwrap();
            sb.ca_cert = Some(dst.join("ca.crt"));
        }
        sb.start_fresh_port(Duration::from_secs(PG_CTL_TIMEOUT_S as u64));
        sb.wait_for("SELECT pg_is_in_recovery()", "t", Duration::from_secs(60));
        sb.wait_for(
            "SELECT status FROM pg_stat_wal_receiver",
            "streaming",
            Duration::from_secs(60),
        );
        sb
    }

    /// `pg_ctl promote -w`, then wait until the server is out of recovery.
    pub fn promote(&self) {
        self.pg_ctl_ok(&["promote"]);
        self.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(60));
    }

    /// pg_current_wal_lsn() on a primary; on a standby the last received LSN (or the
    /// last replayed one if nothing was received).
    pub fn current_lsn(&self) -> String {
        self.psql(
            "SELECT CASE WHEN pg_is_in_recovery() \
             THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
             ELSE pg_current_wal_lsn() END",
        )
    }

    /// Force a WAL segment switch and return pg_switch_wal()'s LSN (the end of the switch
    /// record). A small WAL record is written first so the switch always happens, even
    /// on an idle server.
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_logical_emit_message(false, 'lifeboat-test', 'switch') IS NOT NULL;\nSELECT pg_switch_wal();")
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// Current timeline (primary: from the current WAL file name; standby: from the
    /// WAL receiver / control file).
    pub fn timeline(&self) -> u32 {
        let s = self.psql(
            "SELECT CASE WHEN pg_is_in_recovery() \
             THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver)::text, \
                           (SELECT timeline_id FROM pg_control_checkpoint())::text) \
             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END",
        );
        s.parse().unwrap_or_else(|_| panic!("bad timeline {s:?}"))
    }

    /// The cluster's system identifier (pg_control_system()).
    pub fn system_identifier(&self) -> u64 {
        let s = self.psql("SELECT system_identifier FROM pg_control_system()");
        s.parse()
            .unwrap_or_else(|_| panic!("bad system identifier {s:?}"))
    }

    /// WAL segment size in bytes.
    pub fn wal_segment_size(&self) -> u64 {
        // current_setting reports e.g. "16MB"; pg_settings.setting is in bytes on 11+.
        let s = self.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'");
        s.parse()
            .unwrap_or_else(|_| panic!("bad wal_segment_size {s:?}"))
    }

    /// Last ~80 lines of the server log.
    pub fn log_tail(&self) -> String {
        let s = fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Full server log.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if panicking {
            eprintln!(
                "--- PostgreSQL {} (port {}, {}) log tail ---\n{}",
                self.major,
                self.port,
                self.base_dir.display(),
                self.log_tail()
            );
        }
        if let Some(pid) = self.postmaster_pid() {
            if pid_alive(pid) {
                let kids = children_of(pid);
                let _ = self.pg_ctl(
                    &["stop", "-m", "immediate", "-w", "-t", "30"],
                    Duration::from_secs(40),
                );
                if pid_alive(pid) {
                    send_signal(pid, "KILL");
                    wait_dead(&[pid], Duration::from_secs(5));
                }
                if !wait_dead(&kids, Duration::from_secs(10)) {
                    for k in kids {
                        send_signal(k, "KILL");
                    }
                }
            }
        }
        if let Some(up) = self.upstream_slot.take() {
            // The walsender may take a moment to release the slot.
            let sql = format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{}'",
                up.slot
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while up.socket_dir.exists() {
                let mut c = clean_command(&up.psql);
                c.args(["-X", "-q", "-At", "-h"]).arg(&up.socket_dir).args([
                    "-p",
                    &up.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                    "-c",
                    &sql,
                ]);
                c.env("PGCONNECT_TIMEOUT", "3");
                match run_timeout(&mut c, Duration::from_secs(10), None) {
                    Ok(o) if o.status.success() => break,
                    Ok(o)
                        if String::from_utf8_lossy(&o.stderr).contains("is active")
                            && Instant::now() < deadline =>
                    {
                        thread::sleep(Duration::from_millis(100));
                    }
                    _ => break,
                }
            }
        }
        let keep = env::var_os("LIFEBOAT_KEEP_PG").is_some_and(|v| !v.is_empty() && v != "0")
            || (panicking
                && env::var_os("LIFEBOAT_KEEP_PG_ON_FAILURE")
                    .is_some_and(|v| !v.is_empty() && v != "0"));
        if let Some(t) = self.tmp.take() {
            if keep {
                eprintln!(
                    "keeping PostgreSQL {} cluster dir {}",
                    self.major,
                    t.path().display()
                );
                std::mem::forget(t);
            } else if env::var_os("LIFEBOAT_SYNC_CLEANUP").is_none() {
                // Deleting a freshly written data dir can take seconds (ext4 with `discard`,
                // unsynced pages); let a detached `rm -rf` do it so tests don't wait. It
                // outlives this process if need be.
                let spawned = Command::new("rm")
                    .arg("-rf")
                    .arg(t.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                match spawned {
                    Ok(mut child) => {
                        std::mem::forget(t);
                        thread::spawn(move || child.wait()); // reap it if we live long enough
                    }
                    Err(_) => drop(t),
                }
            } else {
                drop(t);
            }
        }
    }
}
