//! The file operations durable storage needs, behind a trait so tests can inject faults.
//!
//! [`StdFs`] is the real file system. [`FaultFs`] is an in-memory file system that
//! models what a power loss does: file contents survive only up to the last `sync`
//! (plus possibly a prefix of later appends: a torn tail), and created, renamed and
//! removed names survive only up to the last `sync_dir`. It can also fail ("crash") at
//! any chosen mutating operation. Paths are `/`-separated strings.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::rc::Rc;

use crate::rng::Rng;

/// File operations used by [`crate::storage::DurableStorage`].
pub trait FileSystem {
    /// Creates a directory and its parents.
    fn create_dir_all(&mut self, dir: &str) -> io::Result<()>;
    /// Names (not paths) of the files in `dir`.
    fn list(&mut self, dir: &str) -> io::Result<Vec<String>>;
    /// Whole contents of a file.
    fn read(&mut self, path: &str) -> io::Result<Vec<u8>>;
    /// Creates or truncates `path` and writes `data` (not synced).
    fn write_new(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Appends to `path`, creating it if needed (not synced).
    fn append(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Cuts `path` to `len` bytes (not synced).
    fn truncate(&mut self, path: &str, len: u64) -> io::Result<()>;
    /// Makes the contents of `path` durable.
    fn sync(&mut self, path: &str) -> io::Result<()>;
    /// Makes the names in `dir` (creations, renames, removals) durable.
    fn sync_dir(&mut self, dir: &str) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove(&mut self, path: &str) -> io::Result<()>;
}

/// The operating system's file system, keeping append handles open between calls.
#[derive(Debug, Default)]
pub struct StdFs {
    handles: HashMap<String, File>,
}

impl StdFs {
    /// A file system with no open handles.
    pub fn new() -> Self {
        Self::default()
    }

    fn handle(&mut self, path: &str) -> io::Result<&mut File> {
        if !self.handles.contains_key(path) {
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            self.handles.insert(path.to_string(), f);
        }
        self.handles.get_mut(path).ok_or_else(|| io::Error::other("handle vanished"))
    }
}

impl FileSystem for StdFs {
    fn create_dir_all(&mut self, dir: &str) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&mut self, dir: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }
    fn read(&mut self, path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn write_new(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.handles.remove(path);
        let mut f = File::create(path)?;
        f.write_all(data)?;
        self.handles.insert(path.to_string(), f);
        Ok(())
    }
    fn append(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.handle(path)?.write_all(data)
    }
    fn truncate(&mut self, path: &str, len: u64) -> io::Result<()> {
        self.handles.remove(path);
        OpenOptions::new().write(true).open(path)?.set_len(len)
    }
    fn sync(&mut self, path: &str) -> io::Result<()> {
        self.handle(path)?.sync_data()
    }
    fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.handles.remove(from);
        self.handles.remove(to);
        std::fs::rename(from, to)
    }
    fn remove(&mut self, path: &str) -> io::Result<()> {
        self.handles.remove(path);
        std::fs::remove_file(path)
    }
}

#[derive(Debug, Clone, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Default)]
struct FaultState {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    mutations: u64,
    crash_at: Option<u64>,
    crashed: bool,
    syncs: u64,
}

/// An in-memory, fault-injecting [`FileSystem`]; clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    state: Rc<RefCell<FaultState>>,
}

fn crashed() -> io::Error {
    io::Error::other("injected crash")
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.to_string())
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

impl FaultFs {
    /// An empty file system that never fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the `n`-th mutating operation from now (1-based) and every later one,
    /// as if power were lost there. An append that fails writes a random prefix.
    pub fn crash_after(&self, n: u64) {
        let mut s = self.state.borrow_mut();
        s.crash_at = Some(s.mutations + n);
    }

    /// Cancels a crash armed by [`FaultFs::crash_after`] that has not happened yet.
    pub fn disarm(&self) {
        self.state.borrow_mut().crash_at = None;
    }

    /// Mutating operations performed so far.
    pub fn mutations(&self) -> u64 {
        self.state.borrow().mutations
    }

    /// Number of `sync` calls so far.
    pub fn syncs(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// Whether an injected crash happened.
    pub fn has_crashed(&self) -> bool {
        self.state.borrow().crashed
    }

    /// Simulates power loss and reboot: unsynced names and data are lost, except that
    /// each file may keep a random prefix of bytes appended after its last sync.
    pub fn power_loss(&self, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut s = self.state.borrow_mut();
        s.names = s.durable_names.clone();
        for inode in s.inodes.values_mut() {
            let mut kept = inode.synced.clone();
            if inode.data.len() > kept.len() && inode.data.starts_with(&kept) {
                let extra = inode.data.len() - kept.len();
                let keep = rng.range(0, extra as u64 + 1) as usize;
                kept.extend_from_slice(&inode.data[inode.synced.len()..inode.synced.len() + keep]);
            }
            inode.data = kept.clone();
            inode.synced = kept;
        }
        s.crashed = false;
        s.crash_at = None;
    }

    /// Flips one byte of a file (both its current and durable contents).
    pub fn corrupt(&self, path: &str, offset: usize) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = s.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        if offset >= inode.data.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "offset past end"));
        }
        inode.data[offset] ^= 0x5A;
        if offset < inode.synced.len() {
            inode.synced[offset] ^= 0x5A;
        }
        Ok(())
    }

    /// Size of a file, if it exists.
    pub fn len(&self, path: &str) -> Option<usize> {
        let s = self.state.borrow();
        s.names.get(path).and_then(|i| s.inodes.get(i)).map(|i| i.data.len())
    }

    /// Counts a mutating operation; `Err` if it is the one chosen to crash.
    fn mutate(&self) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        if s.crashed {
            return Err(crashed());
        }
        s.mutations += 1;
        if s.crash_at == Some(s.mutations) {
            s.crashed = true;
            return Err(crashed());
        }
        Ok(())
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.state.borrow().crashed {
            Err(crashed())
        } else {
            Ok(())
        }
    }

    fn inode_of(&self, path: &str, create: bool) -> io::Result<u64> {
        let mut s = self.state.borrow_mut();
        if let Some(&i) = s.names.get(path) {
            return Ok(i);
        }
        if !create {
            return Err(not_found(path));
        }
        s.next_inode += 1;
        let i = s.next_inode;
        s.inodes.insert(i, Inode::default());
        s.names.insert(path.to_string(), i);
        Ok(i)
    }
}

