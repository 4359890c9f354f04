//! One policy for poisoned locks: a panic while a lock was held never takes
//! the lock down with it. The next user takes the data as it is ([`Recover`]);
//! what is behind the runtime's locks is kept valid between statements (no
//! invariant spans an unlock), so there is nothing to repair.

use std::sync::{LockResult, PoisonError};

/// Takes a lock's guard whether or not a panic poisoned the lock.
pub(crate) trait Recover<G> {
    /// The guard, poisoned or not.
    fn recover(self) -> G;
}

impl<G> Recover<G> for LockResult<G> {
    fn recover(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_used_as_it_is() {
        let lock = std::sync::Arc::new(std::sync::Mutex::new(1));
        let held = lock.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().recover();
            panic!("poisons the lock");
        })
        .join();
        assert!(lock.is_poisoned());
        *lock.lock().recover() += 1;
        assert_eq!(*lock.lock().recover(), 2);
    }
}
