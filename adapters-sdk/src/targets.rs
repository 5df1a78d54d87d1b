//! Target patterns: which sites an adaptation method attaches to.
//!
//! A pattern is one of
//! - a plain name (`q_proj`): the last components of the site name, on a `.` boundary
//!   (`self_attn.q_proj` works too), as PEFT's `target_modules`;
//! - a glob with `*` over the whole name (`model.layers.*.mlp.*`);
//! - `re:<regex>`, a regular expression that must match the whole name, as PEFT
//!   treats a string `target_modules` (`re:.*\.(q|v)_proj`);
//! - `role:<role>`, a [`SiteRole`] (`role:attn_q`, `role:mlp_down`): the same site in
//!   every architecture (Llama's `q_proj` and BERT's `attention.self.query`), and
//!   nothing else (`role:mlp_down` is BERT's `output.dense`, never
//!   `attention.output.dense`). Roles come from the host, so they need
//!   [`select_sites`], which asks it.
//!
//! ```
//! use stagecraft_sdk::{site_matches, validate_pattern};
//! assert!(site_matches("q_proj", "model.layers.0.self_attn.q_proj"));
//! assert!(site_matches("model.layers.*.mlp.*", "model.layers.3.mlp.up_proj"));
//! assert!(validate_pattern("role:attn_q").is_ok());
//! assert!(validate_pattern("role:attention").is_err());
//! ```

use crate::bail;
use crate::error::Result;
use crate::host::Host;
use crate::types::{Attachment, Hooks, SiteInfo, SiteKind, SiteRole};
use std::collections::BTreeSet;

const ROLE_PREFIX: &str = "role:";

/// Matches a site name against a target pattern (see the module docs). A `role:`
/// pattern never matches here: roles need the host ([`target_matches`]).
///
/// An invalid regular expression matches nothing; check patterns with
/// [`validate_pattern`] when you read your config.
pub fn site_matches(pattern: &str, site: &str) -> bool {
    if pattern.starts_with(ROLE_PREFIX) {
        return false;
    }
    if let Some(re) = pattern.strip_prefix("re:") {
        return regex_lite::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(site));
    }
    if pattern.contains('*') {
        return glob_match(pattern.as_bytes(), site.as_bytes());
    }
    site == pattern || site.ends_with(&format!(".{pattern}"))
}

/// Matches a site, whose role is `role`, against any kind of pattern.
pub fn target_matches(pattern: &str, site: &SiteInfo, role: SiteRole) -> bool {
    match pattern.strip_prefix(ROLE_PREFIX) {
        Some(name) => SiteRole::from_name(name) == Some(role),
        None => site_matches(pattern, &site.name),
    }
}

/// Checks that a target pattern is well-formed: a `re:` pattern must compile, a
/// `role:` pattern must name a known role.
pub fn validate_pattern(pattern: &str) -> Result<()> {
    if pattern.is_empty() {
        bail!("empty target pattern");
    }
    if let Some(re) = pattern.strip_prefix("re:") {
        if let Err(e) = regex_lite::Regex::new(re) {
            bail!("target pattern `{pattern}` is not a valid regular expression: {e}");
        }
    }
    if let Some(name) = pattern.strip_prefix(ROLE_PREFIX) {
        if SiteRole::from_name(name).is_none() {
            let known: Vec<&str> = (0..64).filter_map(|c| SiteRole(c).name()).filter(|n| *n != "other").collect();
            bail!("target pattern `{pattern}` names no site role (roles: {})", known.join(", "));
        }
    }
    Ok(())
}

