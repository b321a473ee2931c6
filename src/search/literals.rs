//! What every match of a pattern must contain: its required literals, read from the
//! pattern's syntax tree (`regex-syntax`'s HIR, parsed with the flags search compiles
//! with), as a condition of ANDs and ORs of literals (Russ Cox's trigram-query method).
//! `needle.*xyzzy` needs `needle` and `xyzzy`; `(GET|POST) /api` needs `get /api` or
//! `post /api`; `\d{3}ms$` needs nothing usable (`ms` is shorter than a trigram).
//!
//! regex-syntax's own literal extractor gives a match's prefixes or suffixes; the walk
//! here also keeps the literals inside a pattern (`took=\d+ms.*needle` needs `needle`).
//!
//! Case-insensitivity comes in the tree already (`(?i)k` is the class `[Kk\u{212A}]`):
//! every literal is folded the way block filters fold text ([`crate::logs::filter::fold`]),
//! and a small class becomes the set of its (folded) members. The condition only ever
//! weakens what the pattern says, so a block it rules out cannot hold a matching line.

use std::collections::BTreeSet;

use regex_syntax::hir::{Class, Hir, HirKind};

use crate::logs::filter::fold;

/// Exact sets larger than this are given up for the literals they imply.
const MAX_SET: usize = 16;
/// Classes with more members than this are "any character".
const MAX_CLASS: u32 = 8;
/// Literals shorter than this tell a trigram filter nothing.
const MIN_LITERAL: usize = 3;

/// A condition every matching line meets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// No condition: every block may match.
    Anything,
    /// The line contains this (folded) literal.
    Literal(Vec<u8>),
    All(Vec<Need>),
    AnyOf(Vec<Need>),
}

impl Need {
    /// The required literals of `pattern` as search compiles it (multi-line, with the
    /// given case-insensitivity). [`Need::Anything`] when it does not parse.
    pub fn of(pattern: &str, case_insensitive: bool) -> Need {
        let parsed = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .multi_line(true)
            .case_insensitive(case_insensitive)
            .build()
            .parse(pattern);
        match parsed {
            Ok(hir) => analyze(&hir).need(),
            Err(_) => Need::Anything,
        }
    }

    /// Whether a block may hold a matching line, given whether it may hold a literal.
    pub fn eval(&self, has: &mut impl FnMut(&[u8]) -> bool) -> bool {
        match self {
            Need::Anything => true,
            Need::Literal(l) => has(l),
            Need::All(v) => v.iter().all(|n| n.eval(has)),
            Need::AnyOf(v) => v.iter().any(|n| n.eval(has)),
        }
    }

    fn all(v: Vec<Need>) -> Need {
        let mut v: Vec<Need> = v.into_iter().filter(|n| *n != Need::Anything).collect();
        match v.len() {
            0 => Need::Anything,
            1 => v.pop().expect("one"),
            _ => Need::All(v),
        }
    }

    fn any_of(v: Vec<Need>) -> Need {
        if v.is_empty() || v.contains(&Need::Anything) {
            return Need::Anything;
        }
        let mut v = v;
        if v.len() == 1 {
            return v.pop().expect("one");
        }
        Need::AnyOf(v)
    }

    fn literal(l: Vec<u8>) -> Need {
        if l.len() < MIN_LITERAL {
            Need::Anything
        } else {
            Need::Literal(l)
        }
    }
}

/// What is known of the strings a node matches.
struct Info {
    /// All of them (folded), when there are few.
    exact: Option<BTreeSet<Vec<u8>>>,
    /// Otherwise a condition each of them meets.
    need: Need,
}

impl Info {
    fn exact(set: BTreeSet<Vec<u8>>) -> Info {
        Info {
            exact: Some(set),
            need: Need::Anything,
        }
    }
    fn empty_string() -> Info {
        Info::exact(BTreeSet::from([Vec::new()]))
    }
    fn need(self) -> Need {
        match self.exact {
            Some(set) => Need::any_of(set.into_iter().map(Need::literal).collect()),
            None => self.need,
        }
    }
}

