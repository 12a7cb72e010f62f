//! Crash-safe file writes, in one place: a file is written under a temporary name,
//! fsync'd, renamed over its final name, and the directory is fsync'd. After a crash a
//! reader finds the old file or the whole new one, never a part; the temporary file of a
//! failed write is removed.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Replace `path` durably with what `write` puts in a new file at `tmp` (which it creates,
/// with whatever mode or flags it needs, fills, and returns). `tmp` must be in the same
/// directory as `path`.
pub fn replace_with<E: From<io::Error>>(
    path: &Path,
    tmp: &Path,
    write: impl FnOnce(&Path) -> Result<File, E>,
) -> Result<(), E> {
    let res = (|| {
        let f = write(tmp)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(tmp, path)?;
        sync_dir(parent(path))?;
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    res
}

/// Replace `path` durably with `bytes`, through `tmp`.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with(path, tmp, |t| {
        let mut f = File::create(t)?;
        f.write_all(bytes)?;
        Ok(f)
    })
}

/// fsync a directory, so that a rename or a new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let t = d.path().join("f.tmp");
        replace(&p, &t, b"one").unwrap();
        replace(&p, &t, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!t.exists());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let t = d.path().join("f.tmp");
        replace(&p, &t, b"old").unwrap();
        let r: io::Result<()> = replace_with(&p, &t, |t| {
            let mut f = File::create(t)?;
            f.write_all(b"half")?;
            Err(io::Error::other("cut off"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!t.exists());
    }
}
