//! Data drift: does a new data set differ from the one a model was trained on?
//!
//! Four two-sample tests, each with a statistic, an effect size, a p-value and a
//! threshold:
//!
//! | test | statistic (= effect unless said) | p-value | default threshold |
//! |---|---|---|---|
//! | [`Test::TokenJs`] | token unigram Jensen–Shannon divergence, bits, in [0, 1] | permutation | `max_js` 0.1 |
//! | [`Test::LengthKs`] | Kolmogorov–Smirnov D on sequence lengths, in [0, 1] | asymptotic Kolmogorov | `max_ks` 0.2 |
//! | [`Test::LabelChi2`] | χ² on class-label counts; effect: Cramér's V, in [0, 1] | χ² distribution | `max_cramers_v` 0.2 |
//! | [`Test::HiddenMmd`] | MMD²_u (RBF, median bandwidth) of mean-pooled hidden states, in [-, 2] | permutation | `max_mmd` 0.05 |
//!
//! A test **flags drift** when its p-value is below `alpha` (default 0.01) **and** its
//! effect is above its threshold. The p-value alone would flag any difference once the
//! data sets are large (a million examples make a 0.001 JS divergence "significant");
//! the effect alone would flag noise on tiny ones. The defaults are the usual "small
//! effect" marks: JS 0.1 bits is roughly a fifth of the probability mass moved between
//! tokens; a KS D of 0.2 means some length threshold splits the two sets' examples
//! 20 points apart; Cramér's V 0.2 is a small-to-medium association (Cohen); an MMD² of
//! 0.05 with the median bandwidth is well above what resampling one distribution gives
//! at a few hundred examples per side (about ±0.01) and below what a change of task gives.
//!
//! Permutation p-values use `permutations` reshuffles (default 200; so p >= 1/201)
//! from a seeded generator: a report is a function of its inputs and `seed`. The label
//! test runs only when both sides are classification data; the hidden-state test only
//! with a model ([`embed`]), on at most `max_embedded` examples per side (default 256,
//! a seeded sample): the kernel matrix grows with the square of that.
//!
//! ```
//! use stagecraft_core::data::{load_source, Tokenizer};
//! use stagecraft_core::drift::{compare, DriftConfig, Test};
//! use std::path::Path;
//! let t = Tokenizer::bytes();
//! let a = load_source("synthetic:add?n=60&seed=1", &t, Path::new("."), 64).unwrap();
//! let b = load_source("synthetic:add?n=60&seed=2", &t, Path::new("."), 64).unwrap();
//! let c = load_source("synthetic:reverse?n=60&seed=2", &t, Path::new("."), 64).unwrap();
//! let cfg = DriftConfig::default();
//! assert!(!compare(&a, &b, &cfg).unwrap().drifted());
//! let shifted = compare(&a, &c, &cfg).unwrap();
//! assert!(shifted.drifted());
//! assert!(shifted.result(Test::TokenJs).unwrap().flagged);
//! ```

pub mod chi2;
pub mod embed;
pub mod js;
pub mod ks;
pub mod mmd;
pub mod permutation;
pub mod special;

use crate::bail;
use crate::data::{DataKind, Dataset};
use crate::error::Result;
use crate::rng::Rng;
use serde::Serialize;

/// A statistic and its p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statistic {
    /// The statistic.
    pub value: f64,
    /// Its p-value under "both sides come from one distribution".
    pub p_value: f64,
}

/// The drift tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// Token unigram Jensen–Shannon divergence.
    TokenJs,
    /// Kolmogorov–Smirnov on sequence lengths.
    LengthKs,
    /// Chi-square on class labels.
    LabelChi2,
    /// Maximum mean discrepancy on pooled hidden states.
    HiddenMmd,
}

impl Test {
    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Test::TokenJs => "token_js",
            Test::LengthKs => "length_ks",
            Test::LabelChi2 => "label_chi2",
            Test::HiddenMmd => "hidden_mmd",
        }
    }

    /// What its effect size is.
    pub fn effect_name(self) -> &'static str {
        match self {
            Test::TokenJs => "JS bits",
            Test::LengthKs => "KS D",
            Test::LabelChi2 => "Cramér's V",
            Test::HiddenMmd => "MMD²",
        }
    }
}

/// Thresholds and test settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// Significance level: a test flags only with p < alpha. Default 0.01.
    pub alpha: f64,
    /// Reshuffles per permutation test. Default 200.
    pub permutations: usize,
    /// Seed of the reshuffles and of the sample of embedded examples. Default 0.
    pub seed: u64,
    /// Token JS divergence above which the test flags (bits). Default 0.1.
    pub max_js: f64,
    /// KS D on lengths above which the test flags. Default 0.2.
    pub max_ks: f64,
    /// Cramér's V on labels above which the test flags. Default 0.2.
    pub max_cramers_v: f64,
    /// MMD²_u on hidden states above which the test flags. Default 0.05.
    pub max_mmd: f64,
    /// Examples per side embedded for the hidden-state test. Default 256.
    pub max_embedded: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            alpha: 0.01,
            permutations: 200,
            seed: 0,
            max_js: 0.1,
            max_ks: 0.2,
            max_cramers_v: 0.2,
            max_mmd: 0.05,
            max_embedded: 256,
        }
    }
}

