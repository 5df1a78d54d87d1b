//! `stagecraft plugin new`: writes a standalone plugin crate (Cargo.toml, a working
//! example plugin of the chosen kind with unit tests, a README, a .gitignore, a
//! rustfmt.toml and a pipeline that trains with it) from the templates in `scaffold/`.
//!
//! Templates are plain files with `{{key}}` placeholders, filled by [`fill`].

use anyhow::bail;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

/// Arguments of `stagecraft plugin new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The crate's name (lowercase letters, digits, `-` and `_`). The plugin registers
    /// under it with `-` as `_`: `my-scale` gives the plugin `my_scale` in
    /// `libmy_scale.so`.
    name: String,
    /// What the plugin is.
    #[arg(long, value_enum)]
    kind: Kind,
    /// The folder to write the crate to; it must not exist or be empty. Default: ./NAME.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The SDK to build against: the path of a stagecraft checkout's `adapters-sdk`
    /// folder (a relative path is taken from the new crate's folder, as in Cargo.toml),
    /// or a git URL (anything with `://` or ending in `.git`). Default: the git
    /// repository of the stagecraft project.
    #[arg(long, value_name = "PATH|GIT")]
    sdk: Option<String>,
}

/// The kinds of plugin the scaffold writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// An adaptation method (LoRA-like low-rank update).
    Method,
    /// An optimizer (SGD with momentum).
    Optimizer,
    /// A stage objective (label-smoothed next-token cross-entropy).
    Objective,
}

impl Kind {
    /// How the README calls the kind.
    fn noun(self) -> &'static str {
        match self {
            Kind::Method => "adaptation-method",
            Kind::Optimizer => "optimizer",
            Kind::Objective => "objective",
        }
    }

    /// The SDK trait the example implements.
    fn trait_name(self) -> &'static str {
        match self {
            Kind::Method => "AdaptationMethod",
            Kind::Optimizer => "Optimizer",
            Kind::Objective => "Stage",
        }
    }

    /// What the example plugin does (its `DESCRIPTION` and the crate's description).
    fn description(self) -> &'static str {
        match self {
            Kind::Method => "a low-rank update of linear layers (LoRA-like)",
            Kind::Optimizer => "SGD with momentum",
            Kind::Objective => "next-token cross-entropy with label smoothing",
        }
    }

    /// The example plugin's source.
    fn source(self) -> &'static str {
        match self {
            Kind::Method => include_str!("scaffold/method.rs.tmpl"),
            Kind::Optimizer => include_str!("scaffold/optimizer.rs.tmpl"),
            Kind::Objective => include_str!("scaffold/objective.rs.tmpl"),
        }
    }

    /// The pipeline that trains with the example plugin.
    fn pipeline(self) -> &'static str {
        match self {
            Kind::Method => include_str!("scaffold/pipeline-method.toml.tmpl"),
            Kind::Optimizer => include_str!("scaffold/pipeline-optimizer.toml.tmpl"),
            Kind::Objective => include_str!("scaffold/pipeline-objective.toml.tmpl"),
        }
    }

    /// How a pipeline uses a plugin of this kind called `name` (one TOML line).
    fn usage(self, name: &str) -> String {
        match self {
            Kind::Method => {
                format!("adapters = [{{ plugin = \"{name}\", targets = [\"q_proj\", \"v_proj\"], r = 4 }}]")
            }
            Kind::Optimizer => format!("optimizer = {{ name = \"{name}\", lr = 0.05, momentum = 0.9 }}"),
            Kind::Objective => format!("objective = {{ name = \"{name}\", label_smoothing = 0.1 }}"),
        }
    }
}

/// The names a plugin crate goes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginName {
    /// The package name, as given: `my-scale`.
    crate_name: String,
    /// The plugin's registered name, the library's name and `export_plugin!`'s id:
    /// `my_scale`.
    plugin_name: String,
    /// The Rust type of the plugin: `MyScale`.
    type_name: String,
}

/// Rust keywords, which cannot be a plugin's `export_plugin!` id.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do", "dyn", "else",
    "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro", "match", "mod",
    "move", "mut", "override", "priv", "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true",
    "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

