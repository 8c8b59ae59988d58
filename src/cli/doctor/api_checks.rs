//! The API: a key is present, the base URL answers, and the key is
//! accepted (one cheap authenticated `GET /assets`).

use std::path::Path;
use std::time::Duration;

use super::report::Report;
use crate::api::{ApiClient, ApiError, AssetPage, ClientOptions};
use crate::cli::{Context, start_emulator};
use crate::emulator::Emulator;
use crate::secret::{ApiKey, KeyError, load_api_key};

/// The probe request must not take the configured upload timeout (30 min).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// The key file the packaged unit hands the daemon as a credential
/// (LoadCredential= in systemd/tl-ingest.service).
const SERVICE_KEY_FILE: &str = "/etc/tl-ingest/api-key";

const PRESENT: &str = "API key present";
const REACHABLE: &str = "API reachable";
const ACCEPTED: &str = "API key accepted";

/// Where the probe goes, and with which key.
struct Target {
    /// The built-in emulator (`--emulator`), kept serving until the end.
    _emulator: Option<Emulator>,
    base_url: String,
    /// None: no key, or one this user may not read.
    key: Option<ApiKey>,
}

/// Key present, base URL reachable, key accepted.
pub(super) async fn api_checks(ctx: &Context, r: &mut Report) {
    let target = if ctx.emulator {
        match emulator_target(r).await {
            Some(t) => t,
            None => return,
        }
    } else {
        configured_target(ctx, r)
    };
    let Some(client) = probe_client(ctx, &target, r) else {
        return;
    };
    let answer = client.list_assets(None, 1, 1).await;
    judge_answer(
        answer,
        &crate::config::redact_url(&target.base_url),
        target.key.is_some(),
        r,
    );
}

/// The built-in emulator and its throwaway key.
async fn emulator_target(r: &mut Report) -> Option<Target> {
    match start_emulator().await {
        Ok((emu, key)) => {
            r.ok(
                PRESENT,
                "the built-in emulator's throwaway key (--emulator)",
            );
            r.secrets.push(key.clone());
            let base_url = emu.base_url();
            Some(Target {
                _emulator: Some(emu),
                base_url,
                key: Some(key),
            })
        }
        Err(e) => {
            r.fail(
                "emulator",
                &e.message,
                "run without --emulator, or free a loopback port",
            );
            None
        }
    }
}

/// The configured base URL, and the key from where the daemon would take
/// it (or the service's credential file, from a shell).
fn configured_target(ctx: &Context, r: &mut Report) -> Target {
    let key = match load_api_key(&ctx.env, ctx.config.api.key_file.as_deref()) {
        Ok((key, source)) => {
            r.ok(PRESENT, &format!("from {source}"));
            r.secrets.push(key.clone());
            Some(key)
        }
        // Outside the service (root or a member of its group, from a
        // shell) the key is the unit's credential file.
        Err(KeyError::Missing) if Path::new(SERVICE_KEY_FILE).exists() => service_key(r),
        Err(e) => {
            r.fail(PRESENT, &e.to_string(), key_fix(&e));
            None
        }
    };
    Target {
        _emulator: None,
        base_url: ctx.config.api.base_url.clone(),
        key,
    }
}

/// The key in the service's credential file, if this user may read it.
fn service_key(r: &mut Report) -> Option<ApiKey> {
    match load_api_key(&Default::default(), Some(Path::new(SERVICE_KEY_FILE))) {
        Ok((key, _)) => {
            r.ok(
                PRESENT,
                &format!("the service's credential file {SERVICE_KEY_FILE}"),
            );
            r.secrets.push(key.clone());
            Some(key)
        }
        Err(_) => {
            r.ok(
                PRESENT,
                &format!("the service's credential file {SERVICE_KEY_FILE} exists (only root and systemd read it)"),
            );
            None
        }
    }
}

