//! Daemons sharing one ledger: who is there (the `daemons` heartbeat
//! table), the leases on what each is sending, taking over what a dead
//! daemon left, and the fleet's shared request pacing and 429 pause.
//!
//! On PostgreSQL times here come from the database's clock, so hosts whose
//! clocks disagree still agree on leases and on the pacing. On SQLite there
//! is one daemon (the lock file proves it): it still joins, so that
//! `status` reads the same table on both engines, but holds no leases.

use sqlx::FromRow;

use super::engine::stmt;
use super::state::{Event, FileState, sql_list};
use super::{Ledger, LedgerError, now_ms};
use crate::ledger::LOOKUP_DELAY_MS;

/// The database clock in Unix ms (PostgreSQL).
pub(super) const PG_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// The files daemon `me` can see (see [`Ledger::visible_to_me`]); `host`
/// is the placeholder bound to its host's name.
fn visible_sql(me: i64, host: &str) -> String {
    format!(
        "(files.path_bytes IS NULL OR files.origin_host IS NULL OR files.origin_host = {host} \
         OR files.root IN (SELECT root FROM daemon_roots WHERE daemon_id = {me}))"
    )
}

/// How long a daemon may be silent before it is recorded as stopped.
const SILENT_FOR_MS: i64 = 3_600_000;

/// Stopped daemons are kept this long (so that `status` can tell what
/// stopped, or crashed, lately), and at most [`KEEP_STOPPED`] of them (a
/// daemon restarted in a loop adds a row each time): older rows are pruned.
const KEEP_STOPPED_MS: i64 = 24 * 3_600_000;
const KEEP_STOPPED: i64 = 50;

/// This process in the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its row in `daemons`.
    pub id: i64,
    pub host: String,
    /// Its lease (ms): a daemon silent for three leases is gone.
    pub lease_ms: i64,
}

/// A daemon as `status` shows it.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct DaemonInfo {
    pub id: i64,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub stopped_at: Option<i64>,
    /// Records it is sending now.
    pub in_flight: i64,
    /// Its own lease (ms), by which it is judged stale; `None` for a
    /// daemon from before this was recorded.
    pub lease_ms: Option<i64>,
    /// The ledger's clock when this was read (Unix ms), to age the heartbeat.
    pub now: i64,
}

impl Ledger {
    /// This process's membership, once it has joined.
    pub fn member(&self) -> Option<&Member> {
        self.me.get()
    }

    /// Whether a file this host cannot find or read may still be there for
    /// the host that found it: a shared ledger, and another host found it
    /// (a share not mounted here, or not readable here, must not fail it).
    pub fn found_elsewhere(&self, origin_host: Option<&str>) -> bool {
        // A record no host claims to have found (from before the fleet)
        // is taken as this host's, as it always was.
        self.pool.is_postgres()
            && match (self.me.get(), origin_host) {
                (Some(m), Some(found_by)) => found_by != m.host,
                _ => false,
            }
    }

    pub(super) fn me_id(&self) -> Option<i64> {
        self.me.get().map(|m| m.id)
    }

    pub(super) fn me_host(&self) -> Option<String> {
        self.me.get().map(|m| m.host.clone())
    }

    /// A condition (to append to a WHERE on `files`) for the files this
    /// daemon can see on a shared ledger: those its host found, and those
    /// in folders it watches (a share is mounted at the same path on every
    /// host); URLs are anyone's. `host` is the placeholder bound to this
    /// host's name. Empty on SQLite and before joining.
    pub(super) fn visible_to_me(&self, host: &str) -> String {
        match self.me.get() {
            Some(m) if self.pool.is_postgres() => format!(" AND {}", visible_sql(m.id, host)),
            _ => String::new(),
        }
    }

    /// A condition (to append to a WHERE on `files`) for the records whose
    /// follow-up work (polling, indexing, the after-upload file action) is
    /// this daemon's on a shared ledger: those it holds (it uploaded them,
    /// or adopted them from a daemon that is gone: [`Ledger::adopt_orphans`]),
    /// so that each has one follower. Empty on SQLite, where there is one
    /// daemon. Only this process's own number is written into it.
    pub(super) fn followed_by_me(&self) -> String {
        match self.me.get() {
            Some(m) if self.pool.is_postgres() => format!(" AND files.claimed_by = {}", m.id),
            _ => String::new(),
        }
    }

