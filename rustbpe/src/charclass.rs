//! Character classes used by the GPT-4 family of split patterns.
//!
//! The hand-written splitter must agree with fancy-regex on every code point, so
//! instead of relying on `char::is_alphabetic` and friends (whose Unicode version
//! and definitions differ) the classes are read out of regex-syntax, the crate
//! that fancy-regex itself compiles `\p{L}`, `\p{N}` and `\s` with.

use std::sync::LazyLock;

use regex_syntax::hir::{Class as HirClass, HirKind};

/// The four disjoint classes the split patterns distinguish.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Class {
    /// Neither whitespace, a letter nor a number (`[^\s\p{L}\p{N}]`).
    Other = 0,
    /// `\p{L}`
    Letter = 1,
    /// `\p{N}`
    Number = 2,
    /// `\s` (Unicode White_Space)
    Space = 3,
}

/// Class lookup: a flat table for the Basic Multilingual Plane (one byte per
/// code point keeps the hot path to a single load) and sorted ranges above it.
pub struct ClassTable {
    bmp: Vec<Class>,
    astral: Vec<(u32, u32, Class)>,
    /// Code points matched case-insensitively by each letter of `FOLD_LETTERS`
    /// (for example `(?i:s)` also matches U+017F LATIN SMALL LETTER LONG S).
    folds: [Vec<char>; 8],
}

/// Letters of the contraction alternative `'(?i:[sdmt]|ll|ve|re)`, in `folds` order.
pub const FOLD_LETTERS: [char; 8] = ['s', 'd', 'm', 't', 'l', 'v', 'e', 'r'];

pub static CLASSES: LazyLock<ClassTable> = LazyLock::new(ClassTable::build);

/// Inclusive code point ranges of a single-class regex such as `\p{L}`.
fn class_ranges(regex: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::Parser::new()
        .parse(regex)
        .expect("built-in class regex must parse");
    match hir.kind() {
        HirKind::Class(HirClass::Unicode(cls)) => cls
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("expected a Unicode class for {regex}, got {other:?}"),
    }
}

fn chars_of(regex: &str) -> Vec<char> {
    class_ranges(regex)
        .into_iter()
        .flat_map(|(a, b)| (a..=b).filter_map(char::from_u32))
        .collect()
}

impl ClassTable {
    fn build() -> Self {
        let mut bmp = vec![Class::Other; 0x10000];
        let mut astral = Vec::new();
        for (regex, class) in [
            (r"\p{L}", Class::Letter),
            (r"\p{N}", Class::Number),
            (r"\s", Class::Space),
        ] {
            for (start, end) in class_ranges(regex) {
                for cp in start..=end.min(0xFFFF) {
                    bmp[cp as usize] = class;
                }
                if end > 0xFFFF {
                    astral.push((start.max(0x10000), end, class));
                }
            }
        }
        astral.sort_unstable_by_key(|r| r.0);
        let folds = FOLD_LETTERS.map(|c| chars_of(&format!("(?i:{c})")));
        ClassTable { bmp, astral, folds }
    }

    /// Whether `c` matches `(?i:letter)`; `letter` is an index into `FOLD_LETTERS`.
    #[inline]
    pub fn folds_to(&self, c: char, letter: usize) -> bool {
        self.folds[letter].contains(&c)
    }

    #[inline(always)]
    pub fn of_ascii(&self, b: u8) -> Class {
        self.bmp[b as usize]
    }

    #[inline]
    pub fn of(&self, cp: u32) -> Class {
        if cp < 0x10000 {
            return self.bmp[cp as usize];
        }
        match self.astral.binary_search_by(|&(s, e, _)| {
            if e < cp {
                std::cmp::Ordering::Less
            } else if s > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => self.astral[i].2,
            Err(_) => Class::Other,
        }
    }
}
