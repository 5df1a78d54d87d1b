//! The hidden names a save or prune works under, and the recovery that tidies what a
//! crash left behind.
//!
//! - `.<name>.tmp-<pid>`: a checkpoint being written by process `pid`;
//! - `.<name>.old-<pid>`: the previous `<name>`, moved aside just before the new one is
//!   renamed in;
//! - `.<name>.del-<pid>`: a checkpoint being pruned.

use std::path::Path;

use super::durable;
use crate::{Error, Result};

/// What a hidden directory is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Being written.
    Tmp,
    /// The replaced checkpoint, moved aside.
    Old,
    /// Being deleted by prune.
    Del,
}

impl Stage {
    fn tag(self) -> &'static str {
        match self {
            Stage::Tmp => "tmp",
            Stage::Old => "old",
            Stage::Del => "del",
        }
    }
}

/// The hidden directory name for checkpoint `name` in `stage`, owned by process `pid`.
pub fn hidden(name: &str, stage: Stage, pid: u32) -> String {
    format!(".{name}.{}-{pid}", stage.tag())
}

/// Splits a hidden directory name into (checkpoint name, stage, pid).
pub fn parse_hidden(file_name: &str) -> Option<(String, Stage, u32)> {
    let rest = file_name.strip_prefix('.')?;
    let (head, pid) = rest.rsplit_once('-')?;
    let pid = pid.parse().ok()?;
    let (name, tag) = head.rsplit_once('.')?;
    let stage = [Stage::Tmp, Stage::Old, Stage::Del].into_iter().find(|s| s.tag() == tag)?;
    (!name.is_empty()).then(|| (name.to_string(), stage, pid))
}

/// Checks that `name` can be a checkpoint directory name: non-empty, not hidden, one
/// path component.
pub fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(Error::msg(format!(
            "checkpoint name `{}` must be one non-hidden path component",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// Whether process `pid` may still be working on its hidden directories. Our own
/// process counts as alive (a save in another thread may be under way); elsewhere a
/// process is alive while `/proc/<pid>` exists. Without `/proc` every other process
/// counts as alive, so nothing of theirs is touched.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_root = Path::new("/proc");
    !proc_root.join("self").exists() || proc_root.join(pid.to_string()).exists()
}

/// Tidies the hidden directories that dead processes left in `dir`: a moved-aside
/// `.old` whose checkpoint name is missing is put back (the crash came between the two
/// renames of a save), every other `.old`, `.tmp` and `.del` is deleted. Returns one
/// line per action, for the caller to log.
pub fn recover(dir: &Path) -> Result<Vec<String>> {
    let mut actions = Vec::new();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(durable::io(dir))? {
        let entry = entry.map_err(durable::io(dir))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some((name, stage, pid)) = parse_hidden(&file_name) {
            if !alive(pid) {
                leftovers.push((file_name, name, stage));
            }
        }
    }
    // Restores first, so that a `.tmp` of the same name is only deleted afterwards.
    leftovers.sort_by_key(|(_, _, stage)| *stage != Stage::Old);
    for (file_name, name, stage) in leftovers {
        let from = dir.join(&file_name);
        let target = dir.join(&name);
        if stage == Stage::Old && !target.exists() {
            durable::rename(&from, &target)?;
            actions.push(format!("restored checkpoint {name} from interrupted save {file_name}"));
        } else {
            durable::remove_dir_all(&from)?;
            actions.push(format!("removed leftover {file_name}"));
        }
    }
    if !actions.is_empty() {
        durable::sync_dir(dir)?;
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_names_round_trip() {
        let n = hidden("step-10", Stage::Tmp, 42);
        assert_eq!(n, ".step-10.tmp-42");
        assert_eq!(parse_hidden(&n), Some(("step-10".to_string(), Stage::Tmp, 42)));
        assert_eq!(parse_hidden("step-10"), None);
    }

    /// Larger than any Linux pid (`pid_max` is at most 2^22).
    const DEAD: u32 = 4_000_000_000;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for stage in [Stage::Tmp, Stage::Old, Stage::Del] {
            let h = hidden("a.b-c", stage, 7);
            assert_eq!(parse_hidden(&h), Some(("a.b-c".to_string(), stage, 7)));
        }
        assert_eq!(parse_hidden(".x.new-3"), None);
        assert_eq!(parse_hidden(".x.tmp-abc"), None);
        for bad in ["", ".x", "a/b", "..", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("stage1-step600").expect("good name");
    }

    #[test]
    fn recovery_restores_a_moved_aside_checkpoint_and_drops_the_rest() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let d = tmp.path();
        // A crash between "move old aside" and "rename new in" for `a`.
        std::fs::create_dir(d.join(hidden("a", Stage::Old, DEAD)))?;
        std::fs::write(d.join(hidden("a", Stage::Old, DEAD)).join("f"), b"old")?;
        std::fs::create_dir(d.join(hidden("a", Stage::Tmp, DEAD)))?;
        // A crash after the rename of `b`, and one during a prune of `c`.
        std::fs::create_dir(d.join("b"))?;
        std::fs::create_dir(d.join(hidden("b", Stage::Old, DEAD)))?;
        std::fs::create_dir(d.join(hidden("c", Stage::Del, DEAD)))?;
        // Our own in-progress save is left alone.
        let mine = hidden("d", Stage::Tmp, std::process::id());
        std::fs::create_dir(d.join(&mine))?;

        let actions = recover(d)?;
        assert_eq!(actions.len(), 4, "{actions:?}");
        assert_eq!(std::fs::read(d.join("a").join("f"))?, b"old");
        let mut left: Vec<String> = std::fs::read_dir(d)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        left.sort();
        assert_eq!(left, vec![mine, "a".to_string(), "b".to_string()]);
        Ok(())
    }
}