fn analyze(hir: &Hir) -> Info {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Info::empty_string(),
        HirKind::Literal(l) => {
            Info::exact(BTreeSet::from([l.0.iter().map(|&b| fold(b)).collect()]))
        }
        HirKind::Class(c) => class(c).map_or(
            Info {
                exact: None,
                need: Need::Anything,
            },
            Info::exact,
        ),
        HirKind::Capture(c) => analyze(&c.sub),
        HirKind::Repetition(r) => {
            if r.min == 0 {
                return Info {
                    exact: None,
                    need: Need::Anything,
                };
            }
            let sub = analyze(&r.sub);
            if r.min == 1 && r.max == Some(1) {
                return sub;
            }
            Info {
                exact: None,
                need: sub.need(),
            }
        }
        HirKind::Concat(subs) => concat(subs),
        HirKind::Alternation(subs) => {
            let infos: Vec<Info> = subs.iter().map(analyze).collect();
            let total: usize = infos
                .iter()
                .map(|i| i.exact.as_ref().map_or(usize::MAX / 2, BTreeSet::len))
                .sum();
            if total <= MAX_SET {
                let set = infos.into_iter().flat_map(|i| i.exact.unwrap_or_default());
                return Info::exact(set.collect());
            }
            Info {
                exact: None,
                need: Need::any_of(infos.into_iter().map(Info::need).collect()),
            }
        }
    }
}

/// A concatenation: runs of exactly known parts multiply out into literals (while the set
/// stays small); each run, and each part known only by a condition, is required.
fn concat(subs: &[Hir]) -> Info {
    let mut needs = Vec::new();
    let mut run: BTreeSet<Vec<u8>> = BTreeSet::from([Vec::new()]);
    let mut broken = false;
    for sub in subs {
        let info = analyze(sub);
        match info.exact {
            Some(set) if run.len() * set.len() <= MAX_SET => {
                run = run
                    .iter()
                    .flat_map(|a| {
                        set.iter().map(move |b| {
                            let mut s = a.clone();
                            s.extend_from_slice(b);
                            s
                        })
                    })
                    .collect();
            }
            Some(set) => {
                needs.push(Info::exact(std::mem::replace(&mut run, set)).need());
                broken = true;
            }
            None => {
                let done = std::mem::replace(&mut run, BTreeSet::from([Vec::new()]));
                needs.push(Info::exact(done).need());
                needs.push(info.need);
                broken = true;
            }
        }
    }
    if !broken {
        return Info::exact(run);
    }
    needs.push(Info::exact(run).need());
    Info {
        exact: None,
        need: Need::all(needs),
    }
}

/// The members of a small class, UTF-8 encoded and folded.
fn class(c: &Class) -> Option<BTreeSet<Vec<u8>>> {
    match c {
        Class::Unicode(u) => {
            let n: u32 = u
                .ranges()
                .iter()
                .map(|r| u32::from(r.end()) - u32::from(r.start()) + 1)
                .sum();
            if n > MAX_CLASS {
                return None;
            }
            let mut out = BTreeSet::new();
            for r in u.ranges() {
                for ch in r.start()..=r.end() {
                    let mut buf = [0u8; 4];
                    let s = ch.encode_utf8(&mut buf);
                    out.insert(s.bytes().map(fold).collect());
                }
            }
            Some(out)
        }
        Class::Bytes(b) => {
            let n: u32 = b
                .ranges()
                .iter()
                .map(|r| u32::from(r.end()) - u32::from(r.start()) + 1)
                .sum();
            if n > MAX_CLASS {
                return None;
            }
            let mut out = BTreeSet::new();
            for r in b.ranges() {
                for byte in r.start()..=r.end() {
                    out.insert(vec![fold(byte)]);
                }
            }
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Need {
        Need::Literal(s.as_bytes().to_vec())
    }

    #[test]
    fn required_literals_of_common_patterns() {
        assert_eq!(Need::of("needle-xyzzy", false), lit("needle-xyzzy"));
        assert_eq!(Need::of("Needle-XYZZY", true), lit("needle-xyzzy"));
        assert_eq!(
            Need::of("needle.*xyzzy", false),
            Need::All(vec![lit("needle"), lit("xyzzy")])
        );
        assert_eq!(
            Need::of("(GET|POST) /api", false),
            Need::AnyOf(vec![lit("get /api"), lit("post /api")])
        );
        assert_eq!(Need::of(r"\d{3}ms$", false), Need::Anything);
        assert_eq!(Need::of("a|bcd", false), Need::Anything);
        assert_eq!(Need::of("(abc)?def", false), lit("def"));
        assert_eq!(Need::of("x(abc)+", false), lit("abc"));
        assert_eq!(
            Need::of("took=\\d+ms.*needle", false),
            Need::All(vec![lit("took="), lit("needle")])
        );
        assert_eq!(Need::of("(", false), Need::Anything);
    }

    #[test]
    fn case_insensitive_classes_keep_every_spelling() {
        // (?i)k also matches the Kelvin sign.
        let need = Need::of("kkk", true);
        let mut seen = Vec::new();
        assert!(!need.eval(&mut |l| {
            seen.push(l.to_vec());
            false
        }));
        assert!(seen.contains(&b"kkk".to_vec()));
        assert!(seen.iter().any(|l| l.starts_with("\u{212A}".as_bytes())));
    }
}
