//! The connection table: which connection each (pid, fd) names. A connection outlives any
//! one fd (dup adds names, close removes one) and ends with its last fd or its process.
//!
//! Generic over what a connection carries, so its bookkeeping is tested against a model on
//! its own. Must never: decide protocols or spans (the tracer does, with what it stores here).

// Looked up for every ring-buffer record: a fast, non-cryptographic hash (keys are pids, fds
// and ids we assign, not attacker-chosen).
use rustc_hash::FxHashMap as HashMap;

/// Identifies a connection independently of its fds (which dup multiplies and close reuses).
pub type ConnId = u64;

/// A connection and the fds that name it.
#[derive(Debug)]
pub struct Entry<T> {
    pub pid: u32,
    /// The process's fds naming this socket (more than one after dup).
    pub fds: Vec<i32>,
    pub data: T,
}

/// What releasing an fd did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The fd named nothing.
    Unknown,
    /// The connection still has other fds.
    Still(ConnId),
    /// That was the connection's last fd: it has ended. It stays in the table (with no fds)
    /// until [`ConnTable::remove`], so the caller can flush it.
    Last(ConnId),
}

#[derive(Debug)]
pub struct ConnTable<T> {
    conns: HashMap<ConnId, Entry<T>>,
    fds: HashMap<(u32, i32), ConnId>,
    next: ConnId,
}

impl<T> Default for ConnTable<T> {
    fn default() -> Self {
        Self {
            conns: HashMap::default(),
            fds: HashMap::default(),
            next: 0,
        }
    }
}

impl<T> ConnTable<T> {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A new connection named by `fd` of `pid`. The caller has released `fd` first.
    pub fn insert(&mut self, pid: u32, fd: i32, data: T) -> ConnId {
        let id = self.next;
        self.next += 1;
        self.conns.insert(
            id,
            Entry {
                pid,
                fds: vec![fd],
                data,
            },
        );
        self.fds.insert((pid, fd), id);
        id
    }

    pub fn id_of(&self, pid: u32, fd: i32) -> Option<ConnId> {
        self.fds.get(&(pid, fd)).copied()
    }

    pub fn get(&self, id: ConnId) -> Option<&Entry<T>> {
        self.conns.get(&id)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Entry<T>> {
        self.conns.get_mut(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Entry<T>)> {
        self.conns.iter().map(|(id, e)| (*id, e))
    }

    /// `fd` no longer names its connection (closed, or replaced by dup2).
    pub fn release_fd(&mut self, pid: u32, fd: i32) -> Released {
        let Some(id) = self.fds.remove(&(pid, fd)) else {
            return Released::Unknown;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return Released::Unknown;
        };
        conn.fds.retain(|f| *f != fd);
        if conn.fds.is_empty() {
            Released::Last(id)
        } else {
            Released::Still(id)
        }
    }

    /// `new_fd` of `pid` now names what `old_fd` names (dup/dup2/dup3/F_DUPFD). The caller
    /// has released `new_fd` first. False when `old_fd` names no connection.
    pub fn dup(&mut self, pid: u32, old_fd: i32, new_fd: i32) -> bool {
        let Some(id) = self.id_of(pid, old_fd) else {
            return false;
        };
        self.fds.insert((pid, new_fd), id);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.fds.push(new_fd);
        }
        true
    }

    /// The fds of `pid` that name a connection.
    pub fn fds_of(&self, pid: u32) -> Vec<i32> {
        self.fds
            .keys()
            .filter(|(p, _)| *p == pid)
            .map(|(_, fd)| *fd)
            .collect()
    }

    /// Forgets a connection and whatever fds still name it.
    pub fn remove(&mut self, id: ConnId) -> Option<Entry<T>> {
        let conn = self.conns.remove(&id)?;
        for fd in &conn.fds {
            self.fds.remove(&(conn.pid, *fd));
        }
        Some(conn)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Open(u32, i32),
        Dup(u32, i32, i32),
        Close(u32, i32),
        Exit(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let pid = 1u32..4;
        let fd = 3i32..9;
        prop_oneof![
            (pid.clone(), fd.clone()).prop_map(|(p, f)| Op::Open(p, f)),
            (pid.clone(), fd.clone(), fd.clone()).prop_map(|(p, a, b)| Op::Dup(p, a, b)),
            (pid.clone(), fd).prop_map(|(p, f)| Op::Close(p, f)),
            pid.prop_map(Op::Exit),
        ]
    }

    /// The tracer's use of the table, step by step: release before reuse, flush on the
    /// last fd, then remove. Returns the connections that ended.
    fn apply(t: &mut ConnTable<u64>, op: &Op, label: u64) -> Vec<u64> {
        let mut ended = Vec::new();
        let mut release = |t: &mut ConnTable<u64>, pid, fd| {
            if let Released::Last(id) = t.release_fd(pid, fd)
                && let Some(e) = t.remove(id)
            {
                assert!(e.fds.is_empty());
                ended.push(e.data);
            }
        };
        match *op {
            Op::Open(pid, fd) => {
                release(t, pid, fd);
                t.insert(pid, fd, label);
            }
            // The probes never report dup2(fd, fd), a no-op.
            Op::Dup(_, old, new) if old == new => {}
            Op::Dup(pid, old, new) => {
                release(t, pid, new);
                let _ = t.dup(pid, old, new);
            }
            Op::Close(pid, fd) => release(t, pid, fd),
            Op::Exit(pid) => {
                for fd in t.fds_of(pid) {
                    release(t, pid, fd);
                }
            }
        }
        ended
    }

    proptest! {
        /// Against a model where each (pid, fd) names a connection label: the same lookups,
        /// connections end exactly when their last name goes, and no entry is left without fds.
        #[test]
        fn matches_a_model_of_fd_names(ops in proptest::collection::vec(op(), 0..60)) {
            let mut table = ConnTable::default();
            let mut model: BTreeMap<(u32, i32), u64> = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                let label = i as u64;
                let before: BTreeSet<u64> = model.values().copied().collect();
                match *op {
                    Op::Open(pid, fd) => {
                        model.insert((pid, fd), label);
                    }
                    Op::Dup(_, old, new) if old == new => {}
                    Op::Dup(pid, old, new) => match model.get(&(pid, old)).copied() {
                        Some(l) => {
                            model.insert((pid, new), l);
                        }
                        None => {
                            model.remove(&(pid, new));
                        }
                    },
                    Op::Close(pid, fd) => {
                        model.remove(&(pid, fd));
                    }
                    Op::Exit(pid) => model.retain(|(p, _), _| *p != pid),
                }
                let after: BTreeSet<u64> = model.values().copied().collect();
                let mut expected_ended: Vec<u64> = before.difference(&after).copied().collect();
                let mut ended = apply(&mut table, op, label);
                ended.sort_unstable();
                expected_ended.sort_unstable();
                prop_assert_eq!(ended, expected_ended, "after {:?}", op);
                for ((pid, fd), l) in &model {
                    let id = table.id_of(*pid, *fd);
                    prop_assert!(id.is_some(), "({}, {}) lost", pid, fd);
                    let e = table.get(id.unwrap_or_default());
                    prop_assert_eq!(e.map(|e| e.data), Some(*l));
                    prop_assert!(e.is_some_and(|e| e.fds.contains(fd) && e.pid == *pid));
                }
                prop_assert_eq!(table.len(), after.len());
                for (_, e) in table.iter() {
                    prop_assert!(!e.fds.is_empty());
                    for fd in &e.fds {
                        prop_assert!(model.contains_key(&(e.pid, *fd)));
                    }
                }
            }
        }
    }
}
