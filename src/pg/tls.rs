//! rustls client configuration honouring libpq's `sslmode`.
//!
//! This module owns the mapping from resolved connection parameters ([`ConnParams`]) to a
//! [`rustls::ClientConfig`]: which server certificates are trusted (a root certificate file,
//! or the bundled web PKI roots for `sslrootcert=system`), how much is verified (nothing,
//! the chain only, or the chain and the host name), and which client certificate is
//! presented. It always uses the *ring* crypto provider explicitly, never a process-wide
//! default. It does no network I/O: the caller sends `SSLRequest` and drives the handshake.
//!
//! As in libpq:
//! - `disable` attempts no TLS;
//! - `allow`, `prefer` and `require` encrypt without verifying the server, unless a root
//!   certificate file exists (explicit `sslrootcert` or `~/.postgresql/root.crt`), in which
//!   case the chain is verified as with `verify-ca`;
//! - `verify-ca` verifies the chain but not the host name;
//! - `verify-full` verifies the chain and the host name (IP address SANs for IP hosts).
//!
//! Client certificates come from `sslcert`/`sslkey`, defaulting to
//! `~/.postgresql/postgresql.crt` / `.key` when present.

use std::fs;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::conninfo::{ConnParams, SslMode};

/// The ALPN protocol PostgreSQL 17+ servers accept (and libpq 17+ sends).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

const ROOT_CERT_HINT: &str = "either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification";

