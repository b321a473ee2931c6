//! Opening the store: creating it (under a temporary name, renamed into place when
//! complete), recovering one left open by a killed daemon, refusing one from a newer bpm,
//! and moving aside, never overwriting, a file that cannot be opened.

use super::*;

impl Store {
    /// Open (or create) the store at `path` for writing, with its writer thread.
    ///
    /// A file that is not a readable redb store is moved aside under a name no other file
    /// has, never overwritten, and a new store is started; [`Opened::moved_aside`] names
    /// both paths. A new store is made under a temporary name in the same directory and
    /// renamed into place only once complete, so a failure half way (a full disk) never
    /// leaves a half-made store behind.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Opened, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut moved_aside = None;
        let mut notes = Vec::new();
        let mut rounds = 0;
        let (db, start) = loop {
            rounds += 1;
            if rounds > 5 {
                return Err(StoreError::Corrupt(format!(
                    "{}: could not open nor create the log store",
                    path.display()
                )));
            }
            if std::fs::symlink_metadata(path).is_err() {
                match create_new(path, &opts)? {
                    Some(db) => match no_panic(|| start_db(&db, path)) {
                        Ok(start) => break (db, start),
                        Err(e) => return Err(e),
                    },
                    // Somebody else (another daemon) created it meanwhile: open theirs.
                    None => continue,
                }
            }
            refuse_too_new(path)?;
            let why = match open_rw(path, &opts) {
                Ok(db) => match no_panic(|| start_db(&db, path)) {
                    Ok(start) => break (db, start),
                    // The file opens but its own tables cannot be read.
                    Err(StoreError::Corrupt(why)) if moved_aside.is_none() => why,
                    Err(e) => return Err(e),
                },
                Err(OpenFailure::Unreadable(why)) if moved_aside.is_none() => why,
                Err(f) => return Err(f.into_error(path)),
            };
            let aside = move_aside(path)?;
            let note = format!(
                "the log store {} could not be opened ({why}); moved it aside to {} and started a new one",
                path.display(),
                aside.display()
            );
            tracing::error!("{note}");
            notes.push(note);
            moved_aside = Some((path.to_owned(), aside));
        };
        let Start {
            unclean,
            interrupted,
            next_instance,
            numbers,
            loaded,
            store_id,
        } = start;
        let filters = filter_file::FilterState::new(path, store_id, opts.block_filters);
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            db: RwLock::new(DbState::Open(Db::Rw(db.clone()))),
            path: path.to_owned(),
            opts,
            tx: Mutex::new(Some(tx)),
            queued_bytes: AtomicUsize::new(0),
            room_cv: (Mutex::new(()), std::sync::Condvar::new()),
            room_notify: tokio::sync::Notify::new(),
            dropped_lines: AtomicU64::new(0),
            next_instance: AtomicU64::new(next_instance),
            numbers: Mutex::new(numbers),
            live: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            writer: Mutex::new(None),
            health: Mutex::new(StoreHealth {
                writable: true,
                ..StoreHealth::default()
            }),
            filters,
        });
        let writer = Writer::new(db, shared.clone(), loaded);
        let io_err = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        // Two stages, in order: one thread compresses blocks while the other writes and
        // waits on fsync, so compression and the disk overlap instead of adding up.
        let (tx_w, rx_w) = mpsc::channel();
        let compressor = std::thread::Builder::new()
            .name("bpm-store-compress".into())
            .spawn(move || {
                for msg in rx {
                    if let Msg::Block(b) = &msg {
                        b.compress();
                    }
                    if tx_w.send(msg).is_err() {
                        return;
                    }
                }
            })
            .map_err(io_err)?;
        let handle = std::thread::Builder::new()
            .name("bpm-store-writer".into())
            .spawn(move || {
                let db = writer.run(rx_w);
                let _ = compressor.join();
                db
            })
            .map_err(io_err)?;
        *shared.writer.lock().unwrap() = Some(handle);
        if shared.opts.block_filters {
            filter_builder::start(&shared).map_err(io_err)?;
        }
        Ok(Opened {
            store: Store { shared },
            moved_aside,
            notes,
            unclean,
            interrupted,
        })
    }

    /// Open the store read-only, for reading without a daemon (post-crash investigation).
    /// Fails with [`StoreError::Locked`] while a daemon holds it.
    ///
    /// A store left open by a daemon that died (kill -9, power loss) cannot be read as it
    /// is: redb must first recover it, which only a writable open does. That recovery is
    /// done here (the same one the next daemon's open would do), and nothing else: bpm's
    /// own record of the unclean shutdown and of the interrupted instances is left for the
    /// next daemon, which still stops the orphans and records the recovery.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let locked = || StoreError::Locked {
            path: path.to_owned(),
        };
        // redb may panic on a damaged file rather than return an error.
        let open_ro = || {
            writer::quietly(|| ReadOnlyDatabase::open(path)).unwrap_or_else(|p| {
                Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                    writer::panic_message(&p),
                )))
            })
        };
        let db = match open_ro() {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(locked()),
            Err(redb::DatabaseError::RepairAborted) => {
                match open_rw(path, &StoreOptions::default()) {
                    Ok(db) => drop(db),
                    Err(OpenFailure::Locked) => return Err(locked()),
                    Err(f) => return Err(f.into_error(path)),
                }
                match open_ro() {
                    Ok(db) => db,
                    Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(locked()),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let version = no_panic(|| schema::stored_version(&db))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Store {
            shared: Arc::new(Shared {
                db: RwLock::new(DbState::Open(Db::Ro(Arc::new(db)))),
                path: path.to_owned(),
                opts: StoreOptions::default(),
                tx: Mutex::new(None),
                queued_bytes: AtomicUsize::new(0),
                room_cv: (Mutex::new(()), std::sync::Condvar::new()),
                room_notify: tokio::sync::Notify::new(),
                dropped_lines: AtomicU64::new(0),
                next_instance: AtomicU64::new(0),
                numbers: Mutex::new(HashMap::new()),
                live: RwLock::new(HashMap::new()),
                generation: AtomicU64::new(0),
                writer: Mutex::new(None),
                health: Mutex::new(StoreHealth::default()),
                // Offline, without a daemon: every block is read.
                filters: filter_file::FilterState::new(path, 0, false),
            }),
        })
    }
}

