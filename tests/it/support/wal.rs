//! PostgreSQL WAL positions and segment names as the tests compute them (pure; no I/O).

/// The default WAL segment size (16 MiB), which every test cluster uses.
pub const SEG: u64 = 16 * 1024 * 1024;

pub fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

pub fn fmt_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// The WAL segment file name of `lsn` on `tli` (16 MiB segments unless `seg` says otherwise).
pub fn seg_name(tli: u64, lsn: u64, seg: u64) -> String {
    let segno = lsn / seg;
    let per = 0x1_0000_0000 / seg;
    format!("{:08X}{:08X}{:08X}", tli, segno / per, segno % per)
}
