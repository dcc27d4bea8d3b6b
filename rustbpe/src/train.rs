//! Incremental BPE training with a lazy max-heap.
//!
//! Every distinct chunk becomes a "word" (its bytes as token ids) weighted by
//! how often the chunk occurred. A merge only touches the words that contain
//! its pair, so the trainer keeps, per pair, its weighted count and the list of
//! words it occurs in, and updates both from the local changes of each merge.
//!
//! The merge order equals the naive algorithm "count all adjacent pairs of all
//! words, take the most frequent (ties: the smallest pair), merge it everywhere
//! left to right without overlap, repeat":
//! - a pair only gains occurrences in the step that creates the newer of its
//!   two tokens, so one position list per pair, built in that step, is complete;
//! - counts of existing pairs only decrease, so a heap entry's count is an
//!   upper bound of the pair's current count, and an entry whose count is still
//!   current when it reaches the top is the true maximum (stale entries are
//!   refreshed and pushed back).

use dary_heap::OctonaryHeap;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::words::{Words, pair_key, split_key};

/// A merge affecting at least this many words is applied in parallel.
const PARALLEL_WORDS: usize = 2048;

/// A heap entry: larger counts first, then the lexicographically smaller pair.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Candidate {
    count: u64,
    pair: u64,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.count
            .cmp(&other.count)
            .then_with(|| other.pair.cmp(&self.pair))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A pair created by the current merge: its net count change and the words it
/// appeared in (ascending, without repeats).
#[derive(Default)]
struct NewPair {
    count: i64,
    words: Vec<u32>,
}

/// Changes of one thread's share of a parallel merge step.
#[derive(Default)]
struct StepChanges {
    /// Count decrements of pairs that existed before the step.
    old: FxHashMap<u64, i64>,
    /// Pairs containing the new token.
    new: FxHashMap<u64, NewPair>,
}

struct Trainer {
    words: Words,
    /// Weighted occurrence count of every live pair.
    counts: FxHashMap<u64, i64>,
    /// Words each live pair occurs in (a superset: entries may be stale), ascending.
    positions: FxHashMap<u64, Vec<u32>>,
    heap: OctonaryHeap<Candidate>,
    /// Pairs created by the current merge (kept to reuse its allocation).
    new_pairs: FxHashMap<u64, NewPair>,
}

/// Learns up to `num_merges` merges; merge `i` creates token `256 + i`.
/// Stops early when no pair is left.
pub fn train(words: Words, num_merges: usize) -> Vec<(u32, u32)> {
    let mut trainer = Trainer::new(words);
    let mut merges = Vec::with_capacity(num_merges.min(1 << 20));
    let log_every = (num_merges / 100).max(1);
    while merges.len() < num_merges {
        let Some(top) = trainer.heap.pop() else { break };
        let current = trainer.counts.get(&top.pair).copied().unwrap_or(0);
        if current <= 0 {
            trainer.forget(top.pair);
            continue;
        }
        if current as u64 != top.count {
            trainer.heap.push(Candidate {
                count: current as u64,
                pair: top.pair,
            });
            continue;
        }
        let new_id = 256 + merges.len() as u32;
        trainer.merge(top.pair, new_id);
        merges.push(split_key(top.pair));
        if merges.len() % log_every == 0 {
            let (a, b) = split_key(top.pair);
            log::info!(
                "merge {}/{}: ({a}, {b}) -> {new_id} (count {})",
                merges.len(),
                num_merges,
                top.count
            );
        }
    }
    if merges.len() < num_merges {
        log::warn!(
            "ran out of pairs after {} of {} merges",
            merges.len(),
            num_merges
        );
    }
    merges
}

impl Trainer {
    fn new(words: Words) -> Self {
        let (counts, positions) = initial_pairs(&words);
        let candidates: Vec<Candidate> = counts
            .iter()
            .filter(|&(_, &c)| c > 0)
            .map(|(&pair, &count)| Candidate {
                count: count as u64,
                pair,
            })
            .collect();
        log::info!(
            "{} distinct pairs in {} words",
            candidates.len(),
            words.len()
        );
        Trainer {
            words,
            counts,
            positions,
            heap: OctonaryHeap::from(candidates),
            new_pairs: FxHashMap::default(),
        }
    }

    fn forget(&mut self, pair: u64) {
        self.counts.remove(&pair);
        self.positions.remove(&pair);
    }

