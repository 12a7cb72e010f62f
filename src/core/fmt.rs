//! How lifeboat prints sizes and ages to people: one formatter for every command.

/// A byte count in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`, up to TiB.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// How long ago something happened, `secs` seconds before now, at a useful precision.
pub fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// An interval as a configuration writes it: `90d`, `12h`, `15m`, `20s` (the largest unit
/// that divides it; humantime's "3months 2days 6h 32m 24s" is not how anyone says 90 days).
pub fn interval(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(12 << 20), "12.0 MiB");
        assert_eq!(size(3 << 40), "3.0 TiB");
        assert_eq!(size(5000 << 40), "5000.0 TiB");
    }

    #[test]
    fn ages() {
        assert_eq!(ago(5), "5 s ago");
        assert_eq!(ago(600), "10 min ago");
        assert_eq!(ago(7200), "2 h ago");
        assert_eq!(ago(3 * 86_400), "3 days ago");
    }
}
