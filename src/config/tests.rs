//! The configuration's unit tests: layering, unknown keys, validation and
//! `config show`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;

use super::*;

fn opts(dir: &Path, file: Option<&str>, env: &[(&str, &str)]) -> LoadOptions {
    let explicit = file.map(|text| {
        let p = dir.join("test.toml");
        std::fs::write(&p, text).expect("write config");
        p
    });
    LoadOptions {
        explicit,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: Some(dir.to_path_buf()),
    }
}

fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    Config::load(&opts(dir.path(), file, env)).map(|(c, _)| c)
}

#[test]
fn a_toml_syntax_error_gives_the_position_without_quoting_the_line() {
    let err = load(Some("[api]\nkey = \"tlk_pasted_secret\n"), &[]).expect_err("broken");
    let msg = err.to_string();
    assert!(!msg.contains("tlk_pasted_secret"), "{msg}");
    assert!(
        msg.contains("test.toml") && msg.contains("line 2") && msg.contains("invalid basic string"),
        "{msg}"
    );
}

#[test]
fn defaults_alone_are_valid() {
    let c = load(None, &[]).expect("defaults load");
    assert_eq!(c.upload.workers, 4);
    assert_eq!(c.upload.max_direct_size, ByteSize(200_000_000));
    assert_eq!(c.upload.max_image_size, ByteSize(32_000_000));
    assert_eq!(c.upload.max_multipart_size, ByteSize(10_000_000_000));
    assert_eq!(c.api.poll_interval, Duration::from_secs(5));
    assert_eq!(c.api.request_timeout, Duration::from_secs(30 * 60));
    assert_eq!(c.upload.dedupe, Dedupe::Content);
    assert!(c.watch.is_empty());
}

#[test]
fn the_example_config_documents_the_defaults() {
    let example = include_str!("../../config/example.toml");
    let from_example = load(Some(example), &[]).expect("example loads");
    assert_eq!(from_example, load(None, &[]).expect("defaults"));
    // Every key of the defaults appears in the example, documented.
    for line in DEFAULTS_TOML.lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(
                example.contains(&format!("\n{key} = ")),
                "config/example.toml does not document {key}"
            );
        }
    }
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    let toml = "[upload]\nworkers = 2\nmax_backoff = \"10m\"\n[api]\npoll_interval = \"250ms\"\n";
    let c = load(Some(toml), &[]).expect("file loads");
    assert_eq!(c.upload.workers, 2);
    assert_eq!(c.upload.max_backoff, Duration::from_secs(600));
    assert_eq!(c.api.poll_interval, Duration::from_millis(250));
    assert_eq!(c.upload.max_attempts, 10, "untouched keys keep defaults");

    let c = load(
        Some(toml),
        &[
            ("TL_INGEST__UPLOAD__WORKERS", "8"),
            ("TL_INGEST__API__ENABLE_HLS", "false"),
            ("TL_INGEST__UPLOAD__MAX_DIRECT_SIZE", "1MB"),
        ],
    )
    .expect("env loads");
    assert_eq!(c.upload.workers, 8);
    assert!(!c.api.enable_hls);
    assert_eq!(c.upload.max_direct_size, ByteSize(1_000_000));
}

#[test]
fn watch_entries_get_per_key_defaults() {
    let toml = "[[watch]]\npath = \"/srv/in\"\nuser_metadata = { project = \"x\", take = 3 }\nafter_upload = { move_to = \"done\" }\n";
    let c = load(Some(toml), &[]).expect("loads");
    let w = &c.watch[0];
    assert!(w.recursive);
    assert_eq!(w.exclude, default_exclude());
    assert_eq!(
        w.user_metadata.get("take"),
        Some(&MetadataValue::Int(3)),
        "numbers stay numbers"
    );
    assert_eq!(
        w.after_upload,
        FileAction::MoveTo {
            move_to: "done".into()
        }
    );
    assert_eq!(w.on_failure, FileAction::Named(FileActionName::Keep));
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let err = load(Some("[upload]\nwokers = 3\n"), &[]).expect_err("typo must fail");
    let msg = err.to_string();
    assert!(msg.contains("wokers"), "{msg}");
    assert!(msg.contains("test.toml"), "names the file: {msg}");

    let err = load(Some("[uplod]\nworkers = 3\n"), &[]).expect_err("section typo");
    assert!(err.to_string().contains("uplod"), "{err}");
}

