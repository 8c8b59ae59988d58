//! Property tests (proptest) over every parser that reads what others
//! wrote: the API's answers (types, error bodies, `Retry-After`, and the
//! client's whole response handling against a server that answers
//! anything), the emulator's multipart parser, the configuration, and
//! `.urls` lists. Each must give a value or a clear error, never a panic.
//!
//! Case counts are bounded by default; `TL_INGEST_SOAK=1` runs 32 times as
//! many, and `PROPTEST_CASES=N` sets them outright.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use tl_ingest::api::types::{Asset, AssetPage, IndexedAsset, MultipartCreated, SessionStatus};
use tl_ingest::api::{ApiClient, ApiError, ClientOptions, MAX_RETRY_AFTER, retry_at};
use tl_ingest::config::{Config, LoadOptions};
use tl_ingest::emulator::{Emulator, EmulatorConfig};
use tl_ingest::pipeline::{parse_url_list as parse_list, validate_url as validate};
use tl_ingest::secret::ApiKey;

use crate::helpers::{KEY, Kind, media, sha256_hex};

/// `quick` cases by default, 32 times as many in soak mode, or exactly
/// `PROPTEST_CASES` when set.
fn cases(quick: u32) -> ProptestConfig {
    let n = if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default().cases
    } else if super::soak() {
        quick * 32
    } else {
        quick
    };
    ProptestConfig::with_cases(n)
}

/// One runtime for the properties that need a server, kept for the whole
/// test binary (proptest calls the body synchronously, many times).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Arbitrary JSON, a few levels deep, with the API's field names likely.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        Just("_id".to_string()),
        Just("status".to_string()),
        Just("user_metadata".to_string()),
        Just("error".to_string()),
        Just("message".to_string()),
        Just("data".to_string()),
        Just("page_info".to_string()),
        Just("tl_ingest_sha256".to_string()),
        Just("upload_urls".to_string()),
        Just("chunk_index".to_string()),
        Just("size".to_string()),
        "[a-z_]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![Just("ready"), Just("failed"), Just("processing"), Just("")]
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Any JSON at all, as any answer type: parsed or refused, and what
    /// parses can be asked everything.
    #[test]
    fn api_answers_of_any_shape_parse_or_are_refused(value in json()) {
        if let Ok(asset) = serde_json::from_value::<Asset>(value.clone()) {
            let _ = asset.status();
            let _ = asset.sha256_stamp();
            let _ = asset.error_message();
        }
        let _ = serde_json::from_value::<AssetPage>(value.clone());
        let _ = serde_json::from_value::<MultipartCreated>(value.clone());
        let _ = serde_json::from_value::<SessionStatus>(value.clone());
        let _ = serde_json::from_value::<IndexedAsset>(value.clone());
        let text = value.to_string();
        let _ = tl_ingest::api::types::parse_error_body(text.as_bytes());
    }

    /// Any bytes at all as an answer or an error body.
    #[test]
    fn api_bodies_of_any_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(asset) = serde_json::from_slice::<Asset>(&body) {
            let _ = asset.status();
            let _ = asset.sha256_stamp();
        }
        let _ = tl_ingest::api::types::parse_error_body(&body);
    }

    /// Whatever a 429 says, nobody is asked to wait more than the cap.
    #[test]
    fn retry_after_of_any_text_is_capped(
        retry_after in prop::option::of(prop_oneof![
            "[0-9]{1,25}",
            "-?[0-9]{1,5}",
            "[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
            "[ -~]{0,30}",
        ]),
        reset in prop::option::of(prop_oneof!["[0-9]{1,25}", "[ -~]{0,20}"]),
        now_secs in 0u64..4_000_000_000,
    ) {
        use reqwest::header::{HeaderMap, HeaderValue};
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert("retry-after", v);
        }
        if let Some(v) = reset.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert("x-ratelimit-reset", v);
        }
        if let Some(at) = retry_at(&headers, now) {
            prop_assert!(at <= now + MAX_RETRY_AFTER, "{at:?} for {headers:?}");
        }
    }

    /// `.urls` lists: only http(s) URLs with a host come out, each once,
    /// each already in the form `validate` gives; every other non-comment
    /// line is reported with its (1-based) line number.
    #[test]
    fn url_lists_of_any_text(
        lines in prop::collection::vec(prop_oneof![
            Just(String::new()),
            "#.{0,20}",
            "(https?|ftp|file|HTTP)://[a-z0-9.-]{0,12}(:[0-9]{1,6})?(/[ -~]{0,20})?",
            "[ -~]{0,30}",
            ".{0,30}",
        ], 0..20),
        ending in prop_oneof![Just("\n"), Just("\r\n")],
    ) {
        let text = lines.join(ending);
        let (urls, bad) = parse_list(&text);
        let line_count = text.lines().count();
        for u in &urls {
            let again = validate(u);
            prop_assert_eq!(again.as_deref(), Ok(u.as_str()));
            prop_assert!(u.starts_with("http://") || u.starts_with("https://"), "{}", u);
        }
        let mut unique = urls.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), urls.len());
        for (line, reason) in &bad {
            prop_assert!(*line >= 1 && *line <= line_count, "line {} of {}", line, line_count);
            prop_assert!(!reason.is_empty());
        }
        prop_assert!(urls.len() + bad.len() <= line_count);
    }
}