enum OpenFailure {
    Locked,
    Unreadable(String),
    Other(StoreError),
}

impl OpenFailure {
    fn into_error(self, path: &Path) -> StoreError {
        match self {
            OpenFailure::Locked => StoreError::Locked {
                path: path.to_owned(),
            },
            OpenFailure::Unreadable(why) => {
                StoreError::Corrupt(format!("{}: {why}", path.display()))
            }
            OpenFailure::Other(e) => e,
        }
    }
}

fn open_rw(path: &Path, opts: &StoreOptions) -> Result<Database, OpenFailure> {
    open_db(path, opts, true)
}

fn open_db(path: &Path, opts: &StoreOptions, create: bool) -> Result<Database, OpenFailure> {
    let mut builder = Database::builder();
    builder.set_cache_size(opts.cache_bytes);
    // redb may panic on some malformed files rather than return an error: treat that as
    // an unreadable file too, so the daemon moves it aside instead of crash-looping.
    let result = writer::quietly(|| {
        if create {
            builder.create(path)
        } else {
            builder.open(path)
        }
    });
    match result {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(OpenFailure::Locked),
        Ok(Err(redb::DatabaseError::UpgradeRequired(v))) => {
            Err(OpenFailure::Other(StoreError::Format {
                path: path.to_owned(),
                detail: format!("file format version {v}"),
            }))
        }
        // A file cut short (inside its header: "failed to fill whole buffer") or with bad
        // contents is unreadable; anything else (permissions, a failing disk) is not the
        // file's fault and is reported as it is.
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Err(OpenFailure::Other(StoreError::Io {
                path: path.to_owned(),
                source: e,
            }))
        }
        Ok(Err(e)) => Err(OpenFailure::Unreadable(e.to_string())),
        Err(p) => Err(OpenFailure::Unreadable(format!(
            "redb could not read it: {}",
            writer::panic_message(&p)
        ))),
    }
}

/// Reopen the store after a failure (the writer's way back). Never creates the file.
pub(crate) fn reopen(path: &Path, opts: &StoreOptions) -> Result<Database, StoreError> {
    open_db(path, opts, false).map_err(|f| match f {
        OpenFailure::Locked => StoreError::Disk(format!(
            "{} is still held (a read in progress); retrying",
            path.display()
        )),
        OpenFailure::Unreadable(why) => {
            StoreError::Disk(format!("{} cannot be reopened: {why}", path.display()))
        }
        OpenFailure::Other(StoreError::Io { source, .. }) => {
            StoreError::Disk(format!("{}: {source}", path.display()))
        }
        OpenFailure::Other(e) => e,
    })
}

/// What opening found in the store.
struct Start {
    unclean: bool,
    interrupted: Vec<InstanceMeta>,
    next_instance: u64,
    /// The last instance number of each (process, kind code).
    numbers: HashMap<(String, u8), u64>,
    loaded: writer::Loaded,
    /// The store's id (`schema::STORE_ID_KEY`).
    store_id: u64,
}

