//! The search's page, `report.html`: per tuned stage, every trial's score (a plot, then
//! a table with its values, status and steps), the best trial and the baseline, and the
//! importance of each key.
//!
//! Importance is measured on the stage's complete trials: for a numeric key, the squared
//! Spearman rank correlation between its value (its logarithm for log-scaled keys: the
//! ranks are the same) and the score; for a choice, the correlation ratio η² (the share
//! of the scores' variance between the choices). Shares are of the sum over the stage's
//! keys. With fewer than three complete trials there is nothing to measure.

use super::space::{Param, Space, StageSpace};
use super::tpe::Dim;
use super::trial::Status;
use super::TrialRecord;
use crate::checkpoint::durable;
use crate::error::Result;
use crate::report::escape;
use std::fmt::Write;
use std::path::Path;

/// The page's file name.
pub const REPORT_FILE: &str = "report.html";

/// Writes `report.html` in `dir`.
pub fn write(dir: &Path, space: &Space, records: &[TrialRecord]) -> Result<()> {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>stagecraft search</title><style>\
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:8px 0 20px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}\
th{background:#f4f4f4}td.l,th.l{text-align:left}.best{background:#e8f5e9}.pruned{color:#888}.infeasible,.failed{color:#b00}\
.bar{display:inline-block;height:10px;background:#4a7bd0}</style></head><body><h1>stagecraft search</h1>",
    );
    let _ = match space.settings.mode {
        super::space::Mode::Sample => {
            write!(html, "<p>{} trials; sampler {}.</p>", records.len(), escape(&space.settings.sampler))
        }
        super::space::Mode::Pbt => write!(
            html,
            "<p>Population-based training: {} members, {} member-generations.</p>",
            records.iter().map(|r| r.number + 1).max().unwrap_or(0),
            records.len()
        ),
    };
    for stage in &space.stages {
        let trials: Vec<&TrialRecord> = records.iter().filter(|r| r.stage == stage.stage).collect();
        stage_section(&mut html, stage, &trials);
    }
    html.push_str("</body></html>\n");
    durable::replace(&dir.join(REPORT_FILE), html.as_bytes())
}

