//! The generators behind the synthetic tasks: untokenized text lines and
//! prompt/completion pairs.
//!
//! Each task draws from `Rng::new(seed).fork(k)` with `k` fixed per task, so `add` and
//! `sub` with the same seed draw different operands; each example takes a fixed
//! sequence of draws, so a longer source extends a shorter one.
//!
//! ```
//! use stagecraft_core::data::{Item, SyntheticSpec};
//! let items = SyntheticSpec::parse("synthetic:reverse?n=1&len=3").unwrap().generate();
//! let Item::Completion { prompt, completion } = &items[0] else { panic!() };
//! let word = &prompt["reverse ".len()..prompt.len() - 1];
//! assert_eq!(format!("{}\n", word.chars().rev().collect::<String>()), *completion);
//! ```

use super::{LenRange, SyntheticSpec, Task};
use crate::data::DataKind;
use crate::rng::Rng;

/// One generated example, before tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A text example (one or more `\n`-terminated lines).
    Text(String),
    /// A prompt and the completion to learn (ending in `\n`).
    Completion {
        /// What the model is given, e.g. `"12+35="`.
        prompt: String,
        /// What it must produce, e.g. `"47\n"`.
        completion: String,
    },
}

impl SyntheticSpec {
    /// The kind of data the task produces.
    pub fn kind(&self) -> DataKind {
        match self.task {
            Task::ArithText { .. } => DataKind::Text,
            _ => DataKind::Completion,
        }
    }

    /// The `n` examples of this spec, the same on every machine.
    pub fn generate(&self) -> Vec<Item> {
        let stream = match self.task {
            Task::ArithText { .. } => 1,
            Task::Add { .. } => 2,
            Task::Sub { .. } => 3,
            Task::Reverse { .. } => 4,
        };
        let mut rng = Rng::new(self.seed).fork(stream);
        (0..self.n).map(|_| item(&self.task, &mut rng)).collect()
    }
}

fn item(task: &Task, rng: &mut Rng) -> Item {
    let pair = |(prompt, completion)| Item::Completion { prompt, completion };
    match *task {
        Task::Add { digits } => pair(add(rng, digits)),
        Task::Sub { digits } => pair(sub(rng, digits)),
        Task::Reverse { len } => pair(reverse(rng, len)),
        Task::ArithText { digits, len, lines } => {
            let mut text = String::new();
            for _ in 0..lines {
                let (p, c) = match rng.below(3) {
                    0 => add(rng, digits),
                    1 => sub(rng, digits),
                    _ => reverse(rng, len),
                };
                text.push_str(&p);
                text.push_str(&c);
            }
            Item::Text(text)
        }
    }
}

fn operand(rng: &mut Rng, digits: u32) -> u64 {
    rng.below(10u64.pow(digits))
}

/// `"a+b="`, `"{a+b}\n"`.
fn add(rng: &mut Rng, digits: u32) -> (String, String) {
    let a = operand(rng, digits);
    let b = operand(rng, digits);
    (format!("{a}+{b}="), format!("{}\n", a + b))
}

/// `"a-b="`, `"{a-b}\n"` with the larger operand first.
fn sub(rng: &mut Rng, digits: u32) -> (String, String) {
    let x = operand(rng, digits);
    let y = operand(rng, digits);
    let (a, b) = if x >= y { (x, y) } else { (y, x) };
    (format!("{a}-{b}="), format!("{}\n", a - b))
}

