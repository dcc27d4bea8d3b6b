//! A hand-written matcher for the GPT-4 split pattern family
//!
//! ```text
//! '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,K}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+
//! ```
//!
//! (GPT-4 uses K = 3, nanochat K = 2). It produces exactly the matches of
//! fancy-regex's `find_iter` for these patterns, without a backtracking engine:
//! every alternative is decided by looking at one or two characters and then
//! scanning a run of one class. The tests compare both on varied Unicode text.
//!
//! Every position of a text starts some match (any character is a letter, a
//! number, whitespace or "other", and each has an alternative that accepts it),
//! so the chunks tile the text.

use crate::charclass::{CLASSES, Class, ClassTable};

const PREFIX: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,";
const SUFFIX: &str = r"}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// Index into `FOLD_LETTERS` of each contraction letter.
const S: usize = 0;
const T: usize = 3;
const L: usize = 4;
const V: usize = 5;
const E: usize = 6;
const R: usize = 7;

#[derive(Clone, Debug)]
pub struct FastSplitter {
    max_digits: usize,
}

/// Decodes the character starting at byte `i` of valid UTF-8.
#[inline(always)]
fn decode(s: &[u8], i: usize) -> (u32, usize) {
    let b0 = s[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        let cp = ((b0 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F);
        (cp, 3)
    } else {
        let cp = ((b0 & 0x07) << 18)
            | ((s[i + 1] as u32 & 0x3F) << 12)
            | ((s[i + 2] as u32 & 0x3F) << 6)
            | (s[i + 3] as u32 & 0x3F);
        (cp, 4)
    }
}

#[inline(always)]
fn class_at(t: &ClassTable, s: &[u8], i: usize) -> (Class, usize) {
    let b = s[i];
    if b < 0x80 {
        (t.of_ascii(b), 1)
    } else {
        let (cp, n) = decode(s, i);
        (t.of(cp), n)
    }
}

/// End of the run of `class` characters starting at `i`.
#[inline(always)]
fn run_end(t: &ClassTable, s: &[u8], mut i: usize, class: Class) -> usize {
    while i < s.len() {
        let (c, n) = class_at(t, s, i);
        if c != class {
            break;
        }
        i += n;
    }
    i
}

/// End of `[\r\n]*` starting at `i`.
#[inline]
fn newlines_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && (s[i] == b'\r' || s[i] == b'\n') {
        i += 1;
    }
    i
}

impl FastSplitter {
    /// Returns a matcher when `pattern` is the GPT-4 pattern with some `\p{N}{1,K}`.
    pub fn for_pattern(pattern: &str) -> Option<Self> {
        let k = pattern.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        // One digit keeps the bound within what the regex engines accept (`{1,0}` is invalid).
        match k.as_bytes() {
            [d @ b'1'..=b'9'] => Some(FastSplitter {
                max_digits: (d - b'0') as usize,
            }),
            _ => None,
        }
    }

    /// Calls `f(start, end)` on the byte range of every chunk of `text`, in
    /// order. Ranges always start and end on character boundaries.
    pub fn for_each_span(&self, text: &str, mut f: impl FnMut(usize, usize)) {
        let t: &ClassTable = &CLASSES;
        let s = text.as_bytes();
        let mut i = 0;
        while i < s.len() {
            let end = self.chunk_end(t, s, i);
            f(i, end);
            i = end;
        }
    }

    /// End of the match that starts at byte `i`; alternatives in pattern order.
    fn chunk_end(&self, t: &ClassTable, s: &[u8], i: usize) -> usize {
        let len = s.len();
        let (cp, n) = decode(s, i);
        let class = if cp < 0x80 {
            t.of_ascii(cp as u8)
        } else {
            t.of(cp)
        };
        let next = i + n;

        // '(?i:[sdmt]|ll|ve|re)
        if cp == '\'' as u32
            && let Some(end) = contraction_end(t, s, next)
        {
            return end;
        }
        match class {
            // [^\r\n\p{L}\p{N}]?+\p{L}+ with nothing before the letters.
            Class::Letter => return run_end(t, s, next, Class::Letter),
            // \p{N}{1,K}
            Class::Number => return self.digits_end(t, s, next),
            Class::Other | Class::Space => {}
        }
        // [^\r\n\p{L}\p{N}]?+\p{L}+ with one leading non-letter, non-newline character.
        let is_newline = cp == '\r' as u32 || cp == '\n' as u32;
        if !is_newline && next < len {
            let (c2, n2) = class_at(t, s, next);
            if c2 == Class::Letter {
                return run_end(t, s, next + n2, Class::Letter);
            }
        }
        //  ?[^\s\p{L}\p{N}]++[\r\n]*
        if class == Class::Other {
            return newlines_end(s, run_end(t, s, next, Class::Other));
        }
        if cp == ' ' as u32 && next < len && class_at(t, s, next).0 == Class::Other {
            return newlines_end(s, run_end(t, s, next, Class::Other));
        }
        self.whitespace_end(t, s, i)
    }

