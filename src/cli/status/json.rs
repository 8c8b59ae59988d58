//! `status --format json`: one object with everything the text shows.

use serde_json::json;

use super::verdict::{Verdict, ended_attempts};
use super::{DaemonState, Facts, heartbeat_age};
use crate::cli::history::record_json;
use crate::ledger::Holder;
use crate::ledger::fleet::DaemonInfo;
use crate::ledger::{FileState, rfc3339};

fn daemon_json(h: &Holder) -> serde_json::Value {
    json!({ "pid": h.pid, "since": h.since_ms.map(rfc3339) })
}

fn fleet_json(f: &Facts, d: &DaemonInfo) -> serde_json::Value {
    let state = f.daemon_state(d);
    json!({
        "id": d.id,
        "host": d.host,
        "pid": d.pid,
        "version": d.version,
        "started_at": rfc3339(d.started_at),
        "heartbeat_at": rfc3339(d.heartbeat_at),
        "heartbeat_age_ms": heartbeat_age(d),
        "stopped_at": d.stopped_at.map(rfc3339),
        "in_flight": d.in_flight,
        "lease_ms": d.lease_ms,
        "state": state.as_str(),
        "stale": state == DaemonState::Stale,
    })
}

pub(super) fn to_json(f: &Facts, verdict: &Verdict) -> serde_json::Value {
    let counts: serde_json::Map<String, serde_json::Value> = FileState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(f.count(*s))))
        .collect();
    let in_flight: Vec<serde_json::Value> = f
        .in_flight
        .iter()
        .map(|i| {
            let mut v = record_json(&i.record);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("attempt".into(), json!(i.attempt));
                obj.insert(
                    "attempt_started_at".into(),
                    json!(i.started_at.map(rfc3339)),
                );
                obj.insert(
                    "running_seconds".into(),
                    json!(i.started_at.map(|t| (f.now - t).max(0) / 1000)),
                );
                obj.insert("bytes_sent".into(), json!(i.bytes_sent));
                obj.insert("bytes_total".into(), json!(i.record.size));
            }
            v
        })
        .collect();
    let last_attempt = ended_attempts(&f.attempts).first().map(|(a, _, _)| {
        json!({
            "id": a.id,
            "file_id": a.file_id,
            "outcome": a.outcome,
            "http_status": a.http_status,
            "error": a.error,
            "started_at": rfc3339(a.started_at),
            "ended_at": a.ended_at.map(rfc3339),
        })
    });
    json!({
        "verdict": { "state": verdict.health.as_str(), "message": verdict.line },
        "ledger": f.ledger,
        "daemon": f.daemon.as_ref().map(daemon_json),
        "daemons": f.daemons.iter().map(|d| fleet_json(f, d)).collect::<Vec<_>>(),
        "heartbeat": {
            "interval_ms": f.heartbeat_ms,
            "stale_after_ms": f.stale_after_ms,
        },
        "counts": counts,
        "total": f.counts.iter().map(|(_, n)| n).sum::<i64>(),
        "queue": {
            "queued": f.queued,
            "oldest_discovered_at": f.oldest_queued.map(rfc3339),
            "oldest_age_seconds": f.oldest_queued.map(|t| (f.now - t).max(0) / 1000),
            // null: nothing queued, or the next one is due now.
            "next_attempt_at": f.next_due.filter(|t| *t > f.now).map(rfc3339),
        },
        "in_flight": in_flight,
        "recent_errors": f.errors.iter().map(record_json).collect::<Vec<_>>(),
        "failed_last_hour": f.failed_last_hour,
        "last_attempt": last_attempt,
        "gone_folders": f
            .gone_folders
            .iter()
            .map(|(path, reason)| json!({ "path": path, "reason": reason }))
            .collect::<Vec<_>>(),
    })
}