/// A key=value line of TOML, or something near it.
fn toml_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("workers"),
        Just("max_attempts"),
        Just("initial_backoff"),
        Just("max_backoff"),
        Just("base_url"),
        Just("poll_interval"),
        Just("path"),
        Just("mode"),
        Just("settle"),
        Just("dedupe"),
        Just("max_direct_size"),
        Just("after_upload"),
        Just("include"),
        Just("log_format"),
        Just("metrics_listen"),
        Just("wokers"),
    ]
    .prop_map(str::to_string);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "\"[ -~&&[^\"\\\\]]{0,16}\"",
        Just("\"30s\"".to_string()),
        Just("\"200MB\"".to_string()),
        Just("\"http://127.0.0.1:1/v1.3\"".to_string()),
        Just("[]".to_string()),
        Just("[\"**/*.mp4\", \"[\"]".to_string()),
        Just("{ move_to = \"done\" }".to_string()),
        "[ -~]{0,10}",
    ];
    let section = prop_oneof![
        Just("[api]"),
        Just("[ledger]"),
        Just("[watcher]"),
        Just("[upload]"),
        Just("[telemetry]"),
        Just("[[watch]]"),
        Just("[nonsense]"),
    ]
    .prop_map(str::to_string);
    prop_oneof![
        3 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => section,
        1 => ".{0,20}",
    ]
}

proptest! {
    #![proptest_config(cases(128))]

    /// Any configuration text: loaded, or refused with a message that
    /// names the file. Never a panic.
    #[test]
    fn config_text_of_any_kind_loads_or_names_the_file(
        lines in prop::collection::vec(toml_line(), 0..12),
        env_value in prop::option::of(".{0,12}"),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fuzzed.toml");
        std::fs::write(&path, lines.join("\n")).expect("write");
        let mut env = BTreeMap::new();
        if let Some(v) = env_value {
            env.insert("TL_INGEST__UPLOAD__WORKERS".to_string(), v);
        }
        let opts = LoadOptions {
            explicit: Some(path.clone()),
            env,
            cwd: Some(dir.path().to_path_buf()),
        };
        match Config::load(&opts) {
            Ok((config, _)) => prop_assert!(config.validate().is_ok()),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(
                    msg.contains("fuzzed.toml") || msg.contains("TL_INGEST__UPLOAD__WORKERS"),
                    "{}", msg
                );
            }
        }
    }
}

/// A server that answers every request with `status` and `body`, as
/// given, then closes the connection.
async fn scripted_server(status: u16, content_type: &'static str, body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(&body).await;
            let _ = conn.shutdown().await;
        }
    });
    format!("http://{addr}/v1.3")
}

proptest! {
    #![proptest_config(cases(48))]

    /// The client's whole response handling (status, body cap, JSON,
    /// error bodies), against a server that answers anything: a 2xx with
    /// an asset is an asset, everything else an error with a class and a
    /// message. Never a panic.
    #[test]
    fn client_takes_any_answer_without_panicking(
        status in prop_oneof![Just(200u16), Just(201), Just(204), Just(302), Just(400), Just(404), Just(429), Just(500), Just(503), 100u16..600],
        content_type in prop_oneof![Just("application/json"), Just("text/html"), Just("text/plain")],
        body in prop_oneof![
            json().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..256),
            Just(b"<!DOCTYPE html><html>oops</html>".to_vec()),
        ],
    ) {
        // 1xx cannot end an exchange; a server sending one is beyond HTTP/1.1.
        prop_assume!(status >= 200);
        let parsed = serde_json::from_slice::<Asset>(&body).is_ok();
        let result = runtime().block_on(async {
            let base = scripted_server(status, content_type, body.clone()).await;
            let client = ApiClient::new(
                &ClientOptions {
                    base_url: base,
                    request_timeout: Duration::from_secs(10),
                    connect_timeout: Duration::from_secs(5),
                },
                &ApiKey::new(KEY).expect("key"),
            )
            .expect("client");
            client.get_asset("abc").await
        });
        match result {
            Ok(_) => prop_assert!((200..300).contains(&status) && parsed),
            Err(e) => {
                let _ = e.class();
                let _ = e.maybe_received();
                let text = e.to_string();
                prop_assert!(!text.is_empty());
                if (200..300).contains(&status) {
                    prop_assert!(matches!(e, ApiError::Malformed { .. } | ApiError::Transport { .. }), "{:?}", e);
                }
            }
        }
    }
}

