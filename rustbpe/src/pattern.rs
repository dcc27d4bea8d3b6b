//! Pre-tokenization: splitting text into chunks with the split regex.
//!
//! The GPT-4 pattern family gets the hand-written matcher; any other pattern is
//! run by fancy-regex (it needs possessive quantifiers and look-ahead).

use fancy_regex::Regex;

use crate::fastsplit::{FastSplitter, cut_for_parallelism};

/// GPT-4's split pattern, the default of `train_from_iterator`.
pub const GPT4_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// Documents longer than this are cut into pieces of about this size before
/// splitting, so one huge document still uses every core.
const PIECE_BYTES: usize = 1 << 16;

#[derive(Clone, Debug)]
pub enum Splitter {
    Fast(FastSplitter),
    Fancy(Regex),
}

impl Splitter {
    /// Compiles `pattern`; the error message is meant for the user.
    pub fn new(pattern: &str) -> Result<Self, String> {
        match FastSplitter::for_pattern(pattern) {
            Some(fast) => Ok(Splitter::Fast(fast)),
            None => Ok(Splitter::Fancy(compile_fancy(pattern)?)),
        }
    }

    /// Calls `f(start, end)` on the byte range of every non-empty chunk of
    /// `text`, in order.
    ///
    /// fancy-regex can fail at match time (backtracking limit); that comes back
    /// as an error instead of a panic.
    pub fn for_each_span(&self, text: &str, mut f: impl FnMut(usize, usize)) -> Result<(), String> {
        match self {
            Splitter::Fast(fast) => {
                fast.for_each_span(text, f);
                Ok(())
            }
            Splitter::Fancy(regex) => {
                for m in regex.find_iter(text) {
                    let m = m.map_err(|e| format!("split regex failed while matching: {e}"))?;
                    if m.start() < m.end() {
                        f(m.start(), m.end());
                    }
                }
                Ok(())
            }
        }
    }

    /// Calls `f` on every non-empty chunk of `text`, in order.
    pub fn for_each_chunk<'t>(
        &self,
        text: &'t str,
        mut f: impl FnMut(&'t str),
    ) -> Result<(), String> {
        self.for_each_span(text, |start, end| f(&text[start..end]))
    }

    /// Pieces of `text` that can be split independently with identical results.
    pub fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        match self {
            Splitter::Fast(_) if text.len() > 2 * PIECE_BYTES => {
                cut_for_parallelism(text, PIECE_BYTES)
            }
            _ => vec![text],
        }
    }
}

pub fn compile_fancy(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("invalid split pattern {pattern:?}: {e}"))
}