/// Errors building a TLS client configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// `verify-ca`/`verify-full` without a root certificate file.
    #[error("root certificate file \"{}\" does not exist\nhint: {ROOT_CERT_HINT}", .path.display())]
    RootCertMissing { path: PathBuf },
    /// `verify-ca`/`verify-full`, no `sslrootcert`, and no home directory to find the default.
    #[error(
        "could not get home directory to locate root certificate file\nhint: {ROOT_CERT_HINT}"
    )]
    NoHomeForRootCert,
    /// A certificate or key file could not be read.
    #[error("could not read {what} file \"{}\"", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A certificate file held no usable certificate.
    #[error("no usable certificates found in {what} file \"{}\"\nhint: the file must hold PEM \"BEGIN CERTIFICATE\" blocks", .path.display())]
    NoCertificates { what: &'static str, path: PathBuf },
    /// An explicitly named client certificate file does not exist.
    #[error("client certificate file \"{}\" does not exist\nhint: fix sslcert, or leave it unset to use ~/.postgresql/postgresql.crt when present", .path.display())]
    ClientCertMissing { path: PathBuf },
    /// A client certificate without its private key.
    #[error("certificate present, but not private key file \"{}\"\nhint: set sslkey to the key for client certificate \"{}\"", .key.display(), .cert.display())]
    KeyMissing { cert: PathBuf, key: PathBuf },
    /// The key file holds no (unencrypted) private key.
    #[error("no private key found in \"{}\"\nhint: the file must hold an unencrypted PEM private key; encrypted keys (sslpassword) are not supported, decrypt with `openssl pkey -in KEY -out NEWKEY`", .path.display())]
    NoPrivateKey { path: PathBuf },
    /// The key file is readable by others, which libpq refuses.
    #[error("private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root\nhint: chmod 0600 \"{}\"", .path.display(), .path.display())]
    KeyPermissions { path: PathBuf },
    /// rustls rejected the certificate/key pair. `cause` comes before the hint, so it is a
    /// field printed in the message, not a source.
    #[error("cannot use client certificate \"{}\" with private key \"{}\": {cause}\nhint: check that the key belongs to the certificate", .cert.display(), .key.display())]
    ClientAuth {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
    /// `sslrootcert=system` with a mode that would not check the host name.
    #[error("weak sslmode \"{sslmode}\" may not be used with sslrootcert=system\nhint: use sslmode=verify-full")]
    WeakSslModeWithSystemRoots { sslmode: SslMode },
    /// A host that is not a valid DNS name or IP address.
    #[error("invalid TLS server name \"{host}\"\nhint: use a DNS name or an IP address as host")]
    InvalidServerName { host: String },
    /// TLS was asked for a unix-socket host.
    #[error("TLS is not used for unix-socket host \"{host}\"\nhint: connect over TCP to use TLS")]
    UnixSocket { host: String },
    /// rustls could not build the configuration.
    #[error("could not set up TLS")]
    Setup {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Build the TLS client configuration for `params.sslmode`; `None` for `disable`.
///
/// `home` locates the libpq defaults `~/.postgresql/root.crt`, `postgresql.crt` and
/// `postgresql.key`. For `prefer`/`allow` the caller falls back to plaintext when the server
/// answers `N` to `SSLRequest`. The configuration offers the ALPN protocol `postgresql`.
pub fn client_config(
    params: &ConnParams,
    home: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsConfigError> {
    if params.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match root_store(params, home)? {
        Some(roots) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsConfigError::Setup { source: e.into() })?;
            if params.sslmode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnlyVerifier { inner: webpki })
            }
        }
        None => Arc::new(EncryptOnlyVerifier {
            algorithms: provider.signature_verification_algorithms,
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Setup { source: e.into() })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_identity(params, home)? {
        Some((cert_path, key_path, certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|cause| TlsConfigError::ClientAuth {
                cert: cert_path,
                key: key_path,
                cause,
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The `ServerName` to hand to the TLS connector for a target host: an IP address (IPv6 with
/// or without brackets) or a DNS name. Unix-socket hosts (starting with `/` or `@`) never use
/// TLS and are an error.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    if host.starts_with('/') || host.starts_with('@') {
        return Err(TlsConfigError::UnixSocket {
            host: host.to_string(),
        });
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_string()).map_err(|_| TlsConfigError::InvalidServerName {
        host: host.to_string(),
    })
}

/// The trust anchors to verify against, or `None` to skip verification (only for the
/// non-verifying modes, when no root certificate file exists).
fn root_store(
    params: &ConnParams,
    home: Option<&Path>,
) -> Result<Option<RootCertStore>, TlsConfigError> {
    let verify = matches!(params.sslmode, SslMode::VerifyCa | SslMode::VerifyFull);
    let path = match (&params.sslrootcert, home) {
        (Some(p), _) if p.as_os_str() == "system" => {
            if params.sslmode != SslMode::VerifyFull {
                return Err(TlsConfigError::WeakSslModeWithSystemRoots {
                    sslmode: params.sslmode,
                });
            }
            return Ok(Some(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }));
        }
        (Some(p), _) => p.clone(),
        (None, Some(home)) => home.join(".postgresql").join("root.crt"),
        (None, None) if verify => return Err(TlsConfigError::NoHomeForRootCert),
        (None, None) => return Ok(None),
    };
    if !path.exists() {
        return if verify {
            Err(TlsConfigError::RootCertMissing { path })
        } else {
            Ok(None)
        };
    }
    let certs = read_certs("root certificate", &path)?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsConfigError::NoCertificates {
            what: "root certificate",
            path,
        });
    }
    Ok(Some(store))
}

type Identity = (
    PathBuf,
    PathBuf,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
);

/// The client certificate chain and key, if one is configured or present by default.
fn client_identity(
    params: &ConnParams,
    home: Option<&Path>,
) -> Result<Option<Identity>, TlsConfigError> {
    let pg_dir = home.map(|h| h.join(".postgresql"));
    let cert_path = match (&params.sslcert, &pg_dir) {
        (Some(p), _) => {
            if !p.exists() {
                return Err(TlsConfigError::ClientCertMissing { path: p.clone() });
            }
            p.clone()
        }
        (None, Some(dir)) => {
            let p = dir.join("postgresql.crt");
            if !p.exists() {
                return Ok(None);
            }
            p
        }
        (None, None) => return Ok(None),
    };
    let key_path = match (&params.sslkey, &pg_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(dir)) => dir.join("postgresql.key"),
        (None, None) => PathBuf::from("~/.postgresql/postgresql.key"),
    };
    let key_meta = match fs::metadata(&key_path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TlsConfigError::KeyMissing {
                cert: cert_path,
                key: key_path,
            })
        }
        Err(source) => {
            return Err(TlsConfigError::Read {
                what: "private key",
                path: key_path,
                source,
            })
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = key_meta.permissions().mode();
        let allowed_extra = if key_meta.uid() == 0 { 0o040 } else { 0 };
        if mode & 0o077 & !allowed_extra != 0 {
            return Err(TlsConfigError::KeyPermissions { path: key_path });
        }
    }
    #[cfg(not(unix))]
    let _ = key_meta;

    let certs = read_certs("client certificate", &cert_path)?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificates {
            what: "client certificate",
            path: cert_path,
        });
    }
    let key_file = open("private key", &key_path)?;
    let key = match rustls_pemfile::private_key(&mut BufReader::new(key_file)) {
        Ok(Some(key)) => key,
        Ok(None) => return Err(TlsConfigError::NoPrivateKey { path: key_path }),
        Err(source) => {
            return Err(TlsConfigError::Read {
                what: "private key",
                path: key_path,
                source,
            })
        }
    };
    Ok(Some((cert_path, key_path, certs, key)))
}

