//! Free TCP ports on 127.0.0.1 for the servers the tests start.

use std::collections::HashSet;
use std::fs;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use rand::Rng;

/// A free TCP port on 127.0.0.1. Picks randomly below the kernel's ephemeral range (so
/// outgoing connections cannot grab it between now and the server's bind), checks it by
/// binding, and never hands out the same port twice in this process.
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut used = USED
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let eph_lo: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|t| t.parse().ok()))
        .unwrap_or(32768);
    if eph_lo > 12000 {
        let mut rng = rand::thread_rng();
        for _ in 0..2000 {
            let p: u16 = rng.gen_range(10000..eph_lo);
            if used.contains(&p) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", p)).is_ok() {
                used.insert(p);
                return p;
            }
        }
    }
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().unwrap().port();
        drop(l);
        if used.insert(p) {
            return p;
        }
    }
    panic!("could not find a free port");
}
