//! The sampler of the hyperparameter search: random sampling and TPE.
//!
//! TPE (Tree-structured Parzen Estimator, Bergstra et al. 2011, "Algorithms for
//! Hyper-Parameter Optimization") splits the finished trials into the best quarter ("below",
//! good) and the rest ("above", bad), and fits one density per group and per dimension:
//! l(x) from the good trials, g(x) from the bad ones. It draws candidates from l and keeps the
//! one with the highest l(x) / g(x), which maximises the expected improvement. Dimensions are
//! modelled independently. Continuous ones use a mixture of truncated Gaussians with a prior
//! component and Hyperopt's bandwidth rule (distance to the farther neighbour, clipped);
//! categorical ones use smoothed counts. Before `startup` trials the sampler draws at random.

use crate::rng::Rng;

/// The fraction of scored trials that form the good group.
const GAMMA: f64 = 0.25;
/// How many candidates are drawn from the good group's density per dimension.
const N_CANDIDATES: usize = 24;
/// How many times a draw outside the interval is redrawn before it is clamped.
const MAX_REDRAWS: usize = 100;

/// One dimension of a search space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dim {
    /// A real in [lo, hi]; `log`: uniform in log space (lo > 0).
    Real {
        /// The lower bound.
        lo: f64,
        /// The upper bound.
        hi: f64,
        /// Whether the dimension is log-scaled.
        log: bool,
    },
    /// An integer in lo..=hi; `log`: log-scaled (lo >= 1).
    Int {
        /// The lower bound.
        lo: i64,
        /// The upper bound (inclusive).
        hi: i64,
        /// Whether the dimension is log-scaled.
        log: bool,
    },
    /// One of `n` categories (n >= 1), by index.
    Choice {
        /// The number of categories.
        n: usize,
    },
}

/// A finished trial as the sampler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Per dimension: the value (Real: the value; Int: the integer as f64; Choice: the index as f64),
    /// or None where the trial's value is not in the dimension (e.g. a baseline outside the range):
    /// that trial is then left out of that dimension's model.
    pub point: Vec<Option<f64>>,
    /// Higher is better. None: the trial was pruned, infeasible or failed — it counts among the bad
    /// ("above") trials, never among the good ones.
    pub score: Option<f64>,
}

/// How the next point is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// Independent uniform draws (log-uniform for log dims).
    Random,
    /// TPE after `startup` observed trials (random before).
    Tpe {
        /// How many trials are drawn at random before TPE takes over.
        startup: usize,
    },
}

/// The next point to try: one value per dim, in the same encoding as Observed::point
/// (Int values are integers, Choice values are indices, both as f64; every value inside its dim).
pub fn suggest(kind: SamplerKind, dims: &[Dim], history: &[Observed], rng: &mut Rng) -> Vec<f64> {
    debug_assert!(dims.iter().all(is_sane), "invalid search space: {dims:?}");
    let n_scored = history.iter().filter(|trial| trial.score.is_some()).count();
    let use_tpe = match kind {
        SamplerKind::Random => false,
        SamplerKind::Tpe { startup } => history.len() >= startup && n_scored >= 2,
    };
    if !use_tpe {
        return dims.iter().map(|dim| random_value(dim, rng)).collect();
    }
    let good = good_mask(history);
    dims.iter()
        .enumerate()
        .map(|(d, dim)| {
            let (below, above) = split_values(history, &good, d);
            tpe_value(dim, &below, &above, rng)
        })
        .collect()
}

/// The Parzen density of a continuous dimension at each of `xs`, in model coordinates (ln of
/// the value for log dims): equally weighted Gaussians truncated to [a, b], one per observation
/// plus a prior at the middle with sigma b - a, with Hyperopt's bandwidths. Needs a < b.
pub(crate) fn parzen_density(observations: &[f64], a: f64, b: f64, xs: &[f64]) -> Vec<f64> {
    let parzen = Parzen::fit(observations, a, b);
    xs.iter().map(|&x| parzen.density(x)).collect()
}

/// Whether a dimension satisfies its documented constraints.
fn is_sane(dim: &Dim) -> bool {
    match *dim {
        Dim::Real { lo, hi, log } => lo <= hi && (!log || lo > 0.0),
        Dim::Int { lo, hi, log } => lo <= hi && (!log || lo >= 1),
        Dim::Choice { n } => n >= 1,
    }
}

