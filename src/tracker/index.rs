//! The order and counts of task records, kept as records come and go, so
//! listing a page, counting by status and finding the oldest finished tasks
//! never clone or sort every record.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::task::{TaskId, TaskStatus};

type Key = (Reverse<DateTime<Utc>>, TaskId);

/// Task ids newest first, and how many tasks are in each status.
#[derive(Debug, Default)]
pub(crate) struct TaskIndex {
    order: Mutex<BTreeSet<Key>>,
    counts: [AtomicU64; 5],
}

fn slot(status: TaskStatus) -> usize {
    match status {
        TaskStatus::Pending => 0,
        TaskStatus::Running => 1,
        TaskStatus::Completed => 2,
        TaskStatus::Failed => 3,
        TaskStatus::Cancelled => 4,
    }
}

impl TaskIndex {
    /// A new record.
    pub(crate) fn insert(&self, created_at: DateTime<Utc>, id: TaskId, status: TaskStatus) {
        let added = self
            .order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((Reverse(created_at), id));
        if added {
            self.counts[slot(status)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A record gone.
    pub(crate) fn remove(&self, created_at: DateTime<Utc>, id: TaskId, status: TaskStatus) {
        let removed = self
            .order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(Reverse(created_at), id));
        if removed {
            self.counts[slot(status)].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A record's status changed.
    pub(crate) fn moved(&self, from: TaskStatus, to: TaskStatus) {
        if from != to {
            self.counts[slot(from)].fetch_sub(1, Ordering::Relaxed);
            self.counts[slot(to)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many tasks are in `status` (all, when `None`).
    pub(crate) fn count(&self, status: Option<TaskStatus>) -> usize {
        let n = match status {
            Some(s) => self.counts[slot(s)].load(Ordering::Relaxed),
            None => self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
        };
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// Ids newest first, skipping `offset` of those `keep` accepts, at most
    /// `limit` of them. `keep` runs without the index locked (it may look at
    /// the records, whose locks are taken before the index's elsewhere).
    pub(crate) fn page(
        &self,
        offset: usize,
        limit: usize,
        mut keep: impl FnMut(TaskId) -> bool,
    ) -> Vec<TaskId> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        let mut skipped = 0;
        self.walk(false, |_, id| {
            if keep(id) {
                if skipped < offset {
                    skipped += 1;
                } else {
                    out.push(id);
                }
            }
            out.len() < limit
        });
        out
    }

    /// Ids oldest first, while `more` says so (run without the index locked).
    pub(crate) fn oldest(&self, more: impl FnMut(DateTime<Utc>, TaskId) -> bool) {
        self.walk(true, more);
    }

    /// Visits ids newest first (or oldest first) in chunks copied under the
    /// lock, while `more` says so.
    fn walk(&self, oldest_first: bool, mut more: impl FnMut(DateTime<Utc>, TaskId) -> bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        const CHUNK: usize = 1024;
        let mut cursor: Option<Key> = None;
        loop {
            let chunk: Vec<Key> = {
                let order = self.order.lock().unwrap_or_else(|p| p.into_inner());
                if oldest_first {
                    let upper = cursor.map_or(Unbounded, Excluded);
                    order
                        .range((Unbounded, upper))
                        .rev()
                        .take(CHUNK)
                        .copied()
                        .collect()
                } else {
                    let lower = cursor.map_or(Unbounded, Excluded);
                    order
                        .range((lower, Unbounded))
                        .take(CHUNK)
                        .copied()
                        .collect()
                }
            };
            let Some(last) = chunk.last().copied() else {
                return;
            };
            for (Reverse(at), id) in chunk {
                if !more(at, id) {
                    return;
                }
            }
            cursor = Some(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_counts_follow_the_records() {
        let index = TaskIndex::default();
        let t0 = Utc::now();
        let ids: Vec<TaskId> = (0..5).map(|_| TaskId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            index.insert(
                t0 + chrono::Duration::seconds(i as i64),
                *id,
                TaskStatus::Pending,
            );
        }
        index.moved(TaskStatus::Pending, TaskStatus::Completed);
        assert_eq!(index.count(None), 5);
        assert_eq!(index.count(Some(TaskStatus::Pending)), 4);
        assert_eq!(index.count(Some(TaskStatus::Completed)), 1);
        // Newest first.
        assert_eq!(index.page(0, 2, |_| true), vec![ids[4], ids[3]]);
        assert_eq!(index.page(3, 10, |_| true), vec![ids[1], ids[0]]);
        assert_eq!(index.page(0, 10, |id| id == ids[2]), vec![ids[2]]);
        let mut seen = Vec::new();
        index.oldest(|_, id| {
            seen.push(id);
            seen.len() < 2
        });
        assert_eq!(seen, vec![ids[0], ids[1]]);
        index.remove(t0, ids[0], TaskStatus::Pending);
        assert_eq!(index.count(Some(TaskStatus::Pending)), 3);
        assert_eq!(index.page(0, 10, |_| true).len(), 4);
    }
}
