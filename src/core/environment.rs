//! The three environments a key and a route belong to. A key works only on routes of its own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Staging,
    Development,
}

impl Environment {
    pub const ALL: [Environment; 3] = [
        Environment::Production,
        Environment::Staging,
        Environment::Development,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Staging => "staging",
            Environment::Development => "development",
        }
    }

    /// The short tag inside generated keys: `kg_<tag>_...`.
    pub fn key_tag(self) -> &'static str {
        match self {
            Environment::Production => "prod",
            Environment::Staging => "stg",
            Environment::Development => "dev",
        }
    }

    pub fn from_key_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|env| env.key_tag() == tag)
    }
}

impl FromStr for Environment {
    type Err = String;

    /// Accepts the full name or the key tag (`prod`, `stg`, `dev`), any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|env| env.as_str() == lower || env.key_tag() == lower)
            .ok_or_else(|| {
                format!("unknown environment {text:?} (expected production, staging or development)")
            })
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_parse_by_name_or_tag() {
        for (text, env) in [
            ("production", Environment::Production),
            ("prod", Environment::Production),
            ("Staging", Environment::Staging),
            ("stg", Environment::Staging),
            ("development", Environment::Development),
            ("DEV", Environment::Development),
        ] {
            assert_eq!(text.parse::<Environment>(), Ok(env), "{text}");
        }
        assert!("qa".parse::<Environment>().is_err());
    }
}