/// A uniform draw from a dimension (log-uniform for log dims).
fn random_value(dim: &Dim, rng: &mut Rng) -> f64 {
    match *dim {
        Dim::Real { lo, hi, log } => Scale::real(lo, hi, log).uniform(rng),
        Dim::Int { lo, hi, log } => Scale::int(lo, hi, log).uniform(rng),
        Dim::Choice { n } => rng.below(n as u64) as f64,
    }
}

/// One dimension's TPE draw from the values of its good (`below`) and bad (`above`) trials.
fn tpe_value(dim: &Dim, below: &[f64], above: &[f64], rng: &mut Rng) -> f64 {
    match *dim {
        Dim::Real { lo, hi, log } => tpe_continuous(&Scale::real(lo, hi, log), below, above, rng),
        Dim::Int { lo, hi, log } => tpe_continuous(&Scale::int(lo, hi, log), below, above, rng),
        Dim::Choice { n } => tpe_choice(n, below, above, rng),
    }
}

/// Marks the good trials: the best ceil(GAMMA * n_scored) scored ones (at least one), ties
/// broken by their order in the history. Unscored trials are never good.
fn good_mask(history: &[Observed]) -> Vec<bool> {
    let mut scored: Vec<(usize, f64)> =
        history.iter().enumerate().filter_map(|(i, trial)| trial.score.map(|s| (i, s))).collect();
    scored.sort_by(|x, y| y.1.total_cmp(&x.1));
    let n_below = ((GAMMA * scored.len() as f64).ceil() as usize).max(1);
    let mut good = vec![false; history.len()];
    for &(i, _) in scored.iter().take(n_below) {
        good[i] = true;
    }
    good
}

/// The values of dimension `d` in the good and in the bad trials, leaving out trials without one.
fn split_values(history: &[Observed], good: &[bool], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut below = Vec::new();
    let mut above = Vec::new();
    for (trial, &is_good) in history.iter().zip(good) {
        if let Some(value) = trial.point.get(d).copied().flatten() {
            if is_good {
                below.push(value);
            } else {
                above.push(value);
            }
        }
    }
    (below, above)
}

/// The TPE draw for a continuous (or integer) dimension: the best of the candidates drawn from
/// the good density, by ln l(x) - ln g(x).
fn tpe_continuous(scale: &Scale, below: &[f64], above: &[f64], rng: &mut Rng) -> f64 {
    if scale.b <= scale.a {
        return scale.value(scale.a);
    }
    let below = scale.coords(below);
    let above = scale.coords(above);
    let good = Parzen::fit(&below, scale.a, scale.b);
    let candidates: Vec<f64> = (0..N_CANDIDATES).map(|_| good.sample(rng)).collect();
    let l = parzen_density(&below, scale.a, scale.b, &candidates);
    let g = parzen_density(&above, scale.a, scale.b, &candidates);
    let best = first_best(l.iter().zip(&g).map(|(l, g)| l.ln() - g.ln()));
    scale.value(candidates[best])
}

/// The TPE draw for a categorical dimension: the best of the candidates drawn from the good
/// group's smoothed frequencies, by l_k / g_k.
fn tpe_choice(n: usize, below: &[f64], above: &[f64], rng: &mut Rng) -> f64 {
    let l = category_weights(n, below);
    let g = category_weights(n, above);
    let candidates: Vec<usize> = (0..N_CANDIDATES).map(|_| draw_category(&l, rng)).collect();
    let best = first_best(candidates.iter().map(|&k| l[k] / g[k]));
    candidates[best] as f64
}

/// Smoothed category frequencies: (count_k + 1/n) / (count + 1); they sum to 1.
fn category_weights(n: usize, values: &[f64]) -> Vec<f64> {
    let mut counts = vec![0.0; n];
    let mut total = 0.0;
    for &value in values {
        let k = value.round();
        if k >= 0.0 && k < n as f64 {
            counts[k as usize] += 1.0;
            total += 1.0;
        }
    }
    counts.iter().map(|&c| (c + 1.0 / n as f64) / (total + 1.0)).collect()
}