#[test]
fn wrong_types_and_bad_values_are_errors() {
    let err = load(Some("[upload]\nworkers = \"many\"\n"), &[]).expect_err("type");
    assert!(err.to_string().contains("workers"), "{err}");
    let err = load(Some("[upload]\ninitial_backoff = \"soon\"\n"), &[]).expect_err("dur");
    assert!(err.to_string().contains("initial_backoff"), "{err}");
    let err = load(Some("[upload]\nworkers = 0\n"), &[]).expect_err("zero");
    assert!(err.to_string().contains("upload.workers"), "{err}");
    let err = load(Some("[upload\n"), &[]).expect_err("toml syntax");
    assert!(err.to_string().contains("test.toml"), "{err}");
    let err = load(Some("[upload]\ndedupe = \"sometimes\"\n"), &[]).expect_err("enum");
    assert!(err.to_string().contains("sometimes"), "{err}");
}

#[test]
fn config_file_search_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = opts(dir.path(), None, &[]);
    assert_eq!(Config::locate(&o).expect("none"), ConfigFile::None);

    std::fs::write(dir.path().join("tl-ingest.toml"), "").expect("write");
    assert_eq!(
        Config::locate(&o).expect("cwd file"),
        ConfigFile::Path(dir.path().join("tl-ingest.toml"))
    );

    let named = dir.path().join("named.toml");
    std::fs::write(&named, "").expect("write");
    o.env
        .insert(CONFIG_PATH_ENV.into(), named.display().to_string());
    assert_eq!(Config::locate(&o).expect("env"), ConfigFile::Path(named));

    o.explicit = Some(dir.path().join("absent.toml"));
    assert!(matches!(
        Config::locate(&o),
        Err(ConfigError::Missing { .. })
    ));
}

#[test]
fn ledger_path_follows_state_directory() {
    let c = load(None, &[]).expect("defaults");
    let mut env = BTreeMap::new();
    assert_eq!(c.ledger_path(&env), PathBuf::from("tl-ingest.db"));
    env.insert("STATE_DIRECTORY".into(), "/var/lib/tl-ingest".into());
    assert_eq!(
        c.ledger_path(&env),
        PathBuf::from("/var/lib/tl-ingest/tl-ingest.db")
    );
}

#[test]
fn every_section_has_its_keys_from_the_structs() {
    assert_eq!(
        sections(),
        ["api", "ledger", "watch", "watcher", "upload", "telemetry"]
    );
    for s in sections() {
        assert!(section_keys(s).is_some(), "no key list for [{s}]");
    }
    let upload = section_keys("upload").expect("upload");
    assert_eq!(upload.first(), Some(&"workers"));
    assert!(section_keys("api").expect("api").contains(&"key_file"));
    assert!(
        section_keys("watch")
            .expect("watch")
            .contains(&"after_upload")
    );
}

#[test]
fn edit_distance_and_nearest() {
    assert_eq!(edit_distance("wokers", "workers"), 1);
    assert_eq!(edit_distance("wrokers", "workers"), 1, "a swap costs one");
    assert_eq!(edit_distance("", "abc"), 3);
    let keys = section_keys("upload").expect("upload");
    assert_eq!(nearest("wokers", keys), Some("workers"));
    assert_eq!(nearest("Workers", keys), Some("workers"));
    assert_eq!(nearest("max_atempts", keys), Some("max_attempts"));
    assert_eq!(nearest("retries", keys), None);
    assert_eq!(nearest("uplod", sections()), Some("upload"));
}

#[test]
fn unknown_keys_suggest_the_nearest_valid_one() {
    let msg = load(Some("[upload]\nwokers = 3\n"), &[])
        .expect_err("typo")
        .to_string();
    assert!(
        msg.contains("unknown key `wokers` in [upload]; did you mean `workers`?"),
        "{msg}"
    );
    let msg = load(Some("[uplod]\nworkers = 3\n"), &[])
        .expect_err("section")
        .to_string();
    assert!(
        msg.contains("unknown section [uplod]; did you mean [upload]?"),
        "{msg}"
    );
    let msg = load(Some("[[watch]]\npath = \"/x\"\nrecursve = false\n"), &[])
        .expect_err("watch key")
        .to_string();
    assert!(
        msg.contains("watch[0]") && msg.contains("`recursive`"),
        "{msg}"
    );
    let msg = load(Some("[[watch]]\npath = \"/x\"\nworkers = 2\n"), &[])
        .expect_err("misplaced")
        .to_string();
    assert!(msg.contains("belongs in [upload]"), "{msg}");
    let msg = load(Some("[upload]\nfrobnicate = 1\nwokers = 2\n"), &[])
        .expect_err("two")
        .to_string();
    assert!(
        msg.contains("`max_attempts`") && msg.contains("\n  also: "),
        "{msg}"
    );
}