/// Attaches to every site of one of `kinds` that one of `targets` matches, with
/// `hooks`. Roles are asked from the host only when a pattern names one. An error
/// names a pattern that matches no site of those kinds, and lists what there is.
pub fn select_sites(
    host: Host<'_>,
    targets: &[String],
    sites: &[SiteInfo],
    kinds: &[SiteKind],
    hooks: Hooks,
) -> Result<Vec<Attachment>> {
    let wants_roles = targets.iter().any(|t| t.starts_with(ROLE_PREFIX));
    let mut used = vec![false; targets.len()];
    let mut out = Vec::new();
    for (i, s) in sites.iter().enumerate() {
        if !kinds.contains(&s.kind) {
            continue;
        }
        let role = if wants_roles { host.site_role(s)? } else { SiteRole::OTHER };
        let mut hit = false;
        for (t, u) in targets.iter().zip(used.iter_mut()) {
            if target_matches(t, s, role) {
                *u = true;
                hit = true;
            }
        }
        if hit {
            out.push(Attachment { site: i as u32, hooks });
        }
    }
    if let Some((t, _)) = targets.iter().zip(&used).find(|(_, u)| !**u) {
        let what: Vec<&str> = kinds.iter().filter_map(|k| k.name()).collect();
        let mut names: BTreeSet<String> =
            sites.iter().filter(|s| kinds.contains(&s.kind)).map(|s| s.short_name().to_string()).collect();
        if wants_roles {
            for s in sites.iter().filter(|s| kinds.contains(&s.kind)) {
                names.insert(format!("role:{}", host.site_role(s)?));
            }
        }
        let names: Vec<String> = names.into_iter().collect();
        bail!("target pattern `{t}` matches no {} site (these end in: {})", what.join("/"), names.join(", "));
    }
    Ok(out)
}

/// Attaches to every linear site matched by one of `targets`, with `hooks`; an error
/// names a pattern that matches no linear site. Role patterns need the host: use
/// [`select_sites`] for them.
pub fn select_linear_sites(targets: &[String], sites: &[SiteInfo], hooks: Hooks) -> Result<Vec<Attachment>> {
    if let Some(t) = targets.iter().find(|t| t.starts_with(ROLE_PREFIX)) {
        bail!("target pattern `{t}` names a role, which needs the host: select sites with `select_sites(host, ...)`");
    }
    let mut out = Vec::new();
    let mut used = vec![false; targets.len()];
    for (i, s) in sites.iter().enumerate() {
        if s.kind != SiteKind::LINEAR {
            continue;
        }
        let mut hit = false;
        for (t, u) in targets.iter().zip(used.iter_mut()) {
            if site_matches(t, &s.name) {
                *u = true;
                hit = true;
            }
        }
        if hit {
            out.push(Attachment { site: i as u32, hooks });
        }
    }
    if let Some((t, _)) = targets.iter().zip(&used).find(|(_, u)| !**u) {
        let examples: BTreeSet<&str> =
            sites.iter().filter(|s| s.kind == SiteKind::LINEAR).map(|s| s.short_name()).collect();
        bail!(
            "target pattern `{t}` matches no linear site (linear sites end in: {})",
            examples.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(out)
}

/// `*` matches any run of characters (dots included).
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_match_the_last_components() {
        assert!(site_matches("q_proj", "model.layers.0.self_attn.q_proj"));
        assert!(site_matches("self_attn.q_proj", "model.layers.0.self_attn.q_proj"));
        assert!(!site_matches("q_proj", "model.layers.0.self_attn.qq_proj"));
        assert!(!site_matches("proj", "model.layers.0.self_attn.q_proj"));
    }

    #[test]
    fn globs_and_regexes_match_the_whole_name() {
        assert!(site_matches("model.layers.*.mlp.*", "model.layers.3.mlp.up_proj"));
        assert!(!site_matches("model.layers.*.mlp.*", "model.layers.3.self_attn.q_proj"));
        assert!(site_matches(r"re:.*\.(q|v)_proj", "model.layers.1.self_attn.v_proj"));
        assert!(!site_matches(r"re:.*\.(q|v)_proj", "model.layers.1.self_attn.k_proj"));
        assert!(!site_matches("re:(", "x"));
        assert!(validate_pattern("re:(").is_err());
    }

    #[test]
    fn role_patterns_match_by_role_only() {
        let site = SiteInfo {
            name: "encoder.layer.0.output.dense".into(),
            kind: SiteKind::LINEAR,
            dims: vec![8, 4].into(),
            layer: Some(0).into(),
            has_bias: true,
        };
        assert!(target_matches("role:mlp_down", &site, SiteRole::MLP_DOWN));
        assert!(!target_matches("role:attn_o", &site, SiteRole::MLP_DOWN));
        assert!(target_matches("output.dense", &site, SiteRole::MLP_DOWN));
        assert!(!site_matches("role:mlp_down", "encoder.layer.0.output.dense"));
        let e = validate_pattern("role:down").err().map(|e| e.0).unwrap_or_default();
        assert!(e.contains("names no site role") && e.contains("mlp_down"), "{e}");
        let e =
            select_linear_sites(&["role:attn_q".into()], &[site], Hooks::POST).err().map(|e| e.0).unwrap_or_default();
        assert!(e.contains("select_sites"), "{e}");
    }
}
