//! The redb store against openraft's storage conformance suite.

use haven_raft::TypeConfig;
use haven_raft::store::{LogStore, StateMachineStore, open_store};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

/// Makes a fresh store in its own temporary directory for every suite case.
struct TempDirBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempDirBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log_store, sm) = open_store(dir.path()).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log_store, sm))
    }
}

#[test]
fn redb_store_passes_the_openraft_suite() {
    if let Err(e) = Suite::test_all(TempDirBuilder) {
        panic!("the redb store fails openraft's storage suite: {e}");
    }
}
