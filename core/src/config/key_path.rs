//! A path to a value in a config: `stages[1].adapters[0].reduction`, written the way
//! core config errors name keys.

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A path from the top of a document (or of a plugin's config table) to a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<KeyPart>);

impl KeyPath {
    /// This path, then `more`.
    pub fn join(&self, more: &KeyPath) -> KeyPath {
        KeyPath(self.0.iter().chain(&more.0).cloned().collect())
    }

    /// This path, then key `key`.
    pub fn key(&self, key: &str) -> KeyPath {
        self.join(&KeyPath(vec![KeyPart::Key(key.to_string())]))
    }

    /// This path, then index `i`.
    pub fn index(&self, i: usize) -> KeyPath {
        self.join(&KeyPath(vec![KeyPart::Index(i)]))
    }

    /// Whether it is the empty path (the top).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            match part {
                KeyPart::Key(k) if i == 0 => write!(f, "{k}")?,
                KeyPart::Key(k) => write!(f, ".{k}")?,
                KeyPart::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}