/// A category drawn with probability proportional to its weight.
fn draw_category(weights: &[f64], rng: &mut Rng) -> usize {
    let mut u = rng.uniform() * weights.iter().sum::<f64>();
    for (k, &w) in weights.iter().enumerate() {
        if u < w {
            return k;
        }
        u -= w;
    }
    weights.len().saturating_sub(1)
}

/// The index of the highest score, the first one on ties (0 when empty).
fn first_best(scores: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, score) in scores.enumerate() {
        if score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// A continuous or integer dimension: its model interval [a, b] and the map back to values.
struct Scale {
    /// The lower end of the model interval (ln for log dims).
    a: f64,
    /// The upper end of the model interval (ln for log dims).
    b: f64,
    /// Whether model coordinates are ln of the value.
    log: bool,
    /// Whether values are rounded to integers.
    int: bool,
    /// The smallest value.
    lo: f64,
    /// The largest value.
    hi: f64,
}

impl Scale {
    /// A real dimension.
    fn real(lo: f64, hi: f64, log: bool) -> Self {
        let (a, b) = if log { (lo.ln(), hi.ln()) } else { (lo, hi) };
        Scale { a, b, log, int: false, lo, hi }
    }

    /// An integer dimension, modelled as continuous over [lo - 0.5, hi + 0.5].
    fn int(lo: i64, hi: i64, log: bool) -> Self {
        let (lo, hi) = (lo as f64, hi as f64);
        Scale { int: true, lo, hi, ..Self::real(lo - 0.5, hi + 0.5, log) }
    }

    /// Model coordinates of values, clamped into [a, b]; non-finite ones are left out.
    fn coords(&self, values: &[f64]) -> Vec<f64> {
        values
            .iter()
            .map(|&v| if self.log { v.ln() } else { v })
            .filter(|c| c.is_finite())
            .map(|c| c.max(self.a).min(self.b))
            .collect()
    }

    /// The value at a model coordinate: exp for log, rounded for integers, clamped to [lo, hi].
    fn value(&self, coord: f64) -> f64 {
        let v = if self.log { coord.exp() } else { coord };
        let v = if self.int { v.round() } else { v };
        v.max(self.lo).min(self.hi)
    }

    /// A value drawn uniformly in model coordinates.
    fn uniform(&self, rng: &mut Rng) -> f64 {
        self.value(self.a + rng.uniform() * (self.b - self.a))
    }
}

/// A Parzen estimator on [a, b]: equally weighted Gaussians truncated to the interval.
struct Parzen {
    /// The lower end of the interval.
    a: f64,
    /// The upper end of the interval.
    b: f64,
    /// Per component: (mean, sigma, mass of its Gaussian inside [a, b]).
    components: Vec<(f64, f64, f64)>,
}

impl Parzen {
    /// The estimator for `observations` (inside [a, b], a < b) plus the prior component.
    fn fit(observations: &[f64], a: f64, b: f64) -> Self {
        let width = b - a;
        let mut means: Vec<(f64, bool)> = observations.iter().map(|&x| (x, false)).collect();
        means.push((0.5 * (a + b), true));
        means.sort_by(|x, y| x.0.total_cmp(&y.0));
        let min_sigma = width / (means.len() as f64).min(100.0);
        let components = (0..means.len())
            .map(|i| {
                let (mu, is_prior) = means[i];
                let left = if i == 0 { a } else { means[i - 1].0 };
                let right = means.get(i + 1).map_or(b, |m| m.0);
                let sigma = if is_prior { width } else { (mu - left).max(right - mu).clamp(min_sigma, width) };
                (mu, sigma, normal_cdf((b - mu) / sigma) - normal_cdf((a - mu) / sigma))
            })
            .collect();
        Parzen { a, b, components }
    }

    /// The density at `x`.
    fn density(&self, x: f64) -> f64 {
        let sum: f64 =
            self.components.iter().map(|&(mu, sigma, mass)| normal_pdf((x - mu) / sigma) / (sigma * mass)).sum();
        sum / self.components.len() as f64
    }

    /// A draw: a component at random, then its Gaussian until inside [a, b] (clamped at last).
    fn sample(&self, rng: &mut Rng) -> f64 {
        let (mu, sigma, _) = self.components[rng.below(self.components.len() as u64) as usize];
        let mut x = mu;
        for _ in 0..MAX_REDRAWS {
            x = mu + sigma * rng.normal();
            if (self.a..=self.b).contains(&x) {
                return x;
            }
        }
        x.max(self.a).min(self.b)
    }
}

/// The standard normal density.
fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// The standard normal distribution function.
fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7).
fn erfc(x: f64) -> f64 {
    let a = [0.254_829_592, -0.284_496_736, 1.421_413_741, -1.453_152_027, 1.061_405_429];
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let r = t * a.iter().rev().fold(0.0, |acc, &c| acc * t + c) * (-x * x).exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` trials of `kind` on `dims`, each suggestion observed with `objective`'s score.
    fn run(kind: SamplerKind, dims: &[Dim], n: usize, seed: u64, objective: impl Fn(&[f64]) -> f64) -> Vec<Observed> {
        let mut rng = Rng::new(seed);
        let mut history = Vec::new();
        for _ in 0..n {
            let x = suggest(kind, dims, &history, &mut rng);
            let score = Some(objective(&x));
            history.push(Observed { point: x.into_iter().map(Some).collect(), score });
        }
        history
    }

    /// A trial with every value present.
    fn trial(point: &[f64], score: Option<f64>) -> Observed {
        Observed { point: point.iter().copied().map(Some).collect(), score }
    }

    #[test]
    fn parzen_density_integrates_to_one() {
        let cases: [(&[f64], f64, f64); 4] = [
            (&[0.0001, 0.0002, 0.0099, 0.005], 0.0, 0.01),
            (&[-3.0, -2.999, -2.5], -3.0, 7.0),
            (&[], 1.0, 2.0),
            (&[0.0; 150], 0.0, 1.0),
        ];
        for (observations, a, b) in cases {
            let n = 20_000;
            let h = (b - a) / n as f64;
            let xs: Vec<f64> = (0..=n).map(|i| a + i as f64 * h).collect();
            let ys = parzen_density(observations, a, b, &xs);
            let integral = (ys.iter().sum::<f64>() - 0.5 * (ys[0] + ys[n])) * h;
            assert!((integral - 1.0).abs() < 1e-3, "{observations:?} on [{a}, {b}]: {integral}");
        }
    }

    #[test]
    fn tpe_beats_random_on_log_scale_objective() {
        let dims = [Dim::Real { lo: 1e-5, hi: 1e-1, log: true }];
        let distance = |x: &[f64]| (x[0].log10() + 3.0).abs();
        let mean_best = |kind: SamplerKind| {
            let bests = (0..20u64).map(|seed| {
                let history = run(kind, &dims, 30, seed, |x| -distance(x).powi(2));
                let best = history.iter().filter_map(|t| t.score).fold(f64::NEG_INFINITY, f64::max);
                (-best).sqrt()
            });
            bests.sum::<f64>() / 20.0
        };
        let (tpe, random) = (mean_best(SamplerKind::Tpe { startup: 5 }), mean_best(SamplerKind::Random));
        eprintln!("mean best |log10(x) + 3| over 20 seeds: TPE {tpe:.5}, random {random:.5}");
        assert!(tpe < 0.5 * random, "TPE {tpe}, random {random}");
    }

    #[test]
    fn tpe_finds_the_good_category() {
        let dims = [Dim::Real { lo: 0.0, hi: 1.0, log: false }, Dim::Choice { n: 4 }];
        let objective = |x: &[f64]| if x[1] == 2.0 { 1.0 } else { 0.0 } - (x[0] - 0.3).powi(2);
        let history = run(SamplerKind::Random, &dims, 20, 11, objective);
        let rng = Rng::new(99);
        let hits = (0..100)
            .filter(|&i| suggest(SamplerKind::Tpe { startup: 10 }, &dims, &history, &mut rng.fork(i))[1] == 2.0)
            .count();
        assert!(hits >= 70, "category 2 in {hits} of 100 suggestions");
    }

    #[test]
    fn values_stay_in_their_dims_and_random_is_uniform() {
        let dims = [
            Dim::Int { lo: -3, hi: 4, log: false },
            Dim::Int { lo: 1, hi: 1000, log: true },
            Dim::Int { lo: 7, hi: 7, log: true },
            Dim::Real { lo: 2.5, hi: 2.5, log: false },
            Dim::Choice { n: 1 },
        ];
        let history = run(SamplerKind::Tpe { startup: 3 }, &dims, 40, 5, |x| -x[0].abs() - x[1]);
        for point in history.iter().map(|t| &t.point) {
            let x: Vec<f64> = point.iter().flatten().copied().collect();
            assert!(x[..3].iter().all(|v| v.fract() == 0.0), "{x:?}");
            assert!((-3.0..=4.0).contains(&x[0]) && (1.0..=1000.0).contains(&x[1]), "{x:?}");
            assert_eq!(&x[2..], &[7.0, 2.5, 0.0]);
        }
        let mut rng = Rng::new(3);
        let uniform = [Dim::Real { lo: 0.0, hi: 1.0, log: false }, Dim::Real { lo: 1e-3, hi: 1e-1, log: true }];
        let draws: Vec<Vec<f64>> = (0..10_000).map(|_| suggest(SamplerKind::Random, &uniform, &[], &mut rng)).collect();
        let mean = draws.iter().map(|x| x[0]).sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let mut logs: Vec<f64> = draws.iter().map(|x| x[1].ln()).collect();
        logs.sort_by(f64::total_cmp);
        let middle = 0.5 * (1e-3f64.ln() + 1e-1f64.ln());
        assert!((logs[logs.len() / 2] - middle).abs() < 0.1, "{} vs {middle}", logs[logs.len() / 2]);
    }

    #[test]
    fn tpe_before_startup_equals_random() {
        let dims =
            [Dim::Real { lo: 1e-4, hi: 1.0, log: true }, Dim::Int { lo: 0, hi: 9, log: false }, Dim::Choice { n: 3 }];
        let history =
            [trial(&[0.01, 3.0, 1.0], Some(1.0)), trial(&[0.5, 8.0, 0.0], Some(0.0)), trial(&[0.1, 1.0, 2.0], None)];
        let rng = Rng::new(17);
        let tpe = suggest(SamplerKind::Tpe { startup: 4 }, &dims, &history, &mut rng.clone());
        assert_eq!(tpe, suggest(SamplerKind::Random, &dims, &history, &mut rng.clone()));
        let after_startup = suggest(SamplerKind::Tpe { startup: 3 }, &dims, &history, &mut rng.clone());
        assert_ne!(tpe, after_startup);
    }

    #[test]
    fn missing_values_and_unscored_trials_are_handled() {
        let dims = [Dim::Real { lo: 0.0, hi: 10.0, log: false }];
        let base = run(SamplerKind::Random, &dims, 12, 8, |x| -(x[0] - 2.0).powi(2));
        let failed = |value: Option<f64>| Observed { point: vec![value], score: None };
        let with_missing: Vec<Observed> = base.iter().cloned().chain((0..6).map(|_| failed(None))).collect();
        let kind = SamplerKind::Tpe { startup: 5 };
        let rng = Rng::new(4);
        let ignoring = suggest(kind, &dims, &with_missing, &mut rng.clone());
        assert_eq!(ignoring, suggest(kind, &dims, &base, &mut rng.clone()));
        let with_values: Vec<Observed> =
            base.iter().cloned().chain((0..6).map(|_| failed(Some(ignoring[0])))).collect();
        assert_ne!(ignoring, suggest(kind, &dims, &with_values, &mut rng.clone()));

        let unscored: Vec<Observed> = (0..10).map(|i| failed(Some(i as f64))).collect();
        let fallback = suggest(kind, &dims, &unscored, &mut rng.clone());
        assert_eq!(fallback, suggest(SamplerKind::Random, &dims, &unscored, &mut rng.clone()));
        let no_values = [failed(None), trial(&[1.0], Some(0.0)), Observed { point: vec![], score: Some(1.0) }];
        let x = suggest(SamplerKind::Tpe { startup: 0 }, &dims, &no_values, &mut rng.clone());
        assert!((0.0..=10.0).contains(&x[0]), "{x:?}");
    }
}
