//! `tl-ingest emulator`: serve the built-in API emulator until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{CliError, CliResult, Globals};
use crate::emulator::{Emulator, EmulatorConfig, Faults};

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub listen: SocketAddr,
    /// The API key it accepts (x-api-key).
    #[arg(
        long,
        env = "TL_EMULATOR_API_KEY",
        default_value = "tl-emulator-key",
        hide_env_values = true
    )]
    pub api_key: String,
    /// How long assets stay processing.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub ready_delay: Duration,
    /// Largest direct video/audio upload, in bytes.
    #[arg(long, default_value_t = 200_000_000)]
    pub max_direct_size: u64,
    /// Largest image, in bytes.
    #[arg(long, default_value_t = 32_000_000)]
    pub max_image_size: u64,
    /// Largest multipart upload, in bytes.
    #[arg(long, default_value_t = 10_000_000_000)]
    pub max_multipart_size: u64,
    /// Chunk size of multipart sessions, in bytes.
    #[arg(long, default_value_t = 5_242_880)]
    pub multipart_chunk_size: u64,
    /// Presigned chunk URLs work once only (as on S3 with some setups).
    #[arg(long)]
    pub single_use_urls: bool,
    /// How long a presigned chunk URL lasts.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub url_ttl: Duration,
    /// A header (NAME=VALUE) the chunk URLs are signed with: announced in
    /// `upload_headers`, and chunk PUTs without it get 403 SignatureDoesNotMatch.
    #[arg(long = "upload-header", value_name = "NAME=VALUE", value_parser = header_pair)]
    pub upload_headers: Vec<(String, String)>,
    /// Share (0-1) of requests answered 500 before the body is read.
    #[arg(long, default_value_t = 0.0)]
    pub error_before_body: f64,
    /// Share (0-1) of uploads answered 500 after the whole body was read.
    #[arg(long, default_value_t = 0.0)]
    pub error_after_body: f64,
    /// Share (0-1) of requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit: f64,
    /// Retry-After of those 429s, in seconds.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Share (0-1) of uploads whose connection is reset part-way.
    #[arg(long, default_value_t = 0.0)]
    pub reset_mid_body: f64,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay, in milliseconds, between making an answer (an upload's asset
    /// is made) and sending it.
    #[arg(long, default_value_t = 0)]
    pub answer_delay_ms: u64,
    /// Seed for the fault sequence (reproducible runs).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share (0-1) of JSON answers cut off half-way.
    #[arg(long, default_value_t = 0.0)]
    pub malformed_json: f64,
    /// Share (0-1) of 201 upload answers sent without `_id` (the asset is made).
    #[arg(long, default_value_t = 0.0)]
    pub missing_id: f64,
    /// Share (0-1) of requests answered 200 with an HTML page instead of the real answer.
    #[arg(long, default_value_t = 0.0)]
    pub html_200: f64,
    /// Share (0-1) of asset answers with an undocumented status value.
    #[arg(long, default_value_t = 0.0)]
    pub unknown_status: f64,
    /// Share (0-1) of uploaded assets that are gone (404) once reported ready.
    #[arg(long, default_value_t = 0.0)]
    pub vanish_after_ready: f64,
    /// Read every request body (uploads, chunk PUTs) at most this many bytes a second,
    /// each request on its own, like a remote API behind a network link (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub slow_bytes_per_sec: u64,
}

pub async fn run(globals: &Globals, args: EmulatorArgs) -> CliResult {
    crate::telemetry::init(
        crate::config::LogFormat::Text,
        tracing::Level::INFO,
        globals.verbose,
        globals.quiet,
    );
    for (name, share) in [
        ("--error-before-body", args.error_before_body),
        ("--error-after-body", args.error_after_body),
        ("--rate-limit", args.rate_limit),
        ("--reset-mid-body", args.reset_mid_body),
        ("--malformed-json", args.malformed_json),
        ("--missing-id", args.missing_id),
        ("--html-200", args.html_200),
        ("--unknown-status", args.unknown_status),
        ("--vanish-after-ready", args.vanish_after_ready),
    ] {
        if !(0.0..=1.0).contains(&share) {
            return Err(CliError::usage(format!(
                "{name} must be between 0 and 1, not {share}"
            )));
        }
    }
    let config = EmulatorConfig {
        listen: args.listen,
        api_key: args.api_key,
        ready_delay: args.ready_delay,
        max_direct_size: args.max_direct_size,
        max_image_size: args.max_image_size,
        max_multipart_size: args.max_multipart_size,
        multipart_chunk_size: args.multipart_chunk_size,
        single_use_urls: args.single_use_urls,
        ignore_fields_after_file: false,
        url_ttl: args.url_ttl,
        faults: Faults {
            error_before_body: args.error_before_body,
            error_after_body: args.error_after_body,
            rate_limit: args.rate_limit,
            retry_after_secs: args.retry_after_secs,
            reset_mid_body: args.reset_mid_body,
            latency_ms: args.latency_ms,
            answer_delay_ms: args.answer_delay_ms,
            seed: args.seed,
            malformed_json: args.malformed_json,
            missing_id: args.missing_id,
            html_200: args.html_200,
            unknown_status: args.unknown_status,
            vanish_after_ready: args.vanish_after_ready,
            slow_bytes_per_sec: args.slow_bytes_per_sec,
            ..Faults::default()
        },
        upload_headers: args.upload_headers.into_iter().collect(),
    };
    let emu = Emulator::start(config)
        .await
        .map_err(|e| CliError::usage(format!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!(
        "emulator listening on {} (faults at run time: PUT /_emulator/faults, stats: GET /_emulator/stats)",
        emu.base_url()
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = emu.wait() => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn header_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("expected NAME=VALUE, not {text:?}")),
    }
}
