//! The redb tables, their encodings, and the ordered migration steps.
//!
//! Every table and encoding is documented in `migrations/NNNN-*.md`; a frozen store
//! written by each version lives in `migrations/fixtures/`. The migration steps run in one
//! write transaction when the store is opened.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};

use super::StoreError;

/// The schema version this binary writes.
pub const SCHEMA_VERSION: u64 = 5;

/// `meta`: key -> value. Holds `schema_version`, `clean_shutdown`, `store_id` and
/// `next_instance` (see `migrations/0005-filter-file.md`).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `processes`: name -> opaque bytes owned by the supervisor (its persisted spec).
pub const PROCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("processes");
/// `instances`: id -> bincode [`super::InstanceMeta`].
pub const INSTANCES: TableDefinition<u64, &[u8]> = TableDefinition::new("instances");
/// `process_instances`: (process, kind code, id) -> (). Index for `--instance -2`.
pub const PROCESS_INSTANCES: TableDefinition<(&str, u8, u64), ()> =
    TableDefinition::new("process_instances");
/// `blocks`: (instance id, first seq) -> encoded block (see `block.rs`).
pub const BLOCKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("blocks");
/// `events`: id -> bincode [`super::Event`].
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `process_events`: (process, event id) -> (). Index for a process's recent events.
pub const PROCESS_EVENTS: TableDefinition<(&str, u64), ()> = TableDefinition::new("process_events");

/// `instance_numbers`: instance id -> its number among its process's runs (or builds):
/// 1, 2, 3... (version 3).
pub const INSTANCE_NUMBERS: TableDefinition<u64, u64> = TableDefinition::new("instance_numbers");
/// `process_numbers`: (process, kind code) -> the last number given, so that a number is
/// never given twice, also once retention removed the instances that had it (version 3).
pub const PROCESS_NUMBERS: TableDefinition<(&str, u8), u64> =
    TableDefinition::new("process_numbers");

/// `block_filters`: (instance id, first seq) -> the filter record of the block with that
/// key (version 4 only: version 5 drops it, the filters live in their own file, see
/// `filter_file.rs`).
pub const BLOCK_FILTERS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("block_filters");

const VERSION_KEY: &str = "schema_version";
/// A random id given to the store when it is first opened, never changed: the filter
/// file names the store it belongs to with it (version 5).
pub const STORE_ID_KEY: &str = "store_id";
/// One more than the largest instance id ever given (version 5), so that an id is never
/// given twice, also once retention removed the newest instance.
pub const NEXT_INSTANCE_KEY: &str = "next_instance";

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .expect("encoding to a Vec cannot fail")
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Corrupt(format!("cannot decode {what}: {e}")))
}

/// One migration step: brings a store at `from` to `from + 1`.
struct Step {
    from: u64,
    run: fn(&WriteTransaction) -> Result<(), StoreError>,
}

/// Version 0 is an empty file; version 1 creates every table; version 2 adds event kinds
/// only (migrations/0002-store-health.md); version 3 numbers each process's instances
/// (migrations/0003-instance-numbers.md); version 4 adds block filters
/// (migrations/0004-block-filters.md); version 5 moves them out to a file of their own
/// (migrations/0005-filter-file.md).
const STEPS: &[Step] = &[
    Step {
        from: 0,
        run: create_v1,
    },
    Step {
        from: 1,
        run: to_v2,
    },
    Step {
        from: 2,
        run: to_v3,
    },
    Step {
        from: 3,
        run: to_v4,
    },
    Step {
        from: 4,
        run: to_v5,
    },
];

fn create_v1(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(PROCESSES)?;
    txn.open_table(INSTANCES)?;
    txn.open_table(PROCESS_INSTANCES)?;
    txn.open_table(BLOCKS)?;
    txn.open_table(EVENTS)?;
    txn.open_table(PROCESS_EVENTS)?;
    Ok(())
}

/// Version 2 appends `EventKind::StoreFailed` and `EventKind::StoreRecovered`. No table
/// or record changes: a version 1 store is a valid version 2 store as it is. The version is
/// bumped so that a version 1 binary, which cannot decode those events, refuses the store
/// instead of failing on its events.
fn to_v2(_txn: &WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Version 3 numbers the instances of each process and kind 1, 2, 3... in the order they
/// started (their ids), in two new tables; no record changes.
fn to_v3(txn: &WriteTransaction) -> Result<(), StoreError> {
    let rows: Vec<(String, u8, u64)> = {
        let idx = txn.open_table(PROCESS_INSTANCES)?;
        let mut rows = Vec::new();
        for row in idx.iter()? {
            let (k, _) = row?;
            let (process, kind, id) = k.value();
            rows.push((process.to_owned(), kind, id));
        }
        rows
    };
    let mut numbers = txn.open_table(INSTANCE_NUMBERS)?;
    let mut last = txn.open_table(PROCESS_NUMBERS)?;
    // The index is ordered by (process, kind, id): each process's runs, then its builds,
    // oldest first.
    let mut current: Option<(&str, u8)> = None;
    let mut n = 0u64;
    for (process, kind, id) in &rows {
        if current != Some((process.as_str(), *kind)) {
            current = Some((process.as_str(), *kind));
            n = 0;
        }
        n += 1;
        numbers.insert(*id, n)?;
        last.insert((process.as_str(), *kind), n)?;
    }
    Ok(())
}

/// Version 4 adds the `block_filters` table, empty (version 5 drops it again).
fn to_v4(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(BLOCK_FILTERS)?;
    Ok(())
}

/// Version 5 drops the `block_filters` table: filters live in an advisory file beside the
/// store, built in the background (`filter_builder.rs`), so that the store's own layout
/// is the same with filters as without. The store's id and the next instance id are
/// written when the store is opened and when an instance starts.
fn to_v5(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(BLOCK_FILTERS)?;
    Ok(())
}

/// Reads the stored schema version (0 for a new file).
pub(crate) fn stored_version(db: &impl ReadableDatabase) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(VERSION_KEY)?.map_or(0, |v| v.value()))
}

/// Brings the store to [`SCHEMA_VERSION`], in one write transaction. A store written by a
/// newer bpm is refused: its tables may mean something this binary does not know.
pub(crate) fn migrate(db: &redb::Database, path: &std::path::Path) -> Result<u64, StoreError> {
    let found = stored_version(db)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(found);
    }
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    for step in STEPS.iter().filter(|s| s.from >= found) {
        (step.run)(&txn)?;
    }
    txn.open_table(META)?.insert(VERSION_KEY, SCHEMA_VERSION)?;
    txn.commit()?;
    Ok(found)
}
