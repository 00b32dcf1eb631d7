//! `file:DIR` — the embedded arbiter: one file per decided generation, in a
//! directory on one host or on a shared NFS mount.
//!
//! # Layout
//!
//! ```text
//! DIR/                        mode 0700, created on first use
//!   <vm>/                     mode 0700, one per VM name
//!     gen-<N>                 decided generation N (decimal, no padding):
//!                             the winner's candidate string and one '\n'
//!     spare-<encoded addr>    a registered spare: its address and one '\n'
//!     .tmp-...                a claim or registration in progress (or left by a crash)
//! ```
//!
//! # The claim, and why it is crash-safe
//!
//! 1. write `candidate\n` to a fresh temporary file `.tmp-...` in `DIR/<vm>`
//!    (`O_CREAT|O_EXCL`, mode 0600) and `fsync` it;
//! 2. `link()` it onto `gen-<N>`. `link` is atomic and fails with `EEXIST`
//!    when the name exists, so exactly one claim ever creates `gen-<N>` —
//!    the `O_CREAT|O_EXCL` test-and-set, but on a file that is already
//!    complete and durable when its name appears;
//! 3. unlink the temporary name and `fsync` `DIR/<vm>`, which makes the new
//!    name durable. Only then is `Won` returned.
//!
//! On `EEXIST` the holder is read from `gen-<N>` (after an `fsync` of the
//! directory, so an answer we give is durable too): our own candidate means
//! `Won` (a retry after a lost reply — on NFS a retransmitted `LINK` can
//! report `EEXIST` for our own success), any other means `Lost`.
//!
//! A crash before step 2 leaves at most a `.tmp-` file: nothing decided,
//! nobody told `Won`; such files are ignored and may be deleted at leisure.
//! A crash between 2 and 3 leaves either no `gen-<N>` or a complete one; the
//! claimant was not yet told `Won`, and its retry gets `Won` from the file.
//! A `gen-<N>` is never rewritten, so no reader sees a half-written holder;
//! a file that still does not hold exactly one line of a valid candidate (say,
//! written by hand) is [`ArbiterError::Corrupt`], never a decision.
//!
//! Errors: `EACCES`, `EPERM` and `EROFS` are [`ArbiterError::Denied`];
//! every other I/O error (the directory cannot be created, `ENOTDIR`, `EIO`,
//! `ESTALE`, `ENOSPC`, ...) is [`ArbiterError::Unreachable`], which callers retry.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::names::{self, excerpt};
use crate::{Arbiter, ArbiterError, Decision};

/// The `file:DIR` arbiter. Cheap to create: no I/O until the first call.
#[derive(Debug)]
pub struct FileArbiter {
    dir: PathBuf,
    url: String,
}

impl FileArbiter {
    /// An arbiter over `dir` (made absolute against the current directory).
    pub fn new(dir: impl Into<PathBuf>) -> FileArbiter {
        let dir = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let url = format!("file:{}", dir.display());
        FileArbiter { dir, url }
    }

