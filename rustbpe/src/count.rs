//! Counting chunk occurrences: each batch of documents is split and counted in
//! parallel with chunks borrowed from the documents (no allocation per chunk),
//! then folded into the running totals, which own one copy of each distinct chunk.

use ahash::AHashMap;
use rayon::prelude::*;

use crate::pattern::Splitter;

/// Chunk counts borrowing from the documents of one batch.
type BatchCounts<'t> = AHashMap<&'t str, u64>;

/// Running chunk counts over everything ingested so far.
#[derive(Default)]
pub struct ChunkCounts {
    pub counts: AHashMap<Box<str>, u64>,
    pub documents: u64,
    pub bytes: u64,
}

impl ChunkCounts {
    /// Splits and counts one batch of documents using all cores.
    pub fn add_batch(&mut self, splitter: &Splitter, docs: &[&str]) -> Result<(), String> {
        let batch = count_batch(splitter, docs)?;
        self.documents += docs.len() as u64;
        self.bytes += docs.iter().map(|d| d.len() as u64).sum::<u64>();
        self.counts.reserve(batch.len().saturating_sub(self.counts.capacity() - self.counts.len()));
        for (chunk, n) in batch {
            match self.counts.get_mut(chunk) {
                Some(total) => *total += n,
                None => {
                    self.counts.insert(chunk.into(), n);
                }
            }
        }
        Ok(())
    }
}

fn count_batch<'t>(splitter: &Splitter, docs: &[&'t str]) -> Result<BatchCounts<'t>, String> {
    let pieces: Vec<&'t str> = docs.iter().flat_map(|d| splitter.pieces(d)).collect();
    if pieces.is_empty() {
        return Ok(BatchCounts::default());
    }
    // A few groups per thread of about equal size balance the load without
    // creating many maps that then need merging.
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let n_groups = (rayon::current_num_threads() * 4).clamp(1, pieces.len());
    let groups = group_by_bytes(&pieces, total / n_groups + 1);
    let maps = groups
        .par_iter()
        .map(|group| {
            let mut counts = BatchCounts::default();
            for piece in *group {
                splitter.for_each_chunk(piece, |chunk| *counts.entry(chunk).or_insert(0) += 1)?;
            }
            Ok(counts)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(merge_maps(maps))
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

/// Adds all maps into the largest one.
fn merge_maps(mut maps: Vec<BatchCounts<'_>>) -> BatchCounts<'_> {
    let Some(largest) = (0..maps.len()).max_by_key(|&i| maps[i].len()) else {
        return BatchCounts::default();
    };
    let mut total = maps.swap_remove(largest);
    for map in maps {
        for (chunk, n) in map {
            *total.entry(chunk).or_insert(0) += n;
        }
    }
    total
}
