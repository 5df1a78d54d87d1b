//! Comparing two runs with evidence: for every eval set both runs scored at their end,
//! the difference in its main score (run B − run A) with a paired bootstrap 95%
//! confidence interval, and a verdict.
//!
//! Each run's final evaluation of a set is the last one its metrics log holds (the
//! run's last stage, at its end); its per-example scores come from the run's
//! `examples/` files ([`crate::report::ExampleScores`]), so nothing is re-run. The
//! examples are paired by position (both runs must have scored the same data: the
//! set's `data.eval` spec and size must agree), and those a metric does not score in
//! either run are left out. The bootstrap resamples the paired differences with
//! replacement ([`paired_bootstrap`]); the verdict is `better` or `worse` when the
//! interval excludes 0 on that side (for a metric that is better lower, such as
//! `loss`, a negative difference is better), else `no evidence`.

use crate::error::{Error, Result};
use crate::pipeline::{run_config, MAIN_SCORE};
use crate::report::{escape, lower_is_better, read_examples, MetricRow, MetricsLog, Split};
use crate::rng::Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How `loss` is compared, which differs from the run's eval loss.
const LOSS_NOTE: &str = "loss: the mean of per-example losses (each example's mean over its tokens); the run's eval \
                         loss weighs examples by their tokens";

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The metric to compare (default: each set's main score).
    pub metric: Option<String>,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// The bootstrap's seed.
    pub seed: u64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions { metric: None, resamples: 10_000, seed: 0 }
    }
}

/// What the interval says about run B against run A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// B is better: the interval excludes 0 on B's side.
    Better,
    /// B is worse.
    Worse,
    /// The interval contains 0.
    NoEvidence,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::NoEvidence => "no evidence",
        })
    }
}

/// One eval set, compared.
#[derive(Debug, Clone, Serialize)]
pub struct SetComparison {
    /// The set (named after the stage that owns it).
    pub set: String,
    /// The metric compared.
    pub metric: String,
    /// Run A's mean over the paired examples.
    pub a: f64,
    /// Run B's.
    pub b: f64,
    /// `b - a`.
    pub diff: f64,
    /// The 95% interval of `b - a`.
    pub ci: (f64, f64),
    /// Paired examples.
    pub n: usize,
    /// What the interval says.
    pub verdict: Verdict,
}

/// Both runs, every set compared, and the sets that could not be.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Run A.
    pub run_a: PathBuf,
    /// Run B.
    pub run_b: PathBuf,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// The sets compared.
    pub sets: Vec<SetComparison>,
    /// `(set, why)` for each set one run scored that could not be compared.
    pub skipped: Vec<(String, String)>,
}

/// Compares the final evaluations of runs `a` and `b`.
pub fn compare_runs(a: &Path, b: &Path, opts: &CompareOptions) -> Result<Comparison> {
    let (rows_a, rows_b) = (final_evals(a)?, final_evals(b)?);
    let (cfg_a, cfg_b) = (run_config(a)?, run_config(b)?);
    let eval_spec = |cfg: &crate::config::PipelineConfig, set: &str| {
        cfg.stage(set).and_then(|(_, s)| s.data.eval.as_ref().map(|e| format!("{e:?}")))
    };
    let mut sets = Vec::new();
    let mut skipped = Vec::new();
    for row_a in &rows_a {
        let set = row_a.set.clone().unwrap_or_default();
        let Some(row_b) = rows_b.iter().find(|r| r.set == row_a.set) else {
            skipped.push((set, format!("{} did not evaluate it", b.display())));
            continue;
        };
        if eval_spec(&cfg_a, &set) != eval_spec(&cfg_b, &set) {
            skipped.push((set, "the runs' data.eval for it differ".into()));
            continue;
        }
        match compare_set(a, row_a, b, row_b, opts)? {
            Ok(c) => sets.push(c),
            Err(why) => skipped.push((set, why)),
        }
    }
    for row_b in rows_b.iter().filter(|r| !rows_a.iter().any(|a| a.set == r.set)) {
        skipped.push((row_b.set.clone().unwrap_or_default(), format!("{} did not evaluate it", a.display())));
    }
    if sets.is_empty() && skipped.is_empty() {
        return Err(Error::msg(format!("{} and {}: neither run has evaluated anything", a.display(), b.display())));
    }
    Ok(Comparison { run_a: a.to_path_buf(), run_b: b.to_path_buf(), resamples: opts.resamples, sets, skipped })
}

/// The last evaluation row of each set in a run's metrics log, in the order the sets
/// were first evaluated.
fn final_evals(run: &Path) -> Result<Vec<MetricRow>> {
    let path = run.join(MetricsLog::FILE_NAME);
    if !path.is_file() {
        return Err(Error::msg(format!("{}: not a run directory (no {})", run.display(), MetricsLog::FILE_NAME)));
    }
    let mut last: Vec<MetricRow> = Vec::new();
    for row in MetricsLog::read(&path)?.into_iter().filter(|r| r.split == Split::Eval) {
        match last.iter_mut().find(|r| r.set == row.set) {
            Some(r) => *r = row,
            None => last.push(row),
        }
    }
    Ok(last)
}

