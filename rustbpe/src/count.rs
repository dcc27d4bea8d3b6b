//! Counting chunk occurrences. Each batch of documents is split and counted on
//! all cores, then folded into running totals that own their keys.
//!
//! Chunks of up to 15 bytes (nearly all of them) are keyed by their bytes
//! packed into a `u128` with the length in the top byte. Hashing and comparing
//! such keys never reads the documents again, whereas a `&str` key makes every
//! probe chase a pointer to wherever the chunk first occurred: on real text
//! that cache miss costs more than the splitting itself.

use ahash::AHashMap;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::pattern::Splitter;
use crate::words::Words;

/// Longest chunk stored inline in a `u128` key (one byte holds the length).
const INLINE_MAX: usize = 15;

/// Packs `text[start..end]` (at most `INLINE_MAX` bytes) into a key.
#[inline(always)]
fn inline_key(text: &[u8], start: usize, end: usize) -> u128 {
    let len = end - start;
    let raw = match text.get(start..start + 16) {
        // One unaligned load when 16 bytes are available, then mask.
        Some(window) => u128::from_le_bytes(window.try_into().unwrap()),
        None => {
            let mut buf = [0u8; 16];
            buf[..len].copy_from_slice(&text[start..end]);
            u128::from_le_bytes(buf)
        }
    };
    let mask = (1u128 << (8 * len)) - 1;
    (raw & mask) | ((len as u128) << 120)
}

/// The bytes of an inline key.
fn inline_bytes(key: &u128) -> ([u8; 16], usize) {
    (key.to_le_bytes(), (key >> 120) as usize)
}

/// Counts of one batch; long chunks borrow from the documents.
#[derive(Default)]
struct Tally<'t> {
    short: FxHashMap<u128, u64>,
    long: AHashMap<&'t str, u64>,
}

impl<'t> Tally<'t> {
    fn add_text(&mut self, splitter: &Splitter, text: &'t str) -> Result<(), String> {
        let bytes = text.as_bytes();
        splitter.for_each_span(text, |start, end| {
            if end - start <= INLINE_MAX {
                *self.short.entry(inline_key(bytes, start, end)).or_insert(0) += 1;
            } else {
                *self.long.entry(&text[start..end]).or_insert(0) += 1;
            }
        })
    }

    fn absorb(&mut self, other: Tally<'t>) {
        for (k, n) in other.short {
            *self.short.entry(k).or_insert(0) += n;
        }
        for (k, n) in other.long {
            *self.long.entry(k).or_insert(0) += n;
        }
    }
}

/// Running chunk counts over everything ingested so far.
#[derive(Default)]
pub struct ChunkCounts {
    short: FxHashMap<u128, u64>,
    long: AHashMap<Box<str>, u64>,
    pub documents: u64,
    pub bytes: u64,
}

impl ChunkCounts {
    /// Splits and counts one batch of documents using all cores.
    pub fn add_batch(&mut self, splitter: &Splitter, docs: &[&str]) -> Result<(), String> {
        let batch = count_batch(splitter, docs)?;
        self.documents += docs.len() as u64;
        self.bytes += docs.iter().map(|d| d.len() as u64).sum::<u64>();
        if self.short.is_empty() {
            self.short = batch.short;
        } else {
            for (k, n) in batch.short {
                *self.short.entry(k).or_insert(0) += n;
            }
        }
        for (chunk, n) in batch.long {
            match self.long.get_mut(chunk) {
                Some(total) => *total += n,
                None => {
                    self.long.insert(chunk.into(), n);
                }
            }
        }
        Ok(())
    }

    /// Number of distinct chunks.
    pub fn distinct(&self) -> usize {
        self.short.len() + self.long.len()
    }

    /// One word per distinct chunk.
    pub fn into_words(self) -> Words {
        let mut words = Words::default();
        for (key, &n) in &self.short {
            let (buf, len) = inline_bytes(key);
            words.push(&buf[..len], n);
        }
        for (chunk, &n) in &self.long {
            words.push(chunk.as_bytes(), n);
        }
        words
    }
}

fn count_batch<'t>(splitter: &Splitter, docs: &[&'t str]) -> Result<Tally<'t>, String> {
    let pieces: Vec<&'t str> = docs.iter().flat_map(|d| splitter.pieces(d)).collect();
    if pieces.is_empty() {
        return Ok(Tally::default());
    }
    // A few groups per thread of about equal size balance the load without
    // creating many maps that then need merging.
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let n_groups = (rayon::current_num_threads() * 4).clamp(1, pieces.len());
    let groups = group_by_bytes(&pieces, total / n_groups + 1);
    let tallies = groups
        .par_iter()
        .map(|group| {
            let mut tally = Tally::default();
            for piece in *group {
                tally.add_text(splitter, piece)?;
            }
            Ok(tally)
        })
        .collect::<Result<Vec<_>, String>>()?;
    // Merge into the largest tally.
    let mut tallies = tallies;
    let largest = (0..tallies.len())
        .max_by_key(|&i| tallies[i].short.len())
        .unwrap_or(0);
    let mut total = tallies.swap_remove(largest);
    for tally in tallies {
        total.absorb(tally);
    }
    Ok(total)
}

/// Consecutive runs of `pieces` holding at least `target` bytes each (the last may hold less).
fn group_by_bytes<'a, 't>(pieces: &'a [&'t str], target: usize) -> Vec<&'a [&'t str]> {
    let mut groups = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, p) in pieces.iter().enumerate() {
        size += p.len();
        if size >= target {
            groups.push(&pieces[start..=i]);
            start = i + 1;
            size = 0;
        }
    }
    if start < pieces.len() {
        groups.push(&pieces[start..]);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_keys_round_trip() {
        let text = b"abcdefghijklmnopqrstuvwxyz";
        for start in 0..text.len() {
            for end in start + 1..=(start + INLINE_MAX).min(text.len()) {
                let (buf, len) = inline_bytes(&inline_key(text, start, end));
                assert_eq!(&buf[..len], &text[start..end]);
            }
        }
    }
}