    /// Replaces `pair` by `new_id` in every word and updates counts, positions and heap.
    fn merge(&mut self, pair: u64, new_id: u32) {
        let list = self.positions.remove(&pair).unwrap_or_default();
        self.counts.remove(&pair);
        if list.len() >= PARALLEL_WORDS {
            self.merge_parallel(pair, new_id, &list);
        } else {
            let counts = &mut self.counts;
            let words = &mut self.words;
            let mut lens = OffsetLens {
                base: 0,
                lens: &mut words.lens,
            };
            let (starts, weights) = (&words.starts, &words.counts);
            apply_merge(
                &mut words.tokens,
                0,
                &mut lens,
                starts,
                weights,
                &list,
                pair,
                new_id,
                &mut self.new_pairs,
                |p, d| {
                    // A count reaching zero is dropped lazily when its heap entry surfaces.
                    if let Some(c) = counts.get_mut(&p) {
                        *c += d;
                    }
                },
            );
        }
        for (p, np) in self.new_pairs.drain() {
            if np.count > 0 {
                self.counts.insert(p, np.count);
                self.positions.insert(p, np.words);
                self.heap.push(Candidate {
                    count: np.count as u64,
                    pair: p,
                });
            }
        }
    }

    /// Splits the affected words into one contiguous share per thread; each
    /// share owns a disjoint slice of the token arena, so no locking is needed.
    fn merge_parallel(&mut self, pair: u64, new_id: u32, list: &[u32]) {
        let threads = rayon::current_num_threads().max(1);
        let share = list.len().div_ceil(threads * 2);
        let parts: Vec<&[u32]> = list.chunks(share).collect();

        debug_assert!(
            list.windows(2).all(|w| w[0] < w[1]),
            "position lists must be ascending"
        );
        let words = &mut self.words;
        let (starts, weights) = (&words.starts, &words.counts);
        let mut slices = Vec::with_capacity(parts.len());
        let mut rest_tokens: &mut [u32] = &mut words.tokens;
        let mut rest_lens: &mut [u32] = &mut words.lens;
        let (mut tok_base, mut len_base) = (0usize, 0usize);
        for part in parts.iter().skip(1) {
            let first = part[0] as usize;
            let (t_head, t_tail) =
                std::mem::take(&mut rest_tokens).split_at_mut(starts[first] as usize - tok_base);
            let (l_head, l_tail) = std::mem::take(&mut rest_lens).split_at_mut(first - len_base);
            slices.push((tok_base, t_head, len_base, l_head));
            rest_tokens = t_tail;
            rest_lens = l_tail;
            tok_base = starts[first] as usize;
            len_base = first;
        }
        slices.push((tok_base, rest_tokens, len_base, rest_lens));

        let results: Vec<StepChanges> = parts
            .into_par_iter()
            .zip(slices)
            .map(|(part, (tok_base, tokens, len_base, lens))| {
                let mut changes = StepChanges::default();
                let mut lens = OffsetLens {
                    base: len_base,
                    lens,
                };
                let old = &mut changes.old;
                apply_merge(
                    tokens,
                    tok_base,
                    &mut lens,
                    starts,
                    weights,
                    part,
                    pair,
                    new_id,
                    &mut changes.new,
                    |p, d| {
                        *old.entry(p).or_insert(0) += d;
                    },
                );
                changes
            })
            .collect();

        // Shares are in word order, so concatenated position lists stay ascending.
        for part in results {
            for (p, d) in part.old {
                if let Some(c) = self.counts.get_mut(&p) {
                    *c += d;
                }
            }
            for (p, np) in part.new {
                let entry = self.new_pairs.entry(p).or_default();
                entry.count += np.count;
                entry.words.extend(np.words);
            }
        }
    }
}

/// Word lengths addressed by word index, possibly a slice starting at `base`.
pub struct OffsetLens<'a> {
    pub base: usize,
    pub lens: &'a mut [u32],
}

/// Merges `pair` into `new_id` in the words of `list`. Changes to pairs with
/// the new token go to `new`; decrements of older pairs go to `old`.
/// `tokens` is the arena slice starting at token offset `tok_base`.
#[allow(clippy::too_many_arguments)]
fn apply_merge(
    tokens: &mut [u32],
    tok_base: usize,
    lens: &mut OffsetLens<'_>,
    starts: &[u64],
    weights: &[u64],
    list: &[u32],
    pair: u64,
    new_id: u32,
    new: &mut FxHashMap<u64, NewPair>,
    mut old: impl FnMut(u64, i64),
) {
    let (a, b) = split_key(pair);
    for &w in list {
        let wi = w as usize;
        let start = starts[wi] as usize - tok_base;
        let len = lens.lens[wi - lens.base] as usize;
        let weight = weights[wi] as i64;
        let word = &mut tokens[start..start + len];
        let new_len = merge_word(word, a, b, new_id, |p, delta| {
            if p == pair {
                return;
            }
            let (l, r) = split_key(p);
            if l == new_id || r == new_id {
                let entry = new.entry(p).or_default();
                entry.count += delta * weight;
                if delta > 0 && entry.words.last() != Some(&w) {
                    entry.words.push(w);
                }
            } else {
                old(p, delta * weight);
            }
        });
        lens.lens[wi - lens.base] = new_len as u32;
    }
}