/// One tuned stage: the plot, the table and the importances.
fn stage_section(html: &mut String, stage: &StageSpace, trials: &[&TrialRecord]) {
    let _ = write!(html, "<h2>stage <code>{}</code></h2>", escape(&stage.stage));
    if trials.is_empty() {
        html.push_str("<p>No trial yet.</p>");
        return;
    }
    let best = super::best(trials).map(|b| b.label());
    let metric = trials.iter().find_map(|r| r.metric.clone()).unwrap_or_else(|| "score".into());
    let population = trials.iter().any(|r| r.generation.is_some());
    html.push_str(&plot(trials, best.as_deref(), &metric));
    let _ = write!(
        html,
        "<table><tr><th>#</th>{}<th class=l>status</th><th>{}</th><th>steps</th><th>s</th>",
        if population { "<th>from</th>" } else { "" },
        escape(&metric)
    );
    for p in &stage.params {
        let _ = write!(html, "<th class=l>{}</th>", escape(&p.key));
    }
    html.push_str("</tr>");
    for r in trials {
        let class = match (Some(r.label()) == best, r.status) {
            (true, _) => "best",
            (_, Status::Pruned) => "pruned",
            (_, Status::Infeasible) => "infeasible",
            (_, Status::Failed) => "failed",
            _ => "",
        };
        let status = match (r.number, r.generation, r.status) {
            (0, None | Some(0), s) => format!("{} (the pipeline's values)", s.describe()),
            (_, _, s) => s.describe().to_string(),
        };
        let value = r.value.map_or("–".to_string(), |v| format!("{v:.4}"));
        let from = match (population, r.parent) {
            (false, _) => String::new(),
            (true, Some(p)) if p != r.number => format!("<td>{p} (copied)</td>"),
            (true, Some(p)) => format!("<td>{p}</td>"),
            (true, None) => "<td>–</td>".to_string(),
        };
        let _ = write!(
            html,
            "<tr class={class}><td>{}</td>{from}<td class=l>{}</td><td>{value}</td><td>{}</td><td>{:.1}</td>",
            r.label(),
            escape(&status),
            r.steps,
            r.seconds
        );
        for p in &stage.params {
            let v = r.values.iter().find(|kv| kv.key == p.key).and_then(|kv| kv.value.as_ref());
            let shown = v.map_or("(default)".to_string(), Param::show);
            let _ = write!(html, "<td class=l>{}</td>", escape(&shown));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    importance_section(html, stage, trials);
}

/// Each trial's value at its last evaluation against its number (a population's
/// members against their generation); the best one ringed.
fn plot(trials: &[&TrialRecord], best: Option<&str>, metric: &str) -> String {
    let (w, h, pad) = (660.0, 220.0, 56.0);
    let values: Vec<f64> = trials.iter().filter_map(|r| r.value).collect();
    if values.is_empty() {
        return String::new();
    }
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let at = |r: &TrialRecord| r.generation.unwrap_or(r.number);
    let n = trials.iter().map(|r| at(r)).max().unwrap_or(0).max(1) as f64;
    let axis = if trials.iter().any(|r| r.generation.is_some()) { "generation" } else { "trial" };
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / n;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * (v - lo) / span;
    let mut svg =
        format!("<svg width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{} per trial\">", escape(metric));
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#999\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{0}\" stroke=\"#999\"/>",
        h - pad,
        w - pad
    );
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{hi:.4}</text>",
        pad - 4.0,
        pad + 4.0
    );
    let _ =
        write!(svg, "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{lo:.4}</text>", pad - 4.0, h - pad);
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{axis}</text>",
        w - pad,
        h - pad + 30.0
    );
    // A population's lineage: each member's line from the state it went on from.
    for r in trials {
        let (Some(v), Some(g), Some(p)) = (r.value, r.generation, r.parent) else { continue };
        let Some(pv) =
            trials.iter().find(|q| q.number == p && q.generation == Some(g.saturating_sub(1))).and_then(|q| q.value)
        else {
            continue;
        };
        let dash = if p != r.number { " stroke-dasharray=\"3 2\"" } else { "" };
        let _ = write!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#9ab\"{dash}/>",
            x(g - 1),
            y(pv),
            x(g),
            y(v)
        );
    }
    let mut labelled = std::collections::BTreeSet::new();
    for r in trials {
        let Some(v) = r.value else { continue };
        let color = match r.status {
            Status::Complete => "#4a7bd0",
            Status::Pruned => "#aaa",
            Status::Infeasible | Status::Failed => "#c33",
            Status::Paused => "#8fb3e8",
        };
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{color}\"><title>#{} {v:.4}</title></circle>",
            x(at(r)),
            y(v),
            r.label()
        );
        if labelled.insert(at(r)) {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                x(at(r)),
                h - pad + 14.0,
                at(r)
            );
        }
        if Some(r.label().as_str()) == best {
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"8\" fill=\"none\" stroke=\"#2e7d32\" stroke-width=\"2\"/>",
                x(at(r)),
                y(v)
            );
        }
    }
    svg.push_str("</svg>");
    let what = match axis {
        "generation" => "each member at the end of each generation (pale: paused there, blue: the stage's end, red: failed or a gate failed; a dashed line: the member copied another's state; ringed: the best)",
        _ => "each trial's last evaluation (blue: complete, grey: pruned, red: a gate failed; ringed: the best)",
    };
    format!("<p>{} at {what}.</p>{svg}", escape(metric))
}

