//! File operations that stay beneath a volume's root whatever functions put
//! in it. Functions write to their volumes directly, so a volume may hold
//! symbolic links (`x -> ../../../state.redb`) or directories swapped for
//! links. Every operation here walks the path one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)` from a descriptor of the root, and opens,
//! replaces or removes the last component relative to its parent's
//! descriptor without following it: a link is never followed, anywhere.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::FileStat;

/// A volume's files directory, opened without following links.
pub(crate) struct Root {
    fd: OwnedFd,
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `openat` relative to `dir`, never following a link in `name`.
fn open_at(dir: RawFd, name: &[u8], flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    // SAFETY: openat with a NUL-terminated name and a descriptor this
    // process owns; the returned descriptor is owned by the OwnedFd.
    let fd = check(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: fd was just returned by openat and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir(dir: RawFd, name: &[u8]) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

fn stat_at(dir: RawFd, name: &[u8]) -> io::Result<libc::stat> {
    let name = cstr(name)?;
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat with a NUL-terminated name, a descriptor this process
    // owns and a pointer to a stat it owns; AT_SYMLINK_NOFOLLOW reports a
    // link itself.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn is_file(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Last modification, milliseconds since the Unix epoch.
fn modified_ms(st: &libc::stat) -> u64 {
    st.st_mtime.max(0) as u64 * 1000 + (st.st_mtime_nsec.max(0) as u64) / 1_000_000
}

/// Splits a checked volume path (`a/b/c.txt`, see `files::resolve`) into its
/// directories and its last name.
fn split(rel: &str) -> (Vec<&[u8]>, &[u8]) {
    let mut parts: Vec<&[u8]> = rel.split('/').map(str::as_bytes).collect();
    let last = parts.pop().unwrap_or_default();
    (parts, last)
}

impl Root {
    /// Opens (creating, `0700`) the volume's files directory `dir`; `dir`
    /// itself must be a directory, not a link.
    pub(crate) fn open(dir: &Path) -> io::Result<Root> {
        crate::persist::private_dir(dir)?;
        Root::existing(dir)
    }

    /// Opens the volume's files directory `dir` if it exists (NotFound
    /// otherwise), creating nothing.
    pub(crate) fn existing(dir: &Path) -> io::Result<Root> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let parent = File::open(parent)?;
        let name = dir.file_name().unwrap_or(OsStr::new("."));
        Ok(Root {
            fd: open_dir(parent.as_raw_fd(), name.as_bytes())?,
        })
    }

    /// The directory holding `rel`'s last component, walked without
    /// following links; missing directories are made when `create`.
    /// The directory at `at` (the root when empty), opened again beneath the
    /// root without following a link; `None` when it is gone (or became
    /// something else) since it was seen.
    fn reopen(&self, at: &str) -> io::Result<Option<OwnedFd>> {
        match self.parent(&components(at), false) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn parent(&self, dirs: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
        let mut cur = self.fd.try_clone()?;
        for name in dirs {
            let next = match open_dir(cur.as_raw_fd(), name) {
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    let c = cstr(name)?;
                    // SAFETY: mkdirat with a NUL-terminated name and a
                    // descriptor this process owns.
                    match check(unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o700) }) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    open_dir(cur.as_raw_fd(), name)?
                }
                other => other?,
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Reads the regular file at `rel`; a link or anything else there is
    /// "not found".
    pub(crate) fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        let (mut file, size) = self.open_file(rel)?;
        let mut out = Vec::with_capacity(size as usize);
        file.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Opens the regular file at `rel` for reading, with its size; a link
    /// or anything else there is "not found".
    pub(crate) fn open_file(&self, rel: &str) -> io::Result<(File, u64)> {
        let (dirs, last) = split(rel);
        let dir = self.parent(&dirs, false).map_err(not_found)?;
        let fd = open_at(dir.as_raw_fd(), last, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .map_err(not_found)?;
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok((file, meta.len()))
    }

    /// Replaces `rel` with `bytes` atomically (temp file, fsync, rename,
    /// fsync of the directory), making missing directories. A link at `rel`
    /// is replaced, never written through.
    pub(crate) fn write(&self, rel: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_mode(rel, bytes, 0o600)
    }

    /// [`Root::write`] with the new file's permission bits.
    pub(crate) fn write_mode(&self, rel: &str, bytes: &[u8], mode: libc::mode_t) -> io::Result<()> {
        let (dirs, last) = split(rel);
        let dir = self.parent(&dirs, true)?;
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(last);
        tmp.extend_from_slice(format!(".tmp-{}", uuid::Uuid::new_v4().simple()).as_bytes());
        let fd = open_at(
            dir.as_raw_fd(),
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            mode,
        )?;
        let result = (|| {
            let mut file = File::from(fd);
            file.write_all(bytes)?;
            file.sync_all()?;
            let (from, to) = (cstr(&tmp)?, cstr(last)?);
            // SAFETY: renameat with NUL-terminated names and a descriptor this
            // process owns; it replaces the name `to`, never what it points to.
            check(unsafe {
                libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr())
            })?;
            File::from(dir.try_clone()?).sync_all()
        })();
        if result.is_err() {
            if let Ok(name) = cstr(&tmp) {
                // SAFETY: unlinkat with a NUL-terminated name and a descriptor
                // this process owns.
                unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
            }
        }
        result
    }

    /// Removes the file (or link) at `rel`; false when there was none.
    pub(crate) fn remove(&self, rel: &str) -> io::Result<bool> {
        let (dirs, last) = split(rel);
        let dir = match self.parent(&dirs, false) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        match stat_at(dir.as_raw_fd(), last) {
            Ok(st) if is_dir(&st) => return Err(io::ErrorKind::IsADirectory.into()),
            Ok(_) => {}
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        let name = cstr(last)?;
        // SAFETY: unlinkat with a NUL-terminated name and a descriptor this
        // process owns; a link is removed itself, never its target.
        match check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }) {
            Ok(_) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Metadata of the regular file at `rel`, `None` when there is none (a
    /// link is none).
    pub(crate) fn stat(&self, rel: &str) -> io::Result<Option<FileStat>> {
        let (dirs, last) = split(rel);
        let dir = match self.parent(&dirs, false) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match stat_at(dir.as_raw_fd(), last) {
            Ok(st) if is_file(&st) => Ok(Some(FileStat {
                path: rel.to_owned(),
                size: st.st_size.max(0) as u64,
                modified_ms: modified_ms(&st),
            })),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first `limit` regular files (by path) whose path starts with
    /// `prefix` and comes after `after`, sorted, and whether more follow;
    /// links are neither listed nor descended into, nor are temp files of
    /// writes. However many files there are, only `limit + 1` are held.
    pub(crate) fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<(Vec<FileStat>, bool)> {
        // A max-heap by path of the smallest paths seen so far.
        let mut out = std::collections::BinaryHeap::<ByPath>::new();
        // Directories still to read, by path: one is open at a time, however
        // wide the tree (a descriptor per waiting directory ran out of them).
        let mut stack: Vec<String> = vec![String::new()];
        while let Some(at) = stack.pop() {
            let Some(dir) = self.reopen(&at)? else {
                continue;
            };
            // The directory is read through its descriptor (no path lookup).
            let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let bytes = name.as_bytes();
                let Some(text) = std::str::from_utf8(bytes).ok() else {
                    continue;
                };
                let st = match stat_at(dir.as_raw_fd(), bytes) {
                    Ok(st) => st,
                    Err(e) if is_absent(&e) => continue,
                    Err(e) => return Err(e),
                };
                let path = if at.is_empty() {
                    text.to_owned()
                } else {
                    format!("{at}/{text}")
                };
                if is_dir(&st) {
                    // Only where a path under the prefix can be.
                    let under = format!("{path}/");
                    if under.starts_with(prefix) || prefix.starts_with(&under) {
                        stack.push(path);
                    }
                } else if is_file(&st)
                    && !text.starts_with('.')
                    && path.starts_with(prefix)
                    && after.is_none_or(|a| path.as_str() > a)
                {
                    out.push(ByPath(FileStat {
                        path,
                        size: st.st_size.max(0) as u64,
                        modified_ms: modified_ms(&st),
                    }));
                    if out.len() > limit.saturating_add(1) {
                        out.pop();
                    }
                }
            }
        }
        let more = out.len() > limit;
        if more {
            out.pop();
        }
        Ok((
            out.into_sorted_vec().into_iter().map(|f| f.0).collect(),
            more,
        ))
    }
}

/// A file ordered by its path alone.
struct ByPath(FileStat);

impl PartialEq for ByPath {
    fn eq(&self, other: &Self) -> bool {
        self.0.path == other.0.path
    }
}

impl Eq for ByPath {}

impl PartialOrd for ByPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.path.cmp(&other.0.path)
    }
}

/// What a walk or a listing saw at a name, never following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Link,
    Other,
}

/// An entry's metadata.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) kind: Kind,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) modified_ms: u64,
}

fn meta(st: &libc::stat) -> Meta {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Link,
        _ => Kind::Other,
    };
    Meta {
        kind,
        size: st.st_size.max(0) as u64,
        mode: st.st_mode & 0o7777,
        modified_ms: modified_ms(st),
    }
}

/// The names in the directory `dir` (read through its descriptor).
fn names_in(dir: &OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    Ok(names)
}

fn components(rel: &str) -> Vec<&[u8]> {
    rel.split('/')
        .filter(|c| !c.is_empty())
        .map(str::as_bytes)
        .collect()
}

/// Removes everything in the directory `dir`, depth first, never
/// following a link; at most `budget` entries (a bound on the work).
fn empty_dir(dir: &OwnedFd, budget: &mut u64) -> io::Result<()> {
    for name in names_in(dir)? {
        let bytes = name.as_bytes();
        if *budget == 0 {
            return Err(io::Error::other("too many entries to remove"));
        }
        *budget -= 1;
        let st = match stat_at(dir.as_raw_fd(), bytes) {
            Ok(st) => st,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(e),
        };
        let flags = if is_dir(&st) {
            let sub = open_dir(dir.as_raw_fd(), bytes)?;
            empty_dir(&sub, budget)?;
            libc::AT_REMOVEDIR
        } else {
            0
        };
        let c = cstr(bytes)?;
        // SAFETY: unlinkat with a NUL-terminated name and a descriptor this
        // process owns; a link is removed itself.
        match check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }) {
            Ok(_) => {}
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Root {
    /// The metadata at `rel` (the root itself when empty), not following a
    /// link there; `None` when nothing is.
    pub(crate) fn meta(&self, rel: &str) -> io::Result<Option<Meta>> {
        let mut parts = components(rel);
        let Some(last) = parts.pop() else {
            // SAFETY: an all-zero stat is valid; fstat on an owned fd.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            check(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })?;
            return Ok(Some(meta(&st)));
        };
        let dir = match self.parent(&parts, false) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match stat_at(dir.as_raw_fd(), last) {
            Ok(st) => Ok(Some(meta(&st))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The entries of the directory at `rel` (the root when empty), by
    /// name; links are listed as links, never followed.
    pub(crate) fn list_dir(&self, rel: &str) -> io::Result<Vec<(String, Meta)>> {
        let dir = self.parent(&components(rel), false).map_err(not_found)?;
        let mut out = Vec::new();
        for name in names_in(&dir)? {
            let Ok(text) = name.into_string() else {
                continue;
            };
            match stat_at(dir.as_raw_fd(), text.as_bytes()) {
                Ok(st) => out.push((text, meta(&st))),
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Makes the directory `rel` and its parents (`mkdir -p`), through no
    /// link.
    pub(crate) fn mkdir(&self, rel: &str) -> io::Result<()> {
        self.parent(&components(rel), true).map(drop)
    }

    /// Removes `rel` and, when it is a directory, everything under it (at
    /// most `max_entries`), following no link; false when nothing was there.
    pub(crate) fn remove_all(&self, rel: &str, max_entries: u64) -> io::Result<bool> {
        let mut parts = components(rel);
        let Some(last) = parts.pop() else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        let dir = match self.parent(&parts, false) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let st = match stat_at(dir.as_raw_fd(), last) {
            Ok(st) => st,
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let flags = if is_dir(&st) {
            let sub = open_dir(dir.as_raw_fd(), last)?;
            let mut budget = max_entries;
            empty_dir(&sub, &mut budget)?;
            libc::AT_REMOVEDIR
        } else {
            0
        };
        let c = cstr(last)?;
        // SAFETY: as in `empty_dir`.
        match check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }) {
            Ok(_) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Visits everything under the root, depth first in name order: each
    /// regular file opened for reading, each link with its target, each
    /// directory before what is in it; nothing is followed. Stops with an
    /// error when `visit` fails.
    pub(crate) fn walk(
        &self,
        visit: &mut dyn FnMut(&str, Meta, Walked) -> io::Result<()>,
    ) -> io::Result<()> {
        // By path, one open at a time (see `list`).
        let mut stack: Vec<String> = vec![String::new()];
        while let Some(at) = stack.pop() {
            let Some(dir) = self.reopen(&at)? else {
                continue;
            };
            let mut subdirs = Vec::new();
            for name in names_in(&dir)? {
                let Ok(text) = name.into_string() else {
                    continue;
                };
                let bytes = text.as_bytes();
                let st = match stat_at(dir.as_raw_fd(), bytes) {
                    Ok(st) => st,
                    Err(e) if is_absent(&e) => continue,
                    Err(e) => return Err(e),
                };
                let path = if at.is_empty() {
                    text.clone()
                } else {
                    format!("{at}/{text}")
                };
                let m = meta(&st);
                match m.kind {
                    Kind::Dir => {
                        visit(&path, m, Walked::Dir)?;
                        subdirs.push(path);
                    }
                    Kind::File => {
                        match open_at(dir.as_raw_fd(), bytes, libc::O_RDONLY | libc::O_NONBLOCK, 0)
                        {
                            Ok(fd) => visit(&path, m, Walked::File(File::from(fd)))?,
                            Err(e) if is_absent(&e) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Kind::Link => {
                        let c = cstr(bytes)?;
                        let mut buf = vec![0u8; 4096];
                        // SAFETY: readlinkat into a buffer of the given size.
                        let n = unsafe {
                            libc::readlinkat(
                                dir.as_raw_fd(),
                                c.as_ptr(),
                                buf.as_mut_ptr().cast(),
                                buf.len(),
                            )
                        };
                        if n >= 0 {
                            buf.truncate(n as usize);
                            visit(&path, m, Walked::Link(buf))?;
                        }
                    }
                    Kind::Other => {}
                }
            }
            // Name order: the stack pops the last pushed first.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Writes `bytes` to a new file at `rel` (or over a regular file there),
    /// making missing directories; not atomic and not fsynced: for scratch
    /// trees such as a workdir restored from a snapshot.
    pub(crate) fn create_file(
        &self,
        rel: &str,
        bytes: &[u8],
        mode: libc::mode_t,
    ) -> io::Result<()> {
        let (dirs, last) = split(rel);
        let dir = self.parent(&dirs, true)?;
        let fd = open_at(
            dir.as_raw_fd(),
            last,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            mode,
        )?;
        File::from(fd).write_all(bytes)
    }

    /// Makes a symbolic link `rel` -> `target` (replacing nothing).
    pub(crate) fn symlink(&self, rel: &str, target: &[u8]) -> io::Result<()> {
        let (dirs, last) = split(rel);
        let dir = self.parent(&dirs, true)?;
        let (t, l) = (cstr(target)?, cstr(last)?);
        // SAFETY: symlinkat with NUL-terminated strings and an owned fd.
        check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), l.as_ptr()) }).map(drop)
    }
}

/// What [`Root::walk`] hands over for an entry.
pub(crate) enum Walked {
    File(File),
    Dir,
    Link(Vec<u8>),
}

/// Gone, or something that is not a directory (or is a link) on the way.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}

fn not_found(e: io::Error) -> io::Error {
    if is_absent(&e) {
        io::ErrorKind::NotFound.into()
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "top secret").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let files = dir.path().join("vol/files");
        let root = Root::open(&files).unwrap();
        root.write("a/ok.txt", b"fine").unwrap();
        symlink(&secret, files.join("x")).unwrap();
        symlink("../../secret", files.join("a/rel")).unwrap();
        symlink(&outside, files.join("d")).unwrap();

        assert_eq!(root.read("a/ok.txt").unwrap(), b"fine");
        for link in ["x", "a/rel", "d/anything"] {
            let err = root.read(link).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{link}");
            assert!(root.stat(link).unwrap().is_none(), "{link}");
        }
        // Writing through a linked directory fails; nothing lands outside.
        assert!(root.write("d/planted", b"x").is_err());
        assert!(!outside.join("planted").exists());
        // Writing at a link replaces the link, not its target.
        root.write("x", b"mine").unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"top secret");
        assert_eq!(root.read("x").unwrap(), b"mine");
        // Removing a link removes the link only.
        assert!(root.remove("a/rel").unwrap());
        assert!(secret.exists());
        let (listed, more) = root.list("", None, 10).unwrap();
        assert!(!more);
        let listed: Vec<String> = listed.into_iter().map(|s| s.path).collect();
        assert_eq!(
            listed,
            ["a/ok.txt", "x"],
            "links are not listed or descended into"
        );
    }

    #[test]
    fn writes_replace_atomically_and_list_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(&dir.path().join("files")).unwrap();
        root.write("a/x.txt", b"one").unwrap();
        root.write("a/x.txt", b"two!").unwrap();
        root.write("b.txt", b"").unwrap();
        assert_eq!(root.read("a/x.txt").unwrap(), b"two!");
        root.write("c/z.txt", b"").unwrap();
        let (all, more) = root.list("", None, 100).unwrap();
        let names: Vec<&str> = all.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(names, ["a/x.txt", "b.txt", "c/z.txt"]);
        assert!(!more);
        assert_eq!(all[0].size, 4);
        assert_eq!(root.list("a/", None, 100).unwrap().0.len(), 1);
        // A page: the smallest paths, whether more follow, then after them.
        let (page, more) = root.list("", None, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert!(more);
        let (rest, more) = root.list("", Some("b.txt"), 2).unwrap();
        assert_eq!(rest[0].path, "c/z.txt");
        assert!(!more);
        assert!(root.stat("nope").unwrap().is_none());
        assert!(!root.remove("nope").unwrap());
        assert!(root.remove("b.txt").unwrap());
    }
}
