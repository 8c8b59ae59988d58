//! The monitoring files operators drop in (monitoring/alerts.yml and
//! monitoring/grafana-dashboard.json) name only metrics a running daemon
//! exports: a renamed metric must not leave an alert that can never fire.
//! (`promtool check rules` and `promtool test rules` check the rules
//! themselves, in .ci/run.)

use std::collections::BTreeSet;

use crate::helpers::{Kind, TestEnv, write_media};

/// Names in the rules that no tl-ingest daemon exports, and who does.
const FROM_ELSEWHERE: [(&str, &str); 2] = [
    ("up", "Prometheus, per scrape target"),
    ("probe_success", "the blackbox exporter probing /healthz"),
];

/// Metric names used in PromQL text: every `tl_ingest_*` word, and every
/// word written right before a `{` label selector.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = (chars[i].is_ascii_alphabetic() || chars[i] == '_')
            && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || "_$.".contains(chars[i - 1])));
        if !starts {
            i += 1;
            continue;
        }
        let begin = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let word: String = chars[begin..i].iter().collect();
        if word.starts_with("tl_ingest_") || chars.get(i) == Some(&'{') {
            names.insert(word);
        }
    }
    names
}

/// The metric names on a Prometheus text exposition page.
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn names_are_found_in_promql() {
    let names = metric_names(
        "sum by (le) (rate(tl_ingest_upload_duration_seconds_bucket{host=~\"$host\"}[5m])) \
         and up{job=\"x\"} == 0 and tl_ingest_queue_depth > 0 {{ $labels.host }} ${datasource}",
    );
    let want: BTreeSet<String> = [
        "tl_ingest_upload_duration_seconds_bucket",
        "up",
        "tl_ingest_queue_depth",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_only_exported_metrics() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring");
    let mut used = BTreeSet::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}"))
            .unwrap_or_else(|e| panic!("cannot read monitoring/{file}: {e}"));
        let names = metric_names(&text);
        assert!(
            names.iter().any(|n| n.starts_with("tl_ingest_")),
            "monitoring/{file} names no tl_ingest metric: is the parser broken?"
        );
        used.extend(names);
    }

    // A daemon that has uploaded a file, so that every histogram and
    // counter has its series.
    let env = TestEnv::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let extra = format!(
        "{}[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n",
        env.inbox_watch()
    );
    let config = env.write_daemon_config(&extra);
    let mut daemon = env.start_daemon(&config);
    let clip = env.inbox.join("watched.mp4");
    write_media(&clip, Kind::Mp4, 20_000, 7);
    daemon
        .wait(&env, std::slice::from_ref(&clip), "ready")
        .await;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            match http.get(&url).send().await {
                Ok(resp) => resp.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    };
    // Gauges follow the status tick; the processing histogram the poller.
    crate::helpers::wait_until(
        crate::helpers::DEADLINE,
        "/metrics with the upload's series",
        || {
            let page = scrape();
            async move {
                let page = page.await;
                page.contains("tl_ingest_processing_duration_seconds_bucket")
                    && page.contains("tl_ingest_queue_depth")
            }
        },
    )
    .await;
    let page = scrape().await;
    let have = exported(&page);
    daemon.stop().await;

    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !have.contains(*n) && !FROM_ELSEWHERE.iter().any(|(e, _)| e == n))
        .collect();
    assert!(
        missing.is_empty(),
        "monitoring/ uses metrics the daemon does not export: {missing:?}\nexported: {have:?}"
    );
}
