//! Distinct chunks as "words": token ids in one flat arena, with their counts.

/// A pair of token ids packed so that integer order is lexicographic pair order.
#[inline(always)]
pub fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline(always)]
pub fn split_key(key: u64) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

/// Word `i` is `tokens[starts[i]..starts[i] + lens[i]]`. Merges only shrink a
/// word, so it is rewritten in place; one arena keeps the merge loop cache-friendly.
#[derive(Default)]
pub struct Words {
    pub tokens: Vec<u32>,
    pub starts: Vec<u64>,
    pub lens: Vec<u32>,
    pub counts: Vec<u64>,
}

impl Words {
    /// Adds a chunk seen `count` times. Chunks of one byte (and zero counts)
    /// hold no pair and are left out.
    pub fn push(&mut self, bytes: &[u8], count: u64) {
        if bytes.len() < 2 || count == 0 {
            return;
        }
        self.starts.push(self.tokens.len() as u64);
        self.lens.push(bytes.len() as u32);
        self.counts.push(count);
        self.tokens.extend(bytes.iter().map(|&b| b as u32));
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn word(&self, i: usize) -> &[u32] {
        let start = self.starts[i] as usize;
        &self.tokens[start..start + self.lens[i] as usize]
    }
}
