//! Data augmentation: seeded token-level transforms applied to a stage's own training
//! rows as batches are drawn (`augment = [...]` on a stage).
//!
//! | kind | what it does | good for |
//! |---|---|---|
//! | `token_dropout` (`p`) | deletes each input token with probability `p` | robustness to missing words, typos that drop characters (byte tokenizers) |
//! | `token_mask` (`p`, `token`) | replaces each input token by `token` with probability `p` | denoising: predicting the right continuation from a damaged context |
//! | `span_deletion` (`p`, `max_len`) | at each input token, with probability `p`, deletes a span of 1 to `max_len` tokens starting there | robustness to missing phrases, varied prompt lengths |
//! | `swap` (`p`) | swaps each pair of neighbouring input tokens with probability `p` (a token moves once at most) | robustness to word-order noise and transposed characters |
//!
//! Input tokens are those that are not targets: a completion's or a conversation's
//! prompt (its answer is never touched), and every token of classification text. In
//! plain text every token is a target of the next-token loss, so there masking and
//! swaps damage the input while the targets stay the clean text, and deletions remove
//! a token from both. Transforms run in the order listed; an example never loses all
//! its tokens. Eval sets and replayed rows are not augmented.
//!
//! Each row's randomness is drawn from the run's seed, the stage, the step, and the
//! row's place in the step, with no state of its own: a resumed run draws the same
//! augmentations as one that never stopped.
//!
//! ```
//! use stagecraft_core::data::{augment, Augment, Example};
//! use stagecraft_core::rng::Rng;
//! let ex = Example::from_ids(vec![10, 11, 12, 13, 14, 15]);
//! let masked = augment(&ex, &[Augment::TokenMask { p: 1.0, token: 0 }], &mut Rng::new(1));
//! assert_eq!(masked.ids, vec![0; 6]);
//! assert_eq!(masked.labels.as_deref(), Some(&[10, 11, 12, 13, 14, 15][..])); // clean targets
//! let kept = augment(&ex, &[Augment::TokenDropout { p: 0.0 }], &mut Rng::new(1));
//! assert_eq!(kept.ids, ex.ids);
//! ```

use serde::{Deserialize, Serialize};

use super::example::{Example, IGNORE};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// One transform of `augment = [...]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Augment {
    /// Deletes each input token with probability `p`.
    TokenDropout {
        /// Probability per token, in [0, 1).
        p: f64,
    },
    /// Replaces each input token by `token` with probability `p`.
    TokenMask {
        /// Probability per token, in [0, 1].
        p: f64,
        /// The replacement token id (a mask or unknown token of the tokenizer).
        token: u32,
    },
    /// At each input token, with probability `p`, deletes a span of 1 to `max_len`
    /// input tokens starting there.
    SpanDeletion {
        /// Probability per token, in [0, 1).
        p: f64,
        /// The longest span, at least 1.
        max_len: usize,
    },
    /// Swaps each pair of neighbouring input tokens with probability `p`.
    Swap {
        /// Probability per pair, in [0, 1].
        p: f64,
    },
}

impl Augment {
    /// The config's name of the transform.
    pub fn kind(&self) -> &'static str {
        match self {
            Augment::TokenDropout { .. } => "token_dropout",
            Augment::TokenMask { .. } => "token_mask",
            Augment::SpanDeletion { .. } => "span_deletion",
            Augment::Swap { .. } => "swap",
        }
    }

    /// Checks the parameters; `vocab` bounds a mask token. Errors name the transform.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let (p, deletes) = match *self {
            Augment::TokenDropout { p } => (p, true),
            Augment::SpanDeletion { p, max_len } => {
                if max_len == 0 {
                    return Err(Error::msg("augment `span_deletion`: max_len must be at least 1"));
                }
                (p, true)
            }
            Augment::TokenMask { p, token } => {
                if token as usize >= vocab {
                    return Err(Error::msg(format!(
                        "augment `token_mask`: token {token} is not in the vocabulary ({vocab} tokens)"
                    )));
                }
                (p, false)
            }
            Augment::Swap { p } => (p, false),
        };
        let top_ok = if deletes { p < 1.0 } else { p <= 1.0 };
        if !(p >= 0.0 && top_ok) {
            let range = if deletes { "[0, 1)" } else { "[0, 1]" };
            return Err(Error::msg(format!("augment `{}`: p must be in {range}, got {p}", self.kind())));
        }
        Ok(())
    }
}

/// A token of an example being augmented: its id, and its target (`IGNORE` for input
/// tokens of completion data).
#[derive(Debug, Clone, Copy)]
struct Token {
    id: u32,
    target: i64,
    /// Whether transforms may touch it.
    input: bool,
}