fn importance_section(html: &mut String, stage: &StageSpace, trials: &[&TrialRecord]) {
    let complete: Vec<&&TrialRecord> = trials.iter().filter(|r| r.feasible()).collect();
    if complete.len() < 3 {
        html.push_str("<p>Importance: fewer than three complete trials.</p>");
        return;
    }
    let scores: Vec<f64> = complete.iter().filter_map(|r| r.score).collect();
    let raw: Vec<f64> = stage
        .params
        .iter()
        .map(|p| {
            let xs: Vec<Option<f64>> = complete
                .iter()
                .map(|r| r.values.iter().find(|kv| kv.key == p.key)?.value.as_ref().and_then(|v| p.coordinate(v)))
                .collect();
            importance(p.dim, &xs, &scores)
        })
        .collect();
    let total: f64 = raw.iter().sum();
    html.push_str("<h3>Importance</h3><table><tr><th class=l>key</th><th>share</th><th class=l></th></tr>");
    for (p, r) in stage.params.iter().zip(&raw) {
        let share = if total > 0.0 { r / total } else { 0.0 };
        let _ = write!(
            html,
            "<tr><td class=l>{}</td><td>{:.0}%</td><td class=l><span class=bar style=\"width:{:.0}px\"></span></td></tr>",
            escape(&p.key),
            share * 100.0,
            share * 200.0
        );
    }
    html.push_str("</table>");
}

/// One key's raw importance (see the module docs) over the trials where it has a value.
pub(crate) fn importance(dim: Dim, xs: &[Option<f64>], scores: &[f64]) -> f64 {
    let pairs: Vec<(f64, f64)> = xs.iter().zip(scores).filter_map(|(x, s)| Some(((*x)?, *s))).collect();
    if pairs.len() < 3 {
        return 0.0;
    }
    match dim {
        Dim::Choice { .. } => correlation_ratio(&pairs),
        _ => spearman(&pairs).powi(2),
    }
}

/// Ranks, ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|a, b| v[*a].total_cmp(&v[*b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0;
        for k in &idx[i..=j] {
            r[*k] = mean;
        }
        i = j + 1;
    }
    r
}

/// The Pearson correlation of the ranks (0 when either side is constant).
fn spearman(pairs: &[(f64, f64)]) -> f64 {
    let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    let (rx, ry) = (ranks(&xs), ranks(&ys));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mx, my) = (mean(&rx), mean(&ry));
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let (vx, vy): (f64, f64) = (rx.iter().map(|a| (a - mx).powi(2)).sum(), ry.iter().map(|b| (b - my).powi(2)).sum());
    if vx == 0.0 || vy == 0.0 {
        return 0.0;
    }
    cov / (vx * vy).sqrt()
}

/// η²: the variance of the scores between groups (by choice) over their total variance.
fn correlation_ratio(pairs: &[(f64, f64)]) -> f64 {
    let mean = pairs.iter().map(|p| p.1).sum::<f64>() / pairs.len() as f64;
    let total: f64 = pairs.iter().map(|p| (p.1 - mean).powi(2)).sum();
    if total == 0.0 {
        return 0.0;
    }
    let mut groups: std::collections::BTreeMap<i64, (f64, usize)> = std::collections::BTreeMap::new();
    for (x, s) in pairs {
        let g = groups.entry(x.round() as i64).or_insert((0.0, 0));
        g.0 += s;
        g.1 += 1;
    }
    let between: f64 = groups.values().map(|(sum, n)| *n as f64 * (sum / *n as f64 - mean).powi(2)).sum();
    between / total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_finds_the_key_that_drives_the_score() {
        let real = Dim::Real { lo: 0.0, hi: 1.0, log: false };
        let driving: Vec<Option<f64>> = [0.1, 0.4, 0.2, 0.9, 0.7].map(Some).to_vec();
        let scores = [1.0, 4.0, 2.0, 9.0, 7.0];
        assert!((importance(real, &driving, &scores) - 1.0).abs() < 1e-12, "monotone: ρ² = 1");
        let noise: Vec<Option<f64>> = [0.5, 0.5, 0.5, 0.5, 0.5].map(Some).to_vec();
        assert_eq!(importance(real, &noise, &scores), 0.0, "constant key");
        let choice = Dim::Choice { n: 2 };
        let groups: Vec<Option<f64>> = [0.0, 1.0, 0.0, 1.0, 1.0].map(Some).to_vec();
        let by_group = [1.0, 5.0, 1.0, 5.0, 5.0];
        assert!((importance(choice, &groups, &by_group) - 1.0).abs() < 1e-12, "the choice explains all");
        assert_eq!(importance(real, &[Some(0.1), None, Some(0.3)], &[1.0, 2.0, 3.0]), 0.0, "two values only");
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), [1.5, 0.0, 1.5]);
    }
}
