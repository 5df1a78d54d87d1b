//! Which base weights train, and at what learning-rate multiplier: freeze patterns,
//! gradual unfreezing, layer-wise LR decay, weight-decay exclusions.
//!
//! Module patterns follow the rules of adapter targets ([`stagecraft_sdk::site_matches`]:
//! a plain name matches the last components on a `.` boundary, `*` globs over the whole
//! name, `re:` regular expressions), applied to the weight's module
//! (`model.layers.1.mlp.up_proj` for `model.layers.1.mlp.up_proj.weight`) and to the
//! weight's own name; and a pattern also selects every weight it is a prefix of on a `.`
//! boundary (`model.layers.1` matches `model.layers.1.mlp.up_proj.weight`, not
//! `model.layers.10...`). `"*"` is every weight.
//!
//! Layer-wise LR decay with factor `f` over `L` blocks: the head and final norm train at
//! `lr`, block `l` at `lr · f^(L-1-l)` (the top block at `lr`), embeddings at `lr · f^L`.
//!
//! ```
//! use stagecraft_core::train::{layer_of, lr_multiplier, module_matches};
//! assert!(module_matches("model.layers.1", "model.layers.1.mlp.up_proj.weight"));
//! assert!(!module_matches("model.layers.1", "model.layers.10.mlp.up_proj.weight"));
//! assert!(module_matches("up_proj", "model.layers.1.mlp.up_proj.weight"));
//! assert_eq!(layer_of("model.layers.3.self_attn.q_proj.weight"), Some(3));
//! assert_eq!(lr_multiplier("model.layers.0.mlp.up_proj.weight", 4, Some(0.5)), 0.125);
//! ```

use stagecraft_sdk::site_matches;

/// Whether `pattern` selects the weight `name` (see the module docs).
pub fn module_matches(pattern: &str, name: &str) -> bool {
    let prefix = name.starts_with(pattern) && name.as_bytes().get(pattern.len()).is_none_or(|&b| b == b'.');
    let module = name.rsplit_once('.').map_or(name, |(module, _)| module);
    pattern == "*" || prefix || site_matches(pattern, name) || site_matches(pattern, module)
}

/// The block a weight belongs to (`model.layers.N.` or `encoder.layer.N.`).
pub fn layer_of(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" || p == "layer" {
            if let Some(n) = parts.next().and_then(|n| n.parse().ok()) {
                return Some(n);
            }
        }
    }
    None
}

/// The LR multiplier of a weight under layer-wise decay (1 without it).
pub fn lr_multiplier(name: &str, num_layers: usize, decay: Option<f64>) -> f64 {
    let Some(f) = decay else { return 1.0 };
    let depth = match layer_of(name) {
        Some(l) => num_layers.saturating_sub(1).saturating_sub(l),
        None if name.contains("embed") => num_layers,
        None => 0,
    };
    f.powi(depth as i32)
}

/// Whether a weight is excluded from weight decay: biases, norms, embeddings' position
/// tables are decayed like other matrices only if they are 2-d (the usual rule).
pub fn decays(dims: &[usize]) -> bool {
    dims.len() >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_prefixes() {
        assert!(module_matches("*", "anything"));
        assert!(module_matches("model.layers.*.mlp.*", "model.layers.2.mlp.down_proj.weight"));
        assert!(!module_matches("model.layers.*.mlp.*", "model.layers.2.self_attn.q_proj.weight"));
        assert!(module_matches("model.embed_tokens", "model.embed_tokens.weight"));
        assert!(module_matches("self_attn.q_proj", "model.layers.0.self_attn.q_proj.weight"));
        assert!(module_matches("re:.*\\.(q|v)_proj", "model.layers.0.self_attn.v_proj.weight"));
        assert!(!module_matches("q_proj", "model.layers.0.self_attn.k_proj.weight"));
    }

    #[test]
    fn layerwise_decay_counts_from_the_top() {
        let l = 4;
        let f = Some(0.8);
        assert_eq!(lr_multiplier("lm_head.weight", l, f), 1.0);
        assert_eq!(lr_multiplier("model.layers.3.mlp.up_proj.weight", l, f), 1.0);
        assert!((lr_multiplier("model.layers.2.mlp.up_proj.weight", l, f) - 0.8).abs() < 1e-12);
        assert!((lr_multiplier("model.layers.0.mlp.up_proj.weight", l, f) - 0.512).abs() < 1e-12);
        assert!((lr_multiplier("model.embed_tokens.weight", l, f) - 0.4096).abs() < 1e-12);
        assert_eq!(lr_multiplier("model.embed_tokens.weight", l, None), 1.0);
        assert_eq!(layer_of("encoder.layer.1.output.dense.weight"), Some(1));
    }
}