impl DriftConfig {
    /// Refuses settings no test can use.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            bail!("drift: alpha must be in (0, 1), got {}", self.alpha);
        }
        if self.max_embedded < 2 {
            bail!("drift: max_embedded must be at least 2, got {}", self.max_embedded);
        }
        Ok(())
    }

    /// The threshold of `test`.
    pub fn threshold(&self, test: Test) -> f64 {
        match test {
            Test::TokenJs => self.max_js,
            Test::LengthKs => self.max_ks,
            Test::LabelChi2 => self.max_cramers_v,
            Test::HiddenMmd => self.max_mmd,
        }
    }

    /// A generator for `test` alone, so that adding a test changes no other's numbers.
    fn rng(&self, test: Test) -> Rng {
        Rng::new(self.seed).fork(test as u64 + 1)
    }
}

/// One test's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestResult {
    /// Which test.
    pub test: Test,
    /// The statistic (for `label_chi2`, χ²; for the others, the effect itself).
    pub statistic: f64,
    /// The effect size compared with the threshold.
    pub effect: f64,
    /// The threshold the effect must pass to flag.
    pub threshold: f64,
    /// The p-value.
    pub p_value: f64,
    /// p < alpha and effect > threshold.
    pub flagged: bool,
}

impl TestResult {
    fn new(test: Test, statistic: f64, effect: f64, p_value: f64, cfg: &DriftConfig) -> Self {
        let threshold = cfg.threshold(test);
        let flagged = p_value < cfg.alpha && effect > threshold;
        TestResult { test, statistic, effect, threshold, p_value, flagged }
    }
}

/// A test that did not run, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    /// Which test.
    pub test: Test,
    /// Why not (one line).
    pub reason: String,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// The data set's name (its spec).
    pub name: String,
    /// Examples.
    pub examples: usize,
    /// Tokens in all.
    pub tokens: usize,
}

impl Side {
    fn of(data: &Dataset) -> Self {
        Side { name: data.name.clone(), examples: data.len(), tokens: data.examples.iter().map(|e| e.ids.len()).sum() }
    }
}

/// Every test's outcome for one pair of data sets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    /// The data the model was trained on (or any baseline).
    pub reference: Side,
    /// The data compared with it.
    pub current: Side,
    /// The significance level used.
    pub alpha: f64,
    /// Reshuffles per permutation test.
    pub permutations: usize,
    /// The reshuffles' seed.
    pub seed: u64,
    /// The tests that ran, in [`Test`] order.
    pub results: Vec<TestResult>,
    /// The tests that did not.
    pub skipped: Vec<Skipped>,
}

impl DriftReport {
    /// Whether any test flagged drift.
    pub fn drifted(&self) -> bool {
        self.results.iter().any(|r| r.flagged)
    }

    /// The outcome of `test`, if it ran.
    pub fn result(&self, test: Test) -> Option<&TestResult> {
        self.results.iter().find(|r| r.test == test)
    }
}

/// Runs the token, length and (for classification data on both sides) label tests;
/// the hidden-state test is [`hidden_state_test`], added by a caller with a model.
pub fn compare(reference: &Dataset, current: &Dataset, cfg: &DriftConfig) -> Result<DriftReport> {
    cfg.validate()?;
    for (side, data) in [("reference", reference), ("current", current)] {
        if data.is_empty() {
            bail!("drift: the {side} data `{}` has no examples", data.name);
        }
    }
    let lens = |d: &Dataset| -> Vec<usize> { d.examples.iter().map(|e| e.ids.len()).collect() };
    let ks = ks::length_ks(&lens(reference), &lens(current));
    let mut results =
        vec![token_test(reference, current, cfg), TestResult::new(Test::LengthKs, ks.value, ks.value, ks.p_value, cfg)];
    let mut skipped = Vec::new();
    match shared_classes(reference, current) {
        Some((a, b)) => {
            let t = chi2::label_chi2(&a, &b);
            results.push(TestResult::new(Test::LabelChi2, t.statistic, t.cramers_v, t.p_value, cfg));
        }
        _ => skipped.push(Skipped { test: Test::LabelChi2, reason: "needs classification data on both sides".into() }),
    }
    Ok(DriftReport {
        reference: Side::of(reference),
        current: Side::of(current),
        alpha: cfg.alpha,
        permutations: cfg.permutations,
        seed: cfg.seed,
        results,
        skipped,
    })
}

