//! Adaptation methods: LoRA, IA3, DoRA, prompt tuning, bottleneck adapters, ...

use crate::bail;
use crate::error::Result;
use crate::host::{Host, Tensor};
use crate::plugin::Plugin;
use crate::types::{Attachment, SiteInfo};

/// An adaptation method: attaches to named sites of a frozen model and changes what
/// they compute through its own trainable parameters.
///
/// # Lifecycle, in call order
/// 1. [`Plugin::new`] — once per adapter in the config, with that adapter's config.
/// 2. [`select_sites`](Self::select_sites) — once, with every site of the model. Return
///    the sites to attach to and the hooks wanted there. A target pattern that matches
///    nothing should be an error naming the pattern.
/// 3. [`init_site`](Self::init_site) — once per attached site, in model order: create the
///    site's parameters with [`Host::new_param`]. (When an adapter is loaded from disk,
///    the host overwrites their values afterwards, matching by name.)
/// 4. [`forward_pre`](Self::forward_pre) / [`forward`](Self::forward) — at every model
///    forward, at each attached site, for the hooks asked for. Training and evaluation
///    alike ([`Host::is_training`] tells which).
/// 5. [`merge`](Self::merge) / [`unmerge`](Self::unmerge) — when the adapter is folded into
///    (or taken out of) a linear site's base weight.
///
/// Parameters are named locally and PEFT-style: `<site>.lora_A.weight`, which is the
/// adapter file's key without the `base_model.model.` prefix.
pub trait AdaptationMethod: Plugin {
    /// Picks sites from `sites` (every site of the model, in model order); the indices
    /// in the returned [`Attachment`]s refer to this slice.
    fn select_sites(&mut self, host: Host<'_>, sites: &[SiteInfo]) -> Result<Vec<Attachment>>;

    /// Creates the parameters for one attached site.
    fn init_site(&mut self, host: Host<'_>, site: &SiteInfo) -> Result<()>;

    /// Post-hook: the site computed `y` from `x`; return what it should output instead.
    /// The shape must be `y`'s (except along `seq` for input-embeds and attention k/v sites).
    fn forward<'h>(&self, host: Host<'h>, site: &SiteInfo, x: Tensor<'h>, y: Tensor<'h>) -> Result<Tensor<'h>>;

    /// Pre-hook (linear sites): transform the input before the base layer sees it.
    /// Called only where [`Attachment::hooks`] includes [`Hooks::PRE`](crate::Hooks::PRE).
    fn forward_pre<'h>(&self, _host: Host<'h>, _site: &SiteInfo, x: Tensor<'h>) -> Result<Tensor<'h>> {
        Ok(x)
    }

    /// The base weight with this adapter folded in (`W + ΔW` for LoRA).
    fn merge<'h>(&self, _host: Host<'h>, site: &SiteInfo, _weight: Tensor<'h>) -> Result<Tensor<'h>> {
        bail!("adaptation method `{}` cannot be merged into `{}`", Self::NAME, site.name)
    }

    /// The inverse of [`merge`](Self::merge).
    fn unmerge<'h>(&self, _host: Host<'h>, site: &SiteInfo, _weight: Tensor<'h>) -> Result<Tensor<'h>> {
        bail!("adaptation method `{}` cannot be unmerged from `{}`", Self::NAME, site.name)
    }
}

/// Matches a site name against a target pattern the way PEFT's `target_modules` does,
/// plus globs:
/// - a plain name (`q_proj`) matches the last component of the site name, or a dotted
///   suffix (`self_attn.q_proj`);
/// - a pattern with `*` is a glob over the whole name (`model.layers.*.mlp.*`);
/// - a pattern starting with `re:` is a regular expression that must match the whole
///   name, as PEFT treats a string `target_modules`: `re:.*\.(q|v)_proj`.
///
/// An invalid regular expression matches nothing; check patterns with
/// [`validate_pattern`] when you read your config.
pub fn site_matches(pattern: &str, site: &str) -> bool {
    if let Some(re) = pattern.strip_prefix("re:") {
        return regex_lite::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(site));
    }
    if pattern.contains('*') {
        return glob_match(pattern.as_bytes(), site.as_bytes());
    }
    site == pattern || site.ends_with(&format!(".{pattern}"))
}

/// Checks that a target pattern is well-formed (a `re:` pattern must compile).
pub fn validate_pattern(pattern: &str) -> Result<()> {
    if pattern.is_empty() {
        bail!("empty target pattern");
    }
    if let Some(re) = pattern.strip_prefix("re:") {
        if let Err(e) = regex_lite::Regex::new(re) {
            bail!("target pattern `{pattern}` is not a valid regular expression: {e}");
        }
    }
    Ok(())
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
}