/// One set: its scores in both runs paired and bootstrapped, or why it cannot be.
fn compare_set(
    a: &Path,
    row_a: &MetricRow,
    b: &Path,
    row_b: &MetricRow,
    opts: &CompareOptions,
) -> Result<std::result::Result<SetComparison, String>> {
    let set = row_a.set.clone().unwrap_or_default();
    let (Some(ex_a), Some(ex_b)) =
        (read_examples(a, &row_a.stage, row_a.step, &set)?, read_examples(b, &row_b.stage, row_b.step, &set)?)
    else {
        return Ok(Err(
            "no per-example scores in one of the runs (an objective that gives none, or an older run)".into()
        ));
    };
    let both = |m: &str| ex_a.scores(m).is_some() && ex_b.scores(m).is_some();
    let metric = match &opts.metric {
        Some(m) if both(m) => m.clone(),
        Some(m) => return Ok(Err(format!("`{m}` is not recorded per example in both runs"))),
        // The set's main score as the pipeline picks it, among those both runs recorded.
        None => match MAIN_SCORE.into_iter().find(|m| both(m)) {
            Some(m) => m.to_string(),
            None => return Ok(Err("no score recorded per example in both runs".into())),
        },
    };
    let (sa, sb) = (ex_a.scores(&metric).unwrap_or_default(), ex_b.scores(&metric).unwrap_or_default());
    if sa.len() != sb.len() {
        return Ok(Err(format!("the runs scored {} and {} examples", sa.len(), sb.len())));
    }
    let (va, vb): (Vec<f64>, Vec<f64>) = sa.iter().zip(sb).filter_map(|(x, y)| Some(((*x)?, (*y)?))).unzip();
    if va.is_empty() {
        return Ok(Err(format!("no example scored by `{metric}` in both runs")));
    }
    let boot = paired_bootstrap(&va, &vb, opts.resamples, opts.seed);
    let lower = lower_is_better(&metric);
    let verdict = match (boot.lo > 0.0, boot.hi < 0.0) {
        (true, _) if lower => Verdict::Worse,
        (true, _) => Verdict::Better,
        (_, true) if lower => Verdict::Better,
        (_, true) => Verdict::Worse,
        _ => Verdict::NoEvidence,
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok(Ok(SetComparison {
        set,
        metric,
        a: mean(&va),
        b: mean(&vb),
        diff: boot.mean,
        ci: (boot.lo, boot.hi),
        n: va.len(),
        verdict,
    }))
}

/// The mean paired difference `b - a` and its percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// The mean of `b - a`.
    pub mean: f64,
    /// The 2.5th percentile of the resampled means.
    pub lo: f64,
    /// The 97.5th percentile.
    pub hi: f64,
}

/// Resamples the `n` paired differences `b[i] - a[i]` with replacement `resamples`
/// times (seeded), and takes the 2.5th and 97.5th percentiles of the resampled means.
pub fn paired_bootstrap(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Bootstrap {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n.max(1) as f64;
    let mut rng = Rng::new(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| d[rng.below(n as u64) as usize]).sum::<f64>() / n.max(1) as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * means.len() as f64) as usize).min(means.len() - 1)];
    Bootstrap { mean, lo: at(0.025), hi: at(0.975) }
}

