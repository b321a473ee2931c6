//! Walking an instance's stored blocks in spite of damage on disk.
//!
//! A store damaged inside its pages (a bad sector, bytes overwritten) must not make a whole
//! instance unreadable, let alone the store. redb returns an error for some damaged pages
//! and panics for others (it trusts its page headers), so every redb call here runs under
//! [`no_panic`]: unwinding drops the read transaction's iterator and nothing else, and a
//! read transaction changes nothing, so a panic costs nothing but the damaged rows.
//!
//! When a walk fails at some key, the next readable key is found by probing: a range that
//! starts inside a damaged page fails, one that starts past it works. Probes step forward
//! exponentially until one works, then a binary search finds the first key that works.
//! The lines between the last good block and the next one are counted as unreadable (from
//! their sequence numbers, so lines dropped before they were stored, next to the damage,
//! count too).

use std::cell::OnceCell;
use std::ops::ControlFlow;

use redb::{ReadOnlyTable, ReadTransaction};

use super::block::{self, BlockView};
use super::schema::{self, BLOCKS, INSTANCES};
use super::writer::no_panic;
use super::{InstanceMeta, StoreError};

type Blocks = ReadOnlyTable<(u64, u64), &'static [u8]>;
type Visit<'f> = &'f mut dyn FnMut(BlockView<'_>) -> ControlFlow<()>;

/// The instance's retained lines, `first_seq..next_seq`, from its record (empty if that
/// cannot be read either).
fn bounds(txn: &ReadTransaction, id: u64) -> (u64, u64) {
    let meta = no_panic(|| {
        let t = txn.open_table(INSTANCES)?;
        let v = t.get(id)?;
        v.map(|v| schema::decode::<InstanceMeta>("instance", v.value()))
            .transpose()
    });
    meta.ok()
        .flatten()
        .map_or((0, 0), |m| (m.first_seq, m.next_seq))
}

fn decode<'a>(first: u64, stored: &'a [u8], buf: &'a mut Vec<u8>) -> Option<BlockView<'a>> {
    let raw = block::stored_raw(first, stored, buf).ok()?;
    BlockView::parse(first, raw).ok()
}

/// Visit the stored blocks of `id` in order, from the one holding `from_seq` to those
/// starting before `end`. Returns whether `f` stopped the walk, and the lines skipped.
pub(super) fn scan(
    txn: &ReadTransaction,
    id: u64,
    from_seq: u64,
    end: u64,
    f: Visit<'_>,
) -> Result<(ControlFlow<()>, u64), StoreError> {
    let t: Blocks = no_panic(|| Ok(txn.open_table(BLOCKS)?))?;
    let known = OnceCell::new();
    let top = || {
        *known.get_or_init(|| {
            if end == u64::MAX {
                bounds(txn, id).1
            } else {
                end
            }
        })
    };
    let start = no_panic(|| {
        let row = t.range((id, 0)..=(id, from_seq))?.next_back().transpose()?;
        Ok(row.map_or(0, |(k, _)| k.value().1))
    });
    let mut pos = match start {
        Ok(s) => s,
        Err(e) if e.is_disk() => return Err(e),
        Err(_) => from_seq,
    };
    // Lines before `good_end` are accounted for; while `bad`, those from it on are not.
    let mut good_end = from_seq;
    let mut bad = false;
    let mut unreadable = 0u64;
    let mut buf = Vec::new();
    loop {
        let walked = no_panic(|| {
            for row in t.range((id, pos)..(id, end))? {
                let (k, v) = row?;
                let (kid, first) = k.value();
                // Damaged pages can make the iterator wander (even in circles): keys
                // must go strictly up, within the range asked for.
                if kid != id || first < pos || first >= end {
                    return Err(StoreError::Corrupt("block keys out of order".into()));
                }
                pos = first + 1;
                match decode(first, v.value(), &mut buf) {
                    Some(view) => {
                        if bad {
                            unreadable += first.saturating_sub(good_end);
                            bad = false;
                        }
                        good_end = good_end.max(view.end_seq());
                        if f(view).is_break() {
                            return Ok(ControlFlow::Break(()));
                        }
                    }
                    None => bad = true,
                }
            }
            Ok(ControlFlow::Continue(()))
        });
        match walked {
            Ok(ControlFlow::Break(())) => return Ok((ControlFlow::Break(()), unreadable)),
            Ok(ControlFlow::Continue(())) => break,
            Err(e) if e.is_disk() => return Err(e),
            Err(_) => {
                bad = true;
                match probe(&t, id, pos, end.min(top().max(pos + 1)))? {
                    Some(next) if next < end => pos = next,
                    _ => break,
                }
            }
        }
    }
    if bad {
        unreadable += top().saturating_sub(good_end);
    }
    Ok((ControlFlow::Continue(()), unreadable))
}

/// The first key of `id` at or after `from` (and before `limit`) that can be reached.
fn probe(t: &Blocks, id: u64, from: u64, limit: u64) -> Result<Option<u64>, StoreError> {
    let reach = |s: u64| {
        no_panic(|| {
            let row = t.range((id, s)..(id, u64::MAX))?.next().transpose()?;
            match row.map(|(k, _)| k.value()) {
                Some((kid, k)) if kid == id && k >= s => Ok(Some(k)),
                Some(_) => Err(StoreError::Corrupt("block keys out of order".into())),
                None => Ok(None),
            }
        })
    };
    let mut lo = from;
    let mut step = 1u64;
    let (mut hi, mut found) = loop {
        let s = from.saturating_add(step);
        if s >= limit {
            return Ok(None);
        }
        match reach(s) {
            Ok(Some(k)) => break (s, k),
            Ok(None) => return Ok(None),
            Err(e) if e.is_disk() => return Err(e),
            Err(_) => {
                lo = s;
                step = step.saturating_mul(2);
            }
        }
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match reach(mid) {
            Ok(Some(k)) => {
                hi = mid;
                found = k;
            }
            Ok(None) => lo = mid,
            Err(e) if e.is_disk() => return Err(e),
            Err(_) => lo = mid,
        }
    }
    Ok(Some(found))
}

/// Visit the stored blocks of `id` that start before `end`, newest first. Returns whether
/// `f` stopped the walk, and the lines skipped.
pub(super) fn scan_rev(
    txn: &ReadTransaction,
    id: u64,
    end: u64,
    f: Visit<'_>,
) -> Result<(ControlFlow<()>, u64), StoreError> {
    let t: Blocks = no_panic(|| Ok(txn.open_table(BLOCKS)?))?;
    let known = OnceCell::new();
    let known = || *known.get_or_init(|| bounds(txn, id));
    let top = || if end == u64::MAX { known().1 } else { end };
    // Keys below `hi` are left to visit; after a probe, from `resume` down (a range that
    // ends exactly at a key it found, so that it descends into that key's page).
    let mut hi = end;
    let mut resume: Option<u64> = None;
    // Lines from `good_start` on are accounted for; while `bad`, those below it are not.
    let mut good_start: Option<u64> = None;
    let mut bad = false;
    let mut unreadable = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut visited = false;
        let walked = no_panic(|| {
            let rows = match resume {
                Some(k) => t.range((id, 0)..=(id, k))?,
                None => t.range((id, 0)..(id, hi))?,
            };
            for row in rows.rev() {
                let (k, v) = row?;
                let (kid, first) = k.value();
                if kid != id || first >= hi {
                    return Err(StoreError::Corrupt("block keys out of order".into()));
                }
                hi = first;
                visited = true;
                match decode(first, v.value(), &mut buf) {
                    Some(view) => {
                        if bad {
                            let upper = good_start.unwrap_or_else(top);
                            unreadable += upper.saturating_sub(view.end_seq());
                            bad = false;
                        }
                        good_start = Some(first);
                        if f(view).is_break() {
                            return Ok(ControlFlow::Break(()));
                        }
                    }
                    None => bad = true,
                }
            }
            Ok(ControlFlow::Continue(()))
        });
        match walked {
            Ok(ControlFlow::Break(())) => return Ok((ControlFlow::Break(()), unreadable)),
            Ok(ControlFlow::Continue(())) => break,
            Err(e) if e.is_disk() => return Err(e),
            Err(_) => {
                bad = true;
                if !visited && let Some(k) = resume {
                    // Not even the key found can be read: look below it.
                    hi = k;
                }
                match probe_back(&t, id, hi)? {
                    Some(k) => resume = Some(k),
                    None => break,
                }
            }
        }
    }
    if bad {
        let upper = good_start.unwrap_or_else(top);
        unreadable += upper.saturating_sub(known().0);
    }
    Ok((ControlFlow::Continue(()), unreadable))
}

