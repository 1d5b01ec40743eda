//! One of N parts of a batch job, for running it as N processes (for example the pods of a
//! Kubernetes Indexed Job, K from `JOB_COMPLETION_INDEX`): `pipe infer --shard K/N` classifies part K
//! of its input list, `pipe train --extract-shard K/N` extracts the frozen-base features of part K of
//! each split into the feature cache.
//!
//! A list (for infer, the files in the order it classifies them: the paths as given, each folder's
//! files sorted; for extraction, each split's images in the run's order) is cut into N contiguous
//! parts whose sizes differ by at most one; shard K takes part K (from 0). Every item is in exactly
//! one shard, and the shards' outputs, concatenated in the order 0, 1, ..., N-1, hold the records of
//! the unsharded run in its order (a CSV keeps the first shard's header only).

use crate::error::{Error, Result};
use std::ops::Range;
use std::str::FromStr;

/// Shard `index` of `count` (`0 <= index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// Number of shards, at least 1.
    pub count: usize,
}

impl Shard {
    /// The positions of this shard's items in a list of `len`: part `index` of `count` contiguous
    /// parts, the first `len % count` of them one item longer.
    pub fn range(&self, len: usize) -> Range<usize> {
        let (base, extra) = (len / self.count, len % self.count);
        let start = self.index * base + self.index.min(extra);
        let size = base + usize::from(self.index < extra);
        start..start + size
    }
}

impl FromStr for Shard {
    type Err = Error;

    /// `K/N`, both integers, `N >= 1` and `K < N`.
    ///
    /// # Errors
    /// [`Error::Usage`] naming the text and the rule.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Usage(format!(
                "{s}: expected K/N with 0 <= K < N, e.g. 0/3 for the first of three shards"
            ))
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    /// `K/N`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position of every length lands in exactly one shard, in order, the sizes differing by
    /// at most one; hand-computed: 10 items in 3 shards are 0..4, 4..7, 7..10.
    #[test]
    fn shards_partition_the_list_in_order() {
        let parts: Vec<_> = (0..3)
            .map(|index| Shard { index, count: 3 }.range(10))
            .collect();
        assert_eq!(parts, vec![0..4, 4..7, 7..10]);
        for len in 0..40 {
            for count in 1..9 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(len);
                    assert_eq!(r.start, next, "{index}/{count} of {len}");
                    assert!(r.len() == len / count || r.len() == len / count + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    /// `K/N` parses; an index past the count, a zero count, or other text are refused.
    #[test]
    fn shard_text_is_k_of_n() {
        assert_eq!(
            "2/3".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 3 }
        );
        assert_eq!("0/1".parse::<Shard>().unwrap().to_string(), "0/1");
        for bad in ["3/3", "0/0", "1", "a/3", "-1/3", "1/3/4", ""] {
            let err = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(err.contains("expected K/N"), "{bad}: {err}");
        }
    }
}
