//! Wire-level tests of the emulator: each starts a real server on 127.0.0.1:0 and talks
//! to it with reqwest, as the uploader will.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Emulator, EmulatorConfig, Faults};

const KEY: &str = "test-key";

async fn start_with(edit: impl FnOnce(&mut EmulatorConfig)) -> Emulator {
    let mut config = EmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: KEY.to_owned(),
        ready_delay: Duration::from_millis(50),
        ..EmulatorConfig::default()
    };
    edit(&mut config);
    Emulator::start(config).await.unwrap()
}

async fn start() -> Emulator {
    start_with(|_| {}).await
}

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder().build().unwrap()
}

/// A minimal MP4 header (`ftyp` box at offset 4) padded to `len` bytes.
fn mp4_bytes(len: usize) -> Vec<u8> {
    let mut bytes = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    bytes.resize(len.max(bytes.len()), 0xab);
    bytes
}

fn png_bytes(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.resize(len.max(bytes.len()), 0);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn direct_form(bytes: Vec<u8>, filename: &str) -> Form {
    Form::new()
        .text("method", "direct")
        .text("filename", filename.to_owned())
        .part("file", Part::bytes(bytes).file_name(filename.to_owned()))
}

async fn post_form(client: &Client, emu: &Emulator, form: Form) -> reqwest::Result<Response> {
    client
        .post(format!("{}/assets", emu.base_url()))
        .header("x-api-key", KEY)
        .multipart(form)
        .send()
        .await
}

/// Uploads and expects 201; returns the Asset JSON.
async fn upload_ok(client: &Client, emu: &Emulator, bytes: Vec<u8>, filename: &str) -> Value {
    let response = post_form(client, emu, direct_form(bytes, filename))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn get(client: &Client, emu: &Emulator, path: &str) -> Response {
    client
        .get(format!("{}{path}", emu.base_url()))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
}

async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["code"].as_str().unwrap_or_default().to_owned()
}

/// Polls GET /assets/{id} until its status is no longer `processing`, with a deadline.
async fn wait_settled(client: &Client, emu: &Emulator, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = get(client, emu, &format!("/assets/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let asset: Value = response.json().await.unwrap();
        if asset["status"] != "processing" {
            return asset;
        }
        assert!(Instant::now() < deadline, "asset {id} still processing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn small_mp4_upload_becomes_ready_and_is_hashed() {
    let emu = start().await;
    let client = client();
    let bytes = mp4_bytes(10_000);
    let asset = upload_ok(&client, &emu, bytes.clone(), "clip.mp4").await;

    let id = asset["_id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert!(id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    assert_eq!(asset["status"], "processing");
    assert_eq!(asset["method"], "direct");
    assert_eq!(asset["filename"], "clip.mp4");
    assert_eq!(asset["file_type"], "video/mp4");
    assert!(asset["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(asset.get("user_metadata").is_none());

    let detail = wait_settled(&client, &emu, id).await;
    assert_eq!(detail["status"], "ready");
    assert_eq!(detail["size"], 10_000);
    assert!(detail.get("error").is_none());

    let stats = emu.stats();
    assert_eq!(stats.uploads_by_sha256.len(), 1);
    assert_eq!(stats.uploads_by_sha256.get(&sha256_hex(&bytes)), Some(&1));
    assert_eq!((stats.create_requests, stats.assets_created), (1, 1));
    let views = emu.assets();
    assert_eq!(views.len(), 1);
    assert_eq!(
        views[0].sha256.as_deref(),
        Some(sha256_hex(&bytes).as_str())
    );
}

#[tokio::test]
async fn file_part_may_come_before_method() {
    let emu = start().await;
    let client = client();
    let form = Form::new()
        .part("file", Part::bytes(mp4_bytes(500)).file_name("first.mp4"))
        .text("method", "direct");
    let response = post_form(&client, &emu, form).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let asset: Value = response.json().await.unwrap();
    // No filename field: the file part's own name is used.
    assert_eq!(asset["filename"], "first.mp4");
}

#[tokio::test]
async fn wrong_key_is_401() {
    let emu = start().await;
    let response = client()
        .get(format!("{}/assets", emu.base_url()))
        .header("x-api-key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "api_key_invalid");
    assert_eq!(body["message"], "The API key you provided is not valid.");
}

#[tokio::test]
async fn form_parameter_errors_are_400() {
    let emu = start().await;
    let client = client();
    let cases = [
        (
            Form::new().part("file", Part::bytes(mp4_bytes(100))),
            "parameter_not_provided",
        ),
        (
            Form::new().text("method", "direct"),
            "parameter_not_provided",
        ),
        (Form::new().text("method", "url"), "parameter_not_provided"),
        (
            Form::new().text("method", "carrier-pigeon"),
            "parameter_invalid",
        ),
        (
            Form::new()
                .text("method", "url")
                .text("url", "ftp://example.com/a.mp4"),
            "parameter_invalid",
        ),
        (
            Form::new()
                .text("method", "direct")
                .text("enable_hls", "maybe")
                .part("file", Part::bytes(mp4_bytes(100))),
            "parameter_invalid",
        ),
    ];
    for (form, code) in cases {
        let response = post_form(&client, &emu, form).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error_code(response).await, code);
    }
    assert!(emu.assets().is_empty());
    assert_eq!(emu.stats().create_requests, 6);
}

#[tokio::test]
async fn text_named_mp4_is_created_then_fails() {
    let emu = start().await;
    let client = client();
    let text = b"this is not a video, just some text\n".repeat(20);
    let asset = upload_ok(&client, &emu, text, "x.mp4").await;
    assert_eq!(asset["file_type"], "application/octet-stream");

    let detail = wait_settled(&client, &emu, asset["_id"].as_str().unwrap()).await;
    assert_eq!(detail["status"], "failed");
    assert!(!detail["error"]["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn over_limit_upload_gets_a_400_response() {
    let emu = start_with(|c| {
        c.max_direct_size = 1000;
        c.max_image_size = 2000;
    })
    .await;
    let client = client();
    let response = post_form(&client, &emu, direct_form(mp4_bytes(1_000_000), "big.mp4"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "parameter_invalid");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("1000000 bytes"), "{message}");
    assert!(message.contains("video/audio"), "{message}");

    // Images have their own limit: 1500 bytes of PNG fit, 3000 do not.
    upload_ok(&client, &emu, png_bytes(1500), "a.png").await;
    let response = post_form(&client, &emu, direct_form(png_bytes(3000), "b.png"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("images"));
    assert_eq!(emu.assets().len(), 1);
}

#[tokio::test]
async fn list_filters_and_pages_newest_first() {
    let emu = start().await;
    let client = client();
    for i in 0..5 {
        upload_ok(
            &client,
            &emu,
            mp4_bytes(100 + i),
            &format!("Holiday-{i}.mp4"),
        )
        .await;
    }
    upload_ok(&client, &emu, mp4_bytes(100), "other.mp4").await;

    let mut names = Vec::new();
    for page in 1..=4 {
        let response = get(
            &client,
            &emu,
            &format!("/assets?filename=HOLIDAY&page_limit=2&page={page}"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        let info = &body["page_info"];
        assert_eq!(info["total_results"], 5);
        assert_eq!(info["total_page"], 3);
        assert_eq!(info["limit_per_page"], 2);
        assert_eq!(info["page"], page);
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), [2, 2, 1, 0][page - 1]);
        names.extend(
            data.iter()
                .map(|a| a["filename"].as_str().unwrap().to_owned()),
        );
    }
    let expected: Vec<String> = (0..5).rev().map(|i| format!("Holiday-{i}.mp4")).collect();
    assert_eq!(names, expected);

    let response = get(&client, &emu, "/assets?page_limit=51").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "parameter_invalid");
}

#[tokio::test]
async fn list_by_asset_ids() {
    let emu = start().await;
    let client = client();
    let a = upload_ok(&client, &emu, mp4_bytes(100), "a.mp4").await;
    upload_ok(&client, &emu, mp4_bytes(100), "b.mp4").await;
    let c = upload_ok(&client, &emu, mp4_bytes(100), "c.mp4").await;
    let path = format!(
        "/assets?asset_ids%5B%5D={}&asset_ids[]={}",
        a["_id"].as_str().unwrap(),
        c["_id"].as_str().unwrap()
    );
    let body: Value = get(&client, &emu, &path).await.json().await.unwrap();
    let names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c.mp4", "a.mp4"]);
    // Each id matches the same sha256: the counter holds all three uploads.
    assert_eq!(
        emu.stats().uploads_by_sha256[&sha256_hex(&mp4_bytes(100))],
        3
    );
}

#[tokio::test]
async fn user_metadata_round_trips_and_is_validated() {
    let emu = start().await;
    let client = client();
    let meta = json!({"sha256": "abc", "n": 3, "ratio": 0.5, "ok": true});
    let form = direct_form(mp4_bytes(200), "m.mp4").text("user_metadata", meta.to_string());
    let response = post_form(&client, &emu, form).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let asset: Value = response.json().await.unwrap();
    assert_eq!(asset["user_metadata"], meta);
    let detail: Value = get(
        &client,
        &emu,
        &format!("/assets/{}", asset["_id"].as_str().unwrap()),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(detail["user_metadata"], meta);
    assert_eq!(emu.assets()[0].user_metadata, Some(meta));

    for bad in [
        "not json",
        "[1,2]",
        r#"{"nested":{"a":1}}"#,
        r#"{"n":null}"#,
    ] {
        let form = direct_form(mp4_bytes(200), "m.mp4").text("user_metadata", bad);
        let response = post_form(&client, &emu, form).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(response).await, "parameter_invalid");
    }
    assert_eq!(emu.assets().len(), 1);
}

#[tokio::test]
async fn url_upload_takes_name_from_url() {
    let emu = start().await;
    let client = client();
    let form = Form::new()
        .text("method", "url")
        .text("url", "https://cdn.example.com/media/talk.mp4?sig=1");
    let response = post_form(&client, &emu, form).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let asset: Value = response.json().await.unwrap();
    assert_eq!(asset["method"], "url");
    assert_eq!(asset["filename"], "talk.mp4");
    let detail = wait_settled(&client, &emu, asset["_id"].as_str().unwrap()).await;
    assert_eq!(detail["status"], "ready");
    let views = emu.assets();
    assert_eq!(
        views[0].url.as_deref(),
        Some("https://cdn.example.com/media/talk.mp4?sig=1")
    );
    assert!(emu.stats().uploads_by_sha256.is_empty());
}

#[tokio::test]
async fn delete_then_get_is_404() {
    let emu = start().await;
    let client = client();
    let asset = upload_ok(&client, &emu, mp4_bytes(100), "d.mp4").await;
    let url = format!(
        "{}/assets/{}",
        emu.base_url(),
        asset["_id"].as_str().unwrap()
    );
    let response = client
        .delete(&url)
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));

    let response = client
        .get(&url)
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "resource_not_exist");
    let response = client
        .delete(&url)
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(emu.assets().is_empty());
}

#[tokio::test]
async fn unknown_route_is_json_404() {
    let emu = start().await;
    let response = get(&client(), &emu, "/nothing/here").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "resource_not_exist");
}

#[tokio::test]
async fn rate_limit_fault_answers_429_with_headers() {
    let emu = start_with(|c| {
        c.faults = Faults {
            rate_limit: 1.0,
            retry_after_secs: 7,
            ..Faults::default()
        }
    })
    .await;
    let client = client();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for _ in 0..3 {
        let response = get(&client, &emu, "/assets").await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("retry-after"), "7");
        assert_eq!(header("x-ratelimit-remaining"), "0");
        let reset: u64 = header("x-ratelimit-reset").parse().unwrap();
        assert!((now + 7..=now + 9).contains(&reset), "{reset} vs {now}");
        assert_eq!(error_code(response).await, "too_many_requests");
    }
    let response = post_form(&client, &emu, direct_form(mp4_bytes(100), "r.mp4"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let stats = emu.stats();
    assert_eq!((stats.injected_rate_limits, stats.requests), (4, 4));
    assert_eq!((stats.create_requests, stats.assets_created), (1, 0));
}

/// Early answers (before the body is read) still reach a client that is sending a large
/// body, rather than a broken pipe.
#[tokio::test]
async fn early_answers_reach_a_client_sending_a_large_body() {
    let emu = start_with(|c| c.faults.rate_limit = 1.0).await;
    let client = client();
    let big = mp4_bytes(16 * 1024 * 1024);
    let response = post_form(&client, &emu, direct_form(big.clone(), "big.mp4")).await;
    assert_eq!(response.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);

    emu.set_faults(Faults {
        error_before_body: 1.0,
        ..Faults::default()
    });
    let response = post_form(&client, &emu, direct_form(big.clone(), "big.mp4")).await;
    assert_eq!(
        response.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );

    emu.set_faults(Faults::default());
    let response = client
        .post(format!("{}/assets", emu.base_url()))
        .header("x-api-key", "wrong")
        .multipart(direct_form(big, "big.mp4"))
        .send()
        .await;
    assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn error_faults_answer_500() {
    let emu = start_with(|c| c.faults.error_before_body = 1.0).await;
    let client = client();
    let response = post_form(&client, &emu, direct_form(mp4_bytes(100), "e.mp4"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(emu.stats().injected_errors_before_body, 1);

    emu.set_faults(Faults {
        error_after_body: 1.0,
        ..Faults::default()
    });
    assert_eq!(emu.faults().error_after_body, 1.0);
    let bytes = mp4_bytes(300_000);
    let response = post_form(&client, &emu, direct_form(bytes, "e.mp4"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(response).await, "internal_error");
    let stats = emu.stats();
    assert_eq!(stats.injected_errors_after_body, 1);
    assert_eq!((stats.create_requests, stats.assets_created), (2, 0));
    assert!(stats.uploads_by_sha256.is_empty());
    assert!(emu.assets().is_empty());

    emu.set_faults(Faults::default());
    upload_ok(&client, &emu, mp4_bytes(100), "e.mp4").await;
}

#[tokio::test]
async fn reset_mid_body_breaks_the_connection() {
    let emu = start_with(|c| c.faults.reset_mid_body = 1.0).await;
    let client = client();
    let big = mp4_bytes(4 * 1024 * 1024);
    let result = post_form(&client, &emu, direct_form(big.clone(), "big.mp4")).await;
    assert!(
        result.is_err(),
        "expected a connection error, got {result:?}"
    );
    // Requests without a body are not reset.
    assert_eq!(get(&client, &emu, "/assets").await.status(), StatusCode::OK);
    let stats = emu.stats();
    assert_eq!(stats.injected_resets, 1);
    assert_eq!(stats.assets_created, 0);

    emu.set_faults(Faults::default());
    upload_ok(&client, &emu, big, "big.mp4").await;
    assert_eq!(emu.stats().assets_created, 1);
}

/// Seen from a raw socket, the reset is an RST (ECONNRESET), not a clean close.
#[tokio::test]
async fn reset_is_a_tcp_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let emu = start_with(|c| c.faults.reset_mid_body = 1.0).await;
    let mut stream = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let body = vec![b'x'; 1_000_000];
    let head = format!(
        "POST /v1.3/assets HTTP/1.1\r\nhost: emu\r\nx-api-key: {KEY}\r\n\
         content-type: multipart/form-data; boundary=b\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let written = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await
    };
    let error = written
        .await
        .expect_err("expected the connection to be reset");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset,
        "{error:?}"
    );
}

#[tokio::test]
async fn seeded_faults_repeat() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let emu = start_with(|c| {
            c.faults = Faults {
                rate_limit: 0.5,
                seed: Some(seed),
                ..Faults::default()
            }
        })
        .await;
        let client = client();
        let mut out = Vec::new();
        for _ in 0..20 {
            out.push(get(&client, &emu, "/assets").await.status().as_u16());
        }
        out
    }
    let first = statuses(42).await;
    assert_eq!(first, statuses(42).await);
    assert!(first.contains(&429) && first.contains(&200), "{first:?}");
}

#[tokio::test]
async fn admin_routes_need_no_key_and_change_faults() {
    let emu = start().await;
    let client = client();
    let admin = format!("http://{}/_emulator", emu.addr());
    upload_ok(&client, &emu, mp4_bytes(100), "adm.mp4").await;

    let stats: Value = client
        .get(format!("{admin}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["assets_created"], 1);
    let assets: Value = client
        .get(format!("{admin}/assets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(assets[0]["filename"], "adm.mp4");

    let response = client
        .put(format!("{admin}/faults"))
        .json(&json!({"rate_limit": 1.0, "retry_after_secs": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(emu.faults().rate_limit, 1.0);
    assert_eq!(emu.faults().retry_after_secs, 3);
    let faults: Value = client
        .get(format!("{admin}/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["rate_limit"], 1.0);
    let response = get(&client, &emu, "/assets").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    let response = client
        .put(format!("{admin}/faults"))
        .json(&json!({"rate_limit": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Admin requests are not API requests.
    assert_eq!(emu.stats().requests, 2);
}

#[tokio::test]
async fn dropping_the_emulator_stops_it() {
    let emu = start().await;
    let addr = emu.addr();
    assert_eq!(
        get(&client(), &emu, "/assets").await.status(),
        StatusCode::OK
    );
    drop(emu);
    // The aborted accept task drops the listener when the runtime next gets to it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "emulator still accepting after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
