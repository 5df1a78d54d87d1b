//! Value tiles: a single evaluation shown as its number, with what it measures, of
//! which set, at which stage and step, where a plot would show one dot.
//!
//! ```
//! use stagecraft_core::report::tiles::{tiles_html, ValueTile};
//! let tile = ValueTile { value: 0.9867, metric: "exact_match".into(), set: "sub".into(), stage: "sub".into(), step: 100 };
//! let html = tiles_html(&[tile]);
//! assert!(html.contains(">0.9867<") && html.contains("exact_match"));
//! ```

use std::fmt::Write;

use super::escape::escape;
use super::fmt::number;

/// One evaluation's value.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueTile {
    /// The value.
    pub value: f64,
    /// The metric (`exact_match`, `loss_p90`, ...).
    pub metric: String,
    /// The eval set.
    pub set: String,
    /// The stage it was taken in.
    pub stage: String,
    /// The stage's step it was taken at.
    pub step: u64,
}

/// The tiles, each a `<div class="tile">`: the number large, then metric and set, then
/// stage and step.
pub fn tiles_html(tiles: &[ValueTile]) -> String {
    let mut s = String::new();
    for t in tiles {
        let _ = writeln!(
            s,
            "<div class=\"tile\"><div class=\"v\">{}</div><div class=\"m\">{} · {}</div>\
             <div class=\"s\">{}, step {}</div></div>",
            number(Some(t.value)),
            escape(&t.metric),
            escape(&t.set),
            escape(&t.stage),
            t.step
        );
    }
    s
}
