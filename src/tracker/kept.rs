//! A task record as the tracker keeps it in memory: what every task has in
//! a few words, what few tasks have (an error, a map's progress, a result
//! kept in files, a Modal call) behind one pointer, and the function's name
//! shared by all its tasks. A million finished calls then cost about 0.3 KB
//! each, where the full [`TaskRecord`] would take three times that.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::compute::CallBackend;
use crate::sync::Recover;
use crate::task::{
    MapProgress, ResultRef, TaskError, TaskId, TaskKind, TaskRecord, TaskStatus,
    LISTED_ERROR_MESSAGE,
};

/// One task's record, compact.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    function_name: Arc<str>,
    pub(crate) result: Option<Value>,
    pub(crate) rare: Option<Box<Rare>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) attempts: u32,
    pub(crate) kind: TaskKind,
    pub(crate) status: TaskStatus,
}

/// What few tasks have.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rare {
    pub(crate) result_ref: Option<ResultRef>,
    pub(crate) error: Option<TaskError>,
    pub(crate) progress: Option<MapProgress>,
    /// The backend's own id for a call that has one worth keeping (Modal's).
    pub(crate) backend_call_id: Option<String>,
    pub(crate) call_backend: Option<CallBackend>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.result_ref.is_none()
            && self.error.is_none()
            && self.progress.is_none()
            && self.backend_call_id.is_none()
            && self.call_backend.is_none()
    }
}

impl Kept {
    /// Keeps `record`, its function's name shared through `names`.
    pub(crate) fn new(record: TaskRecord, names: &Names) -> Kept {
        let mut kept = Kept {
            function_name: names.intern(&record.function_name),
            result: record.result,
            rare: None,
            created_at: record.created_at,
            started_at: record.started_at,
            finished_at: record.finished_at,
            attempts: record.attempts,
            kind: record.kind,
            status: record.status,
        };
        let rare = Rare {
            result_ref: record.result_ref,
            error: record.error,
            progress: record.progress,
            backend_call_id: record.backend_call_id,
            call_backend: record.call_backend,
        };
        if !rare.is_empty() {
            kept.rare = Some(Box::new(rare));
        }
        kept
    }

    /// The rare part, made when first written.
    pub(crate) fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Whether its call runs on a backend that outlives this process.
    pub(crate) fn runs_remotely(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| {
            r.backend_call_id.is_some() && r.call_backend == Some(CallBackend::Modal)
        })
    }

    /// The whole record.
    pub(crate) fn record(&self, task_id: TaskId) -> TaskRecord {
        self.build(task_id, true, |e| e.clone())
    }

    /// The record as a listing shows it: the result only `with_result`, the
    /// error's message cut to [`LISTED_ERROR_MESSAGE`] bytes and without its
    /// traceback (both are whole in the task's status).
    pub(crate) fn listed(&self, task_id: TaskId, with_result: bool) -> TaskRecord {
        self.build(task_id, with_result, |e| TaskError {
            kind: e.kind.clone(),
            message: crate::value::clip(&e.message, LISTED_ERROR_MESSAGE).into_owned(),
            traceback: None,
        })
    }

    fn build(
        &self,
        task_id: TaskId,
        with_result: bool,
        error: impl FnOnce(&TaskError) -> TaskError,
    ) -> TaskRecord {
        let rare = self.rare.as_deref();
        TaskRecord {
            task_id,
            function_name: self.function_name.to_string(),
            kind: self.kind,
            status: self.status,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            attempts: self.attempts,
            result: if with_result {
                self.result.clone()
            } else {
                None
            },
            result_ref: rare.and_then(|r| r.result_ref),
            error: rare.and_then(|r| r.error.as_ref()).map(error),
            progress: rare.and_then(|r| r.progress),
            backend_call_id: rare.and_then(|r| r.backend_call_id.clone()),
            call_backend: rare.and_then(|r| r.call_backend),
        }
    }
}

/// Function names, one allocation each however many tasks name them.
#[derive(Debug, Default)]
pub(crate) struct Names {
    set: Mutex<HashSet<Arc<str>>>,
}

impl Names {
    pub(crate) fn intern(&self, name: &str) -> Arc<str> {
        let mut set = self.set.lock().recover();
        if let Some(found) = set.get(name) {
            return found.clone();
        }
        let name: Arc<str> = Arc::from(name);
        set.insert(name.clone());
        name
    }

    /// Drops the names no record holds any more.
    pub(crate) fn prune(&self) {
        self.set
            .lock()
            .recover()
            .retain(|name| Arc::strong_count(name) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::ErrorKind;

    #[test]
    fn a_record_comes_back_as_it_went_in_and_names_are_shared() {
        let names = Names::default();
        let mut record = TaskRecord::new("f", TaskKind::Map, Some(3));
        record.status = TaskStatus::Failed;
        record.error = Some(TaskError::new(ErrorKind::Cancelled, "x".repeat(5000)));
        record.backend_call_id = Some("fc-1".into());
        record.call_backend = Some(CallBackend::Modal);
        let id = record.task_id;
        let kept = Kept::new(record.clone(), &names);
        assert_eq!(kept.record(id), record);
        assert!(kept.runs_remotely());
        let listed = kept.listed(id, false);
        let error = listed.error.as_ref().unwrap();
        assert!(
            error.message.len() < 5000
                && error
                    .message
                    .starts_with(&"x".repeat(LISTED_ERROR_MESSAGE - 64))
        );
        assert!(error.traceback.is_none() && listed.result.is_none());
        assert_eq!(listed.backend_call_id.as_deref(), Some("fc-1"));

        let plain = Kept::new(TaskRecord::new("f", TaskKind::Call, None), &names);
        assert!(plain.rare.is_none(), "a plain call keeps no rare part");
        assert!(Arc::ptr_eq(&plain.function_name, &kept.function_name));
        drop((plain, kept));
        names.prune();
        assert!(names.set.lock().unwrap().is_empty());
    }

    #[test]
    fn the_kept_form_is_small() {
        assert!(
            std::mem::size_of::<Kept>() <= 112,
            "{}",
            std::mem::size_of::<Kept>()
        );
    }
}
