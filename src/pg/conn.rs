//! One PostgreSQL connection, owned by one task: TCP or Unix socket, optional TLS (rustls,
//! honouring `sslmode`), startup and authentication (trust, cleartext, MD5, SCRAM-SHA-256),
//! then a simple-query collector and raw message send/receive for the COPY sub-protocols.
//!
//! `recv` is cancel-safe: bytes are buffered and a message is consumed only when whole, so
//! the owner can `select!` on it against timers.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{ConnParams, Host, SslMode};
use super::{tls, ConnectError, PgError};
use crate::pg::protocol::{split_message, AuthRequest, Backend};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A connected, authenticated session.
pub struct Connection {
    stream: Pin<Box<dyn Stream>>,
    rbuf: BytesMut,
    params: Vec<(String, String)>,
    /// Where we are connected, for messages ("127.0.0.1:5432").
    pub target: String,
}

/// The rows of one simple query's result set, as text.
#[derive(Debug, Default, Clone)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// The single value of a one-row result, by column name.
    pub fn get(&self, row: usize, col: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == col)?;
        self.rows.get(row)?.get(i)?.as_deref()
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

impl Connection {
    /// Connect to the first target that accepts us, as libpq does with a host list.
    pub async fn connect(params: &ConnParams, replication: bool) -> Result<Connection, PgError> {
        let timeout = params.connect_timeout.unwrap_or(Duration::from_secs(30));
        let mut last = None;
        for (i, target) in params.targets.iter().enumerate() {
            let hostaddr = params.hostaddrs.get(i).copied().flatten();
            match tokio::time::timeout(
                timeout,
                Self::connect_one(params, target, hostaddr, replication),
            )
            .await
            {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(PgError::Connect {
                        target: describe(target),
                        source: ConnectError::TimedOut(timeout),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| PgError::Connect {
            target: "(none)".into(),
            source: ConnectError::NoHost,
        }))
    }

    async fn connect_one(
        params: &ConnParams,
        target: &(Host, u16),
        hostaddr: Option<std::net::IpAddr>,
        replication: bool,
    ) -> Result<Connection, PgError> {
        let where_ = describe(target);
        let io_err = |e: std::io::Error| PgError::Connect {
            target: where_.clone(),
            source: ConnectError::Io(e),
        };
        let mut stream: Pin<Box<dyn Stream>> = match &target.0 {
            Host::Tcp(h) => {
                let s = match hostaddr {
                    Some(ip) => TcpStream::connect((ip, target.1)).await,
                    None => TcpStream::connect((h.as_str(), target.1)).await,
                }
                .map_err(io_err)?;
                s.set_nodelay(true).ok();
                let s = Box::pin(s);
                match &params.sslmode {
                    SslMode::Disable => s,
                    mode => {
                        let cfg = tls::client_config(params, home_dir().as_deref())
                            .map_err(PgError::TlsConfig)?;
                        match cfg {
                            None => s,
                            Some(cfg) => negotiate_tls(s, cfg, h, mode, &where_).await?,
                        }
                    }
                }
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", target.1));
                Box::pin(UnixStream::connect(&path).await.map_err(io_err)?)
            }
        };

        let mut startup: Vec<(&str, &str)> = vec![("user", params.user.as_str())];
        if replication {
            startup.push(("replication", "true"));
        }
        if let Some(db) = &params.dbname {
            if !replication {
                startup.push(("database", db.as_str()));
            }
        }
        let app = params.application_name.as_deref().unwrap_or("lifeboat");
        startup.push(("application_name", app));
        let mut buf = BytesMut::new();
        frontend::startup_message(startup.iter().copied(), &mut buf).map_err(PgError::Encode)?;
        stream.write_all(&buf).await.map_err(io_err)?;

        let mut conn = Connection {
            stream,
            rbuf: BytesMut::with_capacity(256 * 1024),
            params: Vec::new(),
            target: where_,
        };
        conn.authenticate(params, target, replication).await?;
        Ok(conn)
    }

    async fn authenticate(
        &mut self,
        params: &ConnParams,
        target: &(Host, u16),
        replication: bool,
    ) -> Result<(), PgError> {
        let password = || -> Result<String, PgError> {
            let lookup = params
                .password_for(target, replication, home_dir().as_deref())
                .map_err(PgError::ConnInfo)?;
            if let Some(w) = &lookup.warning {
                tracing::warn!("{w}");
            }
            lookup
                .password
                .map(|p| p.expose().to_string())
                .ok_or_else(|| PgError::Auth {
                    user: params.user.clone(),
                    reason: "the server asked for a password but none was given".into(),
                    hint: "set password= in postgres.conninfo, PGPASSWORD, or a ~/.pgpass line",
                })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.recv().await? {
                Backend::Auth(AuthRequest::Ok) => break,
                Backend::Auth(AuthRequest::Cleartext) => {
                    let pw = password()?;
                    let mut b = BytesMut::new();
                    frontend::password_message(pw.as_bytes(), &mut b).map_err(PgError::Encode)?;
                    self.send(&b).await?;
                }
                Backend::Auth(AuthRequest::Md5 { salt }) => {
                    let pw = password()?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        params.user.as_bytes(),
                        pw.as_bytes(),
                        salt,
                    );
                    let mut b = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut b).map_err(PgError::Encode)?;
                    self.send(&b).await?;
                }
                Backend::Auth(AuthRequest::Sasl { mechanisms }) => {
                    if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(PgError::Auth {
                            user: params.user.clone(),
                            reason: format!(
                                "the server offers only SASL mechanisms {mechanisms:?}"
                            ),
                            hint: "allow SCRAM-SHA-256 for this role in pg_hba.conf",
                        });
                    }
                    let pw = password()?;
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    let mut b = BytesMut::new();
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut b)
                        .map_err(PgError::Encode)?;
                    self.send(&b).await?;
                    scram = Some(s);
                }
                Backend::Auth(AuthRequest::SaslContinue(data)) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        PgError::Protocol("SASL continue without a SASL exchange".into())
                    })?;
                    s.update(&data).map_err(PgError::Scram)?;
                    let mut b = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut b).map_err(PgError::Encode)?;
                    self.send(&b).await?;
                }
                Backend::Auth(AuthRequest::SaslFinal(data)) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        PgError::Protocol("SASL final without a SASL exchange".into())
                    })?;
                    s.finish(&data)
                        .map_err(|cause| PgError::ScramSignature { cause })?;
                }
                Backend::Auth(AuthRequest::Other(n)) => {
                    return Err(PgError::Auth {
                        user: params.user.clone(),
                        reason: format!("unsupported authentication method (code {n})"),
                        hint:
                            "use trust, password, md5 or scram-sha-256 for this role in pg_hba.conf",
                    })
                }
                Backend::Error(f) => return Err(PgError::from_server(f)),
                Backend::NegotiateProtocolVersion | Backend::Notice(_) => {}
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message during authentication: {other:?}"
                    )))
                }
            }
        }
        loop {
            match self.recv().await? {
                Backend::ParameterStatus { name, value } => self.params.push((name, value)),
                Backend::BackendKeyData | Backend::Notice(_) => {}
                Backend::ReadyForQuery(_) => return Ok(()),
                Backend::Error(f) => return Err(PgError::from_server(f)),
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message after authentication: {other:?}"
                    )))
                }
            }
        }
    }

    /// A server parameter reported at startup (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The server's major version (14, 15, ...), from `server_version`.
    pub fn server_major(&self) -> u32 {
        self.parameter("server_version")
            .and_then(|v| {
                v.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|d| d.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Receive one message (cancel-safe).
    pub async fn recv(&mut self) -> Result<Backend, PgError> {
        loop {
            if let Some(m) = split_message(&mut self.rbuf)? {
                return Ok(m);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|source| PgError::Read {
                    target: self.target.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(PgError::Closed(self.target.clone()));
            }
        }
    }

    /// Send raw frontend bytes and flush.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), PgError> {
        let write_err = |source| PgError::Write {
            target: self.target.clone(),
            source,
        };
        self.stream.write_all(bytes).await.map_err(write_err)?;
        self.stream.flush().await.map_err(write_err)
    }

    pub async fn send_query(&mut self, sql: &str) -> Result<(), PgError> {
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b).map_err(PgError::Encode)?;
        self.send(&b).await
    }

    /// Run a simple query and collect every result set as text. A server error is returned
    /// after the connection is back at ReadyForQuery, so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>, PgError> {
        self.send_query(sql).await?;
        let mut out: Vec<QueryResult> = Vec::new();
        let mut err = None;
        loop {
            match self.recv().await? {
                Backend::RowDescription(cols) => out.push(QueryResult {
                    columns: cols,
                    rows: Vec::new(),
                }),
                Backend::DataRow(vals) => {
                    let row = vals
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect();
                    match out.last_mut() {
                        Some(r) => r.rows.push(row),
                        None => {
                            return Err(PgError::Protocol("DataRow before RowDescription".into()))
                        }
                    }
                }
                Backend::Error(f) => err = Some(PgError::from_server(f)),
                Backend::ReadyForQuery(_) => break,
                Backend::CopyOutResponse | Backend::CopyBothResponse | Backend::CopyInResponse => {
                    return Err(PgError::Protocol(format!(
                        "\"{sql}\" started a COPY where rows were expected"
                    )))
                }
                _ => {}
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Run a query expected to return exactly one result set.
    pub async fn query_one_set(&mut self, sql: &str) -> Result<QueryResult, PgError> {
        let mut sets = self.simple_query(sql).await?;
        if sets.is_empty() {
            return Err(PgError::Protocol(format!(
                "\"{sql}\" returned no result set"
            )));
        }
        Ok(sets.swap_remove(0))
    }

    /// Terminate politely.
    pub async fn close(mut self) {
        let mut b = BytesMut::new();
        frontend::terminate(&mut b);
        let _ = self.send(&b).await;
    }

    /// Raw bytes the server sent that are not yet parsed (for tests of framing).
    pub fn buffered(&self) -> Bytes {
        Bytes::copy_from_slice(&self.rbuf)
    }
}

fn describe(target: &(Host, u16)) -> String {
    match &target.0 {
        Host::Tcp(h) => format!("{h}:{}", target.1),
        Host::Unix(d) => format!("{}/.s.PGSQL.{}", d.display(), target.1),
    }
}

async fn negotiate_tls(
    mut s: Pin<Box<dyn Stream>>,
    cfg: Arc<rustls::ClientConfig>,
    host: &str,
    mode: &SslMode,
    where_: &str,
) -> Result<Pin<Box<dyn Stream>>, PgError> {
    let mut b = BytesMut::new();
    frontend::ssl_request(&mut b);
    let io = |e: std::io::Error| PgError::Connect {
        target: where_.to_string(),
        source: ConnectError::Io(e),
    };
    s.write_all(&b).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {
            let name = tls::server_name(host).map_err(PgError::TlsConfig)?;
            let connector = tokio_rustls::TlsConnector::from(cfg);
            // Any byte already sent after 'S' would be unencrypted data injected before the
            // handshake: the stream is unbuffered here, so the handshake itself would fail.
            let tls = connector
                .connect(name, s)
                .await
                .map_err(|source| PgError::TlsHandshake {
                    target: where_.to_string(),
                    source,
                })?;
            Ok(Box::pin(tls))
        }
        b'N' => match mode {
            SslMode::Prefer | SslMode::Allow => Ok(s),
            _ => Err(PgError::TlsRefused {
                target: where_.to_string(),
                sslmode: *mode,
            }),
        },
        b'E' => Err(PgError::Protocol(format!(
            "server {where_} answered the TLS request with an error (is it older than 7.0?)"
        ))),
        other => Err(PgError::Protocol(format!(
            "server {where_} answered the TLS request with byte 0x{other:02x}"
        ))),
    }
}
