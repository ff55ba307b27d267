//! Deterministic train / val / test assignment by a stable hash of a record key (FNV-1a
//! 64-bit, not std's per-process randomized hasher): the same key lands in the same split
//! on every machine and every run, and adding records never moves existing ones.

use std::fmt;

/// One of the three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Training data.
    Train,
    /// Validation (model selection, eval during training).
    Val,
    /// Held-out test.
    Test,
}

impl Split {
    /// All three, in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// `train`, `val` or `test` (the JSONL file stem).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Percentages of train and val; test takes the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitRatio {
    /// Percent in train.
    pub train: u64,
    /// Percent in val.
    pub val: u64,
}

impl Default for SplitRatio {
    /// 80 / 10 / 10.
    fn default() -> Self {
        Self { train: 80, val: 10 }
    }
}

/// The split of `key`: bucket `fnv1a64(key) % 100` against the ratio.
pub fn assign(key: &str, ratio: SplitRatio) -> Split {
    let bucket = fnv1a64(key.as_bytes()) % 100;
    if bucket < ratio.train {
        Split::Train
    } else if bucket < ratio.train + ratio.val {
        Split::Val
    } else {
        Split::Test
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values_and_proportions() {
        // Reference values of the FNV-1a 64 specification.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        let mut counts = [0usize; 3];
        for i in 0..10_000 {
            counts[assign(&format!("note-{i}"), SplitRatio::default()) as usize] += 1;
        }
        assert!((7700..8300).contains(&counts[0]) && (800..1200).contains(&counts[1]), "{counts:?}");
    }
}
