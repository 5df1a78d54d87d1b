//! The run's metrics log and its report.
//!
//! - [`MetricsLog`]: `<run_dir>/metrics.jsonl`, one [`MetricRow`] per line, training
//!   rows (`loss`, `lr`, `grad_norm`) and eval rows (`set`, `metrics`);
//! - [`RetentionMatrix`]: a metric of every eval set after every stage, the forgetting
//!   it shows, a terminal table, `<run_dir>/retention.json`;
//! - [`csv`]: `<run_dir>/metrics.csv`, the same rows as one table;
//! - [`tensorboard`]: `<run_dir>/tensorboard/` event files (`[run] tensorboard = true`);
//! - [`write_html`]: `<run_dir>/report.html`, a self-contained dashboard without
//!   JavaScript: the run's key numbers, a timeline of training loss (task and replay
//!   apart), learning rate, gradient norm, throughput and memory over all stages on one
//!   step axis ([`timeline`]), every eval set's retention curve with the gates' bounds
//!   ([`curves`]), the retention matrix, the summary and events ([`EventLog`]:
//!   recoveries, gates, early stops), each stage's evaluations ([`plots`]), and the
//!   resolved config. Plots are inline SVG ([`svg`]), log-scaled where values span
//!   decades.
//!
//! ```
//! use stagecraft_core::report::{write_html, MetricRow, MetricsLog, ReportInput, RetentionMatrix};
//! let run_dir = std::env::temp_dir().join(format!("report-mod-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&run_dir)?;
//! let mut log = MetricsLog::open(&run_dir)?;
//! log.append(&MetricRow::train("pretrain", 1, 2.3, 3e-3, Some(0.9)))?;
//! log.append(&MetricRow::eval("pretrain", 1, "pretrain", [("loss".to_string(), 2.1)].into()))?;
//! let rows = MetricsLog::read(log.path())?;
//! let retention = RetentionMatrix::from_rows(&rows, "loss");
//! retention.write_json(&run_dir)?;
//! print!("{}", retention.to_table());
//! let input = ReportInput { title: "arith", rows: &rows, retention: Some(&retention), ..ReportInput::default() };
//! let page = write_html(&run_dir, &input)?;
//! assert!(page.ends_with("report.html"));
//! std::fs::remove_dir_all(&run_dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod axis;
pub mod clock;
pub mod csv;
pub mod curves;
mod escape;
mod events;
mod examples;
pub mod fmt;
mod gate_line;
mod global_step;
pub mod header;
mod html;
mod jsonl;
mod marks;
mod metrics;
pub mod num;
pub mod plots;
mod retention;
pub mod svg;
pub mod tables;
pub mod tensorboard;
pub mod ticks;
pub mod tiles;
pub mod timeline;

pub use escape::escape;
pub use events::{Event, EventKind, EventLog};
pub use examples::{examples_path, read_examples, write_examples, ExampleScores, EXAMPLES_DIR};
pub use gate_line::{Bound, GateLine};
pub use global_step::GlobalSteps;
pub(crate) use html::STYLE;
pub use html::{render_html, timed, write_html, ReportInput, REPORT_FILE};
pub use jsonl::Jsonl;
pub use metrics::{MetricRow, MetricsLog, Split};
pub use retention::{lower_is_better, RetentionMatrix, RETENTION_FILE};