impl FileSystem for FaultFs {
    fn create_dir_all(&mut self, _dir: &str) -> io::Result<()> {
        self.check_alive()
    }

    fn list(&mut self, dir: &str) -> io::Result<Vec<String>> {
        self.check_alive()?;
        let s = self.state.borrow();
        Ok(s.names.keys().filter(|p| dir_of(p) == dir).map(|p| p[dir.len() + 1..].to_string()).collect())
    }

    fn read(&mut self, path: &str) -> io::Result<Vec<u8>> {
        self.check_alive()?;
        let i = self.inode_of(path, false)?;
        Ok(self.state.borrow().inodes[&i].data.clone())
    }

    fn write_new(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.mutate()?;
        let i = self.inode_of(path, true)?;
        let mut s = self.state.borrow_mut();
        if let Some(inode) = s.inodes.get_mut(&i) {
            inode.data = data.to_vec();
        }
        Ok(())
    }

    fn append(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.check_alive()?;
        let failed = self.mutate();
        let i = self.inode_of(path, true)?;
        let mut s = self.state.borrow_mut();
        let n = if failed.is_err() {
            // The write was cut by the crash: a prefix may have reached the page cache.
            let mut rng = Rng::new(s.mutations ^ data.len() as u64);
            rng.range(0, data.len() as u64 + 1) as usize
        } else {
            data.len()
        };
        if let Some(inode) = s.inodes.get_mut(&i) {
            inode.data.extend_from_slice(&data[..n]);
        }
        failed
    }

    fn truncate(&mut self, path: &str, len: u64) -> io::Result<()> {
        self.mutate()?;
        let i = self.inode_of(path, false)?;
        let mut s = self.state.borrow_mut();
        if let Some(inode) = s.inodes.get_mut(&i) {
            inode.data.truncate(len as usize);
        }
        Ok(())
    }

    fn sync(&mut self, path: &str) -> io::Result<()> {
        self.mutate()?;
        let i = self.inode_of(path, false)?;
        let mut s = self.state.borrow_mut();
        s.syncs += 1;
        if let Some(inode) = s.inodes.get_mut(&i) {
            inode.synced = inode.data.clone();
        }
        Ok(())
    }

    fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        self.mutate()?;
        let mut s = self.state.borrow_mut();
        s.syncs += 1;
        let in_dir = |p: &String| dir_of(p) == dir;
        s.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(String, u64)> =
            s.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), *i)).collect();
        s.durable_names.extend(current);
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.mutate()?;
        let mut s = self.state.borrow_mut();
        let i = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_string(), i);
        Ok(())
    }

    fn remove(&mut self, path: &str) -> io::Result<()> {
        self.mutate()?;
        let mut s = self.state.borrow_mut();
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_only_synced_data_and_names() {
        let mut fs = FaultFs::new();
        fs.append("d/a", b"hello").unwrap();
        fs.sync("d/a").unwrap();
        fs.sync_dir("d").unwrap();
        fs.append("d/a", b" world").unwrap();
        fs.write_new("d/b", b"unsynced name").unwrap();
        fs.sync("d/b").unwrap();
        fs.power_loss(1);
        let a = fs.read("d/a").unwrap();
        assert!(a.starts_with(b"hello") && b"hello world".starts_with(&a[..]));
        assert!(fs.read("d/b").is_err(), "name was never made durable");
        fs.write_new("d/t", b"x").unwrap();
        fs.sync("d/t").unwrap();
        fs.rename("d/t", "d/c").unwrap();
        fs.sync_dir("d").unwrap();
        fs.power_loss(2);
        assert_eq!(fs.list("d").unwrap(), vec!["a".to_string(), "c".to_string()]);
    }

    #[test]
    fn crash_point_fails_everything_after() {
        let mut fs = FaultFs::new();
        fs.crash_after(2);
        fs.append("d/a", b"1").unwrap();
        assert!(fs.sync("d/a").is_err());
        assert!(fs.append("d/a", b"2").is_err());
        assert!(fs.has_crashed());
        fs.power_loss(0);
        assert_eq!(fs.read("d/a").unwrap_or_default().len(), 0);
    }
}