impl PluginName {
    /// Checks a crate name and derives the plugin's and the type's names from it.
    pub fn parse(name: &str) -> anyhow::Result<PluginName> {
        let well_formed = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !well_formed {
            bail!("plugin name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter");
        }
        let plugin_name = name.replace('-', "_");
        if KEYWORDS.contains(&plugin_name.as_str()) {
            bail!("plugin name `{name}` is a Rust keyword: choose another");
        }
        let type_name =
            plugin_name.split('_').filter(|w| !w.is_empty()).map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect();
        Ok(PluginName { crate_name: name.to_string(), plugin_name, type_name })
    }
}

/// Where the new crate gets `stagecraft-sdk` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A folder holding the SDK's Cargo.toml (relative: from the new crate's folder).
    Path(String),
    /// A git repository holding the SDK.
    Git(String),
}

impl SdkSource {
    /// `--sdk` as given: a git URL (with `://` or ending in `.git`) or a path; without
    /// it, the project's repository.
    pub fn parse(sdk: Option<&str>) -> SdkSource {
        match sdk {
            None => SdkSource::Git(env!("CARGO_PKG_REPOSITORY").to_string()),
            Some(s) if s.contains("://") || s.ends_with(".git") => SdkSource::Git(s.to_string()),
            Some(s) => SdkSource::Path(s.to_string()),
        }
    }

    /// The dependency's value in Cargo.toml: `{ path = "..." }` or `{ git = "..." }`.
    fn dependency(&self) -> String {
        let (key, value) = match self {
            SdkSource::Path(p) => ("path", p),
            SdkSource::Git(url) => ("git", url),
        };
        format!("{{ {key} = {} }}", toml::Value::String(value.clone()))
    }
}

impl std::fmt::Display for SdkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SdkSource::Path(p) => write!(f, "path {p}"),
            SdkSource::Git(url) => write!(f, "git {url}"),
        }
    }
}

/// One file of the new crate: its path inside the crate and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateFile {
    /// Relative to the crate's folder.
    pub path: &'static str,
    /// The filled template.
    pub text: String,
}

