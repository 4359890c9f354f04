//! Watching many tasks and yielding their transitions.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{Client, ClientError};
use crate::task::{TaskId, TaskRecord, TaskStatus};

/// A change of a watched task's status.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The task.
    pub task_id: TaskId,
    /// Its status before (`None`: first seen).
    pub from: Option<TaskStatus>,
    /// Its status now.
    pub to: TaskStatus,
    /// Its record now.
    pub record: TaskRecord,
}

/// Watches tasks by polling `/status` and yields each status change once, in
/// the order seen. [`StatusMonitor::next`] answers `None` when every watched
/// task has finished and every transition was yielded.
#[derive(Debug)]
pub struct StatusMonitor {
    client: Client,
    interval: Duration,
    last: BTreeMap<TaskId, Option<TaskStatus>>,
    queue: VecDeque<Transition>,
    polled_once: bool,
}

impl StatusMonitor {
    /// A monitor polling every `interval`.
    pub fn new(client: Client, interval: Duration) -> StatusMonitor {
        StatusMonitor {
            client,
            interval,
            last: BTreeMap::new(),
            queue: VecDeque::new(),
            polled_once: false,
        }
    }

    /// Adds a task to watch.
    pub fn watch(&mut self, id: TaskId) {
        self.last.entry(id).or_insert(None);
    }

    /// Tasks watched and not finished.
    pub fn pending(&self) -> usize {
        self.last
            .values()
            .filter(|s| !s.is_some_and(TaskStatus::is_terminal))
            .count()
    }

    /// The next transition.
    pub async fn next(&mut self) -> Option<Result<Transition, ClientError>> {
        loop {
            if let Some(t) = self.queue.pop_front() {
                return Some(Ok(t));
            }
            if self.pending() == 0 {
                return None;
            }
            if self.polled_once {
                tokio::time::sleep(self.interval).await;
            }
            self.polled_once = true;
            let ids: Vec<TaskId> = self
                .last
                .iter()
                .filter(|(_, s)| !s.is_some_and(TaskStatus::is_terminal))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                let record = match self.client.status(id).await {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e)),
                };
                let from = self.last.get(&id).copied().flatten();
                if from != Some(record.status) {
                    self.last.insert(id, Some(record.status));
                    self.queue.push_back(Transition {
                        task_id: id,
                        from,
                        to: record.status,
                        record,
                    });
                }
            }
        }
    }
}
