//! `config show`: the effective configuration as TOML that loads back,
//! each value with the layer that set it (default, file or environment).

use std::collections::BTreeMap;
use std::path::PathBuf;

use config::ValueKind;

use super::keys::{section_header, section_keys, sections};
use super::{Config, ConfigError, ConfigFile, LoadOptions};

impl Config {
    /// [`Config::load`], and which layer set each value (for `config show`).
    pub fn explain(opts: &LoadOptions) -> Result<Explained, ConfigError> {
        let (config, layers) = Config::load_layers(opts)?;
        let mut set = BTreeMap::new();
        if let ConfigFile::Path(path) = &layers.file {
            for (section, value) in &layers.file_tree {
                let source = || ValueSource::File(path.clone());
                match &value.kind {
                    ValueKind::Table(table) => {
                        for key in table.keys() {
                            set.insert(format!("{section}.{key}"), source());
                        }
                    }
                    ValueKind::Array(entries) => {
                        for (i, entry) in entries.iter().enumerate() {
                            if let ValueKind::Table(table) = &entry.kind {
                                for key in table.keys() {
                                    set.insert(format!("{section}[{i}].{key}"), source());
                                }
                            }
                        }
                    }
                    _ => {
                        set.insert(section.clone(), source());
                    }
                }
            }
        }
        for var in &layers.env {
            set.insert(var.key.join("."), ValueSource::Env(var.name.clone()));
        }
        Ok(Explained {
            config,
            file: layers.file,
            set,
        })
    }
}

/// Which layer set a value of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// Built in (`config/default.toml`, or a per-key default of a watch entry).
    Default,
    File(PathBuf),
    /// The environment variable that set it.
    Env(String),
}

impl std::fmt::Display for ValueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueSource::Default => f.write_str("default"),
            ValueSource::File(p) => write!(f, "file {}", p.display()),
            ValueSource::Env(name) => write!(f, "env {name}"),
        }
    }
}

/// The effective configuration and where each of its values came from.
#[derive(Debug, Clone)]
pub struct Explained {
    pub config: Config,
    pub file: ConfigFile,
    /// Keys the file or the environment set (`upload.workers`,
    /// `watch[0].path`); every other key has its default.
    set: BTreeMap<String, ValueSource>,
}

impl Explained {
    /// Where the value of `key` (`upload.workers`, `watch[0].path`) came from.
    pub fn source(&self, key: &str) -> ValueSource {
        self.set.get(key).cloned().unwrap_or(ValueSource::Default)
    }

    /// The effective configuration as TOML that loads back to the same
    /// configuration, each value followed by a comment naming its source.
    /// Credentials in `api.base_url` are redacted.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let mut tree = serde_json::to_value(&self.config).map_err(|e| ConfigError::Value {
            reason: format!("cannot render the configuration: {e}"),
        })?;
        // Sizes exactly as they can be written back ("200MB", not "190.7 MiB").
        let u = &self.config.upload;
        for (key, size) in [
            ("multipart_threshold", u.multipart_threshold),
            ("max_direct_size", u.max_direct_size),
            ("max_image_size", u.max_image_size),
            ("max_multipart_size", u.max_multipart_size),
        ] {
            tree["upload"][key] = serde_json::Value::String(exact_size(size.as_u64()));
        }
        tree["api"]["base_url"] = serde_json::Value::String(redact_url(&self.config.api.base_url));

        let mut out = String::new();
        for section in sections() {
            let Some(keys) = section_keys(section) else {
                continue;
            };
            match tree.get(*section) {
                Some(serde_json::Value::Array(entries)) => {
                    if entries.is_empty() {
                        out.push_str(&format!(
                            "\n# {}: none configured\n",
                            section_header(section)
                        ));
                    }
                    for (i, entry) in entries.iter().enumerate() {
                        out.push_str(&format!("\n{}\n", section_header(section)));
                        self.table(&mut out, entry, keys, &format!("{section}[{i}]"));
                    }
                }
                Some(table) => {
                    out.push_str(&format!("\n{}\n", section_header(section)));
                    self.table(&mut out, table, keys, section);
                }
                None => {}
            }
        }
        Ok(out.trim_start().to_string())
    }

    fn table(&self, out: &mut String, table: &serde_json::Value, keys: &[&str], prefix: &str) {
        let rows: Vec<(String, String)> = keys
            .iter()
            .map(|key| {
                let source = self.source(&format!("{prefix}.{key}"));
                match table.get(*key) {
                    Some(v) => (format!("{key} = {}", toml_value(v)), source.to_string()),
                    None => (format!("# {key} is not set"), source.to_string()),
                }
            })
            .collect();
        let width = rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        for (line, source) in rows {
            let pad = width - line.chars().count();
            out.push_str(&format!("{line}{}  # {source}\n", " ".repeat(pad)));
        }
    }
}

/// A TOML value (inline) for a JSON value of the serialized configuration.
fn toml_value(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "\"\"".into(),
        J::Bool(b) => b.to_string(),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.is_nan() => "nan".into(),
            (_, _, Some(f)) if f.is_infinite() => if f > 0.0 { "inf" } else { "-inf" }.into(),
            // `{:?}` keeps the point: 3.0 stays a float.
            (_, _, Some(f)) => format!("{f:?}"),
            _ => n.to_string(),
        },
        J::String(s) => toml_string(s),
        J::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        J::Object(map) if map.is_empty() => "{}".into(),
        J::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A JSON string literal is a TOML basic string, but for DEL, which JSON
/// leaves as it is and TOML wants escaped.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('\u{7f}', "\\u007F")
}

fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { k.to_string() } else { toml_string(k) }
}

/// A byte count in the largest unit that divides it exactly.
pub fn exact_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 8] = [
        (1 << 40, "TiB"),
        (1_000_000_000_000, "TB"),
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1_000, "KB"),
    ];
    if bytes == 0 {
        return "0".into();
    }
    UNITS
        .iter()
        .find(|(unit, _)| bytes.is_multiple_of(*unit))
        .map(|(unit, name)| format!("{}{name}", bytes / unit))
        .unwrap_or_else(|| format!("{bytes}B"))
}

/// `https://user:secret@host/…` → `https://user:<redacted>@host/…`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:<redacted>")
            } else {
                "<redacted>".to_string()
            };
            format!("{scheme}://{shown}@{host}{tail}")
        }
        None => url.to_string(),
    }
}