impl Comparison {
    /// The console table: one line per set, then the sets skipped and why.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "run A: {}\nrun B: {}\n{:<16} {:<12} {:>9} {:>9} {:>9}  {:<21} {:>5}  verdict (B against A)\n",
            self.run_a.display(),
            self.run_b.display(),
            "set",
            "metric",
            "A",
            "B",
            "B - A",
            "95% CI",
            "n"
        );
        for c in &self.sets {
            out.push_str(&format!(
                "{:<16} {:<12} {:>9.4} {:>9.4} {:>+9.4}  {:<21} {:>5}  {}\n",
                c.set,
                c.metric,
                c.a,
                c.b,
                c.diff,
                format!("[{:+.4}, {:+.4}]", c.ci.0, c.ci.1),
                c.n,
                c.verdict
            ));
        }
        for (set, why) in &self.skipped {
            out.push_str(&format!("{set:<16} not compared: {why}\n"));
        }
        if self.sets.iter().any(|c| c.metric == "loss") {
            out.push_str(LOSS_NOTE);
            out.push('\n');
        }
        out
    }

    /// `compare.html`: the table and each interval drawn against 0.
    pub fn to_html(&self) -> String {
        let title = "stagecraft compare";
        let mut s = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n\
             <style>{}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<p class=\"note\">Run A: {}<br>Run B: {}<br>\
             Paired bootstrap over the examples both runs scored ({} resamples); B − A, 95% interval.</p>\n\
             <div class=\"card\"><table>\n<tr><th>set</th><th>metric</th><th>A</th><th>B</th><th>B − A</th>\
             <th>95% interval</th><th>n</th><th>verdict</th><th>interval and B − A against 0</th></tr>\n",
            crate::report::STYLE,
            escape(&self.run_a.display().to_string()),
            escape(&self.run_b.display().to_string()),
            self.resamples
        );
        for c in &self.sets {
            let class = match c.verdict {
                Verdict::Better => " class=\"n better\"",
                Verdict::Worse => " class=\"n worse\"",
                Verdict::NoEvidence => "",
            };
            s.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:+.4}</td><td>[{:+.4}, {:+.4}]</td>\
                 <td>{}</td><td{class}>{}</td><td>{}</td></tr>\n",
                escape(&c.set),
                escape(&c.metric),
                c.a,
                c.b,
                c.diff,
                c.ci.0,
                c.ci.1,
                c.n,
                c.verdict,
                interval_svg(c)
            ));
        }
        s.push_str("</table></div>\n");
        if self.sets.iter().any(|c| c.metric == "loss") {
            s.push_str(&format!("<p class=\"note\">{}</p>\n", escape(LOSS_NOTE)));
        }
        if !self.skipped.is_empty() {
            s.push_str("<h2>Not compared</h2>\n<div class=\"card\"><table>\n");
            for (set, why) in &self.skipped {
                s.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>\n", escape(set), escape(why)));
            }
            s.push_str("</table></div>\n");
        }
        s.push_str("</body>\n</html>\n");
        s
    }
}

/// A set's interval and mean difference on an axis through 0, green where B is better.
fn interval_svg(c: &SetComparison) -> String {
    let (w, h) = (220.0, 18.0);
    let reach = c.ci.0.abs().max(c.ci.1.abs()).max(c.diff.abs()).max(1e-12) * 1.1;
    let x = |v: f64| w / 2.0 + v / reach * (w / 2.0 - 4.0);
    let colour = match c.verdict {
        Verdict::Better => "#1a7f37",
        Verdict::Worse => "#b2182b",
        Verdict::NoEvidence => "#555",
    };
    format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"interval\">\
         <line x1=\"{z:.1}\" y1=\"1\" x2=\"{z:.1}\" y2=\"{h1}\" stroke=\"#999\" stroke-dasharray=\"2,2\"/>\
         <line x1=\"{lo:.1}\" y1=\"9\" x2=\"{hi:.1}\" y2=\"9\" stroke=\"{colour}\" stroke-width=\"3\"/>\
         <circle cx=\"{m:.1}\" cy=\"9\" r=\"4\" fill=\"{colour}\"/></svg>",
        z = x(0.0),
        h1 = h - 1.0,
        lo = x(c.ci.0),
        hi = x(c.ci.1),
        m = x(c.diff)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_scores_give_a_zero_interval() {
        let a = [1.0, 0.0, 1.0, 1.0];
        let b = paired_bootstrap(&a, &a, 500, 1);
        assert_eq!((b.mean, b.lo, b.hi), (0.0, 0.0, 0.0));
    }

    #[test]
    fn a_consistent_gain_is_excluded_from_zero_and_noise_is_not() {
        let a: Vec<f64> = (0..200).map(|i| (i % 7) as f64).collect();
        let better: Vec<f64> = a.iter().map(|v| v + 0.5).collect();
        let b = paired_bootstrap(&a, &better, 2000, 3);
        assert!((b.mean - 0.5).abs() < 1e-12 && b.lo == 0.5 && b.hi == 0.5);
        // Differences of ±1 in equal numbers: mean 0, an interval around it.
        let noisy: Vec<f64> = a.iter().enumerate().map(|(i, v)| if i % 2 == 0 { v + 1.0 } else { v - 1.0 }).collect();
        let b = paired_bootstrap(&a, &noisy, 2000, 3);
        assert!(b.mean.abs() < 1e-12 && b.lo < 0.0 && b.hi > 0.0, "{b:?}");
        // The interval's half-width is about 1.96·sd/√n = 1.96/√200 ≈ 0.139.
        assert!((b.hi - b.lo - 2.0 * 0.139).abs() < 0.03, "{b:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_interval() {
        let a: Vec<f64> = (0..50).map(|i| (i % 3) as f64).collect();
        let b: Vec<f64> = (0..50).map(|i| (i % 5) as f64).collect();
        assert_eq!(paired_bootstrap(&a, &b, 300, 9), paired_bootstrap(&a, &b, 300, 9));
    }
}