/// `template` with each `{{key}}` of `vars` replaced by its value (values are not
/// searched for placeholders again).
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let value = after.find("}}").and_then(|end| {
            let key = &after[..end];
            vars.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v, end + 2))
        });
        match value {
            Some((v, skip)) => {
                out.push_str(v);
                rest = &after[skip..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every file of a new plugin crate.
pub fn crate_files(name: &PluginName, kind: Kind, sdk: &SdkSource) -> Vec<CrateFile> {
    let usage = kind.usage(&name.plugin_name);
    let sdk_dependency = sdk.dependency();
    let plugins_note = include_str!("scaffold/plugins-note.tmpl");
    let vars = [
        ("crate_name", name.crate_name.as_str()),
        ("plugin_name", name.plugin_name.as_str()),
        ("type_name", name.type_name.as_str()),
        ("description", kind.description()),
        ("kind_noun", kind.noun()),
        ("trait_name", kind.trait_name()),
        ("usage", usage.as_str()),
        ("sdk_dependency", sdk_dependency.as_str()),
        ("plugins_note", plugins_note),
    ];
    let file = |path, template| CrateFile { path, text: fill(template, &vars) };
    vec![
        file("Cargo.toml", include_str!("scaffold/Cargo.toml.tmpl")),
        file("src/lib.rs", kind.source()),
        file("README.md", include_str!("scaffold/README.md.tmpl")),
        file(".gitignore", include_str!("scaffold/gitignore.tmpl")),
        file("rustfmt.toml", include_str!("scaffold/rustfmt.toml.tmpl")),
        file("pipeline.toml", kind.pipeline()),
    ]
}

/// Refuses a `dir` that exists and is not an empty folder.
fn check_free(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir).map(|mut entries| entries.next().is_none()) {
        Ok(true) => Ok(()),
        Ok(false) => bail!("{} is not empty: choose another --dir, or remove it first", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() => bail!("{} exists and is not a folder: choose another --dir", dir.display()),
        Err(e) => bail!("{}: {e}", dir.display()),
    }
}

/// `stagecraft plugin new`.
pub fn new_plugin(args: NewArgs) -> anyhow::Result<()> {
    let name = PluginName::parse(&args.name)?;
    let sdk = SdkSource::parse(args.sdk.as_deref());
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&name.crate_name));
    check_free(&dir)?;
    for f in crate_files(&name, args.kind, &sdk) {
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, f.text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    println!("created {} plugin `{}` in {}", args.kind.noun(), name.plugin_name, dir.display());
    match &sdk {
        SdkSource::Git(_) if args.sdk.is_none() => {
            println!("stagecraft-sdk: {sdk} (the project's repository; --sdk PATH builds against a local checkout)")
        }
        SdkSource::Git(_) => println!("stagecraft-sdk: {sdk}"),
        SdkSource::Path(p) => {
            println!("stagecraft-sdk: {sdk}");
            if !dir.join(p).join("Cargo.toml").is_file() {
                eprintln!(
                    "warning: --sdk {p}: no Cargo.toml at {} (a relative --sdk is taken from the new crate's folder)",
                    dir.join(p).display()
                );
            }
        }
    }
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "stagecraft".into());
    let lib = format!("target/release/lib{}.so", name.plugin_name);
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  cargo build --release");
    println!("  {exe} plugin inspect {lib}");
    println!("  {exe} run pipeline.toml");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PluginName {
        PluginName::parse(s).expect("valid name")
    }

    #[test]
    fn names_derive_the_plugin_and_type_names() {
        let n = name("my-scale");
        assert_eq!((n.plugin_name.as_str(), n.type_name.as_str()), ("my_scale", "MyScale"));
        assert_eq!(name("lora2").type_name, "Lora2");
        assert_eq!(name("a__b-c").type_name, "ABC");
    }

    #[test]
    fn bad_names_are_one_line_errors_naming_them() {
        for bad in ["", "MyScale", "1scale", "-x", "my scale", "émile", "my.scale"] {
            let e = PluginName::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("`{bad}`")) && !e.contains('\n'), "{e}");
        }
        assert!(PluginName::parse("type").expect_err("keyword").to_string().contains("Rust keyword"));
    }

    #[test]
    fn sdk_is_a_git_url_or_a_path() {
        assert_eq!(SdkSource::parse(Some("../adapters-sdk")), SdkSource::Path("../adapters-sdk".into()));
        assert_eq!(SdkSource::parse(Some("/x/y.git")), SdkSource::Git("/x/y.git".into()));
        assert_eq!(SdkSource::parse(Some("ssh://h/r")), SdkSource::Git("ssh://h/r".into()));
        let default = SdkSource::parse(None);
        assert_eq!(default, SdkSource::Git(env!("CARGO_PKG_REPOSITORY").into()));
        assert!(env!("CARGO_PKG_REPOSITORY").starts_with("https://"));
        // Quotes and backslashes in a path are quoted for TOML.
        let odd = r#"a"b\c'd"#;
        let parsed: toml::Table = toml::from_str(&format!("sdk = {}", SdkSource::Path(odd.into()).dependency()))
            .expect("the dependency is TOML");
        assert_eq!(parsed["sdk"]["path"].as_str(), Some(odd));
        assert_eq!(SdkSource::Git("https://h/r".into()).dependency(), r#"{ git = "https://h/r" }"#);
    }

    #[test]
    fn fill_replaces_known_keys_once_and_keeps_the_rest() {
        let vars = [("a", "1"), ("b", "{{a}}")];
        assert_eq!(fill("x{{a}}y{{b}}z", &vars), "x1y{{a}}z");
        assert_eq!(fill("{{c}} {{a", &vars), "{{c}} {{a");
        assert_eq!(fill("{{a}}{{a}}", &vars), "11");
    }

    #[test]
    fn every_template_is_filled_and_the_manifests_parse() {
        for kind in [Kind::Method, Kind::Optimizer, Kind::Objective] {
            let files = crate_files(&name("my-plugin"), kind, &SdkSource::Path("../sdk".into()));
            for f in &files {
                assert!(!f.text.contains("{{"), "{kind:?} {}: a placeholder is left", f.path);
            }
            let text = |p: &str| files.iter().find(|f| f.path == p).map(|f| f.text.as_str()).expect(p);
            let manifest: toml::Table = toml::from_str(text("Cargo.toml")).expect("Cargo.toml parses");
            assert_eq!(manifest["package"]["name"].as_str(), Some("my-plugin"));
            assert_eq!(manifest["dependencies"]["stagecraft-sdk"]["path"].as_str(), Some("../sdk"));
            assert!(manifest["workspace"].as_table().is_some_and(|t| t.is_empty()));
            let pipeline: toml::Table = toml::from_str(text("pipeline.toml")).expect("pipeline.toml parses");
            assert!(toml::to_string(&pipeline).expect("toml").contains("my_plugin"));
            assert!(text("src/lib.rs").contains("const NAME: &'static str = \"my_plugin\";"));
            assert!(text("src/lib.rs").contains("pub struct MyPlugin {"));
        }
    }
}