/// One emulator for the multipart properties.
fn emulator() -> &'static Emulator {
    static EMU: OnceLock<Emulator> = OnceLock::new();
    EMU.get_or_init(|| {
        runtime().block_on(async {
            Emulator::start(EmulatorConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                api_key: KEY.into(),
                ready_delay: Duration::from_millis(10),
                ..EmulatorConfig::default()
            })
            .await
            .expect("emulator")
        })
    })
}

/// A multipart form body: the given text fields, then a file part.
fn form_body(boundary: &str, fields: &[(String, String)], file: &[u8], filename: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(file);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// How a well-formed body is spoiled.
#[derive(Debug, Clone)]
enum Spoil {
    None,
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    WrongBoundary,
}

proptest! {
    #![proptest_config(cases(96))]

    /// The emulator's multipart upload parser: a well-formed form becomes
    /// an asset with exactly the bytes sent; a spoiled one is refused with
    /// a 400 (or, where the spoiling left it well-formed, accepted); the
    /// server answers every time and keeps serving.
    #[test]
    fn emulator_multipart_parser_answers_every_body(
        boundary in "[A-Za-z0-9'()+_,./:=?-]{1,40}",
        extra_fields in prop::collection::vec(
            (prop_oneof![Just("enable_hls"), Just("user_metadata"), Just("url"), Just("x-unknown"), Just("file")], ".{0,16}"),
            0..3,
        ),
        size in 1usize..20_000,
        seed in any::<u64>(),
        filename in "[ -~&&[^\"\\\\]]{0,20}",
        spoil in prop_oneof![
            2 => Just(Spoil::None),
            1 => any::<usize>().prop_map(Spoil::Truncate),
            1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Spoil::Flip(i, b)),
            1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40)).prop_map(|(i, v)| Spoil::Insert(i, v)),
            1 => Just(Spoil::WrongBoundary),
        ],
    ) {
        let emu = emulator();
        let file = media(Kind::Mp4, size, seed);
        let mut fields = vec![("method".to_string(), "direct".to_string())];
        fields.extend(extra_fields.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let mut body = form_body(&boundary, &fields, &file, &filename);
        let clean = extra_fields.is_empty() && matches!(spoil, Spoil::None);
        match &spoil {
            Spoil::None => {}
            Spoil::Truncate(at) => body.truncate(at % body.len()),
            Spoil::Flip(at, b) => {
                let i = at % body.len();
                body[i] ^= b | 1;
            }
            Spoil::Insert(at, bytes) => {
                let i = at % body.len();
                body.splice(i..i, bytes.iter().copied());
            }
            Spoil::WrongBoundary => {}
        }
        let header_boundary = if matches!(spoil, Spoil::WrongBoundary) {
            format!("{boundary}x")
        } else {
            boundary.clone()
        };
        let (status, answer, alive) = runtime().block_on(async {
            // The process's TLS provider, as the other tests' clients (run
            // alone, this test is the first to build one).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::new();
            let resp = client
                .post(format!("{}/assets", emu.base_url()))
                .header("x-api-key", KEY)
                .header("content-type", format!("multipart/form-data; boundary=\"{header_boundary}\""))
                .body(body)
                .send()
                .await
                .expect("the emulator answers every body");
            let status = resp.status().as_u16();
            let answer: serde_json::Value = resp.json().await.expect("a JSON answer");
            let alive = client
                .get(format!("{}/assets?page_limit=1", emu.base_url()))
                .header("x-api-key", KEY)
                .send()
                .await
                .map(|r| r.status().as_u16());
            (status, answer, alive)
        });
        prop_assert_eq!(alive.ok(), Some(200), "the emulator still serves");
        prop_assert!(status == 201 || status == 400, "{} {}", status, answer);
        if status == 400 {
            prop_assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer);
        }
        if clean {
            prop_assert_eq!(status, 201, "{}", answer);
            let id = answer["_id"].as_str().unwrap_or_default().to_string();
            let asset = emu.assets().into_iter().find(|a| a.id == id);
            prop_assert_eq!(
                asset.and_then(|a| a.sha256),
                Some(sha256_hex(&file)),
                "the bytes sent are the bytes held"
            );
        }
    }
}
