//! `[leaks]`: what a leaked-key report does, and the endpoints GitHub's secret scanning and
//! GitLab's token revocation API call on the proxy listener (SPEC 12). Configuration, pure:
//! validated like every section, printed by `check --print`, restart-only as a whole.

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::Spanned;

use super::effective::{redact_url, Keep};
use super::raw::{RawGithubLeaks, RawGitlabLeaks, RawLeaks};
use super::validate::Checker;

/// GitHub's published public keys for secret scanning.
pub const GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";

/// `leaks.action`: what a report does to a live key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// The key stops working at once.
    #[default]
    Revoke,
    /// The key keeps working, flagged for its owner to regenerate.
    Quarantine,
}

impl LeakAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LeakAction::Revoke => "revoke",
            LeakAction::Quarantine => "quarantine",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leaks {
    pub action: LeakAction,
    /// Largest report body read, in bytes (413 past it).
    pub max_body: usize,
    /// GitHub's partner endpoint, when on.
    pub github: Option<GithubLeaks>,
    /// GitLab's two endpoints, when on.
    pub gitlab: Option<GitlabLeaks>,
}

impl Leaks {
    /// A batch of 1,000 GitHub matches of about 400 bytes fits twice over.
    pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
    /// The most `max_body` may be: a body is held whole while its signature is checked.
    pub const MAX_MAX_BODY: u64 = 64 * 1024 * 1024;
}