/// `ex` with `transforms` applied in order, drawing from `rng`.
pub fn augment(ex: &Example, transforms: &[Augment], rng: &mut Rng) -> Example {
    let classification = ex.class_label.is_some();
    let mut tokens: Vec<Token> = match &ex.labels {
        Some(labels) => {
            ex.ids.iter().zip(labels).map(|(&id, &target)| Token { id, target, input: target == IGNORE }).collect()
        }
        None => ex.ids.iter().map(|&id| Token { id, target: i64::from(id), input: true }).collect(),
    };
    for t in transforms {
        match *t {
            Augment::TokenDropout { p } => delete(&mut tokens, || rng.uniform() < p),
            Augment::SpanDeletion { p, max_len } => {
                let mut left = 0;
                delete(&mut tokens, || {
                    if left == 0 && rng.uniform() < p {
                        left = 1 + rng.below(max_len as u64) as usize;
                    }
                    let gone = left > 0;
                    left = left.saturating_sub(1);
                    gone
                })
            }
            Augment::TokenMask { p, token } => {
                for tok in tokens.iter_mut().filter(|t| t.input) {
                    if rng.uniform() < p {
                        tok.id = token;
                    }
                }
            }
            Augment::Swap { p } => {
                let mut i = 0;
                while i + 1 < tokens.len() {
                    if tokens[i].input && tokens[i + 1].input && rng.uniform() < p {
                        let (a, b) = (tokens[i].id, tokens[i + 1].id);
                        (tokens[i].id, tokens[i + 1].id) = (b, a);
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    let labels = (!classification).then(|| tokens.iter().map(|t| t.target).collect());
    Example { ids, labels, class_label: ex.class_label, difficulty: ex.difficulty, packed: ex.packed.clone() }
}

/// Removes the input tokens `gone` picks (asked once per input token, in order),
/// keeping at least one token.
fn delete(tokens: &mut Vec<Token>, mut gone: impl FnMut() -> bool) {
    let Some(&first) = tokens.first() else { return };
    tokens.retain(|t| !(t.input && gone()));
    if tokens.is_empty() {
        tokens.push(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Example {
        Example {
            labels: Some(vec![IGNORE, IGNORE, IGNORE, IGNORE, 7, 8]),
            ..Example::from_ids(vec![1, 2, 3, 4, 7, 8])
        }
    }

    #[test]
    fn answers_are_never_touched() {
        let all = [
            Augment::TokenDropout { p: 0.5 },
            Augment::SpanDeletion { p: 0.5, max_len: 3 },
            Augment::TokenMask { p: 1.0, token: 0 },
            Augment::Swap { p: 1.0 },
        ];
        for seed in 0..50 {
            let out = augment(&completion(), &all, &mut Rng::new(seed));
            let n = out.ids.len();
            assert!(n >= 2, "the answer stays");
            assert_eq!(out.ids[n - 2..], [7, 8], "seed {seed}");
            assert_eq!(out.labels.as_ref().map(|l| l[n - 2..].to_vec()), Some(vec![7, 8]));
            assert!(out.ids[..n - 2].iter().all(|&t| t == 0), "every prompt token masked");
        }
    }

    #[test]
    fn each_transform_does_what_it_says_at_its_rate() {
        let text = Example::from_ids((100..1100).collect());
        let dropped = augment(&text, &[Augment::TokenDropout { p: 0.2 }], &mut Rng::new(3));
        let kept = dropped.ids.len() as f64 / 1000.0;
        assert!((kept - 0.8).abs() < 0.05, "kept {kept}");
        assert_eq!(
            dropped.ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
            dropped.labels.clone().unwrap_or_default()
        );

        let swapped = augment(&text, &[Augment::Swap { p: 0.5 }], &mut Rng::new(3));
        assert_eq!(swapped.ids.len(), 1000);
        let moved = swapped.ids.iter().zip(&text.ids).filter(|(a, b)| a != b).count();
        // A swap moves two tokens and skips past them: 2p / (1 + p) of them move.
        assert!((600..730).contains(&moved), "{moved} tokens moved");
        let mut sorted = swapped.ids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, text.ids, "a swap only reorders");

        let spans = augment(&text, &[Augment::SpanDeletion { p: 0.05, max_len: 4 }], &mut Rng::new(3));
        let gone = 1000 - spans.ids.len();
        assert!((60..240).contains(&gone), "{gone} deleted");
    }

    #[test]
    fn an_example_never_loses_every_token_and_classes_stay() {
        let class = Example { class_label: Some(1), ..Example::from_ids(vec![5, 6]) };
        for seed in 0..20 {
            let out = augment(&class, &[Augment::SpanDeletion { p: 0.99, max_len: 8 }], &mut Rng::new(seed));
            assert!(!out.ids.is_empty());
            assert_eq!((out.class_label, out.labels), (Some(1), None));
        }
    }

    #[test]
    fn the_same_draws_give_the_same_rows() {
        let t = [Augment::TokenDropout { p: 0.3 }, Augment::Swap { p: 0.3 }];
        let ex = Example::from_ids((0..64).collect());
        assert_eq!(augment(&ex, &t, &mut Rng::new(9)), augment(&ex, &t, &mut Rng::new(9)));
        assert_ne!(augment(&ex, &t, &mut Rng::new(9)), augment(&ex, &t, &mut Rng::new(10)));
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = |a: Augment| a.validate(256).expect_err("refused").to_string();
        assert_eq!(e(Augment::TokenDropout { p: 1.0 }), "augment `token_dropout`: p must be in [0, 1), got 1");
        assert_eq!(
            e(Augment::SpanDeletion { p: 0.1, max_len: 0 }),
            "augment `span_deletion`: max_len must be at least 1"
        );
        assert!(
            e(Augment::TokenMask { p: 0.1, token: 300 }).contains("token 300 is not in the vocabulary (256 tokens)")
        );
        assert_eq!(e(Augment::Swap { p: -0.1 }), "augment `swap`: p must be in [0, 1], got -0.1");
        assert!(Augment::TokenMask { p: 1.0, token: 3 }.validate(256).is_ok());
    }
}
