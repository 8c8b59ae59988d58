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
        listen: "127.0.0.1:0".parse().expect("emulator test setup"),
        api_key: KEY.to_owned(),
        ready_delay: Duration::from_millis(50),
        ..EmulatorConfig::default()
    };
    edit(&mut config);
    Emulator::start(config).await.expect("emulator test setup")
}

async fn start() -> Emulator {
    start_with(|_| {}).await
}

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder().build().expect("emulator test setup")
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
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("emulator test setup")
}

async fn get(client: &Client, emu: &Emulator, path: &str) -> Response {
    client
        .get(format!("{}{path}", emu.base_url()))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("emulator test setup")
}

/// The `code` of an API error (JSON) or the `Code` of a store error (S3's XML).
async fn error_code(response: Response) -> String {
    let body = response.bytes().await.expect("emulator test setup");
    match crate::api::types::parse_storage_error(&body) {
        (Some(code), _) => code,
        (None, _) => String::new(),
    }
}

/// Polls GET /assets/{id} until its status is no longer `processing`, with a deadline.
async fn wait_settled(client: &Client, emu: &Emulator, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = get(client, emu, &format!("/assets/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let asset: Value = response.json().await.expect("emulator test setup");
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

    let id = asset["_id"].as_str().expect("emulator test setup");
    assert_eq!(id.len(), 24);
    assert!(id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    assert_eq!(asset["status"], "processing");
    assert_eq!(asset["method"], "direct");
    assert_eq!(asset["filename"], "clip.mp4");
    assert_eq!(asset["file_type"], "video/mp4");
    assert!(
        asset["created_at"]
            .as_str()
            .expect("emulator test setup")
            .ends_with('Z')
    );
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
    let response = post_form(&client, &emu, form)
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::CREATED);
    let asset: Value = response.json().await.expect("emulator test setup");
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
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.expect("emulator test setup");
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
        let response = post_form(&client, &emu, form)
            .await
            .expect("emulator test setup");
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

    let detail = wait_settled(
        &client,
        &emu,
        asset["_id"].as_str().expect("emulator test setup"),
    )
    .await;
    assert_eq!(detail["status"], "failed");
    assert!(
        !detail["error"]["message"]
            .as_str()
            .expect("emulator test setup")
            .is_empty()
    );
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
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("emulator test setup");
    assert_eq!(body["code"], "parameter_invalid");
    let message = body["message"].as_str().expect("emulator test setup");
    assert!(message.contains("1000000 bytes"), "{message}");
    assert!(message.contains("video/audio"), "{message}");

    // Images have their own limit: 1500 bytes of PNG fit, 3000 do not.
    upload_ok(&client, &emu, png_bytes(1500), "a.png").await;
    let response = post_form(&client, &emu, direct_form(png_bytes(3000), "b.png"))
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("emulator test setup");
    assert!(
        body["message"]
            .as_str()
            .expect("emulator test setup")
            .contains("images")
    );
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
        let body: Value = response.json().await.expect("emulator test setup");
        let info = &body["page_info"];
        assert_eq!(info["total_results"], 5);
        assert_eq!(info["total_page"], 3);
        assert_eq!(info["limit_per_page"], 2);
        assert_eq!(info["page"], page);
        let data = body["data"].as_array().expect("emulator test setup");
        assert_eq!(data.len(), [2, 2, 1, 0][page - 1]);
        names.extend(data.iter().map(|a| {
            a["filename"]
                .as_str()
                .expect("emulator test setup")
                .to_owned()
        }));
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
        a["_id"].as_str().expect("emulator test setup"),
        c["_id"].as_str().expect("emulator test setup")
    );
    let body: Value = get(&client, &emu, &path)
        .await
        .json()
        .await
        .expect("emulator test setup");
    let names: Vec<&str> = body["data"]
        .as_array()
        .expect("emulator test setup")
        .iter()
        .map(|a| a["filename"].as_str().expect("emulator test setup"))
        .collect();
    assert_eq!(names, ["c.mp4", "a.mp4"]);
    // Each id matches the same sha256: the counter holds all three uploads.
    assert_eq!(
        emu.stats().uploads_by_sha256[&sha256_hex(&mp4_bytes(100))],
        3
    );
    // The official Python SDK repeats the key without brackets.
    let sdk_form = format!(
        "/assets?page_limit=50&asset_ids={}&asset_ids={}",
        a["_id"].as_str().expect("emulator test setup"),
        c["_id"].as_str().expect("emulator test setup")
    );
    let body: Value = get(&client, &emu, &sdk_form)
        .await
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body["page_info"]["total_results"], 2);
    let stats = emu.stats();
    assert_eq!((stats.list_requests, stats.asset_get_requests), (2, 0));
    get(
        &client,
        &emu,
        &format!("/assets/{}", a["_id"].as_str().unwrap()),
    )
    .await;
    let stats = emu.stats();
    assert_eq!((stats.list_requests, stats.asset_get_requests), (2, 1));
    assert_eq!(stats.asset_gets_by_id[a["_id"].as_str().unwrap()], 1);
}