    /// The character at `i` is whitespace: `\s*[\r\n]|\s+(?!\S)|\s+`.
    fn whitespace_end(&self, t: &ClassTable, s: &[u8], i: usize) -> usize {
        let mut j = i;
        let mut after_last_newline = None;
        let mut last_start = i;
        while j < s.len() {
            let (c, n) = class_at(t, s, j);
            if c != Class::Space {
                break;
            }
            if s[j] == b'\r' || s[j] == b'\n' {
                after_last_newline = Some(j + n);
            }
            last_start = j;
            j += n;
        }
        // \s*[\r\n]: backtracking stops at the last newline of the run.
        if let Some(end) = after_last_newline {
            return end;
        }
        // \s+(?!\S): the whole run at the end of the text, otherwise all but its
        // last character (which then precedes whitespace). A single character
        // followed by non-whitespace falls through to \s+.
        if j == s.len() || last_start == i {
            j
        } else {
            last_start
        }
    }

    /// `\p{N}{1,K}` where the first number ends at `i`.
    #[inline]
    fn digits_end(&self, t: &ClassTable, s: &[u8], mut i: usize) -> usize {
        for _ in 1..self.max_digits {
            if i >= s.len() {
                break;
            }
            let (c, n) = class_at(t, s, i);
            if c != Class::Number {
                break;
            }
            i += n;
        }
        i
    }
}

/// `(?i:[sdmt]|ll|ve|re)` starting right after an apostrophe.
fn contraction_end(t: &ClassTable, s: &[u8], i: usize) -> Option<usize> {
    if i >= s.len() {
        return None;
    }
    let (cp1, n1) = decode(s, i);
    let c1 = char::from_u32(cp1)?;
    if (S..=T).any(|k| t.folds_to(c1, k)) {
        return Some(i + n1);
    }
    let j = i + n1;
    if j >= s.len() {
        return None;
    }
    let (cp2, n2) = decode(s, j);
    let c2 = char::from_u32(cp2)?;
    let pairs = [(L, L), (V, E), (R, E)];
    if pairs
        .iter()
        .any(|&(a, b)| t.folds_to(c1, a) && t.folds_to(c2, b))
    {
        return Some(j + n2);
    }
    None
}

/// Cuts `text` into pieces of roughly `target` bytes whose boundaries are also
/// chunk boundaries, so the pieces can be split independently (in parallel).
///
/// A cut goes between an ASCII letter and a following space: the chunk holding
/// the letter (a letter run or a contraction) always ends there, and no
/// alternative looks behind its start, so both sides split as in the whole text.
pub fn cut_for_parallelism(text: &str, target: usize) -> Vec<&str> {
    let s = text.as_bytes();
    let mut pieces = Vec::with_capacity(s.len() / target.max(1) + 1);
    let mut start = 0;
    let mut pos = target;
    while pos < s.len() {
        match (pos..s.len()).find(|&p| s[p] == b' ' && s[p - 1].is_ascii_alphabetic()) {
            Some(cut) => {
                pieces.push(&text[start..cut]);
                start = cut;
                pos = cut + target;
            }
            None => break,
        }
    }
    pieces.push(&text[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        FastSplitter { max_digits: 3 }.for_each_span(text, |a, b| v.push(&text[a..b]));
        v
    }

    #[test]
    fn gpt4_examples() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(
            split("I'm 12345 ok!!\n\n  x"),
            ["I", "'m", " ", "123", "45", " ok", "!!\n\n", " ", " x"]
        );
        assert_eq!(split("a   b"), ["a", "  ", " b"]);
        assert_eq!(split("  \n\t"), ["  \n", "\t"]);
        assert_eq!(split("'ſ"), ["'ſ"]);
    }

    #[test]
    fn cuts_are_chunk_boundaries() {
        let text = "word after word, again and again. ".repeat(50);
        let whole = split(&text);
        let mut pieces = Vec::new();
        for p in cut_for_parallelism(&text, 64) {
            pieces.extend(split(p));
        }
        assert_eq!(whole, pieces);
    }
}