#[test]
fn env_problems_name_the_variable_not_the_file() {
    let err = load(Some(""), &[("TL_INGEST__UPLOAD__WOKERS", "3")]).expect_err("env typo");
    assert!(matches!(err, ConfigError::Value { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("TL_INGEST__UPLOAD__WOKERS") && msg.contains("TL_INGEST__UPLOAD__WORKERS"),
        "{msg}"
    );
    let err = load(Some(""), &[("TL_INGEST__UPLOAD__WORKERS", "0")]).expect_err("env value");
    assert!(
        err.to_string().contains(
            "upload.workers: must be between 1 and 256, not 0 (set by TL_INGEST__UPLOAD__WORKERS)"
        ),
        "{err}"
    );
    let err = load(Some(""), &[("TL_INGEST__UPLOAD__WORKERS", "many")]).expect_err("type");
    assert!(
        err.to_string()
            .contains("set by TL_INGEST__UPLOAD__WORKERS"),
        "{err}"
    );
}

fn explain(file: &str, env: &[(&str, &str)]) -> (Explained, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(dir.path(), Some(file), env);
    let path = o.explicit.clone().expect("path");
    (Config::explain(&o).expect("explain"), path, dir)
}

#[test]
fn explain_names_the_layer_of_each_value() {
    let (e, path, _dir) = explain(
        "[upload]\nworkers = 4\nmax_attempts = 3\n[[watch]]\npath = \"/srv/in\"\n",
        &[("TL_INGEST__UPLOAD__MAX_ATTEMPTS", "7")],
    );
    assert_eq!(e.config.upload.max_attempts, 7);
    assert_eq!(e.source("upload.workers"), ValueSource::File(path.clone()));
    assert_eq!(
        e.source("upload.max_attempts"),
        ValueSource::Env("TL_INGEST__UPLOAD__MAX_ATTEMPTS".into())
    );
    assert_eq!(e.source("upload.dedupe"), ValueSource::Default);
    assert_eq!(e.source("watch[0].path"), ValueSource::File(path));
    assert_eq!(e.source("watch[0].recursive"), ValueSource::Default);
}

#[test]
fn shown_toml_loads_back_to_the_same_config() {
    let (e, path, dir) = explain(
        "[api]\nbase_url = \"https://u:hunter2@example.com/v1.3\"\n\
         [upload]\nmax_direct_size = \"123MiB\"\n\
         [[watch]]\npath = \"/srv/in\"\nuser_metadata = { project = \"a \\\"b\\\"\\u007F\", take = 3, ratio = 2.0, ok = true, \"odd key\" = \"x\" }\n\
         after_upload = { move_to = \"done\" }\nindex_id = \"idx\"\n\
         [[watch]]\npath = \"/srv/other\"\nafter_upload = \"delete\"\nrecursive = false\n",
        &[("TL_INGEST__UPLOAD__WORKERS", "8")],
    );
    let text = e.to_toml().expect("render");
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start}: {text}"))
    };
    assert!(line("workers = 8 ").ends_with("  # env TL_INGEST__UPLOAD__WORKERS"));
    assert!(line("max_attempts = 10 ").ends_with("  # default"));
    assert!(
        text.contains(&format!("# file {}", path.display())),
        "{text}"
    );
    assert!(text.contains("max_attempts = 10"), "{text}");
    assert!(text.contains("max_direct_size = \"123MiB\""), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("# key_file is not set"), "{text}");

    let shown = dir.path().join("shown.toml");
    std::fs::write(&shown, &text).expect("write");
    let again = Config::load(&LoadOptions {
        explicit: Some(shown),
        env: BTreeMap::new(),
        cwd: None,
    })
    .expect("shown config loads")
    .0;
    let mut expected = e.config.clone();
    expected.api.base_url = redact_url(&expected.api.base_url);
    assert_eq!(again, expected, "{text}");
}

#[test]
fn sizes_and_urls() {
    assert_eq!(exact_size(200_000_000), "200MB");
    assert_eq!(exact_size(32 << 20), "32MiB");
    assert_eq!(exact_size(10_000_000_000), "10GB");
    assert_eq!(exact_size(1234), "1234B");
    assert_eq!(exact_size(0), "0");
    assert_eq!(
        redact_url("https://a:b@h/v1.3"),
        "https://a:<redacted>@h/v1.3"
    );
    assert_eq!(redact_url("https://tok@h"), "https://<redacted>@h");
    assert_eq!(redact_url("http://h:80/x@y"), "http://h:80/x@y");
}
