//! Reading the log store in tests.

use std::path::Path;

use bpm::logs::{Filter, Line, Store, StoreOptions, Window};

/// Open (or create) a store with the default options.
pub fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions::default()).unwrap().store
}

/// The texts of `lines`.
pub fn texts(lines: &[Line]) -> Vec<String> {
    lines.iter().map(|l| l.text().into_owned()).collect()
}

/// The texts of an instance's lines in `window`, unfiltered.
pub fn read_texts(store: &Store, instance: u64, window: Window) -> Vec<String> {
    texts(&store.read(instance, window, &Filter::default()).unwrap())
}
