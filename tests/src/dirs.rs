//! Temporary directories owned by one harness object and removed when it is dropped.
//!
//! Directories are world-traversable (0755) because some servers drop privileges (PostgreSQL runs
//! as `postgres`, nginx workers as `nobody`) and still need to reach files inside them.
//! Set `SONDE_E2E_KEEP_TMP=1` to keep them for a post-mortem (their paths are printed).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// A temporary directory removed on drop (unless `SONDE_E2E_KEEP_TMP=1`).
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `$TMPDIR/sonde-e2e-<what>-XXXXXX` with mode 0755.
    pub fn new(what: &str) -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sonde-e2e-{what}-"))
            .tempdir()
            .ctx(|| format!("creating a temporary directory for {what}"))?;
        let path = dir.path().to_path_buf();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod 0755 {}", path.display()))?;
        Ok(TestDir {
            dir: Some(dir),
            path,
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Creates (with mode 0755) and returns a subdirectory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod 0755 {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("SONDE_E2E_KEEP_TMP").is_some_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("sonde-e2e: kept {}", kept.display());
        }
        // Otherwise tempfile removes the directory when `dir` drops.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_is_traversable_and_removed_on_drop() {
        let d = TestDir::new("unit").unwrap();
        let p = d.path().to_path_buf();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let sub = d.subdir("a/b").unwrap();
        fs::write(sub.join("f"), b"x").unwrap();
        drop(d);
        assert!(!p.exists(), "{} should be gone", p.display());
    }
}