impl Default for Leaks {
    fn default() -> Self {
        Leaks {
            action: LeakAction::default(),
            max_body: Leaks::DEFAULT_MAX_BODY,
            github: None,
            gitlab: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GithubLeaks {
    /// The path on the proxy listener GitHub POSTs alerts to.
    pub path: String,
    /// Where GitHub's public keys are read.
    pub keys: GithubKeys,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum GithubKeys {
    /// `keys_url`: GitHub's published list (or a mirror of it).
    Url(String),
    /// `keys_file`: a copy of that document, resolved against the config file's folder.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GitlabLeaks {
    /// The base path on the proxy listener: GitLab calls `<path>/v1/revocable_token_types`
    /// and `<path>/v1/revoke_tokens`.
    pub path: String,
    /// The environment variable holding the token GitLab presents.
    pub token_env: String,
}

pub(super) fn leaks(checker: &mut Checker, raw: &RawLeaks, base_dir: &Path) -> Leaks {
    let action = checker
        .parsed(&raw.action, "leaks.action", |text| match text.trim() {
            "revoke" => Ok(LeakAction::Revoke),
            "quarantine" => Ok(LeakAction::Quarantine),
            other => Err(format!("{other:?} is neither \"revoke\" nor \"quarantine\"")),
        })
        .unwrap_or_default();
    let max_body = checker
        .count(&raw.max_body, "leaks.max_body", Leaks::MAX_MAX_BODY)
        .map_or(Leaks::DEFAULT_MAX_BODY, |n| n as usize);
    let github = raw
        .github
        .as_ref()
        .and_then(|github| self::github(checker, github.get_ref(), github.span(), base_dir));
    let gitlab = raw
        .gitlab
        .as_ref()
        .and_then(|gitlab| self::gitlab(checker, gitlab.get_ref()));
    if let (Some(github), Some(gitlab), Some(raw)) = (&github, &gitlab, &raw.gitlab) {
        if github.path == gitlab.path {
            let span = raw.get_ref().path.span();
            checker.fail(&span, "leaks.gitlab.path", "must differ from leaks.github.path");
        }
    }
    Leaks {
        action,
        max_body,
        github,
        gitlab,
    }
}

fn github(
    checker: &mut Checker,
    raw: &RawGithubLeaks,
    span: std::ops::Range<usize>,
    base_dir: &Path,
) -> Option<GithubLeaks> {
    let path = endpoint_path(checker, &raw.path, "leaks.github.path");
    let url = checker.parsed(&raw.keys_url, "leaks.github.keys_url", |text| keys_url(text));
    let file = raw
        .keys_file
        .as_ref()
        .map(|file| base_dir.join(file.get_ref().trim()));
    let keys = match (url, file) {
        (Some(url), None) => Some(GithubKeys::Url(url)),
        (None, Some(file)) => Some(GithubKeys::File(file)),
        (Some(_), Some(_)) => {
            checker.fail(&span, "leaks.github", "give keys_url or keys_file, not both");
            None
        }
        (None, None) => {
            // A bad keys_url was reported already.
            if raw.keys_url.is_none() {
                let message = format!("needs keys_url (GitHub's is \"{GITHUB_KEYS_URL}\") or keys_file");
                checker.fail(&span, "leaks.github", message);
            }
            None
        }
    };
    Some(GithubLeaks {
        path: path?,
        keys: keys?,
    })
}

fn gitlab(checker: &mut Checker, raw: &RawGitlabLeaks) -> Option<GitlabLeaks> {
    let path = endpoint_path(checker, &raw.path, "leaks.gitlab.path");
    let token_env = raw.token_env.get_ref().trim();
    let valid = !token_env.is_empty()
        && !token_env.starts_with(|c: char| c.is_ascii_digit())
        && token_env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        let message = "must be an environment variable name like KEYGATE_GITLAB_TOKEN";
        checker.fail(&raw.token_env.span(), "leaks.gitlab.token_env", message);
        return None;
    }
    Some(GitlabLeaks {
        path: path?,
        token_env: token_env.to_owned(),
    })
}

/// A path on the proxy listener: absolute, without a query, a trailing slash, dot segments or
/// characters a request path would carry percent-encoded, so it is matched byte for byte.
fn endpoint_path(checker: &mut Checker, value: &Spanned<String>, field: &str) -> Option<String> {
    let text = value.get_ref().trim();
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    let segments_ok = text
        .split('/')
        .skip(1)
        .all(|s| !s.is_empty() && s != "." && s != "..");
    if text.starts_with('/') && text.len() > 1 && plain && segments_ok {
        return Some(text.to_owned());
    }
    let message = format!("{text:?} must be a path like \"/.well-known/keygate/github\"");
    checker.fail(&value.span(), field, message);
    None
}

/// An `https://` URL (or `http://`, for a mirror on a private network).
fn keys_url(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(text.trim().to_owned()),
        _ => Err(format!("{text:?} must be an http:// or https:// URL")),
    }
}

/// `[leaks]` as `check --print` shows it.
#[derive(Debug, Serialize)]
pub(super) struct LeaksOut {
    action: &'static str,
    max_body: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    github: Option<GithubOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gitlab: Option<GitlabOut>,
}

#[derive(Debug, Serialize)]
struct GithubOut {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys_file: Option<String>,
}

#[derive(Debug, Serialize)]
struct GitlabOut {
    path: String,
    token_env: String,
}

pub(super) fn effective(leaks: &Leaks) -> LeaksOut {
    LeaksOut {
        action: leaks.action.as_str(),
        max_body: leaks.max_body as u64,
        github: leaks.github.as_ref().map(|github| GithubOut {
            path: github.path.clone(),
            keys_url: match &github.keys {
                // A mirror's URL may carry a password in its user part.
                GithubKeys::Url(url) => Some(redact_url(url, Keep::Path)),
                GithubKeys::File(_) => None,
            },
            keys_file: match &github.keys {
                GithubKeys::File(file) => Some(file.display().to_string()),
                GithubKeys::Url(_) => None,
            },
        }),
        gitlab: leaks.gitlab.as_ref().map(|gitlab| GitlabOut {
            path: gitlab.path.clone(),
            token_env: gitlab.token_env.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse, GithubKeys, LeakAction};

    const BASE: &str = "[[upstream]]\nname = \"api\"\nurl = \"http://127.0.0.1:7001\"\n[[route]]\nname = \"api\"\npath = \"/\"\nupstream = \"api\"\n";

    fn leaks(text: &str) -> Result<crate::config::Leaks, String> {
        parse(&format!("{text}\n{BASE}"), Path::new("/etc/keygate"))
            .map(|config| config.leaks)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn both_endpoints_are_read_with_their_settings() {
        let config = leaks(
            "[leaks]\naction = \"quarantine\"\nmax_body = 2048\n\
             [leaks.github]\npath = \"/.well-known/keygate/github\"\nkeys_file = \"github-keys.json\"\n\
             [leaks.gitlab]\npath = \"/.well-known/keygate/gitlab\"\ntoken_env = \"GITLAB_TOKEN\"\n",
        )
        .unwrap();
        assert_eq!((config.action, config.max_body), (LeakAction::Quarantine, 2048));
        let github = config.github.unwrap();
        assert_eq!(github.path, "/.well-known/keygate/github");
        assert_eq!(
            github.keys,
            GithubKeys::File("/etc/keygate/github-keys.json".into())
        );
        assert_eq!(config.gitlab.unwrap().token_env, "GITLAB_TOKEN");
        assert_eq!(leaks("").unwrap(), crate::config::Leaks::default());
    }

    #[test]
    fn what_would_not_be_honoured_is_refused_naming_the_setting() {
        for (text, field) in [
            ("[leaks]\naction = \"delete\"", "leaks.action"),
            ("[leaks]\nmax_body = 0", "leaks.max_body"),
            ("[leaks.github]\npath = \"/gh\"", "leaks.github"),
            (
                "[leaks.github]\npath = \"/gh\"\nkeys_url = \"https://a\"\nkeys_file = \"k.json\"",
                "leaks.github",
            ),
            ("[leaks.github]\npath = \"gh\"\nkeys_file = \"k.json\"", "leaks.github.path"),
            ("[leaks.github]\npath = \"/a/../b\"\nkeys_file = \"k\"", "leaks.github.path"),
            ("[leaks.github]\npath = \"/a?b\"\nkeys_file = \"k\"", "leaks.github.path"),
            ("[leaks.github]\npath = \"/gh\"\nkeys_url = \"ftp://x\"", "leaks.github.keys_url"),
            ("[leaks.gitlab]\npath = \"/gl\"\ntoken_env = \"not a name\"", "leaks.gitlab.token_env"),
            ("[leaks.gitlab]\npath = \"/gl\"", "leaks.gitlab"),
            (
                "[leaks.github]\npath = \"/x\"\nkeys_file = \"k\"\n[leaks.gitlab]\npath = \"/x\"\ntoken_env = \"T\"",
                "leaks.gitlab.path",
            ),
            ("[leaks]\nwhatever = 1", "leaks"),
        ] {
            let refused = leaks(text).unwrap_err();
            assert!(refused.contains(field), "{text}: {refused}");
        }
    }
}
