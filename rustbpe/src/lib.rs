//! `rustbpe`: byte-level BPE training for nanochat, exposed to Python.
//!
//! Training reads text from any Python iterable, splits it with the split
//! regex and counts chunks on all cores with the GIL released, then learns
//! merges incrementally (see `train`). Inference is meant for tiktoken, built
//! from `get_mergeable_ranks()`; `encode` exists for checking.

mod charclass;
mod count;
mod encode;
mod fastsplit;
mod pattern;
mod train;
mod words;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::count::ChunkCounts;
use crate::encode::Merges;
use crate::pattern::{GPT4_PATTERN, Splitter, compile_fancy};

/// A byte-level BPE tokenizer: 256 byte tokens plus learned merges.
#[pyclass(module = "rustbpe")]
#[derive(Default)]
pub struct Tokenizer {
    merges: Merges,
    /// The pattern of the last training; empty before training.
    pattern: String,
    splitter: Option<Splitter>,
}

#[pymethods]
impl Tokenizer {
    #[new]
    fn new() -> Self {
        Tokenizer::default()
    }

    /// Learns `vocab_size - 256` merges from the strings of `iterator`.
    ///
    /// Strings are pulled `buffer_size` at a time with the GIL held; splitting,
    /// counting and the merge loop run with the GIL released on all cores.
    #[pyo3(signature = (iterator, vocab_size, buffer_size = 8192, pattern = None))]
    fn train_from_iterator(
        &mut self,
        py: Python<'_>,
        iterator: &Bound<'_, PyAny>,
        vocab_size: i64,
        buffer_size: i64,
        pattern: Option<&str>,
    ) -> PyResult<()> {
        if vocab_size < 256 {
            return Err(PyValueError::new_err(format!(
                "vocab_size must be at least 256 (the byte tokens), got {vocab_size}"
            )));
        }
        if buffer_size < 1 {
            return Err(PyValueError::new_err(format!(
                "buffer_size must be positive, got {buffer_size}"
            )));
        }
        let pattern = pattern.unwrap_or(GPT4_PATTERN);
        let splitter = Splitter::new(pattern).map_err(PyValueError::new_err)?;

        let chunks = ingest(py, iterator, buffer_size as usize, &splitter)?;
        if chunks.bytes == 0 {
            let seen = match chunks.documents {
                0 => "the iterator yielded no strings".to_owned(),
                n => format!("the iterator yielded {n} strings, all empty"),
            };
            return Err(PyValueError::new_err(format!("no text was seen: {seen}")));
        }
        log::info!(
            "counted {} distinct chunks in {} documents ({} bytes)",
            chunks.distinct(),
            chunks.documents,
            chunks.bytes
        );

        let num_merges = (vocab_size - 256) as usize;
        let merges = py.detach(move || train::train(chunks.into_words(), num_merges));
        self.merges = Merges::new(merges);
        self.pattern = pattern.to_owned();
        self.splitter = Some(splitter);
        Ok(())
    }

    /// The split pattern of the last training (empty before training).
    fn get_pattern(&self) -> &str {
        &self.pattern
    }

    /// `(token bytes, rank)` for the 256 bytes and then every merge, in rank
    /// order: tiktoken's `mergeable_ranks`.
    fn get_mergeable_ranks<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, u32)> {
        self.merges
            .token_bytes()
            .iter()
            .enumerate()
            .map(|(rank, bytes)| (PyBytes::new(py, bytes), rank as u32))
            .collect()
    }

    /// Encodes `text` with the learned merges. Before training there are no
    /// merges, so the result is the UTF-8 bytes of `text`.
    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        let Some(splitter) = &self.splitter else {
            return Ok(text.bytes().map(u32::from).collect());
        };
        py.detach(|| {
            let mut ids = Vec::with_capacity(text.len() / 3);
            splitter.for_each_chunk(text, |chunk| {
                self.merges.encode_chunk(chunk.as_bytes(), &mut ids)
            })?;
            Ok::<_, String>(ids)
        })
        .map_err(PyValueError::new_err)
    }

    /// Testing hook: the chunks of `text` under `pattern` (default GPT-4),
    /// using the hand-written matcher when `fast` else fancy-regex.
    #[staticmethod]
    #[pyo3(signature = (text, pattern = None, fast = true))]
    fn _split(
        py: Python<'_>,
        text: &str,
        pattern: Option<&str>,
        fast: bool,
    ) -> PyResult<Vec<String>> {
        let pattern = pattern.unwrap_or(GPT4_PATTERN);
        let splitter = if fast {
            match Splitter::new(pattern).map_err(PyValueError::new_err)? {
                s @ Splitter::Fast(_) => s,
                Splitter::Fancy(_) => {
                    return Err(PyValueError::new_err(
                        "the fast splitter does not support this pattern",
                    ));
                }
            }
        } else {
            Splitter::Fancy(compile_fancy(pattern).map_err(PyValueError::new_err)?)
        };
        py.detach(|| {
            let mut out = Vec::new();
            splitter.for_each_chunk(text, |c| out.push(c.to_owned()))?;
            Ok::<_, String>(out)
        })
        .map_err(PyValueError::new_err)
    }
}

/// Pulls strings from `iterator` in batches and counts their chunks.
fn ingest(
    py: Python<'_>,
    iterator: &Bound<'_, PyAny>,
    buffer_size: usize,
    splitter: &Splitter,
) -> PyResult<ChunkCounts> {
    let mut iter = iterator.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "expected an iterable of str, got {}",
            type_name(iterator)
        ))
    })?;
    let mut counts = ChunkCounts::default();
    let mut batch: Vec<Bound<'_, PyString>> = Vec::with_capacity(buffer_size.min(1 << 16));
    loop {
        batch.clear();
        let mut exhausted = false;
        while batch.len() < buffer_size {
            let Some(item) = iter.next() else {
                exhausted = true;
                break;
            };
            let item = item?;
            let text = item.cast_into::<PyString>().map_err(|e| {
                PyTypeError::new_err(format!(
                    "expected str items, got {}",
                    type_name(e.into_inner().as_any())
                ))
            })?;
            batch.push(text);
        }
        // Borrowing the UTF-8 of each (immutable) str object avoids a copy; the
        // objects stay alive in `batch` while the GIL is released.
        let texts = batch
            .iter()
            .map(|s| {
                s.to_str().map_err(|e| {
                    PyValueError::new_err(format!(
                        "text is not valid Unicode (lone surrogate?): {e}"
                    ))
                })
            })
            .collect::<PyResult<Vec<&str>>>()?;
        py.detach(|| counts.add_batch(splitter, &texts))
            .map_err(PyValueError::new_err)?;
        if exhausted {
            return Ok(counts);
        }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

#[pymodule]
fn rustbpe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Rust `log` records go to Python's `logging` (logger names follow module
    // paths, e.g. `rustbpe.train`). Levels are looked up on every record rather
    // than cached, so logging configured after import still takes effect; the
    // trainer logs a few hundred lines at most.
    let _ = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::Nothing)?.install();
    m.add_class::<Tokenizer>()?;
    Ok(())
}