    /// The arbiter directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn vm_dir(&self, vm: &str) -> PathBuf {
        self.dir.join(vm)
    }

    fn io_error(&self, op: &str, path: &Path, e: &io::Error) -> ArbiterError {
        let detail = format!("{op} {}: {e}", path.display());
        let arbiter = self.url.clone();
        match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                ArbiterError::Denied { arbiter, detail }
            }
            _ => ArbiterError::Unreachable { arbiter, detail },
        }
    }

    fn corrupt(&self, path: &Path, detail: String) -> ArbiterError {
        ArbiterError::Corrupt {
            arbiter: self.url.clone(),
            key: path.display().to_string(),
            detail,
        }
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), ArbiterError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io_error("fsync directory", dir, &e))
    }

    /// `DIR/<vm>`, created (0700) with `DIR` if missing; a new directory's
    /// parent is fsynced so that the entry survives a crash.
    fn ensure_vm_dir(&self, vm: &str) -> Result<PathBuf, ArbiterError> {
        if !self.dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| self.io_error("create directory", &self.dir, &e))?;
            if let Some(parent) = self.dir.parent() {
                self.sync_dir(parent)?;
            }
        }
        let vm_dir = self.vm_dir(vm);
        match DirBuilder::new().mode(0o700).create(&vm_dir) {
            Ok(()) => self.sync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.io_error("create directory", &vm_dir, &e)),
        }
        Ok(vm_dir)
    }

    /// A new temporary file in `dir` holding `line` and '\n', fsynced.
    fn write_temp(&self, dir: &Path, what: &str, line: &str) -> Result<PathBuf, ArbiterError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            // Unique on this host (pid, counter) and, with the random part,
            // among hosts sharing the directory; O_EXCL makes a clash a retry.
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(
                ".tmp-{what}-{}-{n}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            let mut f = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io_error("create", &tmp, &e)),
            };
            let written = f
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| f.sync_all());
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(self.io_error("write", &tmp, &e));
            }
            return Ok(tmp);
        }
    }

    /// The one line of a record file, checked with `valid` (`what` it
    /// holds, for the message); `None` if the file does not exist (nor its
    /// directory).
    fn read_line(
        &self,
        path: &Path,
        what: &str,
        valid: fn(&str) -> Result<(), ArbiterError>,
    ) -> Result<Option<String>, ArbiterError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("read", path, &e)),
        };
        let line = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.strip_suffix('\n'))
            .filter(|l| !l.contains('\n') && valid(l).is_ok());
        match line {
            Some(l) => Ok(Some(l.to_owned())),
            None => Err(self.corrupt(
                path,
                format!(
                    "expected one line ending in a newline, holding {what}; found {} ({} bytes)",
                    excerpt(&String::from_utf8_lossy(&bytes)),
                    bytes.len()
                ),
            )),
        }
    }

    fn gen_path(&self, vm: &str, generation: u64) -> PathBuf {
        self.vm_dir(vm).join(format!("gen-{generation}"))
    }

    fn spare_path(&self, vm: &str, addr: &str) -> PathBuf {
        self.vm_dir(vm)
            .join(format!("spare-{}", names::encode_spare(addr)))
    }

    /// The entries of `DIR/<vm>` (none if it does not exist).
    fn entries(&self, vm: &str) -> Result<Vec<(String, PathBuf)>, ArbiterError> {
        let vm_dir = self.vm_dir(vm);
        let rd = match fs::read_dir(&vm_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_error("list", &vm_dir, &e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| self.io_error("list", &vm_dir, &e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push((name, entry.path()));
        }
        Ok(out)
    }
}

/// `N` from a `gen-N` file name: canonical decimal (no sign, no leading zero), >= 1.
fn parse_gen_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("gen-")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Arbiter for FileArbiter {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn test_and_set(
        &self,
        vm: &str,
        generation: u64,
        candidate: &str,
    ) -> Result<Decision, ArbiterError> {
        names::check_vm(vm)?;
        names::check_generation(generation)?;
        names::check_candidate(candidate)?;
        let vm_dir = self.ensure_vm_dir(vm)?;
        let target = self.gen_path(vm, generation);
        let tmp = self.write_temp(&vm_dir, &format!("gen-{generation}"), candidate)?;
        let linked = fs::hard_link(&tmp, &target);
        // The temporary name has done its job either way; a failure to
        // remove it leaves a harmless `.tmp-` file.
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                self.sync_dir(&vm_dir)?;
                Ok(Decision::Won)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.sync_dir(&vm_dir)?;
                match self.read_line(&target, "a candidate", names::check_candidate)? {
                    Some(holder) if holder == candidate => Ok(Decision::Won),
                    Some(holder) => Ok(Decision::Lost { holder }),
                    None => Err(self.corrupt(
                        &target,
                        "link reported EEXIST but the file is gone (deleted by hand?)".into(),
                    )),
                }
            }
            Err(e) => Err(self.io_error(&format!("link {} to", tmp.display()), &target, &e)),
        }
    }

    fn holder(&self, vm: &str, generation: u64) -> Result<Option<String>, ArbiterError> {
        names::check_vm(vm)?;
        names::check_generation(generation)?;
        self.read_line(
            &self.gen_path(vm, generation),
            "a candidate",
            names::check_candidate,
        )
    }

    fn latest(&self, vm: &str) -> Result<Option<(u64, String)>, ArbiterError> {
        names::check_vm(vm)?;
        let mut best: Option<(u64, PathBuf)> = None;
        for (name, path) in self.entries(vm)? {
            if !name.starts_with("gen-") {
                continue;
            }
            let n = parse_gen_name(&name).ok_or_else(|| {
                self.corrupt(
                    &path,
                    "file name is not gen-<generation >= 1, decimal>".into(),
                )
            })?;
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, path));
            }
        }
        let Some((n, path)) = best else {
            return Ok(None);
        };
        match self.read_line(&path, "a candidate", names::check_candidate)? {
            Some(holder) => Ok(Some((n, holder))),
            None => Err(self.corrupt(&path, "listed, then gone (deleted by hand?)".into())),
        }
    }

    fn register_spare(&self, vm: &str, addr: &str) -> Result<(), ArbiterError> {
        names::check_vm(vm)?;
        names::check_spare(addr)?;
        let vm_dir = self.ensure_vm_dir(vm)?;
        let path = self.spare_path(vm, addr);
        let tmp = self.write_temp(&vm_dir, "spare", addr)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_error(&format!("rename {} to", tmp.display()), &path, &e));
        }
        self.sync_dir(&vm_dir)
    }

    fn unregister_spare(&self, vm: &str, addr: &str) -> Result<(), ArbiterError> {
        names::check_vm(vm)?;
        names::check_spare(addr)?;
        let path = self.spare_path(vm, addr);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(&self.vm_dir(vm)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("remove", &path, &e)),
        }
    }

    fn spares(&self, vm: &str) -> Result<Vec<String>, ArbiterError> {
        names::check_vm(vm)?;
        let mut out = Vec::new();
        for (name, path) in self.entries(vm)? {
            let Some(encoded) = name.strip_prefix("spare-") else {
                continue;
            };
            // Unregistered between the listing and the read: not a spare any more.
            let Some(addr) = self.read_line(&path, "a spare address", names::check_spare)? else {
                continue;
            };
            if names::encode_spare(&addr) != encoded {
                return Err(self.corrupt(
                    &path,
                    format!("holds address {} but is named for another", excerpt(&addr)),
                ));
            }
            out.push(addr);
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_names_are_canonical() {
        assert_eq!(parse_gen_name("gen-1"), Some(1));
        assert_eq!(parse_gen_name("gen-18446744073709551615"), Some(u64::MAX));
        for bad in [
            "gen-",
            "gen-0",
            "gen-01",
            "gen-+1",
            "gen-1~",
            "gen-18446744073709551616",
        ] {
            assert_eq!(parse_gen_name(bad), None, "{bad}");
        }
    }
}
