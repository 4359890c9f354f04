//! The order of task records, all and per status, kept as records come and
//! go, so listing a page, counting by status and finding the oldest finished
//! tasks never clone, sort or scan every record.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::sync::Recover;
use crate::task::{TaskId, TaskStatus};

type Key = (Reverse<DateTime<Utc>>, TaskId);

/// Task ids newest first, all of them and per status; a set's length is
/// its count.
#[derive(Debug, Default)]
pub(crate) struct TaskIndex {
    sets: Mutex<Sets>,
}

#[derive(Debug, Default)]
struct Sets {
    all: BTreeSet<Key>,
    by_status: [BTreeSet<Key>; 5],
}

impl Sets {
    fn of(&self, status: Option<TaskStatus>) -> &BTreeSet<Key> {
        match status {
            Some(s) => &self.by_status[slot(s)],
            None => &self.all,
        }
    }
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
    fn sets(&self) -> std::sync::MutexGuard<'_, Sets> {
        self.sets.lock().recover()
    }

    /// A new record.
    pub(crate) fn insert(&self, created_at: DateTime<Utc>, id: TaskId, status: TaskStatus) {
        let key = (Reverse(created_at), id);
        let mut sets = self.sets();
        if sets.all.insert(key) {
            sets.by_status[slot(status)].insert(key);
        }
    }

    /// A record gone.
    pub(crate) fn remove(&self, created_at: DateTime<Utc>, id: TaskId, status: TaskStatus) {
        let key = (Reverse(created_at), id);
        let mut sets = self.sets();
        if sets.all.remove(&key) {
            sets.by_status[slot(status)].remove(&key);
        }
    }

    /// A record's status changed.
    pub(crate) fn moved(
        &self,
        created_at: DateTime<Utc>,
        id: TaskId,
        from: TaskStatus,
        to: TaskStatus,
    ) {
        if from == to {
            return;
        }
        let key = (Reverse(created_at), id);
        let mut sets = self.sets();
        if sets.by_status[slot(from)].remove(&key) {
            sets.by_status[slot(to)].insert(key);
        }
    }

    /// How many tasks are in `status` (all, when `None`).
    pub(crate) fn count(&self, status: Option<TaskStatus>) -> usize {
        self.sets().of(status).len()
    }

    /// Ids in `status` (all, when `None`) newest first, from `offset`, at
    /// most `limit`.
    pub(crate) fn page(
        &self,
        status: Option<TaskStatus>,
        offset: usize,
        limit: usize,
    ) -> Vec<TaskId> {
        self.sets()
            .of(status)
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Ids oldest first, while `more` says so. `more` runs without the index
    /// locked (it may look at the records, whose locks are taken before the
    /// index's elsewhere).
    pub(crate) fn oldest(&self, mut more: impl FnMut(DateTime<Utc>, TaskId) -> bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        const CHUNK: usize = 1024;
        let mut cursor: Option<Key> = None;
        loop {
            let chunk: Vec<Key> = {
                let sets = self.sets();
                let upper = cursor.map_or(Unbounded, Excluded);
                sets.all
                    .range((Unbounded, upper))
                    .rev()
                    .take(CHUNK)
                    .copied()
                    .collect()
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
        index.moved(
            t0 + chrono::Duration::seconds(1),
            ids[1],
            TaskStatus::Pending,
            TaskStatus::Completed,
        );
        assert_eq!(index.count(None), 5);
        assert_eq!(index.count(Some(TaskStatus::Pending)), 4);
        assert_eq!(index.count(Some(TaskStatus::Completed)), 1);
        // Newest first.
        assert_eq!(index.page(None, 0, 2), vec![ids[4], ids[3]]);
        assert_eq!(index.page(None, 3, 10), vec![ids[1], ids[0]]);
        assert_eq!(index.page(Some(TaskStatus::Completed), 0, 10), vec![ids[1]]);
        assert_eq!(
            index.page(Some(TaskStatus::Pending), 2, 10),
            vec![ids[2], ids[0]]
        );
        let mut seen = Vec::new();
        index.oldest(|_, id| {
            seen.push(id);
            seen.len() < 2
        });
        assert_eq!(seen, vec![ids[0], ids[1]]);
        index.remove(t0, ids[0], TaskStatus::Pending);
        assert_eq!(index.count(Some(TaskStatus::Pending)), 3);
        assert_eq!(index.page(None, 0, 10).len(), 4);
    }
}