    /// Take on the follow-up work of records whose daemon has stopped or
    /// gone silent for three leases (or that never had one), a batch at a
    /// time: each record moves to exactly one live daemon (a row another
    /// adopter locked is skipped, and its new owner is alive). A record
    /// with a file action still to do goes only to a daemon that can see
    /// the file. PostgreSQL only; returns how many.
    pub async fn adopt_orphans(&self) -> Result<u64, LedgerError> {
        let Some(m) = self.me.get().filter(|_| self.pool.is_postgres()) else {
            return Ok(0);
        };
        let action_pending = format!(
            "(files.file_action IS NULL AND files.path_bytes IS NOT NULL AND \
             ((files.state IN ({}) AND files.after_upload IS NOT NULL) \
              OR (files.state = 'failed' AND files.on_failure IS NOT NULL)))",
            sql_list(FileState::ASSET_READY)
        );
        Ok(stmt(format!(
            "UPDATE files SET claimed_by = $1 WHERE id IN (SELECT id FROM files \
             WHERE (files.state IN ({at_platform}) \
                    OR (files.state = 'ready' AND files.index_id IS NOT NULL) OR {action_pending}) \
               AND (files.claimed_by IS NULL OR files.claimed_by NOT IN (SELECT d.id FROM daemons d \
                    WHERE d.stopped_at IS NULL \
                      AND d.heartbeat_at >= {PG_NOW} - 3 * coalesce(d.lease_ms, $3))) \
               AND (NOT {action_pending} OR {visible}) \
             LIMIT 500 FOR UPDATE SKIP LOCKED)",
            visible = visible_sql(m.id, "$2"),
            at_platform = sql_list(FileState::AT_PLATFORM),
        ))
        .bind(m.id)
        .bind(m.host.clone())
        .bind(self.lease_ms())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// A write failing for want of space under a SQLite ledger is a setup
    /// problem, said as such (with the file), not a failed query.
    pub fn first_write_error(&self, e: LedgerError) -> LedgerError {
        match &self.location {
            super::Location::Sqlite(path) if e.is_disk_full() => LedgerError::Open {
                path: path.clone(),
                reason: "the disk holding it is full".into(),
            },
            _ => e,
        }
    }

    /// Join the fleet as a new `daemons` row (one per process start, so a
    /// reused pid is never mistaken for its predecessor), watching `roots`.
    /// Joining twice keeps the first membership.
    pub async fn join(
        &self,
        host: &str,
        roots: &[String],
        lease_ms: i64,
    ) -> Result<Member, LedgerError> {
        if let Some(m) = self.me.get() {
            // A pipeline started again (a reload): still here, with the
            // lease it now claims with.
            stmt("UPDATE daemons SET stopped_at = NULL, lease_ms = $2 WHERE id = $1")
                .bind(m.id)
                .bind(lease_ms)
                .execute(&self.pool)
                .await?;
            self.set_lease_ms(lease_ms);
            self.set_roots(roots).await?;
            return Ok(m.clone());
        }
        let now_sql = if self.pool.is_postgres() {
            PG_NOW
        } else {
            "$4"
        };
        // In a transaction: an autocommit INSERT … RETURNING hands out its
        // row even when the commit then fails (a full disk).
        let joined = async {
            let mut tx = self.pool.begin().await?;
            let id: i64 = stmt(format!(
                "INSERT INTO daemons (host, pid, version, started_at, heartbeat_at, lease_ms) \
                 VALUES ($1, $2, $3, {now_sql}, {now_sql}, $5) RETURNING id"
            ))
            .bind(host)
            .bind(i64::from(std::process::id()))
            .bind(env!("CARGO_PKG_VERSION"))
            .bind(now_ms())
            .bind(lease_ms)
            .scalar_one(&mut tx)
            .await?;
            tx.commit().await?;
            Ok::<_, LedgerError>(id)
        };
        let id = joined.await.map_err(|e| self.first_write_error(e))?;
        let member = Member {
            id,
            host: host.to_owned(),
            lease_ms,
        };
        let member = self.me.get_or_init(|| member).clone();
        self.set_lease_ms(lease_ms);
        if !self.pool.is_postgres() {
            // The lock file proves every earlier daemon of this ledger is
            // gone, however it ended.
            stmt(
                "UPDATE daemons SET stopped_at = heartbeat_at \
                 WHERE stopped_at IS NULL AND id != $1",
            )
            .bind(member.id)
            .execute(&self.pool)
            .await?;
        } else {
            self.close_dead_neighbours(&member).await?;
        }
        self.set_roots(roots).await?;
        if let Err(e) = self.prune_daemons().await {
            tracing::debug!(error = %e, "could not prune the daemons that stopped long ago");
        }
        tracing::info!(daemon_id = member.id, host = %member.host, "joined the ledger");
        Ok(member)
    }

    /// The lease this daemon claims with now (ms): the one it joined with,
    /// or the one a reload gave it.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_lease_ms(&self, lease_ms: i64) {
        self.lease_ms
            .store(lease_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forget daemons that stopped long ago (see `KEEP_STOPPED_MS`),
    /// never a running one; returns how many. Their records keep their
    /// history (the attempts name the daemon's number).
    pub async fn prune_daemons(&self) -> Result<u64, LedgerError> {
        self.prune_daemons_before(now_ms() - KEEP_STOPPED_MS).await
    }

    /// [`Ledger::prune_daemons`] with the horizon given (Unix ms): rows
    /// stopped before it go, and stopped rows beyond the newest
    /// `KEEP_STOPPED` whenever they stopped.
    pub async fn prune_daemons_before(&self, horizon_ms: i64) -> Result<u64, LedgerError> {
        Ok(stmt(format!(
            "DELETE FROM daemons WHERE stopped_at IS NOT NULL AND (stopped_at < $1 \
             OR id NOT IN (SELECT id FROM daemons WHERE stopped_at IS NOT NULL \
               ORDER BY stopped_at DESC, id DESC LIMIT {KEEP_STOPPED}))",
        ))
        .bind(horizon_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// The folders this daemon watches: it may take over records found in
    /// them by other hosts (a shared folder is mounted at the same path).
    pub async fn set_roots(&self, roots: &[String]) -> Result<(), LedgerError> {
        let Some(me) = self.me_id() else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await?;
        stmt("DELETE FROM daemon_roots WHERE daemon_id = $1")
            .bind(me)
            .execute(&mut tx)
            .await?;
        for root in roots {
            stmt(
                "INSERT INTO daemon_roots (daemon_id, root) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(me)
            .bind(root)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Say this daemon is alive and extend by `lease_ms` the leases on the
    /// records its workers are sending (`sending`) and on the files it is
    /// hashing. Returns which of `sending` it still holds, where records
    /// are leased (a shared ledger): one that is missing was taken over
    /// (its lease ran out), and its upload must stop. An upload this daemon
    /// gave up without a word to the ledger (it could not reach it) is not
    /// renewed: its lease runs out and it is taken over like any other.
    pub async fn heartbeat(
        &self,
        lease_ms: i64,
        sending: &[i64],
    ) -> Result<Option<Vec<i64>>, LedgerError> {
        let Some(me) = self.me_id() else {
            return Ok(None);
        };
        if !self.pool.is_postgres() {
            stmt("UPDATE daemons SET heartbeat_at = $2 WHERE id = $1")
                .bind(me)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
            return Ok(None);
        }
        // Alive, even if recorded stopped after a long silence.
        stmt(format!(
            "UPDATE daemons SET heartbeat_at = {PG_NOW}, stopped_at = NULL WHERE id = $1"
        ))
        .bind(me)
        .execute(&self.pool)
        .await?;
        // Files being hashed too: a long hash must not lose its file to
        // another host.
        let mut q = stmt(format!(
            "UPDATE files SET lease_until = {PG_NOW} + $2 \
             WHERE claimed_by = $1 AND (state = 'discovered' OR (state = 'uploading' AND id IN ("
        ))
        .bind(me)
        .bind(lease_ms);
        if sending.is_empty() {
            q.push("NULL");
        }
        for (i, id) in sending.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.push_bind(*id);
        }
        q.push(")))");
        q.execute(&self.pool).await?;
        if sending.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // Still ours whatever its state: a worker may have just recorded
        // its own answer (the record is `processing` or `queued` now, and
        // no longer leased), and must not be stopped for it.
        let mut q = stmt("SELECT id FROM files WHERE claimed_by = $1 AND id IN (").bind(me);
        for (i, id) in sending.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.push_bind(*id);
        }
        q.push(")");
        Ok(Some(q.scalar_all(&self.pool).await?))
    }

    /// Leave the fleet (a clean stop).
    pub async fn leave(&self) -> Result<(), LedgerError> {
        let Some(me) = self.me_id() else {
            return Ok(());
        };
        let now_sql = if self.pool.is_postgres() {
            PG_NOW
        } else {
            "$2"
        };
        stmt(format!(
            "UPDATE daemons SET stopped_at = {now_sql} WHERE id = $1"
        ))
        .bind(me)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Earlier daemons of this host whose process is gone (a crash, a
    /// SIGKILL) are recorded as stopped at once, so that a daemon restarted
    /// on the same host takes their work over without waiting out their
    /// leases. A pid that exists may be another process: its daemon is left
    /// to its lease, which is safe.
    async fn close_dead_neighbours(&self, me: &Member) -> Result<(), LedgerError> {
        let rows: Vec<(i64, i64)> =
            stmt("SELECT id, pid FROM daemons WHERE host = $1 AND stopped_at IS NULL AND id != $2")
                .bind(me.host.clone())
                .bind(me.id)
                .fetch_all(&self.pool)
                .await?;
        for (id, pid) in rows {
            let gone = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_none_or(|p| {
                    rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH)
                });
            if gone {
                stmt("UPDATE daemons SET stopped_at = heartbeat_at WHERE id = $1 AND stopped_at IS NULL")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                tracing::info!(
                    daemon_id = id,
                    pid,
                    "an earlier daemon of this host is gone; taking its work over"
                );
            }
        }
        Ok(())
    }

    /// Take over uploads whose lease ran out (their daemon died or lost the
    /// database): back to `queued`, marked to be looked up on the platform
    /// first, as after a crash, a little later so that a body the platform
    /// was still receiving has become an asset. PostgreSQL only; returns
    /// how many.
    pub async fn take_over_expired(&self) -> Result<u64, LedgerError> {
        if !self.pool.is_postgres() {
            return Ok(0);
        }
        let to = FileState::Uploading.on(Event::Retry)?;
        let now = now_ms();
        let mut tx = self.pool.begin_claim().await?;
        let taken: Vec<(i64, Option<String>, Option<i64>)> = stmt(format!(
            "WITH expired AS (SELECT id, claimed_by FROM files \
               WHERE state = 'uploading' AND (lease_until IS NULL OR lease_until < {PG_NOW} \
                 OR claimed_by IN (SELECT id FROM daemons WHERE stopped_at IS NOT NULL)) \
               FOR UPDATE SKIP LOCKED) \
             UPDATE files SET state = $1, lookup_first = TRUE, next_attempt_at = $2, \
               updated_at = $3, claimed_by = NULL, lease_until = NULL, epoch = files.epoch + 1 \
             FROM expired WHERE files.id = expired.id \
             RETURNING files.id, coalesce(files.path, files.url), expired.claimed_by"
        ))
        .bind(to.as_str())
        .bind(now + LOOKUP_DELAY_MS)
        .bind(now)
        .fetch_all(&mut tx)
        .await?;
        for (id, _, owner) in &taken {
            stmt(
                "UPDATE attempts SET ended_at = $2, outcome = 'interrupted', error = $3 \
                 WHERE file_id = $1 AND ended_at IS NULL",
            )
            .bind(*id)
            .bind(now)
            .bind(format!(
                "taken over: daemon {} stopped renewing its lease",
                owner.map_or_else(|| "?".into(), |o| o.to_string())
            ))
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        for (id, path, owner) in &taken {
            self.changed(
                *id,
                path.clone().unwrap_or_default(),
                to,
                Some(format!(
                    "taken over from daemon {} (its lease ran out); looked up before it is sent again",
                    owner.map_or_else(|| "?".into(), |o| o.to_string())
                )),
            );
        }
        Ok(u64::try_from(taken.len()).unwrap_or(0))
    }

    /// A daemon silent for an hour died without a word (`status` has
    /// flagged it stale all that while): record it as stopped when it was
    /// last heard of, so that the fleet view forgets it in time.
    pub async fn close_silent_daemons(&self) -> Result<u64, LedgerError> {
        if !self.pool.is_postgres() {
            return Ok(0);
        }
        Ok(stmt(format!(
            "UPDATE daemons SET stopped_at = heartbeat_at \
             WHERE stopped_at IS NULL AND heartbeat_at < {PG_NOW} - $1"
        ))
        .bind(SILENT_FOR_MS)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Daemons running, and those that stopped after `since_ms`, newest first.
    pub async fn daemons(&self, since_ms: i64) -> Result<Vec<DaemonInfo>, LedgerError> {
        let now_sql = if self.pool.is_postgres() {
            PG_NOW
        } else {
            "$2"
        };
        Ok(stmt(format!(
            "SELECT d.id, d.host, d.pid, d.version, d.started_at, d.heartbeat_at, d.stopped_at, \
             (SELECT count(*) FROM files f WHERE f.claimed_by = d.id AND f.state = 'uploading') \
               AS in_flight, d.lease_ms, \
             CAST({now_sql} AS BIGINT) AS now \
             FROM daemons d WHERE d.stopped_at IS NULL OR d.stopped_at >= $1 \
             ORDER BY d.id DESC"
        ))
        .bind(since_ms)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Reserve the fleet's next request slot, `spacing_ms` after the last
    /// one (and after any shared 429 pause): how long to wait for it, in
    /// ms. One row updated atomically, on the database clock.
    pub async fn reserve_request(&self, spacing_ms: i64) -> Result<i64, LedgerError> {
        if !self.pool.is_postgres() {
            return Ok(0);
        }
        Ok(stmt(format!(
            "WITH clock AS (SELECT {PG_NOW} AS ms) \
             UPDATE fleet_gate SET next_slot_ms = \
               GREATEST(fleet_gate.next_slot_ms, fleet_gate.paused_until_ms, clock.ms) + $1 \
             FROM clock WHERE fleet_gate.id = 1 \
             RETURNING GREATEST(fleet_gate.next_slot_ms - $1 - clock.ms, 0)"
        ))
        .bind(spacing_ms)
        .scalar_optional::<i64>(&self.pool)
        .await?
        .unwrap_or(0))
    }

    /// A 429 told this host to wait `wait_ms`: every host waits as long.
    pub async fn pause_fleet(&self, wait_ms: i64) -> Result<(), LedgerError> {
        if !self.pool.is_postgres() {
            return Ok(());
        }
        stmt(format!(
            "UPDATE fleet_gate SET paused_until_ms = GREATEST(paused_until_ms, {PG_NOW} + $1) \
             WHERE id = 1"
        ))
        .bind(wait_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How long the fleet is still paused by a 429 (ms; 0 when it is not).
    pub async fn fleet_pause_left(&self) -> Result<i64, LedgerError> {
        if !self.pool.is_postgres() {
            return Ok(0);
        }
        Ok(stmt(format!(
            "SELECT GREATEST(paused_until_ms - {PG_NOW}, 0) FROM fleet_gate WHERE id = 1"
        ))
        .scalar_optional::<i64>(&self.pool)
        .await?
        .unwrap_or(0))
    }
}