/// Bring an opened store to the current schema, mark it open, and read what the store
/// handle and the writer start from.
fn start_db(db: &Database, path: &Path) -> Result<Start, StoreError> {
    schema::migrate(db, path)?;
    let (unclean, interrupted, store_id) = mark_open(db)?;
    let next_instance = {
        let txn = db.begin_read()?;
        let t = txn.open_table(INSTANCES)?;
        let after_last = t.last()?.map_or(1, |(k, _)| k.value() + 1);
        // Also past instances that retention removed (a store from before version 5 has
        // no such mark).
        let marked = txn
            .open_table(META)?
            .get(schema::NEXT_INSTANCE_KEY)?
            .map_or(0, |v| v.value());
        after_last.max(marked)
    };
    let numbers = {
        let txn = db.begin_read()?;
        let t = txn.open_table(schema::PROCESS_NUMBERS)?;
        let mut numbers = HashMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (process, kind) = k.value();
            numbers.insert((process.to_owned(), kind), v.value());
        }
        numbers
    };
    Ok(Start {
        unclean,
        interrupted,
        next_instance,
        numbers,
        loaded: writer::Loaded::read(db)?,
        store_id,
    })
}

/// Create a new store at `path`: made complete under a temporary name in the same
/// directory, then renamed into place (never over an existing file). `None` when a file
/// appeared at `path` meanwhile.
fn create_new(path: &Path, opts: &StoreOptions) -> Result<Option<Database>, StoreError> {
    let name = file_name(path);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let tmp = path.with_file_name(format!(".{name}.new-{}-{nanos}", std::process::id()));
    let made = (|| {
        let db = open_rw(&tmp, opts).map_err(|f| f.into_error(&tmp))?;
        no_panic(|| schema::migrate(&db, path))?;
        match rename_noreplace(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(Some(db))
    })();
    if !matches!(made, Ok(Some(_))) {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// Rename `from` to `to` unless `to` exists (then `AlreadyExists`), atomically where the
/// file system allows it.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Err(std::io::ErrorKind::AlreadyExists.into()),
        // A file system without RENAME_NOREPLACE: a hard link never replaces either.
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(std::io::Error::from(e)),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned())
}

/// Move an unreadable store aside, to a name that no file has (the evidence of an earlier
/// failure is never overwritten, even by two starts within the same second).
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = file_name(path);
    for n in 0u32.. {
        let aside = if n == 0 {
            path.with_file_name(format!("{name}.corrupt-{stamp}"))
        } else {
            path.with_file_name(format!("{name}.corrupt-{stamp}.{n}"))
        };
        match rename_noreplace(path, &aside) {
            Ok(()) => return Ok(aside),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    unreachable!("some name is free")
}

/// Refuse a store written by a newer bpm before opening it for writing, which may already
/// change the file. Anything else that goes wrong here is left to the normal open to report.
fn refuse_too_new(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    let found = writer::quietly(|| {
        let db = ReadOnlyDatabase::open(path).ok()?;
        schema::stored_version(&db).ok()
    });
    match found {
        Ok(Some(found)) if found > SCHEMA_VERSION => Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Mark the store open (not cleanly closed), give it an id if it has none, and end the
/// instances the previous daemon left live. Returns whether the previous close was
/// unclean, those instances, and the store's id.
fn mark_open(db: &Database) -> Result<(bool, Vec<InstanceMeta>, u64), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    let unclean;
    let store_id;
    let mut interrupted = Vec::new();
    {
        let mut meta = txn.open_table(META)?;
        let clean = meta.get(CLEAN_KEY)?.map(|v| v.value());
        // A new store has no flag: nothing was left behind.
        unclean = clean == Some(0);
        meta.insert(CLEAN_KEY, 0)?;
        let id = meta.get(schema::STORE_ID_KEY)?.map(|v| v.value());
        store_id = match id {
            Some(id) => id,
            None => {
                let id = random_id();
                meta.insert(schema::STORE_ID_KEY, id)?;
                id
            }
        };
        let mut t = txn.open_table(INSTANCES)?;
        let mut live = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            let m: InstanceMeta = schema::decode("instance", v.value())?;
            if m.ended_us.is_none() {
                live.push(m);
            }
        }
        let now = now_us();
        for mut m in live {
            m.ended_us = Some(now);
            m.exit = Some(ExitStatus::Unknown);
            t.insert(m.id, schema::encode(&m).as_slice())?;
            interrupted.push(m);
        }
    }
    txn.commit()?;
    Ok((unclean, interrupted, store_id))
}

/// A random, non-zero id (std's hasher keys are random per process; the time and pid
/// make two ids of one process differ).
fn random_id() -> u64 {
    use std::hash::BuildHasher as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    std::collections::hash_map::RandomState::new()
        .hash_one((nanos, std::process::id()))
        .max(1)
}
