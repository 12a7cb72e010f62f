//! TLS material for test servers: a throwaway CA and a server certificate, made with the
//! real `openssl`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rand::Rng;

use super::host::set_mode;
use super::process::run_ok;

/// Generate a self-signed CA and a server cert (CN localhost, SAN DNS:localhost,
/// IP:127.0.0.1), ECDSA P-256, into `dir` (ca.crt, ca.key, server.crt, server.key).
pub fn generate_tls(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let t = Duration::from_secs(60);
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(dir);
        run_ok(&mut c, t);
    };
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-sha256",
        "-subj",
        "/CN=lifeboat-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let serial = format!("0x{:016x}", rand::thread_rng().gen::<u64>() >> 1);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial,
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    for f in ["ca.crt", "server.crt"] {
        set_mode(&dir.join(f), 0o644);
    }
    set_mode(dir, 0o755);
}