/// `"reverse w="`, `"{w reversed}\n"`.
fn reverse(rng: &mut Rng, len: LenRange) -> (String, String) {
    let n = len.min + rng.below((len.max - len.min + 1) as u64) as usize;
    let word: String = (0..n).map(|_| char::from(b'a' + rng.below(26) as u8)).collect();
    let reversed: String = word.chars().rev().collect();
    (format!("reverse {word}="), format!("{reversed}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;

    fn gen(spec: &str) -> Result<Vec<Item>> {
        Ok(SyntheticSpec::parse(spec)?.generate())
    }

    /// Checks one `"<prompt><completion>"` line, returning which task it is.
    fn check_line(prompt: &str, completion: &str) -> &'static str {
        let answer = completion.strip_suffix('\n').unwrap_or_else(|| panic!("{completion:?} has no newline"));
        let body = prompt.strip_suffix('=').unwrap_or_else(|| panic!("{prompt:?} has no ="));
        let num = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{s:?} in {prompt:?}"));
        if let Some(word) = body.strip_prefix("reverse ") {
            assert!(word.bytes().all(|b| b.is_ascii_lowercase()), "{word}");
            assert_eq!(answer, word.chars().rev().collect::<String>());
            "reverse"
        } else if let Some((a, b)) = body.split_once('+') {
            assert_eq!(num(a) + num(b), num(answer), "{prompt}{completion}");
            "add"
        } else if let Some((a, b)) = body.split_once('-') {
            assert!(num(a) >= num(b), "{prompt}");
            assert_eq!(num(a) - num(b), num(answer), "{prompt}{completion}");
            "sub"
        } else {
            panic!("unrecognized line {prompt:?}")
        }
    }

    #[test]
    fn completion_tasks_are_correct_arithmetic_and_reversal() -> Result<()> {
        for (spec, task) in [
            ("synthetic:add?n=300&digits=3", "add"),
            ("synthetic:sub?n=300", "sub"),
            ("synthetic:reverse?n=300&min_len=1&max_len=6", "reverse"),
        ] {
            let mut max_operand = 0;
            let mut lens = std::collections::BTreeSet::new();
            for item in gen(spec)? {
                let Item::Completion { prompt, completion } = item else { panic!("{spec}: not a completion") };
                assert_eq!(check_line(&prompt, &completion), task);
                if let Some(word) = prompt.strip_prefix("reverse ") {
                    lens.insert(word.len() - 1);
                } else {
                    let ops = prompt.trim_end_matches('=').split(['+', '-']).map(|s| s.parse::<u64>().unwrap_or(0));
                    max_operand = max_operand.max(ops.max().unwrap_or(0));
                }
            }
            match task {
                "add" => assert!((900..1000).contains(&max_operand), "{max_operand}"),
                "sub" => assert!((90..100).contains(&max_operand), "{max_operand}"),
                _ => assert_eq!(lens.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]),
            }
        }
        Ok(())
    }

    #[test]
    fn arith_text_mixes_all_three_line_kinds() -> Result<()> {
        let mut seen = std::collections::BTreeMap::new();
        for item in gen("synthetic:arith_text?n=100&lines=3")? {
            let Item::Text(text) = item else { panic!("not text") };
            assert_eq!(text.matches('\n').count(), 3);
            for line in text.lines() {
                let (p, c) = line.split_once('=').unwrap_or_else(|| panic!("{line}"));
                *seen.entry(check_line(&format!("{p}="), &format!("{c}\n"))).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.values().all(|&k| k > 60), "{seen:?}");
        Ok(())
    }

    #[test]
    fn same_spec_same_items_other_seed_other_items() -> Result<()> {
        assert_eq!(gen("synthetic:add?n=50&seed=3")?, gen("synthetic:add?n=50&seed=3")?);
        assert_ne!(gen("synthetic:add?n=50&seed=3")?, gen("synthetic:add?n=50&seed=4")?);
        // A longer source extends a shorter one.
        assert_eq!(gen("synthetic:reverse?n=10")?[..], gen("synthetic:reverse?n=40")?[..10]);
        // Pinned, so that a change to the generators (or to Rng) cannot go unnoticed:
        // runs resumed or compared across versions rely on these exact examples.
        for (spec, pinned) in PINNED {
            let text: String = gen(spec)?
                .into_iter()
                .map(|i| match i {
                    Item::Completion { prompt, completion } => format!("{prompt}{completion}"),
                    Item::Text(t) => t,
                })
                .collect();
            assert_eq!(text, pinned, "{spec}");
        }
        Ok(())
    }

    const PINNED: [(&str, &str); 4] = [
        ("synthetic:add?n=2&seed=42", "86+15=101\n8+93=101\n"),
        ("synthetic:sub?n=2&seed=42&digits=3", "724-560=164\n250-165=85\n"),
        ("synthetic:reverse?n=2&seed=42&min_len=2&max_len=6", "reverse cjwo=owjc\nreverse jqsohd=dhosqj\n"),
        ("synthetic:arith_text?n=1&seed=42&lines=3", "28+0=28\n40-24=16\n4+65=69\n"),
    ];
}