/// The token unigram JS test alone (a stage's `drift` check runs only this one).
pub fn token_test(reference: &Dataset, current: &Dataset, cfg: &DriftConfig) -> TestResult {
    let js = js::token_js(&ids(reference), &ids(current), cfg.permutations, &mut cfg.rng(Test::TokenJs));
    TestResult::new(Test::TokenJs, js.value, js.value, js.p_value, cfg)
}

/// Each example's token ids.
fn ids(data: &Dataset) -> Vec<&[u32]> {
    data.examples.iter().map(|e| e.ids.as_slice()).collect()
}

/// Both sides' class labels numbered alike: by label name where a file names them
/// (each file numbers its names in order of first appearance), else by class index.
/// `None` unless both sides are classification data.
fn shared_classes(reference: &Dataset, current: &Dataset) -> Option<(Vec<i64>, Vec<i64>)> {
    let mut numbers: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut number = |d: &Dataset| -> Option<Vec<i64>> {
        if d.kind != DataKind::Classification {
            return None;
        }
        d.examples
            .iter()
            .map(|e| {
                let c = e.class_label?;
                let key = usize::try_from(c).ok().and_then(|i| d.label_names.get(i)).cloned().unwrap_or(c.to_string());
                let next = numbers.len() as i64;
                Some(*numbers.entry(key).or_insert(next))
            })
            .collect()
    };
    Some((number(reference)?, number(current)?))
}

/// The hidden-state test on pooled hidden states ([`embed::pooled_hidden`]) of the
/// two sides (at least two vectors each).
pub fn hidden_state_test(reference: &[Vec<f32>], current: &[Vec<f32>], cfg: &DriftConfig) -> Result<TestResult> {
    if reference.len() < 2 || current.len() < 2 {
        bail!("drift: the hidden-state test needs at least two examples per side");
    }
    let s = mmd::hidden_mmd(reference, current, cfg.permutations, &mut cfg.rng(Test::HiddenMmd));
    Ok(TestResult::new(Test::HiddenMmd, s.value, s.value, s.p_value, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load_source, Tokenizer};
    use std::path::Path;

    fn data(spec: &str) -> Dataset {
        load_source(spec, &Tokenizer::bytes(), Path::new("."), 64).expect(spec)
    }

    #[test]
    fn another_seed_of_one_generator_does_not_drift() {
        let r = compare(&data("synthetic:add?n=100&seed=1"), &data("synthetic:add?n=80&seed=9"), &Default::default())
            .expect("compare");
        assert!(!r.drifted(), "{r:#?}");
        assert_eq!(r.skipped[0].test, Test::LabelChi2);
    }

    #[test]
    fn another_task_drifts_on_tokens() {
        let r =
            compare(&data("synthetic:add?n=100&seed=1"), &data("synthetic:reverse?n=100&seed=1"), &Default::default())
                .expect("compare");
        let js = r.result(Test::TokenJs).expect("js");
        assert!(js.flagged && js.effect > 0.3 && js.p_value < 0.01, "{js:?}");
    }

    #[test]
    fn a_tiny_but_significant_difference_does_not_flag() {
        let cfg = DriftConfig { max_js: 0.9, ..Default::default() };
        let r = compare(&data("synthetic:add?n=100&seed=1"), &data("synthetic:reverse?n=100&seed=1"), &cfg)
            .expect("compare");
        let js = r.result(Test::TokenJs).expect("js");
        assert!(js.p_value < 0.01 && !js.flagged, "{js:?}");
    }

    #[test]
    fn classes_match_by_name_not_by_order_of_appearance() {
        let mut a = data("synthetic:add?n=4");
        a.kind = DataKind::Classification;
        a.label_names = vec!["pos".into(), "neg".into()];
        for (e, c) in a.examples.iter_mut().zip([0, 1, 0, 1]) {
            e.class_label = Some(c);
        }
        let mut b = a.clone();
        b.label_names = vec!["neg".into(), "pos".into()];
        for (e, c) in b.examples.iter_mut().zip([1, 0, 1, 0]) {
            e.class_label = Some(c);
        }
        let (x, y) = shared_classes(&a, &b).expect("both classified");
        assert_eq!(x, y);
    }

    #[test]
    fn a_report_is_a_function_of_its_seed() {
        let (a, b) = (data("synthetic:add?n=40&seed=1"), data("synthetic:add?n=40&seed=2"));
        let cfg = DriftConfig::default();
        assert_eq!(compare(&a, &b, &cfg).expect("a"), compare(&a, &b, &cfg).expect("b"));
    }

    #[test]
    fn an_empty_side_is_one_line_naming_it() {
        let mut empty = data("synthetic:add?n=4");
        empty.examples.clear();
        let e = compare(&data("synthetic:add?n=4"), &empty, &Default::default()).expect_err("empty");
        assert!(e.to_string().contains("current data") && !e.to_string().contains('\n'), "{e}");
    }
}