fn key_fix(e: &KeyError) -> &'static str {
    match e {
        KeyError::Missing => {
            "export TWELVELABS_API_KEY=…, or set api.key_file, or LoadCredential=twelvelabs-api-key:… in the unit"
        }
        KeyError::Unreadable { .. } => {
            "make the key file readable by the user tl-ingest runs as (owned by it, chmod 600)"
        }
        KeyError::Empty { .. } => "write the API key into the key file",
    }
}

/// A client for the probe, with short timeouts. Without a key,
/// reachability is still worth knowing: a placeholder key is refused, and
/// the refusal proves the API answers.
fn probe_client(ctx: &Context, target: &Target, r: &mut Report) -> Option<ApiClient> {
    let probe_key = match &target.key {
        Some(k) => k.clone(),
        None => ApiKey::new("tl-ingest-doctor-no-key")?,
    };
    let opts = ClientOptions {
        base_url: target.base_url.clone(),
        request_timeout: ctx.config.api.request_timeout.min(PROBE_TIMEOUT),
        connect_timeout: ctx.config.api.connect_timeout.min(PROBE_TIMEOUT),
    };
    match ApiClient::new(&opts, &probe_key) {
        Ok(c) => Some(c),
        Err(e) => {
            r.fail(
                REACHABLE,
                &format!("cannot make a client: {e}"),
                "check the API key for stray characters",
            );
            None
        }
    }
}

/// What the answer to the probe says of reachability and of the key.
fn judge_answer(answer: Result<AssetPage, ApiError>, base: &str, has_key: bool, r: &mut Report) {
    let not_checked = "not checked: the API did not answer usably";
    match answer {
        Ok(_) => {
            r.ok(REACHABLE, &format!("{base} answers"));
            if has_key {
                r.ok(ACCEPTED, "an authenticated GET /assets succeeded");
            } else {
                r.skip(ACCEPTED, "no key to check");
            }
        }
        Err(ApiError::Transport { detail, .. }) => {
            r.fail(
                REACHABLE,
                &format!("{base} is not reachable ({detail})"),
                "check api.base_url, DNS, proxy settings and the firewall; is the host up?",
            );
            r.skip(ACCEPTED, "not checked: the API is not reachable");
        }
        Err(e @ ApiError::Status { status, .. }) => judge_status(&e, status, base, has_key, r),
        Err(e) => {
            r.fail(
                REACHABLE,
                &format!("{base} does not answer like the TwelveLabs API: {e}"),
                "check api.base_url (e.g. https://api.twelvelabs.io/v1.3) and any proxy",
            );
            r.skip(ACCEPTED, not_checked);
        }
    }
}

/// The probe was answered with an HTTP error `status`.
fn judge_status(e: &ApiError, status: u16, base: &str, has_key: bool, r: &mut Report) {
    let not_checked = "not checked: the API did not answer usably";
    match status {
        401 | 403 => {
            r.ok(REACHABLE, &format!("{base} answers"));
            if has_key {
                r.fail(
                    ACCEPTED,
                    &format!("the key was rejected ({e})"),
                    "put a valid key (TwelveLabs dashboard → API keys) in $TWELVELABS_API_KEY, api.key_file or the credential",
                );
            } else {
                r.skip(ACCEPTED, "no key to check");
            }
        }
        429 => {
            r.ok(REACHABLE, &format!("{base} answers"));
            r.warn(
                ACCEPTED,
                &format!("not confirmed: rate limited ({e})"),
                "run doctor again in a minute; lower upload.requests_per_minute if this persists",
            );
        }
        404 => {
            r.fail(
                REACHABLE,
                &format!("{base} answered {e} for /assets"),
                "api.base_url should be the v1.3 API, e.g. https://api.twelvelabs.io/v1.3",
            );
            r.skip(ACCEPTED, not_checked);
        }
        _ => {
            r.fail(
                REACHABLE,
                &format!("{base} answered {e}"),
                "if it is 5xx the platform has trouble: try later; otherwise check api.base_url and any proxy",
            );
            r.skip(ACCEPTED, not_checked);
        }
    }
}