/// The last key of `id` before `hi` that can be reached.
fn probe_back(t: &Blocks, id: u64, hi: u64) -> Result<Option<u64>, StoreError> {
    let reach = |s: u64| {
        no_panic(|| {
            let row = t.range((id, 0)..=(id, s))?.next_back().transpose()?;
            match row.map(|(k, _)| k.value()) {
                Some((kid, k)) if kid == id && k <= s => Ok(Some(k)),
                Some(_) => Err(StoreError::Corrupt("block keys out of order".into())),
                None => Ok(None),
            }
        })
    };
    if hi == 0 {
        return Ok(None);
    }
    let mut fail = hi;
    let mut step = 1u64;
    let (mut ok, mut found) = loop {
        let s = hi.saturating_sub(step);
        match reach(s) {
            Ok(Some(k)) => break (s, k),
            Ok(None) => return Ok(None),
            Err(e) if e.is_disk() => return Err(e),
            Err(_) if s == 0 => return Ok(None),
            Err(_) => {
                fail = s;
                step = step.saturating_mul(2);
            }
        }
    };
    while fail - ok > 1 {
        let mid = ok + (fail - ok) / 2;
        match reach(mid) {
            Ok(Some(k)) => {
                ok = mid;
                found = k;
            }
            Ok(None) => break,
            Err(e) if e.is_disk() => return Err(e),
            Err(_) => fail = mid,
        }
    }
    Ok(Some(found))
}
