//! The valid keys of each section, read from the structs, and the
//! messages for keys of the file or the environment that are none of
//! them, with the key most likely meant.

use config::ValueKind;

use super::ENV_PREFIX;
use super::layers::EnvVar;
use super::probe;
use super::schema::{
    ApiConfig, Config, LedgerConfig, TelemetryConfig, UploadConfig, WatchConfig, WatcherConfig,
};

/// Every problem, the first on the line of the message, each other one on
/// a line of its own.
pub(super) fn summarize(problems: Vec<String>) -> Option<String> {
    let mut iter = problems.into_iter();
    let first = iter.next()?;
    Some(iter.fold(first, |all, p| format!("{all}\n  also: {p}")))
}

/// The top-level keys (sections) of the configuration.
pub fn sections() -> &'static [&'static str] {
    probe::fields::<Config>()
}

/// The valid keys of a section (`watch`: of each `[[watch]]` entry), in
/// the order they are declared; `None` for a name that is no section.
pub fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "api" => probe::fields::<ApiConfig>(),
        "ledger" => probe::fields::<LedgerConfig>(),
        "watch" => probe::fields::<WatchConfig>(),
        "watcher" => probe::fields::<WatcherConfig>(),
        "upload" => probe::fields::<UploadConfig>(),
        "telemetry" => probe::fields::<TelemetryConfig>(),
        _ => return None,
    })
}

/// How a section is written in TOML.
pub(super) fn section_header(section: &str) -> String {
    if section == "watch" {
        "[[watch]]".into()
    } else {
        format!("[{section}]")
    }
}

/// Keys of the file that no struct has, each with the most likely meant key.
pub(super) fn unknown_in_file(tree: &config::Map<String, config::Value>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut top: Vec<&String> = tree.keys().collect();
    top.sort_by_key(|k| (sections().iter().position(|s| s == k), k.as_str()));
    for section in top {
        let value = &tree[section];
        let Some(valid) = section_keys(section) else {
            let is_table = matches!(value.kind, ValueKind::Table(_) | ValueKind::Array(_));
            problems.push(if is_table {
                let mut msg = format!("unknown section [{section}]");
                if let Some(near) = nearest(section, sections()) {
                    msg.push_str(&format!("; did you mean {}?", section_header(near)));
                } else {
                    msg.push_str(&format!("; the sections are {}", list(sections())));
                }
                msg
            } else {
                unknown_key(section, None, "at the top level", sections(), |k| {
                    format!("[{k}]")
                })
            });
            continue;
        };
        let header = section_header(section);
        let mut check = |table: &config::Map<String, config::Value>, place: String| {
            let mut keys: Vec<&String> = table.keys().collect();
            keys.sort();
            for key in keys {
                if !valid.contains(&key.as_str()) {
                    problems.push(unknown_key(key, Some(section), &place, valid, |k| {
                        format!("`{k}`")
                    }));
                }
            }
        };
        match &value.kind {
            ValueKind::Table(table) if section != "watch" => check(table, format!("in {header}")),
            ValueKind::Array(entries) if section == "watch" => {
                for (i, entry) in entries.iter().enumerate() {
                    if let ValueKind::Table(table) = &entry.kind {
                        check(table, format!("in {header} #{} (watch[{i}])", i + 1));
                    }
                }
            }
            // The wrong shape: the deserializer says so, with the key.
            _ => {}
        }
    }
    problems
}

/// `TL_INGEST__…` variables that name no key.
pub(super) fn unknown_in_env(env: &[EnvVar]) -> Vec<String> {
    let as_var = |section: &str, key: &str| {
        format!(
            "{ENV_PREFIX}__{}__{}",
            section.to_uppercase(),
            key.to_uppercase()
        )
    };
    let mut problems = Vec::new();
    for var in env {
        let Some(section) = var.key.first() else {
            continue;
        };
        let Some(valid) = section_keys(section) else {
            let mut msg = format!("{}: unknown section [{section}]", var.name);
            if let Some(near) = nearest(section, sections()) {
                msg.push_str(&format!(
                    "; did you mean {ENV_PREFIX}__{}__…?",
                    near.to_uppercase()
                ));
            }
            problems.push(msg);
            continue;
        };
        // Watch entries cannot be set from the environment; deeper or
        // shallower names are the deserializer's to explain.
        let (true, Some(key)) = (section != "watch", var.key.get(1)) else {
            continue;
        };
        if var.key.len() == 2 && !valid.contains(&key.as_str()) {
            let mut msg = format!("{}: unknown key `{key}` in [{section}]", var.name);
            match nearest(key, valid) {
                Some(near) => msg.push_str(&format!("; did you mean {}?", as_var(section, near))),
                None => msg.push_str(&format!("; the keys of [{section}] are {}", list(valid))),
            }
            problems.push(msg);
        }
    }
    problems
}

/// "unknown key `wokers` in [upload]; did you mean `workers`?", or where
/// the key belongs, or the valid keys.
fn unknown_key(
    key: &str,
    section: Option<&str>,
    place: &str,
    valid: &[&str],
    show: impl Fn(&str) -> String,
) -> String {
    let mut msg = format!("unknown key `{key}` {place}");
    if let Some(near) = nearest(key, valid) {
        msg.push_str(&format!("; did you mean {}?", show(near)));
        return msg;
    }
    // A valid key in the wrong place: before any [section], or after a
    // [[watch]] table (whose keys run on until the next header).
    let home = sections()
        .iter()
        .filter(|s| Some(**s) != section)
        .find(|s| section_keys(s).is_some_and(|keys| keys.contains(&key)));
    match home {
        Some(home) => msg.push_str(&format!(
            "; `{key}` belongs in {} (keys after a header belong to that table)",
            section_header(home)
        )),
        None => msg.push_str(&format!("; the valid keys here are {}", list(valid))),
    }
    msg
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The valid key closest to `key` by edit distance, if it is close enough
/// to be a typo of it (compared without case).
pub fn nearest<'a>(key: &str, valid: &[&'a str]) -> Option<&'a str> {
    let key = key.to_lowercase();
    valid
        .iter()
        .map(|v| (edit_distance(&key, v), *v))
        .filter(|(d, v)| {
            let len = v.chars().count();
            *d < len && *d <= (len / 3).max(1)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of two neighbours each cost one.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
