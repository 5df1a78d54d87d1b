//! `--set key=value` overrides, applied to the parsed TOML before it is checked.
//!
//! Keys are dotted paths; list elements (stages, adapters) are named by index or by
//! their `name`: `run.seed=7`, `stages.0.max_steps=50`,
//! `stages.finetune_add.optimizer.lr=1e-3`, `stages.adapt.adapters.0.r=16`.
//! Values are TOML (`50`, `1e-3`, `true`, `"text"`, `[1, 2]`); anything that is not
//! valid TOML is taken as a string.

use crate::bail;
use crate::error::{Error, Result};
use toml::{Table, Value};

/// A `--set` value: TOML, or the raw text as a string when it is not valid TOML.
pub(crate) fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Applies one `key=value` override to `table`.
pub fn apply_override(table: &mut Table, kv: &str) -> Result<()> {
    let (key, raw) = kv.split_once('=').ok_or_else(|| Error::msg(format!("--set `{kv}`: expected key=value")))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set `{kv}`: empty key component");
    }
    let value = parse_value(raw.trim());
    let mut root = Value::Table(std::mem::take(table));
    let result = set(&mut root, &parts, value, kv);
    if let Value::Table(t) = root {
        *table = t;
    }
    result
}

/// Sets the dotted `key` inside `table` to `value` (as `--set key=value` would, the
/// value already parsed).
pub(crate) fn set_key(table: &mut Table, key: &str, value: Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut root = Value::Table(std::mem::take(table));
    let result = set(&mut root, &parts, value, key);
    if let Value::Table(t) = root {
        *table = t;
    }
    result
}

/// Sets `path` inside `node`: tables by key (created when missing), arrays (stages,
/// adapters) by index or by the `name` of an element.
fn set(node: &mut Value, path: &[&str], value: Value, kv: &str) -> Result<()> {
    let Some((part, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    let child = match node {
        Value::Table(t) if rest.is_empty() => {
            t.insert(part.to_string(), value);
            return Ok(());
        }
        Value::Table(t) => t.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new())),
        Value::Array(items) => {
            let len = items.len();
            let idx = match part.parse::<usize>() {
                Ok(n) if n < len => n,
                Ok(n) => return Err(Error::msg(format!("--set `{kv}`: index {n} out of range ({len} elements)"))),
                Err(_) => items
                    .iter()
                    .position(|s| s.get("name").and_then(Value::as_str) == Some(part))
                    .ok_or_else(|| Error::msg(format!("--set `{kv}`: no element named `{part}`")))?,
            };
            &mut items[idx]
        }
        _ => {
            return Err(Error::msg(format!(
                "--set `{kv}`: cannot set `{part}` inside a value that is not a table or a list"
            )))
        }
    };
    if rest.is_empty() {
        *child = value;
        return Ok(());
    }
    set(child, rest, value, kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_run_and_stages_by_index_or_name() {
        let mut t: Table = toml::from_str(
            "[run]\nseed = 1\n[[stages]]\nname = \"a\"\n[[stages]]\nname = \"b\"\noptimizer = { lr = 0.1 }",
        )
        .expect("test table parses");
        apply_override(&mut t, "run.seed=7").expect("run.seed=7");
        apply_override(&mut t, "stages.1.max_steps=50").expect("stages.1.max_steps=50");
        apply_override(&mut t, "stages.b.optimizer.lr=1e-3").expect("stages.b.optimizer.lr=1e-3");
        apply_override(&mut t, "run.name=hello world").expect("run.name=hello world");
        assert_eq!(t["run"]["seed"].as_integer(), Some(7));
        assert_eq!(t["run"]["name"].as_str(), Some("hello world"));
        assert_eq!(t["stages"][1]["max_steps"].as_integer(), Some(50));
        assert_eq!(t["stages"][1]["optimizer"]["lr"].as_float(), Some(1e-3));
        assert!(apply_override(&mut t, "stages.zz.max_steps=1").is_err());
        assert!(apply_override(&mut t, "stages.9.max_steps=1").is_err());
        assert!(apply_override(&mut t, "noequals").is_err());
        apply_override(&mut t, "stages.b.adapters=[{ plugin = \"lora\", r = 4 }]")
            .expect("stages.b.adapters=[{ plugin = \"lora\", r = 4 }]");
        apply_override(&mut t, "stages.b.adapters.0.r=16").expect("stages.b.adapters.0.r=16");
        assert_eq!(t["stages"][1]["adapters"][0]["r"].as_integer(), Some(16));
        assert!(apply_override(&mut t, "run.seed.x=1").is_err());
    }
}