fn open(what: &'static str, path: &Path) -> Result<fs::File, TlsConfigError> {
    fs::File::open(path).map_err(|source| TlsConfigError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let file = open(what, path)?;
    rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// `verify-ca` (and `require` with a root file): the full web PKI chain check, ignoring only
/// a host name mismatch. webpki checks the name last, so nothing else is skipped.
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `require`/`prefer`/`allow` without a root file: any certificate is accepted, but the
/// handshake signatures are still checked so the session keys belong to the presented key.
#[derive(Debug)]
struct EncryptOnlyVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::Command;
    use std::time::Duration;

    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConnection, ServerConfig, ServerConnection, StreamOwned};

    /// A throwaway PKI made with the `openssl` CLI: a trusted CA, an untrusted CA, server
    /// certificates for `localhost`/127.0.0.1 signed by each, and a client certificate.
    struct Pki {
        dir: tempfile::TempDir,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn chmod(path: &Path, mode: u32) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        #[cfg(not(unix))]
        let _ = (path, mode);
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().expect("tempdir");
            let d = dir.path();
            for ca in ["ca", "evil-ca"] {
                openssl(
                    d,
                    &[
                        "req",
                        "-x509",
                        "-newkey",
                        "ec",
                        "-pkeyopt",
                        "ec_paramgen_curve:prime256v1",
                        "-nodes",
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.crt"),
                        "-days",
                        "2",
                        "-subj",
                        &format!("/CN=lifeboat test {ca}"),
                        "-addext",
                        "basicConstraints=critical,CA:TRUE",
                        "-addext",
                        "keyUsage=critical,keyCertSign,cRLSign",
                    ],
                );
            }
            let leaves = [
                (
                    "server",
                    "ca",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
                ),
                (
                    "evil-server",
                    "evil-ca",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
                ),
                ("client", "ca", "extendedKeyUsage=clientAuth\n"),
            ];
            for (i, (name, ca, ext)) in leaves.iter().enumerate() {
                fs::write(
                    d.join(format!("{name}.ext")),
                    format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
                )
                .expect("write ext");
                openssl(
                    d,
                    &[
                        "req",
                        "-new",
                        "-newkey",
                        "ec",
                        "-pkeyopt",
                        "ec_paramgen_curve:prime256v1",
                        "-nodes",
                        "-keyout",
                        &format!("{name}.key"),
                        "-out",
                        &format!("{name}.csr"),
                        "-subj",
                        &format!("/CN={name}"),
                    ],
                );
                openssl(
                    d,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &format!("{name}.csr"),
                        "-CA",
                        &format!("{ca}.crt"),
                        "-CAkey",
                        &format!("{ca}.key"),
                        "-set_serial",
                        &(1000 + i).to_string(),
                        "-days",
                        "2",
                        "-out",
                        &format!("{name}.crt"),
                        "-extfile",
                        &format!("{name}.ext"),
                    ],
                );
                chmod(&d.join(format!("{name}.key")), 0o600);
            }
            Pki { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn openssl_available() -> bool {
        let ok = Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("skipping: the openssl CLI is not available");
        }
        ok
    }

    fn params(s: &str) -> ConnParams {
        ConnParams::parse(s, &|_: &str| None).expect(s)
    }

    fn config(s: &str, home: &Path) -> Arc<ClientConfig> {
        client_config(&params(s), Some(home))
            .expect("client_config")
            .expect("a TLS config")
    }

    struct Server<'a> {
        cert: &'a str,
        key: &'a str,
        client_ca: Option<&'a str>,
        tls12_only: bool,
    }

    fn server<'a>(cert: &'a str) -> Server<'a> {
        Server {
            cert,
            key: if cert == "server" {
                "server"
            } else {
                "evil-server"
            },
            client_ca: None,
            tls12_only: false,
        }
    }

    /// Run one handshake (and a ping/pong) over loopback TCP; the client's error text on failure.
    fn handshake(
        pki: &Pki,
        srv: &Server<'_>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<(), String> {
        let provider = Arc::new(ring::default_provider());
        let certs =
            read_certs("test", &pki.path(&format!("{}.crt", srv.cert))).expect("server certs");
        let key = rustls_pemfile::private_key(&mut BufReader::new(
            fs::File::open(pki.path(&format!("{}.key", srv.key))).expect("open key"),
        ))
        .expect("read key")
        .expect("a key");
        let versions: &[&rustls::SupportedProtocolVersion] = if srv.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("versions");
        let builder = match srv.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(
                    read_certs("test", &pki.path(&format!("{ca}.crt"))).expect("ca"),
                );
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server_config = builder.with_single_cert(certs, key).expect("server config");
        server_config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        let server_config = Arc::new(server_config);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let server_thread = std::thread::spawn(move || -> Result<(), String> {
            let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let conn = ServerConnection::new(server_config).map_err(|e| e.to_string())?;
            let mut tls = StreamOwned::new(conn, sock);
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
            tls.write_all(b"pong").map_err(|e| e.to_string())?;
            tls.flush().map_err(|e| e.to_string())
        });

        let result = (|| -> Result<(), String> {
            let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let sn = server_name(name).map_err(|e| e.to_string())?;
            let conn = ClientConnection::new(client, sn).map_err(|e| e.to_string())?;
            let mut tls = StreamOwned::new(conn, sock);
            tls.write_all(b"ping").map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"pong");
            assert_eq!(tls.conn.alpn_protocol(), Some(ALPN_POSTGRESQL));
            Ok(())
        })();
        let server_result = server_thread.join().expect("server thread");
        if result.is_ok() {
            server_result.map_err(|e| format!("server: {e}"))?;
        }
        result
    }

    fn home_with_root(pki: &Pki, ca: &str) -> tempfile::TempDir {
        let home = tempfile::tempdir().expect("home");
        fs::create_dir(home.path().join(".postgresql")).expect("mkdir");
        fs::copy(
            pki.path(&format!("{ca}.crt")),
            home.path().join(".postgresql/root.crt"),
        )
        .expect("copy");
        home
    }

    #[test]
    fn tls_modes_against_a_real_server() {
        if !openssl_available() {
            return;
        }
        let pki = Pki::new();
        let ca = pki.path("ca.crt").display().to_string();
        let empty_home = tempfile::tempdir().expect("home");
        let home = empty_home.path();

        // verify-full: the right name (DNS and IP SAN) passes, a wrong name fails.
        let full = config(&format!("sslmode=verify-full sslrootcert={ca}"), home);
        handshake(&pki, &server("server"), full.clone(), "localhost")
            .expect("verify-full localhost");
        handshake(&pki, &server("server"), full.clone(), "127.0.0.1")
            .expect("verify-full 127.0.0.1");
        let e = handshake(&pki, &server("server"), full.clone(), "wrong.example")
            .expect_err("wrong name");
        assert!(e.contains("not valid for name"), "{e}");
        let e =
            handshake(&pki, &server("evil-server"), full, "localhost").expect_err("untrusted CA");
        assert!(e.contains("UnknownIssuer"), "{e}");

        // verify-ca: a wrong name passes, an untrusted CA fails.
        let ca_only = config(&format!("sslmode=verify-ca sslrootcert={ca}"), home);
        handshake(&pki, &server("server"), ca_only.clone(), "wrong.example")
            .expect("verify-ca wrong name");
        handshake(&pki, &server("server"), ca_only.clone(), "127.0.0.2")
            .expect("verify-ca wrong IP");
        let e = handshake(&pki, &server("evil-server"), ca_only, "localhost")
            .expect_err("untrusted CA");
        assert!(e.contains("UnknownIssuer"), "{e}");

        // require/prefer/allow without a root file: anything encrypted goes, TLS 1.3 and 1.2.
        for mode in ["require", "prefer", "allow"] {
            let c = config(&format!("sslmode={mode}"), home);
            handshake(&pki, &server("evil-server"), c.clone(), "wrong.example").expect(mode);
            let tls12 = Server {
                tls12_only: true,
                ..server("evil-server")
            };
            handshake(&pki, &tls12, c, "localhost").expect("tls 1.2");
        }

        // require with ~/.postgresql/root.crt present behaves like verify-ca.
        let rooted = home_with_root(&pki, "ca");
        let c = config("sslmode=require", rooted.path());
        handshake(&pki, &server("server"), c.clone(), "wrong.example")
            .expect("require + root, wrong name");
        let e = handshake(&pki, &server("evil-server"), c, "localhost")
            .expect_err("require + root, untrusted");
        assert!(e.contains("UnknownIssuer"), "{e}");
        // ... and verify-full picks the default root file up too.
        let c = config("sslmode=verify-full", rooted.path());
        handshake(&pki, &server("server"), c, "localhost").expect("default root.crt");

        // sslrootcert=system: the test CA is not a public root.
        let c = config("sslrootcert=system", home);
        let e = handshake(&pki, &server("server"), c, "localhost").expect_err("system roots");
        assert!(e.contains("UnknownIssuer"), "{e}");
    }

    #[test]
    fn client_certificates() {
        if !openssl_available() {
            return;
        }
        let pki = Pki::new();
        let ca = pki.path("ca.crt").display().to_string();
        let home = tempfile::tempdir().expect("home");
        let needs_cert = Server {
            client_ca: Some("ca"),
            ..server("server")
        };

        let cert = pki.path("client.crt").display().to_string();
        let key = pki.path("client.key").display().to_string();
        let c = config(
            &format!("sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key}"),
            home.path(),
        );
        handshake(&pki, &needs_cert, c, "localhost").expect("with client cert");

        let c = config(
            &format!("sslmode=verify-full sslrootcert={ca}"),
            home.path(),
        );
        assert!(handshake(&pki, &needs_cert, c, "localhost").is_err());

        // Defaults: ~/.postgresql/postgresql.crt and .key.
        let pg = home.path().join(".postgresql");
        fs::create_dir(&pg).expect("mkdir");
        fs::copy(pki.path("client.crt"), pg.join("postgresql.crt")).expect("copy");
        fs::copy(pki.path("client.key"), pg.join("postgresql.key")).expect("copy");
        chmod(&pg.join("postgresql.key"), 0o600);
        let c = config(
            &format!("sslmode=verify-full sslrootcert={ca}"),
            home.path(),
        );
        handshake(&pki, &needs_cert, c, "localhost").expect("default client cert");

        #[cfg(unix)]
        {
            chmod(&pg.join("postgresql.key"), 0o644);
            let e = client_config(
                &params(&format!("sslmode=verify-full sslrootcert={ca}")),
                Some(home.path()),
            )
            .expect_err("world-readable key");
            let shown = pg.join("postgresql.key").display().to_string();
            assert_eq!(
                e.to_string(),
                format!("private key file \"{shown}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root\nhint: chmod 0600 \"{shown}\"")
            );
        }
        fs::remove_file(pg.join("postgresql.key")).expect("rm key");
        let e = client_config(&params("sslmode=require"), Some(home.path()))
            .expect_err("cert without key");
        assert_eq!(
            e.to_string(),
            format!(
                "certificate present, but not private key file \"{}\"\nhint: set sslkey to the key for client certificate \"{}\"",
                pg.join("postgresql.key").display(),
                pg.join("postgresql.crt").display()
            )
        );
        // A certificate file given as the key.
        chmod(&pki.path("ca.crt"), 0o600);
        let e = client_config(
            &params(&format!("sslmode=require sslcert={cert} sslkey={ca}")),
            Some(home.path()),
        )
        .expect_err("no key in file");
        assert_eq!(
            e.to_string(),
            format!("no private key found in \"{ca}\"\nhint: the file must hold an unencrypted PEM private key; encrypted keys (sslpassword) are not supported, decrypt with `openssl pkey -in KEY -out NEWKEY`")
        );
        // A key that does not belong to the certificate.
        let wrong_key = pki.path("server.key").display().to_string();
        let e = client_config(
            &params(&format!(
                "sslmode=require sslcert={cert} sslkey={wrong_key}"
            )),
            Some(home.path()),
        )
        .expect_err("mismatched key");
        assert!(matches!(e, TlsConfigError::ClientAuth { .. }), "{e}");
    }

    #[test]
    fn configuration_errors() {
        let home = tempfile::tempdir().expect("home");
        let h = home.path();
        assert!(client_config(&params("sslmode=disable"), Some(h))
            .expect("disable")
            .is_none());

        let e = client_config(&params("sslmode=verify-ca"), Some(Path::new("/root")))
            .expect_err("missing root");
        assert_eq!(
            e.to_string(),
            "root certificate file \"/root/.postgresql/root.crt\" does not exist\nhint: either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification"
        );
        let e = client_config(
            &params("sslmode=verify-full sslrootcert=/nonexistent/root.pem"),
            Some(h),
        )
        .expect_err("missing explicit root");
        assert_eq!(
            e.to_string(),
            "root certificate file \"/nonexistent/root.pem\" does not exist\nhint: either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification"
        );
        let e = client_config(&params("sslmode=verify-full"), None).expect_err("no home");
        assert_eq!(
            e.to_string(),
            "could not get home directory to locate root certificate file\nhint: either provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification"
        );
        // Like libpq, a missing explicit root file is fine when not verifying.
        assert!(client_config(
            &params("sslmode=require sslrootcert=/nonexistent/root.pem"),
            Some(h)
        )
        .expect("require")
        .is_some());
        assert!(client_config(&params("sslmode=prefer"), None)
            .expect("prefer")
            .is_some());

        let junk = h.join("junk.crt");
        fs::write(&junk, "not a certificate\n").expect("write");
        let e = client_config(
            &params(&format!("sslmode=verify-ca sslrootcert={}", junk.display())),
            Some(h),
        )
        .expect_err("junk root");
        assert_eq!(
            e.to_string(),
            format!("no usable certificates found in root certificate file \"{}\"\nhint: the file must hold PEM \"BEGIN CERTIFICATE\" blocks", junk.display())
        );
        let e = client_config(
            &params("sslmode=require sslcert=/nonexistent/client.crt"),
            Some(h),
        )
        .expect_err("missing client cert");
        assert_eq!(
            e.to_string(),
            "client certificate file \"/nonexistent/client.crt\" does not exist\nhint: fix sslcert, or leave it unset to use ~/.postgresql/postgresql.crt when present"
        );

        // sslrootcert=system is only valid with verify-full (conninfo rejects the rest too).
        let mut p = params("sslrootcert=system");
        assert!(client_config(&p, Some(h)).expect("system").is_some());
        p.sslmode = SslMode::VerifyCa;
        assert_eq!(
            client_config(&p, Some(h)).expect_err("weak").to_string(),
            "weak sslmode \"verify-ca\" may not be used with sslrootcert=system\nhint: use sslmode=verify-full"
        );
    }

    #[test]
    fn server_names() {
        assert_eq!(
            server_name("db.example.com").ok(),
            ServerName::try_from("db.example.com").ok()
        );
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert_eq!(
            server_name("/var/run/postgresql").map_err(|e| e.to_string()),
            Err("TLS is not used for unix-socket host \"/var/run/postgresql\"\nhint: connect over TCP to use TLS".to_string())
        );
        assert_eq!(
            server_name("bad name!").map_err(|e| e.to_string()),
            Err("invalid TLS server name \"bad name!\"\nhint: use a DNS name or an IP address as host".to_string())
        );
    }
}