/// Replaces every non-overlapping occurrence of `(a, b)`, left to right, by
/// `x` in place and returns the new length. `change(pair, ±1)` reports each
/// pair occurrence that disappears or appears (except those of `(a, b)`
/// itself): around an occurrence with left neighbour `l` (already rewritten,
/// so runs like `abab -> xx` come out right) and right neighbour `r`, the
/// pairs `(l, a)` and `(b, r)` vanish and `(l, x)` and `(x, r)` appear.
#[inline]
pub fn merge_word(
    word: &mut [u32],
    a: u32,
    b: u32,
    x: u32,
    mut change: impl FnMut(u64, i64),
) -> usize {
    let n = word.len();
    let Some(first) = word.windows(2).position(|w| w[0] == a && w[1] == b) else {
        return n;
    };
    let (mut read, mut write) = (first, first);
    while read < n {
        if read + 1 < n && word[read] == a && word[read + 1] == b {
            if write > 0 {
                let left = word[write - 1];
                change(pair_key(left, a), -1);
                change(pair_key(left, x), 1);
            }
            if read + 2 < n {
                let right = word[read + 2];
                change(pair_key(b, right), -1);
                change(pair_key(x, right), 1);
            }
            word[write] = x;
            read += 2;
        } else {
            word[write] = word[read];
            read += 1;
        }
        write += 1;
    }
    write
}

/// Counts and positions of every adjacent pair, computed in parallel over
/// contiguous ranges of words (so position lists come out ascending).
fn initial_pairs(words: &Words) -> (FxHashMap<u64, i64>, FxHashMap<u64, Vec<u32>>) {
    let n = words.len();
    let threads = rayon::current_num_threads().max(1);
    let step = n.div_ceil(threads * 4).max(1);
    let ranges: Vec<(usize, usize)> = (0..n)
        .step_by(step)
        .map(|s| (s, (s + step).min(n)))
        .collect();
    let partials: Vec<_> = ranges
        .into_par_iter()
        .map(|(lo, hi)| {
            let mut counts: FxHashMap<u64, i64> = FxHashMap::default();
            let mut positions: FxHashMap<u64, Vec<u32>> = FxHashMap::default();
            for w in lo..hi {
                let weight = words.counts[w] as i64;
                for pair in words.word(w).windows(2) {
                    let key = pair_key(pair[0], pair[1]);
                    *counts.entry(key).or_insert(0) += weight;
                    let list = positions.entry(key).or_default();
                    if list.last() != Some(&(w as u32)) {
                        list.push(w as u32);
                    }
                }
            }
            (counts, positions)
        })
        .collect();

    let mut partials = partials.into_iter();
    let (mut counts, mut positions) = partials.next().unwrap_or_default();
    for (c, p) in partials {
        for (key, v) in c {
            *counts.entry(key).or_insert(0) += v;
        }
        for (key, list) in p {
            positions.entry(key).or_default().extend(list);
        }
    }
    (counts, positions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn pair_multiset(word: &[u32]) -> HashMap<u64, i64> {
        let mut m = HashMap::new();
        for w in word.windows(2) {
            *m.entry(pair_key(w[0], w[1])).or_insert(0) += 1;
        }
        m
    }

    /// The reported changes add up to the difference of the pair multisets.
    #[test]
    fn merge_word_changes_equal_a_recount() {
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for _ in 0..2000 {
            let len = (next() % 12) as usize;
            let word: Vec<u32> = (0..len).map(|_| next() % 3).collect();
            let (a, b) = (next() % 3, next() % 3);
            let mut merged = word.clone();
            let mut changes: HashMap<u64, i64> = HashMap::new();
            let n = merge_word(&mut merged, a, b, 9, |p, d| {
                *changes.entry(p).or_insert(0) += d
            });
            merged.truncate(n);

            let mut expected = pair_multiset(&merged);
            for (p, c) in pair_multiset(&word) {
                *expected.entry(p).or_insert(0) -= c;
            }
            expected.remove(&pair_key(a, b));
            changes.remove(&pair_key(a, b));
            expected.retain(|_, v| *v != 0);
            changes.retain(|_, v| *v != 0);
            assert_eq!(changes, expected, "word {word:?} pair ({a}, {b})");
        }
    }

    #[test]
    fn trains_like_the_naive_algorithm_on_a_tiny_corpus() {
        let mut words = Words::default();
        for (w, n) in [("abab", 3), ("aaa", 2), ("ba", 1)] {
            words.push(w.as_bytes(), n);
        }
        let (a, b) = (b'a' as u32, b'b' as u32);
        // (a,b): 6, (b,a): 3+1, (a,a): 4 -> merge (a,b); then "XX"x3, "aaa"x2, "ba"x1:
        // (X,X): 3, (a,a): 4, (b,a): 1 -> merge (a,a); then (X,X): 3.
        assert_eq!(
            train(words, 10),
            vec![(a, b), (a, a), (256, 256), (257, a), (b, a)]
        );
    }
}
