//! `--set key=value` overrides, applied to the parsed TOML before it is checked.
//!
//! Keys are dotted paths; a stage is named by index or by name:
//! `run.seed=7`, `stages.0.max_steps=50`, `stages.finetune_add.optimizer.lr=1e-3`.
//! Values are TOML (`50`, `1e-3`, `true`, `"text"`, `[1, 2]`); anything that is not
//! valid TOML is taken as a string.

use crate::error::{Error, Result};
use toml::{Table, Value};

fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Applies one `key=value` override to `table`.
pub fn apply_override(table: &mut Table, kv: &str) -> Result<()> {
    let (key, raw) = kv.split_once('=').ok_or_else(|| Error::msg(format!("--set `{kv}`: expected key=value")))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::msg(format!("--set `{kv}`: empty key component")));
    }
    let value = parse_value(raw.trim());
    let mut cur: &mut Table = table;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if *part == "stages" && !last {
            let stages = cur.get_mut("stages").and_then(Value::as_array_mut).ok_or_else(|| Error::msg(format!("--set `{kv}`: the config has no stages")))?;
            let sel = parts[i + 1];
            let idx = match sel.parse::<usize>() {
                Ok(n) => n,
                Err(_) => stages
                    .iter()
                    .position(|s| s.get("name").and_then(Value::as_str) == Some(sel))
                    .ok_or_else(|| Error::msg(format!("--set `{kv}`: no stage named `{sel}`")))?,
            };
            let len = stages.len();
            let stage = stages.get_mut(idx).and_then(Value::as_table_mut).ok_or_else(|| Error::msg(format!("--set `{kv}`: stage index {idx} out of range ({len} stages)")))?;
            return set_path(stage, &parts[i + 2..], value, kv);
        }
        if last {
            cur.insert(part.to_string(), value);
            return Ok(());
        }
        cur = cur
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::msg(format!("--set `{kv}`: `{part}` is not a table")))?;
    }
    Ok(())
}

fn set_path(table: &mut Table, rest: &[&str], value: Value, kv: &str) -> Result<()> {
    let Some((last, init)) = rest.split_last() else {
        return Err(Error::msg(format!("--set `{kv}`: give a key inside the stage")));
    };
    let mut cur = table;
    for part in init {
        cur = cur
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::msg(format!("--set `{kv}`: `{part}` is not a table")))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_run_and_stages_by_index_or_name() {
        let mut t: Table = toml::from_str("[run]\nseed = 1\n[[stages]]\nname = \"a\"\n[[stages]]\nname = \"b\"\noptimizer = { lr = 0.1 }").unwrap_or_default();
        apply_override(&mut t, "run.seed=7").unwrap_or_default();
        apply_override(&mut t, "stages.1.max_steps=50").unwrap_or_default();
        apply_override(&mut t, "stages.b.optimizer.lr=1e-3").unwrap_or_default();
        apply_override(&mut t, "run.name=hello world").unwrap_or_default();
        assert_eq!(t["run"]["seed"].as_integer(), Some(7));
        assert_eq!(t["run"]["name"].as_str(), Some("hello world"));
        assert_eq!(t["stages"][1]["max_steps"].as_integer(), Some(50));
        assert_eq!(t["stages"][1]["optimizer"]["lr"].as_float(), Some(1e-3));
        assert!(apply_override(&mut t, "stages.zz.max_steps=1").is_err());
        assert!(apply_override(&mut t, "stages.9.max_steps=1").is_err());
        assert!(apply_override(&mut t, "noequals").is_err());
    }
}