#[tokio::test]
async fn a_list_by_ids_leaves_an_asset_out_and_a_listed_ready_asset_vanishes() {
    let emu = start_with(|c| c.ready_delay = Duration::from_millis(1)).await;
    let client = client();
    let a = upload_ok(&client, &emu, mp4_bytes(100), "a.mp4").await;
    let b = upload_ok(&client, &emu, mp4_bytes(200), "b.mp4").await;
    let (a, b) = (a["_id"].as_str().unwrap(), b["_id"].as_str().unwrap());
    emu.set_faults(Faults {
        list_omits_asset: 1.0,
        ..Faults::default()
    });
    let by_ids = format!("/assets?asset_ids={a}&asset_ids={b}");
    let body: Value = get(&client, &emu, &by_ids).await.json().await.unwrap();
    // Newest first: b is left out, a is there.
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["data"][0]["_id"], a);
    assert_eq!(body["page_info"]["total_results"], 1);
    assert_eq!(emu.stats().omitted_from_lists[b], 1);
    // A list that is not by ids is told no such lie.
    let all: Value = get(&client, &emu, "/assets").await.json().await.unwrap();
    assert_eq!(all["data"].as_array().map(Vec::len), Some(2), "{all}");
    // The asset left out is there when asked about alone.
    assert_eq!(
        get(&client, &emu, &format!("/assets/{b}")).await.status(),
        StatusCode::OK
    );

    // Reported ready in a list is reported ready: a vanishing asset is gone after it.
    emu.set_faults(Faults {
        vanish_after_ready: 1.0,
        ..Faults::default()
    });
    let c = upload_ok(&client, &emu, mp4_bytes(300), "c.mp4").await;
    let c = c["_id"].as_str().unwrap().to_owned();
    emu.set_faults(Faults::default());
    assert_eq!(wait_settled_in_list(&client, &emu, &c).await, "ready");
    assert_eq!(
        get(&client, &emu, &format!("/assets/{c}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(emu.stats().vanished_assets, 1);
}

/// Lists `id` alone until it is no longer `processing`; its status then.
async fn wait_settled_in_list(client: &Client, emu: &Emulator, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = get(client, emu, &format!("/assets?asset_ids[]={id}"))
            .await
            .json()
            .await
            .unwrap();
        let status = body["data"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status != "processing" {
            return status;
        }
        assert!(Instant::now() < deadline, "asset {id} still processing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn user_metadata_round_trips_and_is_validated() {
    let emu = start().await;
    let client = client();
    let meta = json!({"sha256": "abc", "n": 3, "ratio": 0.5, "ok": true});
    let form = direct_form(mp4_bytes(200), "m.mp4").text("user_metadata", meta.to_string());
    let response = post_form(&client, &emu, form)
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::CREATED);
    let asset: Value = response.json().await.expect("emulator test setup");
    assert_eq!(asset["user_metadata"], meta);
    let detail: Value = get(
        &client,
        &emu,
        &format!(
            "/assets/{}",
            asset["_id"].as_str().expect("emulator test setup")
        ),
    )
    .await
    .json()
    .await
    .expect("emulator test setup");
    assert_eq!(detail["user_metadata"], meta);
    assert_eq!(emu.assets()[0].user_metadata, Some(meta));

    for bad in [
        "not json",
        "[1,2]",
        r#"{"nested":{"a":1}}"#,
        r#"{"n":null}"#,
    ] {
        let form = direct_form(mp4_bytes(200), "m.mp4").text("user_metadata", bad);
        let response = post_form(&client, &emu, form)
            .await
            .expect("emulator test setup");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(response).await, "parameter_invalid");
    }
    assert_eq!(emu.assets().len(), 1);
}

/// `method` on `/assets/{id}/user-metadata` with `body` (none for DELETE).
async fn change_metadata(
    client: &Client,
    emu: &Emulator,
    method: reqwest::Method,
    id: &str,
    body: Option<Value>,
) -> Response {
    let mut request = client
        .request(
            method,
            format!("{}/assets/{id}/user-metadata", emu.base_url()),
        )
        .header("x-api-key", KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("emulator test setup")
}

#[tokio::test]
async fn user_metadata_is_merged_replaced_and_cleared_after_upload() {
    use reqwest::Method;
    let emu = start().await;
    let client = client();
    let meta = json!({"keep": "k", "drop": 1, "change": true});
    let form = direct_form(mp4_bytes(200), "m.mp4").text("user_metadata", meta.to_string());
    let response = post_form(&client, &emu, form).await.expect("upload");
    let asset: Value = response.json().await.expect("asset");
    let id = asset["_id"].as_str().expect("id").to_owned();
    let stored = |emu: &Emulator| emu.assets()[0].user_metadata.clone();

    // PATCH merges: a new key is added, a null deletes, "" and [] change nothing.
    let patch = json!({"user_metadata": {
        "drop": null, "change": false, "added": "a", "tags": ["x", "y"], "keep": "", "empty": []
    }});
    let r = change_metadata(&client, &emu, Method::PATCH, &id, Some(patch)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.text().await.expect("body"), "");
    let merged = json!({"keep": "k", "change": false, "added": "a", "tags": ["x", "y"]});
    assert_eq!(stored(&emu), Some(merged.clone()));
    let detail: Value = get(&client, &emu, &format!("/assets/{id}"))
        .await
        .json()
        .await
        .expect("detail");
    assert_eq!(detail["user_metadata"], merged);

    // PUT replaces the whole object.
    let put = json!({"user_metadata": {"only": 2}});
    let r = change_metadata(&client, &emu, Method::PUT, &id, Some(put)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(stored(&emu), Some(json!({"only": 2})));

    // DELETE clears it: the field is then left out, as for an asset that never had one.
    let r = change_metadata(&client, &emu, Method::DELETE, &id, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(stored(&emu), None);
    let detail: Value = get(&client, &emu, &format!("/assets/{id}"))
        .await
        .json()
        .await
        .expect("detail");
    assert!(detail.get("user_metadata").is_none(), "{detail}");
    assert_eq!(emu.stats().user_metadata_updates, 3);

    // An unknown asset is 404; bodies that are not {"user_metadata": {...}} are 400.
    let r = change_metadata(
        &client,
        &emu,
        Method::PATCH,
        "000000000000000000000000",
        Some(json!({"user_metadata": {"a": "b"}})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "resource_not_exist");
    for (bad, code) in [
        (json!({"a": "b"}), "parameter_not_provided"),
        (json!({"user_metadata": "text"}), "parameter_invalid"),
        (
            json!({"user_metadata": {"n": {"nested": 1}}}),
            "parameter_invalid",
        ),
        (json!({"user_metadata": {"n": [1, 2]}}), "parameter_invalid"),
        (json!([1]), "parameter_invalid"),
    ] {
        let r = change_metadata(&client, &emu, Method::PATCH, &id, Some(bad.clone())).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_code(r).await, code, "{bad}");
    }
    assert_eq!(emu.stats().user_metadata_updates, 3);

    // The fault answers every change with its status and leaves the object alone.
    for (status, code) in [
        (404, "resource_not_exist"),
        (405, "method_not_allowed"),
        (503, "internal_error"),
    ] {
        emu.set_faults(Faults {
            user_metadata_status: status,
            ..Faults::default()
        });
        let patch = json!({"user_metadata": {"a": "b"}});
        let r = change_metadata(&client, &emu, Method::PATCH, &id, Some(patch)).await;
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(error_code(r).await, code);
    }
    assert_eq!(stored(&emu), None);
    assert_eq!(emu.stats().user_metadata_updates, 3);
}

#[tokio::test]
async fn url_upload_takes_name_from_url() {
    let emu = start().await;
    let client = client();
    let form = Form::new()
        .text("method", "url")
        .text("url", "https://cdn.example.com/media/talk.mp4?sig=1");
    let response = post_form(&client, &emu, form)
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::CREATED);
    let asset: Value = response.json().await.expect("emulator test setup");
    assert_eq!(asset["method"], "url");
    assert_eq!(asset["filename"], "talk.mp4");
    let detail = wait_settled(
        &client,
        &emu,
        asset["_id"].as_str().expect("emulator test setup"),
    )
    .await;
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
        asset["_id"].as_str().expect("emulator test setup")
    );
    let response = client
        .delete(&url)
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.expect("emulator test setup"),
        json!({})
    );

    let response = client
        .get(&url)
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "resource_not_exist");
    let response = client
        .delete(&url)
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("emulator test setup");
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
        .expect("emulator test setup")
        .as_secs();
    for _ in 0..3 {
        let response = get(&client, &emu, "/assets").await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let header = |name: &str| {
            response.headers()[name]
                .to_str()
                .expect("emulator test setup")
                .to_owned()
        };
        assert_eq!(header("retry-after"), "7");
        assert_eq!(header("x-ratelimit-remaining"), "0");
        let reset: u64 = header("x-ratelimit-reset")
            .parse()
            .expect("emulator test setup");
        assert!((now + 7..=now + 9).contains(&reset), "{reset} vs {now}");
        assert_eq!(error_code(response).await, "too_many_requests");
    }
    let response = post_form(&client, &emu, direct_form(mp4_bytes(100), "r.mp4"))
        .await
        .expect("emulator test setup");
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
    assert_eq!(
        response.expect("emulator test setup").status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    emu.set_faults(Faults {
        error_before_body: 1.0,
        ..Faults::default()
    });
    let response = post_form(&client, &emu, direct_form(big.clone(), "big.mp4")).await;
    assert_eq!(
        response.expect("emulator test setup").status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );

    emu.set_faults(Faults::default());
    let response = client
        .post(format!("{}/assets", emu.base_url()))
        .header("x-api-key", "wrong")
        .multipart(direct_form(big, "big.mp4"))
        .send()
        .await;
    assert_eq!(
        response.expect("emulator test setup").status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn error_faults_answer_500() {
    let emu = start_with(|c| c.faults.error_before_body = 1.0).await;
    let client = client();
    let response = post_form(&client, &emu, direct_form(mp4_bytes(100), "e.mp4"))
        .await
        .expect("emulator test setup");
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
        .expect("emulator test setup");
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
    let mut stream = tokio::net::TcpStream::connect(emu.addr())
        .await
        .expect("emulator test setup");
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
        .expect("emulator test setup")
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(stats["assets_created"], 1);
    let assets: Value = client
        .get(format!("{admin}/assets"))
        .send()
        .await
        .expect("emulator test setup")
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(assets[0]["filename"], "adm.mp4");

    let response = client
        .put(format!("{admin}/faults"))
        .json(&json!({"rate_limit": 1.0, "retry_after_secs": 3}))
        .send()
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(emu.faults().rate_limit, 1.0);
    assert_eq!(emu.faults().retry_after_secs, 3);
    let faults: Value = client
        .get(format!("{admin}/faults"))
        .send()
        .await
        .expect("emulator test setup")
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(faults["rate_limit"], 1.0);
    let response = get(&client, &emu, "/assets").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    let response = client
        .put(format!("{admin}/faults"))
        .json(&json!({"rate_limit": 2.0}))
        .send()
        .await
        .expect("emulator test setup");
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

// ---- Multipart uploads ------------------------------------------------------------

async fn post_json(client: &Client, emu: &Emulator, path: &str, body: Value) -> Response {
    client
        .post(format!("{}{path}", emu.base_url()))
        .header("x-api-key", KEY)
        .json(&body)
        .send()
        .await
        .expect("emulator test setup")
}

/// Creates a multipart session and expects 201; returns its JSON.
async fn create_session(client: &Client, emu: &Emulator, filename: &str, size: usize) -> Value {
    let body = json!({"filename": filename, "type": "video", "total_size": size});
    let response = post_json(client, emu, "/assets/multipart-uploads", body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("emulator test setup")
}

/// `chunk_index -> url` of an `upload_urls` array.
fn urls_of(body: &Value) -> Vec<(u64, String)> {
    body["upload_urls"]
        .as_array()
        .expect("emulator test setup")
        .iter()
        .map(|u| {
            let index = u["chunk_index"].as_u64().expect("emulator test setup");
            (
                index,
                u["url"].as_str().expect("emulator test setup").to_owned(),
            )
        })
        .collect()
}

/// Fresh URLs for `count` chunks from `start`; expects 200.
async fn more_urls(
    client: &Client,
    emu: &Emulator,
    upload_id: &str,
    start: u64,
    count: u64,
) -> Vec<(u64, String)> {
    let path = format!("/assets/multipart-uploads/{upload_id}/presigned-urls");
    let response = post_json(client, emu, &path, json!({"start": start, "count": count})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("emulator test setup");
    assert_eq!(body["upload_id"], upload_id);
    assert_eq!(body["start_index"], start);
    assert!(
        body["generated_at"]
            .as_str()
            .expect("emulator test setup")
            .ends_with('Z')
    );
    assert!(
        body["expires_at"]
            .as_str()
            .expect("emulator test setup")
            .ends_with('Z')
    );
    let urls = urls_of(&body);
    assert_eq!(body["count"], urls.len());
    urls
}

/// PUTs a chunk as a client would: a byte body, so with Content-Length, no API key.
async fn put(client: &Client, url: &str, bytes: Vec<u8>) -> reqwest::Result<Response> {
    client
        .put(url)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
}

/// PUTs a chunk and expects 200; returns its ETag as sent (quoted).
async fn put_ok(client: &Client, url: &str, bytes: Vec<u8>) -> String {
    let response = put(client, url, bytes).await.expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::OK, "PUT {url}");
    let etag = response.headers()["etag"]
        .to_str()
        .expect("emulator test setup")
        .to_owned();
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'));
    etag
}

async fn report(client: &Client, emu: &Emulator, upload_id: &str, chunks: Value) -> Response {
    let path = format!("/assets/multipart-uploads/{upload_id}");
    post_json(client, emu, &path, json!({ "completed_chunks": chunks })).await
}

fn proof(index: u64, etag: &str, size: usize) -> Value {
    json!({"chunk_index": index, "proof": etag, "proof_type": "etag", "chunk_size": size})
}

fn random_mp4(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut bytes);
    let header = mp4_bytes(24);
    bytes[..header.len()].copy_from_slice(&header);
    bytes
}

/// The whole flow, with a file spanning more chunks than the initial URL set.
/// 512 KiB chunks make ~5.5 MiB twelve chunks, two beyond the ten initial URLs.
#[tokio::test]
async fn multipart_upload_assembles_hashes_and_becomes_ready() {
    const CHUNK: usize = 512 * 1024;
    let emu = start_with(|c| c.multipart_chunk_size = CHUNK as u64).await;
    let client = client();
    let source = random_mp4(11 * CHUNK + 1234, 7);
    let created = create_session(&client, &emu, "big.mp4", source.len()).await;
    let upload_id = created["upload_id"]
        .as_str()
        .expect("emulator test setup")
        .to_owned();
    let asset_id = created["asset_id"]
        .as_str()
        .expect("emulator test setup")
        .to_owned();
    assert_eq!(created["chunk_size"], CHUNK);
    assert_eq!(created["total_chunks"], 12);
    assert_eq!(
        created["upload_headers"]["Content-Type"],
        "application/octet-stream"
    );
    assert!(
        created["expires_at"]
            .as_str()
            .expect("emulator test setup")
            .ends_with('Z')
    );
    let mut urls = urls_of(&created);
    assert_eq!(
        urls.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(created["upload_urls"][0]["expires_at"].is_string());
    assert!(urls[0].1.contains("/_s3/") && urls[0].1.contains("sig="));

    // Not ready (nor listed as such) before the upload completes.
    let detail: Value = get(&client, &emu, &format!("/assets/{asset_id}"))
        .await
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(detail["status"], "processing");
    assert_eq!(detail["method"], "multipart");
    assert_eq!(emu.assets()[0].status, "uploading");

    // Past the initial set: the count is clipped to the last chunk.
    urls.extend(more_urls(&client, &emu, &upload_id, 11, 50).await);
    assert_eq!(urls.len(), 12);

    let mut etags = Vec::new();
    for (index, url) in &urls {
        let start = (*index as usize - 1) * CHUNK;
        let end = (start + CHUNK).min(source.len());
        etags.push(put_ok(&client, url, source[start..end].to_vec()).await);
    }
    let size_of = |index: u64| if index == 12 { 1234 } else { CHUNK };

    // First batch: 1-6, proofs with and without quotes.
    let batch: Vec<Value> = (1..=6u64)
        .map(|i| {
            let etag = &etags[i as usize - 1];
            let etag = if i % 2 == 0 {
                etag.trim_matches('"')
            } else {
                etag
            };
            proof(i, etag, size_of(i))
        })
        .collect();
    let response = report(&client, &emu, &upload_id, json!(batch)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("emulator test setup");
    assert_eq!(body["asset_id"], asset_id.as_str());
    assert_eq!(
        (
            &body["processed_chunks"],
            &body["duplicate_chunks"],
            &body["total_completed"]
        ),
        (&json!(6), &json!(0), &json!(6))
    );
    assert!(body.get("url").is_none());

    // The status shows the reported chunks; the list shows the session.
    let path = format!("/assets/multipart-uploads/{upload_id}?page_limit=50");
    let status: Value = get(&client, &emu, &path)
        .await
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(status["status"], "active");
    assert_eq!(status["chunks_completed"], 6);
    assert_eq!(status["chunks_pending"], 6);
    assert_eq!(status["chunks_failed"], 0);
    assert_eq!(status["total_size"], source.len());
    assert_eq!(status["uploaded_size"], 6 * CHUNK);
    assert_eq!(status["page_info"]["total_results"], 12);
    let chunks = status["uploaded_chunks"]
        .as_array()
        .expect("emulator test setup");
    assert_eq!(chunks.len(), 12);
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["index"], i + 1);
        let expected = if i < 6 { "completed" } else { "pending" };
        assert_eq!(chunk["status"], expected);
        assert!(chunk["uploaded_at"].is_string());
    }
    let list: Value = get(&client, &emu, "/assets/multipart-uploads")
        .await
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(list["page_info"]["total_results"], 1);
    let entry = &list["data"][0];
    assert_eq!(entry["upload_id"], upload_id.as_str());
    assert_eq!(entry["status"], "active");
    assert_eq!(entry["total_chunks"], 12);
    assert_eq!(entry["chunk_size"], CHUNK);

    // Second batch: 6 again (a duplicate) and 7-12; the last report returns `url`.
    let batch: Vec<Value> = (6..=12u64)
        .map(|i| proof(i, &etags[i as usize - 1], size_of(i)))
        .collect();
    let response = report(&client, &emu, &upload_id, json!(batch)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("emulator test setup");
    assert_eq!(
        (
            &body["processed_chunks"],
            &body["duplicate_chunks"],
            &body["total_completed"]
        ),
        (&json!(6), &json!(1), &json!(12))
    );
    assert!(
        body["url"]
            .as_str()
            .expect("emulator test setup")
            .contains(&asset_id)
    );

    let stats = emu.stats();
    assert_eq!(stats.uploads_by_sha256.len(), 1);
    assert_eq!(stats.uploads_by_sha256.get(&sha256_hex(&source)), Some(&1));
    assert_eq!(stats.assets_created, 1);
    assert_eq!(stats.create_requests, 0);
    assert_eq!(
        (stats.multipart_sessions, stats.multipart_completed),
        (1, 1)
    );
    assert_eq!(stats.chunk_puts, 12);
    assert_eq!(stats.chunk_puts_by_upload[&upload_id], 12);
    // Chunk PUTs are not API requests: create, URLs, 2 reports, GET x3 (asset, status, list).
    assert_eq!(stats.requests, 7);

    let detail = wait_settled(&client, &emu, &asset_id).await;
    assert_eq!(detail["status"], "ready");
    assert_eq!(detail["size"], source.len());
    assert_eq!(detail["file_type"], "video/mp4");
    assert_eq!(detail["filename"], "big.mp4");
    let view = &emu.assets()[0];
    assert_eq!(view.sha256.as_deref(), Some(sha256_hex(&source).as_str()));

    // Completed: chunk files gone, status completed, no longer listed, reports idempotent.
    assert!(!emu.shared.chunk_root.session_dir(&upload_id).exists());
    let status: Value = get(
        &client,
        &emu,
        &format!("/assets/multipart-uploads/{upload_id}"),
    )
    .await
    .json()
    .await
    .expect("emulator test setup");
    assert_eq!(status["status"], "completed");
    assert_eq!(
        status["uploaded_chunks"]
            .as_array()
            .expect("emulator test setup")
            .len(),
        10
    );
    let list: Value = get(&client, &emu, "/assets/multipart-uploads")
        .await
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(list["data"], json!([]));
    let response = report(
        &client,
        &emu,
        &upload_id,
        json!([proof(1, &etags[0], CHUNK)]),
    )
    .await;
    let body: Value = response.json().await.expect("emulator test setup");
    assert_eq!(body["duplicate_chunks"], 1);
    assert!(body["url"].is_string());
    assert_eq!(emu.stats().assets_created, 1);
}

#[tokio::test]
async fn multipart_create_validates_its_parameters() {
    let emu = start_with(|c| {
        c.max_multipart_size = 10_000;
        c.max_image_size = 1_000;
    })
    .await;
    let client = client();
    let cases = [
        (
            json!({"type": "video", "total_size": 10}),
            "parameter_not_provided",
        ),
        (
            json!({"filename": "a.mp4", "total_size": 10}),
            "parameter_not_provided",
        ),
        (
            json!({"filename": "a.mp4", "type": "video"}),
            "parameter_not_provided",
        ),
        (
            json!({"filename": "a.mp4", "type": "video", "total_size": 0}),
            "parameter_invalid",
        ),
        (
            json!({"filename": "a.mp4", "type": "video", "total_size": -5}),
            "parameter_invalid",
        ),
        (
            json!({"filename": "a.mp4", "type": "video", "total_size": 10_001}),
            "parameter_invalid",
        ),
        (
            json!({"filename": "a.png", "type": "image", "total_size": 1_001}),
            "parameter_invalid",
        ),
        (
            json!({"filename": "a.doc", "type": "document", "total_size": 10}),
            "parameter_invalid",
        ),
        (
            json!({"filename": "a.mp4", "type": "video", "total_size": 10, "user_metadata": "x"}),
            "parameter_invalid",
        ),
    ];
    for (body, code) in cases {
        let response = post_json(&client, &emu, "/assets/multipart-uploads", body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(response).await, code, "{body}");
    }
    let response = client
        .post(format!("{}/assets/multipart-uploads", emu.base_url()))
        .json(&json!({"filename": "a.mp4", "type": "video", "total_size": 10}))
        .send()
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(emu.assets().is_empty());
    assert_eq!(emu.stats().multipart_sessions, 0);

    // At the limit is fine; user_metadata round-trips onto the asset.
    let body = json!({
        "filename": "ok.mp4", "type": "video", "total_size": 10_000,
        "enable_hls": true, "user_metadata": {"sha256": "abc", "n": 1}
    });
    let response = post_json(&client, &emu, "/assets/multipart-uploads", body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("emulator test setup");
    // The default 5 MiB chunk covers it all.
    assert_eq!(created["total_chunks"], 1);
    assert_eq!(
        emu.assets()[0].user_metadata,
        Some(json!({"sha256": "abc", "n": 1}))
    );

    for path in [
        "/assets/multipart-uploads/nope",
        "/assets/multipart-uploads/nope/presigned-urls",
    ] {
        let response = post_json(
            &client,
            &emu,
            path,
            json!({"completed_chunks": [], "start": 1, "count": 1}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(response).await, "resource_not_exist");
    }
    let response = get(&client, &emu, "/assets/multipart-uploads/nope").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn chunk_puts_and_reports_are_checked() {
    const CHUNK: usize = 1024;
    let emu = start_with(|c| {
        c.multipart_chunk_size = CHUNK as u64;
        c.single_use_urls = true;
    })
    .await;
    let client = client();
    let source = random_mp4(2 * CHUNK + 512, 3);
    let created = create_session(&client, &emu, "c.mp4", source.len()).await;
    let upload_id = created["upload_id"]
        .as_str()
        .expect("emulator test setup")
        .to_owned();
    let urls = urls_of(&created);
    assert_eq!(urls.len(), 3);
    let chunk = |i: usize| source[(i - 1) * CHUNK..(i * CHUNK).min(source.len())].to_vec();

    // Wrong lengths: a short chunk, and a last chunk sent as a full one.
    let response = put(&client, &urls[0].1, vec![0; CHUNK - 1])
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = put(&client, &urls[2].1, vec![0; CHUNK])
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // No Content-Length (a chunked body): 411.
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(vec![0u8; CHUNK]) });
    let response = client
        .put(&urls[0].1)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::LENGTH_REQUIRED);

    // Bad signatures: altered, missing, or another chunk's.
    let altered = format!("{}0", urls[0].1);
    let unsigned = urls[0]
        .1
        .split('?')
        .next()
        .expect("emulator test setup")
        .to_owned();
    let swapped = urls[1].1.replace("/2?", "/1?");
    for url in [&altered, &unsigned, &swapped] {
        let response = put(&client, url, chunk(1))
            .await
            .expect("emulator test setup");
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{url}");
        assert_eq!(error_code(response).await, "AccessDenied");
    }

    // Single use: the refused attempts above did not spend the URL; a stored PUT does.
    let first_etag = put_ok(&client, &urls[0].1, vec![1; CHUNK]).await;
    let response = put(&client, &urls[0].1, chunk(1))
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // A fresh URL re-PUTs the chunk, which replaces it and gets the new ETag.
    let fresh = more_urls(&client, &emu, &upload_id, 1, 1).await;
    let etag1 = put_ok(&client, &fresh[0].1, chunk(1)).await;
    assert_ne!(etag1, first_etag);

    // Bad proofs: the replaced chunk's ETag, garbage, a chunk never PUT, out of range,
    // a wrong chunk_size. Each whole report is refused.
    for bad in [
        json!([proof(1, &first_etag, CHUNK)]),
        json!([proof(1, "\"0123\"", CHUNK)]),
        json!([proof(1, &etag1, CHUNK), proof(2, &etag1, CHUNK)]),
        json!([proof(4, &etag1, CHUNK)]),
        json!([proof(1, &etag1, CHUNK + 1)]),
        json!([{"chunk_index": 1, "proof": etag1, "proof_type": "md5"}]),
        json!([{"chunk_index": 1}]),
    ] {
        let response = report(&client, &emu, &upload_id, bad.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let status: Value = get(
        &client,
        &emu,
        &format!("/assets/multipart-uploads/{upload_id}"),
    )
    .await
    .json()
    .await
    .expect("emulator test setup");
    assert_eq!(status["chunks_completed"], 0);
    assert_eq!(status["uploaded_chunks"][0]["status"], "pending");
    assert!(status["uploaded_chunks"][0]["uploaded_at"].is_string());
    assert!(status["uploaded_chunks"][1].get("uploaded_at").is_none());

    let response = report(&client, &emu, &upload_id, json!([proof(1, &etag1, CHUNK)])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("emulator test setup");
    assert_eq!(body["processed_chunks"], 1);

    // Paging over chunks.
    let path = format!("/assets/multipart-uploads/{upload_id}?page=2&page_limit=2");
    let status: Value = get(&client, &emu, &path)
        .await
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(status["page_info"]["total_page"], 2);
    assert_eq!(
        status["uploaded_chunks"],
        json!([{"index": 3, "status": "pending"}])
    );
    assert_eq!(status["chunks_completed"], 1);
    assert_eq!(status["uploaded_size"], CHUNK);
    let response =
        more_urls_status(&client, &emu, &upload_id, json!({"start": 4, "count": 1})).await;
    assert_eq!(response, StatusCode::BAD_REQUEST);
    let response =
        more_urls_status(&client, &emu, &upload_id, json!({"start": 1, "count": 51})).await;
    assert_eq!(response, StatusCode::BAD_REQUEST);
    assert_eq!(emu.stats().chunk_puts, 2);
}

async fn more_urls_status(
    client: &Client,
    emu: &Emulator,
    upload_id: &str,
    body: Value,
) -> StatusCode {
    let path = format!("/assets/multipart-uploads/{upload_id}/presigned-urls");
    post_json(client, emu, &path, body).await.status()
}

#[tokio::test]
async fn presigned_urls_expire() {
    let emu = start_with(|c| {
        c.multipart_chunk_size = 100;
        c.url_ttl = Duration::from_millis(200);
    })
    .await;
    let client = client();
    let created = create_session(&client, &emu, "t.mp4", 100).await;
    let url = urls_of(&created)[0].1.clone();
    // Reusable (not single-use) until it expires, then 403.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = put(&client, &url, mp4_bytes(100))
            .await
            .expect("emulator test setup")
            .status();
        if status == StatusCode::FORBIDDEN {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(Instant::now() < deadline, "URL never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(emu.stats().chunk_puts >= 1);
}

#[tokio::test]
async fn expired_session_refuses_everything_and_shows_expired() {
    let emu = start_with(|c| c.multipart_chunk_size = 1000).await;
    let client = client();
    let source = random_mp4(2500, 5);
    let created = create_session(&client, &emu, "e.mp4", source.len()).await;
    let upload_id = created["upload_id"]
        .as_str()
        .expect("emulator test setup")
        .to_owned();
    let asset_id = created["asset_id"]
        .as_str()
        .expect("emulator test setup")
        .to_owned();
    let urls = urls_of(&created);
    let etag = put_ok(&client, &urls[0].1, source[..1000].to_vec()).await;
    assert!(emu.shared.chunk_root.session_dir(&upload_id).exists());

    assert!(emu.expire_session(&upload_id));
    assert!(!emu.expire_session("unknown"));
    assert!(!emu.shared.chunk_root.session_dir(&upload_id).exists());

    let response = report(&client, &emu, &upload_id, json!([proof(1, &etag, 1000)])).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "upload_expired");
    let path = format!("/assets/multipart-uploads/{upload_id}/presigned-urls");
    let response = post_json(&client, &emu, &path, json!({"start": 1, "count": 3})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "upload_expired");
    // S3 no longer has the upload: parts get 404 NoSuchUpload.
    let response = put(&client, &urls[1].1, source[1000..2000].to_vec())
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "NoSuchUpload");

    let status: Value = get(
        &client,
        &emu,
        &format!("/assets/multipart-uploads/{upload_id}"),
    )
    .await
    .json()
    .await
    .expect("emulator test setup");
    assert_eq!(status["status"], "expired");
    let list: Value = get(&client, &emu, "/assets/multipart-uploads")
        .await
        .json()
        .await
        .expect("emulator test setup");
    assert_eq!(list["data"][0]["status"], "expired");
    // Its asset never becomes ready.
    let detail = wait_settled(&client, &emu, &asset_id).await;
    assert_eq!(detail["status"], "failed");
    assert!(detail["error"]["message"].is_string());
    assert_eq!(emu.stats().assets_created, 0);
}

#[tokio::test]
async fn multipart_text_file_completes_then_fails() {
    let emu = start_with(|c| c.multipart_chunk_size = 1000).await;
    let client = client();
    let text = b"not a video\n".repeat(100);
    let created = create_session(&client, &emu, "notes.mp4", text.len()).await;
    let upload_id = created["upload_id"].as_str().expect("emulator test setup");
    let urls = urls_of(&created);
    let etag1 = put_ok(&client, &urls[0].1, text[..1000].to_vec()).await;
    let etag2 = put_ok(&client, &urls[1].1, text[1000..].to_vec()).await;
    let chunks = json!([proof(2, &etag2, 200), proof(1, &etag1, 1000)]);
    let body: Value = report(&client, &emu, upload_id, chunks)
        .await
        .json()
        .await
        .expect("emulator test setup");
    assert!(body["url"].is_string());
    let detail = wait_settled(
        &client,
        &emu,
        created["asset_id"].as_str().expect("emulator test setup"),
    )
    .await;
    assert_eq!(detail["status"], "failed");
    assert_eq!(detail["file_type"], "application/octet-stream");
    assert_eq!(emu.stats().uploads_by_sha256[&sha256_hex(&text)], 1);
}

#[tokio::test]
async fn faults_apply_to_chunk_puts() {
    let emu = start_with(|c| c.multipart_chunk_size = 1024 * 1024).await;
    let client = client();
    let source = random_mp4(1024 * 1024, 9);
    let created = create_session(&client, &emu, "f.mp4", source.len()).await;
    let url = urls_of(&created)[0].1.clone();

    emu.set_faults(Faults {
        reset_mid_body: 1.0,
        ..Faults::default()
    });
    let result = put(&client, &url, source.clone()).await;
    assert!(
        result.is_err(),
        "expected a connection error, got {result:?}"
    );
    emu.set_faults(Faults {
        rate_limit: 1.0,
        ..Faults::default()
    });
    let response = put(&client, &url, source.clone())
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    emu.set_faults(Faults::default());
    put_ok(&client, &url, source).await;

    let stats = emu.stats();
    assert_eq!((stats.injected_resets, stats.injected_rate_limits), (1, 1));
    assert_eq!(stats.chunk_puts, 1);
    // Only the session creation was an API request.
    assert_eq!(stats.requests, 1);
}

// ---- Indexing ---------------------------------------------------------------------

#[tokio::test]
async fn ready_assets_can_be_indexed_and_index_settles() {
    let emu = start_with(|c| c.ready_delay = Duration::from_millis(300)).await;
    let client = client();
    let asset = upload_ok(&client, &emu, mp4_bytes(5000), "i.mp4").await;
    let asset_id = asset["_id"].as_str().expect("emulator test setup");
    let index_path = "/indexes/idx1/indexed-assets";

    // Still processing: refused.
    let response = post_json(&client, &emu, index_path, json!({"asset_id": asset_id})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("emulator test setup");
    assert_eq!(body["code"], "parameter_invalid");
    assert!(
        body["message"]
            .as_str()
            .expect("emulator test setup")
            .contains("not ready")
    );
    // Unknown asset, missing asset_id.
    let response = post_json(&client, &emu, index_path, json!({"asset_id": "nope"})).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = post_json(&client, &emu, index_path, json!({})).await;
    assert_eq!(error_code(response).await, "parameter_not_provided");

    assert_eq!(
        wait_settled(&client, &emu, asset_id).await["status"],
        "ready"
    );
    let body =
        json!({"asset_id": asset_id, "enable_video_stream": true, "user_metadata": {"k": "v"}});
    let response = post_json(&client, &emu, index_path, body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("emulator test setup");
    assert_eq!(accepted["asset_id"], asset_id);
    let id = accepted["_id"].as_str().expect("emulator test setup");

    let path = format!("{index_path}/{id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let indexed = loop {
        let response = get(&client, &emu, &path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let indexed: Value = response.json().await.expect("emulator test setup");
        let status = indexed["status"]
            .as_str()
            .expect("emulator test setup")
            .to_owned();
        assert!(
            ["pending", "indexing", "ready"].contains(&status.as_str()),
            "{status}"
        );
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "ready" {
            break indexed;
        }
        assert!(indexed.get("indexed_at").is_none());
        assert!(Instant::now() < deadline, "indexed asset {id} never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(seen, ["ready"], "the index settled at once");
    assert_eq!(indexed["_id"], id);
    assert_eq!(indexed["index_id"], "idx1");
    assert_eq!(indexed["asset_id"], asset_id);
    assert_eq!(
        indexed["system_metadata"],
        json!({"filename": "i.mp4", "size": 5000})
    );
    assert_eq!(indexed["user_metadata"], json!({"k": "v"}));
    assert!(
        indexed["indexed_at"]
            .as_str()
            .expect("emulator test setup")
            .ends_with('Z')
    );

    let response = get(
        &client,
        &emu,
        &format!("/indexes/other/indexed-assets/{id}"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(emu.stats().indexed_assets, 1);
}

#[tokio::test]
async fn uploading_multipart_asset_cannot_be_indexed() {
    let emu = start().await;
    let client = client();
    let created = create_session(&client, &emu, "u.mp4", 100).await;
    let body = json!({"asset_id": created["asset_id"]});
    let response = post_json(&client, &emu, "/indexes/i/indexed-assets", body).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "parameter_invalid");
    assert_eq!(emu.stats().indexed_assets, 0);
}

#[tokio::test]
async fn lies_html_200_missing_id_and_cut_json_still_create_the_asset() {
    let emu = start_with(|c| c.faults.html_200 = 1.0).await;
    let client = client();
    let response = post_form(&client, &emu, direct_form(mp4_bytes(1000), "h.mp4"))
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(response.text().await.unwrap().contains("<html>"));
    assert_eq!(emu.assets().len(), 1, "the upload was served all the same");

    emu.set_faults(Faults {
        missing_id: 1.0,
        ..Faults::default()
    });
    let response = post_form(&client, &emu, direct_form(mp4_bytes(1001), "m.mp4"))
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("_id").is_none(), "{body}");
    assert_eq!(body["filename"], "m.mp4");
    // Only 201s lose their id: a GET keeps it.
    let listed = get(&client, &emu, "/assets").await;
    let listed: Value = listed.json().await.unwrap();
    assert!(listed["data"][0]["_id"].is_string());

    emu.set_faults(Faults {
        malformed_json: 1.0,
        ..Faults::default()
    });
    let response = post_form(&client, &emu, direct_form(mp4_bytes(1002), "c.mp4"))
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::CREATED);
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert!(text.starts_with('{'), "{text}");

    let stats = emu.stats();
    assert_eq!(stats.assets_created, 3);
    assert_eq!(
        (
            stats.injected_html_200,
            stats.injected_missing_ids,
            stats.injected_malformed_json
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn unknown_status_and_an_asset_that_vanishes_once_ready() {
    let emu = start().await;
    let client = client();
    let asset = upload_ok(&client, &emu, mp4_bytes(1000), "u.mp4").await;
    let id = asset["_id"].as_str().unwrap().to_owned();
    emu.set_faults(Faults {
        unknown_status: 1.0,
        ..Faults::default()
    });
    let one: Value = get(&client, &emu, &format!("/assets/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["status"], "awaiting_moderation");
    let list: Value = get(&client, &emu, "/assets").await.json().await.unwrap();
    assert_eq!(list["data"][0]["status"], "awaiting_moderation");
    assert_eq!(emu.stats().injected_unknown_status, 2);

    emu.set_faults(Faults {
        vanish_after_ready: 1.0,
        ..Faults::default()
    });
    let gone = upload_ok(&client, &emu, mp4_bytes(2000), "v.mp4").await;
    let gone = gone["_id"].as_str().unwrap().to_owned();
    assert_eq!(wait_settled(&client, &emu, &gone).await["status"], "ready");
    let after = get(&client, &emu, &format!("/assets/{gone}")).await;
    assert_eq!(after.status(), StatusCode::NOT_FOUND);
    assert_eq!(emu.stats().vanished_assets, 1);
    // An asset uploaded before the fault was set stays.
    emu.set_faults(Faults::default());
    assert_eq!(
        wait_settled(&client, &emu, &id).await["status"],
        "ready",
        "unmarked assets never vanish"
    );
    assert_eq!(
        get(&client, &emu, &format!("/assets/{id}")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn requests_that_do_not_wait_out_a_429_are_counted() {
    let emu = start_with(|c| {
        c.faults.rate_limit = 1.0;
        c.faults.retry_after_secs = 5;
    })
    .await;
    let client = client();
    assert_eq!(
        get(&client, &emu, "/assets").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // At once: still on its way, not counted.
    get(&client, &emu, "/assets").await;
    assert_eq!(emu.stats().requests_while_rate_limited, 0);
    // Once the 250 ms for requests already on their way are over, the
    // next request is counted: ask until one is, within a deadline.
    emu.set_faults(Faults::default());
    let counted = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            get(&client, &emu, "/assets").await;
            if emu.stats().requests_while_rate_limited > 0 {
                return;
            }
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "no request was counted within the 429's wait"
    );
    assert_eq!(emu.stats().requests_while_rate_limited, 1);
}

#[tokio::test]
async fn chunk_puts_must_carry_the_signed_upload_headers() {
    let emu = start_with(|c| {
        c.multipart_chunk_size = 1000;
        c.upload_headers = [("x-amz-meta-owner".to_owned(), "tl".to_owned())].into();
    })
    .await;
    let client = client();
    let source = random_mp4(1500, 9);
    let created = create_session(&client, &emu, "h.mp4", source.len()).await;
    assert_eq!(created["upload_headers"]["x-amz-meta-owner"], "tl");
    assert_eq!(
        created["upload_headers"]["Content-Type"],
        "application/octet-stream"
    );
    let urls = urls_of(&created);
    let response = put(&client, &urls[0].1, source[..1000].to_vec())
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.contains("xml")),
        "store errors are XML"
    );
    assert_eq!(error_code(response).await, "SignatureDoesNotMatch");
    let response = client
        .put(&urls[0].1)
        .header("x-amz-meta-owner", "tl")
        .body(source[..1000].to_vec())
        .send()
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(emu.stats().chunk_puts, 1);
}

#[tokio::test]
async fn sessions_end_at_run_time_and_their_parts_get_no_such_upload() {
    let emu = start_with(|c| c.multipart_chunk_size = 1000).await;
    let client = client();
    let source = random_mp4(4000, 3);
    emu.set_faults(Faults {
        expire_session_after_chunks: 2,
        ..Faults::default()
    });
    let created = create_session(&client, &emu, "x.mp4", source.len()).await;
    let upload_id = created["upload_id"].as_str().expect("id").to_owned();
    let urls = urls_of(&created);
    put_ok(&client, &urls[0].1, source[..1000].to_vec()).await;
    put_ok(&client, &urls[1].1, source[1000..2000].to_vec()).await;
    // The second stored chunk expired the session; the fault fired once.
    assert_eq!(emu.faults().expire_session_after_chunks, 0);
    let response = put(&client, &urls[2].1, source[2000..3000].to_vec())
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "NoSuchUpload");
    let status: Value = get(
        &client,
        &emu,
        &format!("/assets/multipart-uploads/{upload_id}"),
    )
    .await
    .json()
    .await
    .expect("emulator test setup");
    assert_eq!(status["status"], "expired");

    // Aborted: forgotten altogether.
    emu.set_faults(Faults {
        abort_session_after_chunks: 1,
        ..Faults::default()
    });
    let created = create_session(&client, &emu, "y.mp4", source.len()).await;
    let upload_id = created["upload_id"].as_str().expect("id").to_owned();
    let urls = urls_of(&created);
    put_ok(&client, &urls[0].1, source[..1000].to_vec()).await;
    let response = put(&client, &urls[1].1, source[1000..2000].to_vec())
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "NoSuchUpload");
    let response = get(
        &client,
        &emu,
        &format!("/assets/multipart-uploads/{upload_id}"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // A store that answers every part with one status, the session still active.
    emu.set_faults(Faults {
        chunk_error_status: 404,
        ..Faults::default()
    });
    let created = create_session(&client, &emu, "z.mp4", source.len()).await;
    let upload_id = created["upload_id"].as_str().expect("id").to_owned();
    let response = put(&client, &urls_of(&created)[0].1, source[..1000].to_vec())
        .await
        .expect("emulator test setup");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "NoSuchUpload");
    let status: Value = get(
        &client,
        &emu,
        &format!("/assets/multipart-uploads/{upload_id}"),
    )
    .await
    .json()
    .await
    .expect("emulator test setup");
    assert_eq!(status["status"], "active");
}

#[tokio::test]
async fn with_an_answer_delay_the_asset_exists_before_its_answer_arrives() {
    let emu = start().await;
    emu.set_faults(Faults {
        answer_delay_ms: 400,
        ..Faults::default()
    });
    let client = client();
    let form = Form::new()
        .text("method", "url")
        .text("url", "https://cdn.example.com/a/clip.mp4");
    let started = Instant::now();
    let request = tokio::spawn({
        let client = client.clone();
        let url = format!("{}/assets", emu.base_url());
        async move {
            client
                .post(url)
                .header("x-api-key", KEY)
                .multipart(form)
                .send()
                .await
        }
    });
    // The asset appears while the answer is still held back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while emu.assets().is_empty() {
        assert!(Instant::now() < deadline, "no asset made");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!request.is_finished(), "the answer is held back");
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(emu.assets().len(), 1);
}
