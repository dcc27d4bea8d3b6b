//! Applying learned merges to text, and the vocabulary they define.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use crate::words::pair_key;

/// Chunks longer than this use the O(n log n) merger instead of rescanning.
const SHORT_CHUNK: usize = 64;

/// Learned merges: merge `i` joins `pairs[i]` into token `256 + i`, which is
/// also its rank (lower ranks merge first).
#[derive(Clone, Default)]
pub struct Merges {
    pairs: Vec<(u32, u32)>,
    ranks: FxHashMap<u64, u32>,
}

impl Merges {
    pub fn new(pairs: Vec<(u32, u32)>) -> Self {
        let ranks = pairs
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| (pair_key(a, b), 256 + i as u32))
            .collect();
        Merges { pairs, ranks }
    }

    /// The bytes of every token, indexed by id (the 256 bytes, then one per merge).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for &(a, b) in &self.pairs {
            let mut bytes = vocab[a as usize].clone();
            bytes.extend_from_slice(&vocab[b as usize]);
            vocab.push(bytes);
        }
        vocab
    }

    #[inline]
    fn rank(&self, a: u32, b: u32) -> Option<u32> {
        self.ranks.get(&pair_key(a, b)).copied()
    }

    /// Appends the tokens of one chunk: starting from its bytes, repeatedly merge
    /// the adjacent pair of lowest rank (leftmost first), as tiktoken does.
    pub fn encode_chunk(&self, chunk: &[u8], out: &mut Vec<u32>) {
        if chunk.len() <= SHORT_CHUNK {
            self.encode_short(chunk, out)
        } else {
            self.encode_long(chunk, out)
        }
    }

    fn encode_short(&self, chunk: &[u8], out: &mut Vec<u32>) {
        let mut ids: Vec<u32> = chunk.iter().map(|&b| b as u32).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..ids.len().saturating_sub(1) {
                if let Some(r) = self.rank(ids[i], ids[i + 1])
                    && best.is_none_or(|(br, _)| r < br)
                {
                    best = Some((r, i));
                }
            }
            let Some((rank, i)) = best else { break };
            ids[i] = rank;
            ids.remove(i + 1);
        }
        out.extend_from_slice(&ids);
    }

    /// Same result as `encode_short`, using a linked list and a heap of
    /// candidate merges keyed by (rank, position) so long chunks stay fast.
    fn encode_long(&self, chunk: &[u8], out: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        let n = chunk.len();
        let mut ids: Vec<u32> = chunk.iter().map(|&b| b as u32).collect();
        let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i > 0 { i - 1 } else { NONE }).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(r) = self.rank(ids[i], ids[i + 1]) {
                heap.push(Reverse((r, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            // Skip entries whose pair has changed since they were pushed.
            let j = next[i];
            if !alive[i] || j == NONE || self.rank(ids[i], ids[j]) != Some(rank) {
                continue;
            }
            ids[i] = rank;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE
                && let Some(r) = self.rank(ids[prev[i]], rank)
            {
                heap.push(Reverse((r, prev[i])));
            }
            if next[i] != NONE
                && let Some(r) = self.rank(rank, ids[next[i]])
            {
                heap.push(Reverse((r, i)));
            }
        }
        out.extend((0..n).filter(|&i| alive[i]).map(|i| ids[i]));
    }
}
