//! The API key: where it comes from, and a type that cannot leak it.
//!
//! `ApiKey` wraps `secrecy::SecretString`: its `Debug` prints a placeholder
//! and it has no `Display`, so neither `{}` nor `{:?}` in a log line or an
//! error can show the key. The only way out is [`ApiKey::expose`], used once,
//! where the request header is built (and that header is marked sensitive).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

/// Environment variable holding the key.
pub const API_KEY_ENV: &str = "TWELVELABS_API_KEY";
/// Name of the systemd credential (`LoadCredential=twelvelabs-api-key:…`).
pub const CREDENTIAL_NAME: &str = "twelvelabs-api-key";

#[derive(Clone)]
pub struct ApiKey(SecretString);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// A key from a string; surrounding whitespace (a trailing newline in a
    /// key file) is not part of it.
    pub fn new(value: &str) -> Option<ApiKey> {
        let trimmed = value.trim();
        (!trimmed.is_empty()).then(|| ApiKey(SecretString::from(trimmed.to_owned())))
    }

    /// The key itself, for the one place that builds the request header.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// `text` with the key replaced by `<redacted>`: for messages that may
    /// repeat it (a server echoing headers, a config error quoting a value
    /// where the key was pasted). A key of a few characters is left alone:
    /// replacing it would take those letters out of every word ("API
    /// `<redacted>`ey") and hide nothing.
    pub fn redact(&self, text: &str) -> String {
        let key = self.expose();
        if key.len() >= MIN_REDACTED_LEN && text.contains(key) {
            text.replace(key, "<redacted>")
        } else {
            text.to_string()
        }
    }
}

/// Keys shorter than this are not redacted (see [`ApiKey::redact`]).
const MIN_REDACTED_LEN: usize = 8;

/// Where the key was found, for `config show` and `doctor` (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
    Credential(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => write!(f, "${API_KEY_ENV}"),
            KeySource::File(p) => write!(f, "api.key_file ({})", p.display()),
            KeySource::Credential(p) => write!(f, "systemd credential ({})", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no API key: set {API_KEY_ENV}, or api.key_file, or the systemd credential {CREDENTIAL_NAME}; or try it offline with --emulator"
    )]
    Missing,
    #[error("cannot read the API key file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API key file {path} is empty")]
    Empty { path: PathBuf },
}

/// Find the key: `$TWELVELABS_API_KEY`, then `api.key_file`, then
/// `$CREDENTIALS_DIRECTORY/twelvelabs-api-key`.
pub fn load_api_key(
    env: &BTreeMap<String, String>,
    key_file: Option<&Path>,
) -> Result<(ApiKey, KeySource), KeyError> {
    if let Some(key) = env.get(API_KEY_ENV).and_then(|v| ApiKey::new(v)) {
        return Ok((key, KeySource::Env));
    }
    if let Some(path) = key_file {
        return read_key_file(path).map(|k| (k, KeySource::File(path.to_path_buf())));
    }
    if let Some(dir) = env.get("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        let path = Path::new(dir).join(CREDENTIAL_NAME);
        if path.exists() {
            return read_key_file(&path).map(|k| (k, KeySource::Credential(path)));
        }
    }
    Err(KeyError::Missing)
}

fn read_key_file(path: &Path) -> Result<ApiKey, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the API key file can be read by other users: chmod 600 it"
        );
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    ApiKey::new(&text).ok_or_else(|| KeyError::Empty {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_a_key_but_not_a_few_letters() {
        let key = ApiKey::new("tlk_SECRET_42").expect("key");
        assert_eq!(
            key.redact("x-api-key: tlk_SECRET_42 twice tlk_SECRET_42"),
            "x-api-key: <redacted> twice <redacted>"
        );
        let short = ApiKey::new("k").expect("key");
        assert_eq!(short.redact("API key"), "API key");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ApiKey::new("tlk_secret_123").expect("key");
        let shown = format!("{key:?} {:?}", Some(&key));
        assert!(!shown.contains("tlk_secret_123"), "{shown}");
        assert_eq!(key.expose(), "tlk_secret_123");
    }

    #[test]
    fn sources_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\n").expect("write");
        let cred_dir = dir.path().join("creds");
        std::fs::create_dir(&cred_dir).expect("mkdir");
        std::fs::write(cred_dir.join(CREDENTIAL_NAME), "from-cred").expect("write");

        let mut env = BTreeMap::new();
        env.insert(
            "CREDENTIALS_DIRECTORY".to_string(),
            cred_dir.display().to_string(),
        );
        let (k, src) = load_api_key(&env, None).expect("credential");
        assert_eq!(
            (k.expose(), src),
            (
                "from-cred",
                KeySource::Credential(cred_dir.join(CREDENTIAL_NAME))
            )
        );

        let (k, _) = load_api_key(&env, Some(&file)).expect("file");
        assert_eq!(k.expose(), "from-file", "trailing newline trimmed");

        env.insert(API_KEY_ENV.to_string(), "from-env".to_string());
        let (k, src) = load_api_key(&env, Some(&file)).expect("env");
        assert_eq!((k.expose(), src), ("from-env", KeySource::Env));
    }

    #[test]
    fn missing_empty_and_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            load_api_key(&BTreeMap::new(), None),
            Err(KeyError::Missing)
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").expect("write");
        assert!(matches!(
            load_api_key(&BTreeMap::new(), Some(&empty)),
            Err(KeyError::Empty { .. })
        ));
        let absent = dir.path().join("absent");
        let err = load_api_key(&BTreeMap::new(), Some(&absent)).expect_err("absent");
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
