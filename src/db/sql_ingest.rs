//! SQLite: ingest jobs and applying parsed files to the attendance and referral tables.

use anyhow::Context;
use chrono::Datelike;
use sqlx::{AnyConnection, Arguments, Row, any::AnyArguments};

use super::sql::{Backend, ORG_COLUMNS, SqlDb, append_audit, org_from_row};
use super::*;
use crate::domain::attendance::Status;
use crate::domain::placement::Span;
use crate::domain::visibility::{
    LearnerLinks, NOT_YOURS, PlacementLink, Viewer, may_see_learner, not_placed,
};
use crate::ingest::absences::AbsenceDecision;
use crate::ingest::forms::{Referral, Withdrawal};
use crate::ingest::placements::PlacementRow;
use crate::ingest::receipt::{ReceiptHeader, receipt_name, render};
use crate::ingest::register::RegisterRow;
use crate::ingest::roster::RosterRow;
use crate::ingest::table::RowResult;
use crate::ingest::training::{Entry, Note};
use crate::mail::Notice;

use super::sql_mail::insert_notice;

pub(super) async fn ingest_job(db: &SqlDb, job_id: i64) -> anyhow::Result<Option<IngestJob>> {
    let row = sqlx::query(&format!(
        "SELECT j.id AS job_id, j.kind AS job_kind, j.state, u.id AS upload_id, u.name AS file_name,
                u.blob, u.size, u.sha256, u.created_at AS received_at,
                COALESCE(us.username, 'cli') AS sender_label, u.sender_user_id,
                {}
         FROM ingest_jobs j JOIN uploads u ON u.id = j.upload_id
         JOIN orgs o ON o.id = u.sender_org_id
         LEFT JOIN users us ON us.id = u.sender_user_id
         WHERE j.id = $1",
        ORG_COLUMNS
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(job_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let kind: String = r.try_get("job_kind")?;
    Ok(Some(IngestJob {
        job_id: r.try_get("job_id")?,
        upload_id: r.try_get("upload_id")?,
        kind: IngestKind::parse(&kind)
            .ok_or_else(|| anyhow::anyhow!("unknown ingest kind {kind}"))?,
        org: org_from_row(&r)?,
        sender_label: r.try_get("sender_label")?,
        sender_user_id: r.try_get("sender_user_id")?,
        file_name: r.try_get("file_name")?,
        blob: r.try_get("blob")?,
        size: r.try_get::<i64, _>("size")? as u64,
        sha256: r.try_get("sha256")?,
        received_at: r.try_get("received_at")?,
        done: r.try_get::<String, _>("state")? != "pending",
    }))
}

pub(super) async fn applied_duplicate(
    db: &SqlDb,
    job: &IngestJob,
) -> anyhow::Result<Option<String>> {
    let mut conn = db.pool.acquire().await?;
    duplicate_of(&mut conn, job).await
}

/// The earlier file of the same sender and kind with the same bytes that applied rows.
async fn duplicate_of(conn: &mut AnyConnection, job: &IngestJob) -> anyhow::Result<Option<String>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT u.name, u.created_at FROM uploads u JOIN ingest_jobs j ON j.upload_id = u.id
         JOIN receipts r ON r.upload_id = u.id
         WHERE u.sender_org_id = $1 AND j.kind = $2 AND u.sha256 = $3 AND u.id <> $4
           AND j.state = 'done' AND j.outcome IS NULL AND r.accepted > 0
         ORDER BY u.id LIMIT 1",
    )
    .bind(job.org.id)
    .bind(job.kind.as_str())
    .bind(&job.sha256)
    .bind(job.upload_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(name, at)| format!("{name} received at {at}")))
}

/// The body a receipt's reader sees: the hub's copy where it has one.
fn receipt_body(hub_view: bool) -> &'static str {
    if hub_view {
        "COALESCE(hub_body, body)"
    } else {
        "body"
    }
}

pub(super) async fn receipt_list(
    db: &SqlDb,
    org_id: i64,
    hub_view: bool,
) -> anyhow::Result<Vec<ReceiptEntry>> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(&format!(
        "SELECT name, CAST({} AS BIGINT), created_at FROM receipts WHERE org_id = $1 ORDER BY name",
        db.backend.byte_length(receipt_body(hub_view))
    ))
    .bind(org_id)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, size, created_at)| ReceiptEntry {
            name,
            size: size as u64,
            created_at,
        })
        .collect())
}

pub(super) async fn receipt(
    db: &SqlDb,
    org_id: i64,
    name: &str,
    hub_view: bool,
) -> anyhow::Result<Option<ReceiptFile>> {
    let row: Option<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT name, {} AS body, created_at FROM receipts WHERE org_id = $1 AND name = $2",
        receipt_body(hub_view)
    ))
    .bind(org_id)
    .bind(name)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.map(|(name, body, created_at)| ReceiptFile {
        name,
        body,
        created_at,
    }))
}

pub(super) async fn apply_ingest(
    db: &SqlDb,
    job: &IngestJob,
    batch: &Batch,
    audit: &AuditEntry,
) -> anyhow::Result<Option<ApplyReport>> {
    let mut tx = db.begin().await?;
    // Claim the job inside the transaction: a second run (another process, a retry after a
    // crash) finds it done and applies nothing.
    let claimed = sqlx::query(
        "UPDATE ingest_jobs SET state = 'done', attempts = attempts + 1, updated_at = $1
         WHERE id = $2 AND state = 'pending'",
    )
    .bind(now_text())
    .bind(job.job_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(None);
    }
    let mut report = ApplyReport::default();
    // Decided again inside the transaction: two identical files that arrive at the same moment
    // both passed the check before parsing, and only the first to get here may apply.
    let duplicate = match batch {
        Batch::Unreadable(_) | Batch::Duplicate(_) => None,
        _ => duplicate_of(&mut tx, job).await?,
    };
    match batch {
        _ if duplicate.is_some() => report.duplicate_of = duplicate,
        Batch::Unreadable(reason) => report.unreadable = Some(reason.clone()),
        Batch::Duplicate(of) => report.duplicate_of = Some(of.clone()),
        Batch::Register(rows) => {
            apply_register(&mut tx, db.backend, job, rows, &mut report).await?
        }
        Batch::Absences(rows) => apply_absences(&mut tx, job, rows, &mut report).await?,
        Batch::Roster(rows) => apply_roster(&mut tx, job, rows, &mut report).await?,
        Batch::Referral(rows) => apply_referrals(&mut tx, job, rows, &mut report).await?,
        Batch::Withdrawal(rows) => apply_withdrawals(&mut tx, job, rows, &mut report).await?,
        Batch::Placements(rows) => apply_placements(&mut tx, job, rows, &mut report).await?,
        Batch::Training(rows) => {
            apply_training(&mut tx, db.backend, job, rows, &mut report).await?
        }
        Batch::Notes(rows) => apply_notes(&mut tx, job, rows, &mut report).await?,
    }
    let header = ReceiptHeader {
        file_name: &job.file_name,
        organisation: &format!("{} ({})", job.org.name, job.org.slug),
        kind: job.kind.as_str(),
        received_at: &job.received_at,
        sha256: &job.sha256,
    };
    let body = render(&header, &report, false);
    let hub_body = (!report.hub_notes.is_empty()).then(|| render(&header, &report, true));
    sqlx::query(
        "INSERT INTO receipts (org_id, upload_id, name, body, hub_body, accepted, rejected, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(job.org.id)
    .bind(job.upload_id)
    .bind(receipt_name(&job.received_at, &job.file_name))
    .bind(&body)
    .bind(&hub_body)
    .bind(report.accepted as i64)
    .bind(report.rejected.len() as i64)
    .bind(now_text())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE ingest_jobs SET outcome = $1 WHERE id = $2")
        .bind(&report.unreadable)
        .bind(job.job_id)
        .execute(&mut *tx)
        .await?;
    if !report.rejected.is_empty() || report.unreadable.is_some() {
        let notice = Notice::ReceiptWithRejections {
            org_id: job.org.id,
            uploader_user_id: job.sender_user_id,
            rejected: report.rejected.len(),
            unreadable: report.unreadable.is_some(),
            ingest_kind: job.kind.as_str().to_string(),
        };
        insert_notice(&mut tx, Some(job.upload_id), &notice).await?;
    }
    let mut audit = audit.clone();
    audit.detail = format!(
        "{}; {} accepted, {} rejected{}",
        audit.detail,
        report.accepted,
        report.rejected.len(),
        if report.unreadable.is_some() {
            ", unreadable"
        } else {
            ""
        }
    );
    append_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(Some(report))
}

/// The accepted rows of a parsed file; the rejected ones go into the report with their reason.
fn accepted<'a, T>(rows: &'a [RowResult<T>], report: &mut ApplyReport) -> Vec<(usize, &'a T)> {
    let mut ok = Vec::with_capacity(rows.len());
    for rr in rows {
        match &rr.result {
            Ok(value) => ok.push((rr.row, value)),
            Err(e) => report.reject(rr.row, e.clone()),
        }
    }
    ok
}

/// Rows per multi-row INSERT on SQLite (up to 14 parameters each; SQLite allows 32766 in one
/// statement): fewer round trips to the driver's thread than 1,000 rows (the difference in
/// the 1,000,000-row ingest was within the run-to-run noise).
const STAGING_ROWS: usize = 2300;
const _: () = assert!(STAGING_ROWS * 14 <= 32766);
/// Rows per INSERT from one JSON array parameter (PostgreSQL).
const STAGING_JSON_ROWS: usize = 20_000;

/// Maps keyed by a file's values: foldhash rather than the standard SipHash (SipHash led the
/// profile of the ranks over 1,000,000 rows); still seeded per map.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

fn fast_map<K, V>(capacity: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(capacity, foldhash::fast::RandomState::default())
}

fn bind_error(e: sqlx::error::BoxDynError) -> anyhow::Error {
    anyhow::anyhow!("cannot bind a register row to the insert: {e}")
}

/// Each distinct value and its rank in sorted order.
fn ranks_of<'v>(values: impl Iterator<Item = &'v str>) -> FastMap<&'v str, u32> {
    let mut ranks: FastMap<&str, u32> = fast_map(64);
    for v in values {
        ranks.entry(v).or_insert(0);
    }
    let mut distinct: Vec<&str> = ranks.keys().copied().collect();
    distinct.sort_unstable();
    for (rank, v) in distinct.into_iter().enumerate() {
        ranks.insert(v, rank as u32);
    }
    ranks
}

/// Sorts a register's rows into the order of `marks`' index (learner, date, start, course; then
/// the file's order) and ranks the rows of a lesson named more than once: each is a version,
/// the last one in the file is current. Returns whether any lesson was named more than once.
fn sort_and_rank(staged: &mut [StagedMark<'_>]) -> bool {
    // Sorted on small keys (start times and courses replaced by their rank among the file's
    // distinct values) rather than by comparing rows scattered in memory.
    let starts = ranks_of(staged.iter().map(|s| s.mark.start.as_str()));
    let courses = ranks_of(staged.iter().map(|s| s.mark.course.as_str()));
    // The whole key packed into one integer where it fits (it does for any real register):
    // learner 40 bits, day 22, start 16, course 16, row 32; sorted in place.
    let packs = starts.len() <= 1 << 16
        && courses.len() <= 1 << 16
        && staged
            .iter()
            .all(|s| (0..1 << 40).contains(&s.learner_id) && (0..1 << 32).contains(&s.row));
    if packs {
        let epoch = chrono::NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default();
        for s in staged.iter_mut() {
            let day = (s.mark.date - epoch).num_days().clamp(0, (1 << 22) - 1) as u128;
            s.key = (s.learner_id as u128) << 86
                | day << 64
                | u128::from(starts[s.mark.start.as_str()]) << 48
                | u128::from(courses[s.mark.course.as_str()]) << 32
                | s.row as u128;
        }
        staged.sort_unstable_by_key(|s| s.key);
    } else {
        staged.sort_by_cached_key(|s| {
            (
                s.learner_id,
                s.mark.date,
                starts[s.mark.start.as_str()],
                courses[s.mark.course.as_str()],
                s.row,
            )
        });
    }
    // The rows of one lesson are now neighbours, in the file's order.
    let mut repeated = false;
    for i in 1..staged.len() {
        let (before, after) = staged.split_at_mut(i);
        let (prev, this) = (&mut before[i - 1], &mut after[0]);
        if prev.learner_id == this.learner_id
            && prev.mark.date == this.mark.date
            && prev.mark.start == this.mark.start
            && prev.mark.course == this.mark.course
        {
            this.rank = prev.rank + 1;
            prev.last = 0;
            repeated = true;
        }
    }
    repeated
}

/// One accepted register row as it goes into the staging table.
struct StagedMark<'a> {
    row: i64,
    /// `mark.date` as text, formatted once per distinct day.
    date: &'a str,
    mark: &'a RegisterRow,
    rank: i64,
    last: i64,
    learner_id: i64,
    /// The sort key, packed (see `sort_and_rank`).
    key: u128,
}

/// The lesson values of a staged mark, in this order (after `learner_id, row_number`).
const LESSON_COLUMNS: &str =
    "date, start, end_time, course, status, contribution, grp, location, dfe_code, note";

/// The optional cells of a register row, in the order of `LESSON_COLUMNS`' last four.
fn optional_cells(r: &RegisterRow) -> [&Option<String>; 4] {
    [&r.group, &r.location, &r.dfe_code, &r.note]
}

/// Multi-row INSERTs with `?` parameters (SQLite; measured fastest there) of `staged` into
/// `table`: each row is `learner_id, row_number`, the lesson values, then the `N` values of
/// `tail` in `tail_columns`, then `constant_columns` set to `constants` (SQL text).
async fn insert_rows<'a, const N: usize>(
    conn: &mut AnyConnection,
    table: &str,
    tail_columns: &[&str; N],
    tail: impl Fn(&StagedMark<'_>) -> [i64; N],
    constant_columns: &str,
    constants: &str,
    staged: &'a [StagedMark<'a>],
) -> anyhow::Result<()> {
    let mut columns = format!("learner_id, row_number, {LESSON_COLUMNS}");
    for c in tail_columns {
        columns.push_str(", ");
        columns.push_str(c);
    }
    if !constant_columns.is_empty() {
        columns.push_str(", ");
        columns.push_str(constant_columns);
    }
    // The optional cells (group, location, dfe_code, note) are bound only where a chunk has
    // some: a column empty in the whole chunk is a NULL in the statement, which saves a third
    // of the parameters of a register without them.
    let optional = |s: &StagedMark<'_>| -> u8 {
        optional_cells(s.mark)
            .iter()
            .enumerate()
            .fold(0, |mask, (i, cell)| mask | (u8::from(cell.is_some()) << i))
    };
    let chunk_masks: Vec<u8> = staged
        .chunks(STAGING_ROWS)
        .map(|chunk| chunk.iter().fold(0, |mask, s| mask | optional(s)))
        .collect();
    let mut statements: FastMap<(u8, usize), String> = fast_map(4);
    for (chunk, mask) in staged.chunks(STAGING_ROWS).zip(&chunk_masks) {
        statements.entry((*mask, chunk.len())).or_insert_with(|| {
            let mut row_sql = String::from("(?,?,?,?,?,?,?,?");
            for i in 0..4 {
                row_sql.push_str(if mask & (1 << i) != 0 { ",?" } else { ",NULL" });
            }
            row_sql.push_str(&",?".repeat(N));
            if !constant_columns.is_empty() {
                row_sql.push(',');
                row_sql.push_str(constants);
            }
            row_sql.push(')');
            let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&row_sql);
            }
            sql
        });
    }
    let query = |(chunk, mask): (&'a [StagedMark<'a>], &u8)| {
        let sql = statements
            .get(&(*mask, chunk.len()))
            .ok_or("no statement for a chunk")?;
        // Reserved at its final size: growing it would copy every parameter several times.
        let mut args = AnyArguments::default();
        args.reserve(chunk.len() * (12 + N), 0);
        for s in chunk {
            let r = s.mark;
            args.add(s.learner_id)?;
            args.add(s.row)?;
            args.add(s.date)?;
            args.add(r.start.as_str())?;
            args.add(r.end.as_str())?;
            args.add(r.course.as_str())?;
            args.add(r.status.as_str())?;
            args.add(i64::from(r.contribution))?;
            for (i, cell) in optional_cells(r).into_iter().enumerate() {
                if mask & (1 << i) != 0 {
                    args.add(cell.as_deref())?;
                }
            }
            for v in tail(s) {
                args.add(v)?;
            }
        }
        Ok::<_, sqlx::error::BoxDynError>(sqlx::query_with(sql.as_str(), args))
    };
    // Each chunk's parameters are bound while the database executes the chunk before it (the
    // SQLite driver runs statements on its own thread): the two halves of the work overlap.
    let mut chunks = staged.chunks(STAGING_ROWS).zip(&chunk_masks);
    let mut next = chunks.next().map(query).transpose().map_err(bind_error)?;
    while let Some(current) = next.take() {
        let (done, built) = futures::join!(current.execute(&mut *conn), async {
            chunks.next().map(query).transpose()
        });
        done?;
        next = built.map_err(bind_error)?;
    }
    Ok(())
}

/// PostgreSQL: each chunk travels as one JSON array parameter unpacked by the server (measured:
/// 13.75 s → 10.96 s for 1,000,000 rows; on SQLite the same was slower than parameters).
async fn stage_as_json(conn: &mut AnyConnection, staged: &[StagedMark<'_>]) -> anyhow::Result<()> {
    let insert = format!(
        "INSERT INTO staging_marks (row_number, {LESSON_COLUMNS}, rk, last, learner_id)
         SELECT CAST(value ->> 0 AS BIGINT), value ->> 1, value ->> 2, value ->> 3, value ->> 4,
            value ->> 5, CAST(value ->> 6 AS BIGINT), value ->> 7, value ->> 8, value ->> 9,
            value ->> 10, CAST(value ->> 11 AS BIGINT), CAST(value ->> 12 AS BIGINT),
            CAST(value ->> 13 AS BIGINT)
         FROM jsonb_array_elements($1::jsonb) AS j(value)"
    );
    let mut json = Vec::new();
    for chunk in staged.chunks(STAGING_JSON_ROWS) {
        json.clear();
        let rows: Vec<_> = chunk
            .iter()
            .map(|s| {
                let r = s.mark;
                (
                    s.row,
                    s.date,
                    &r.start,
                    &r.end,
                    &r.course,
                    r.status.as_str(),
                    i64::from(r.contribution),
                    &r.group,
                    &r.location,
                    &r.dfe_code,
                    &r.note,
                    s.rank,
                    s.last,
                    s.learner_id,
                )
            })
            .collect();
        serde_json::to_writer(&mut json, &rows)?;
        sqlx::query(&insert)
            .bind(std::str::from_utf8(&json)?)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A learner named in a provider's file: id, home school, and its placements with that
/// provider.
struct PlacedLearner {
    id: i64,
    school: Option<i64>,
    placements: Vec<PlacedOn>,
}

struct PlacedOn {
    id: i64,
    course: String,
    span: Span,
}

impl PlacedLearner {
    /// Whether a lesson on `course` on `day` belongs to one of the placements (SPEC §4.1).
    fn placed_on(&self, course: &str, day: chrono::NaiveDate) -> bool {
        self.placements
            .iter()
            .any(|p| p.course == course && p.span.covers(day))
    }

    /// The placement open on `day` (on `course`, when given) that a training-record entry
    /// belongs to: the latest to start.
    fn open_on(&self, course: Option<&str>, day: chrono::NaiveDate) -> Option<&PlacedOn> {
        self.placements
            .iter()
            .filter(|p| course.is_none_or(|c| p.course == c) && p.span.is_open(day))
            .filter(|p| p.span.start <= day)
            .max_by_key(|p| p.span.start)
    }
}

fn stored_date(text: &str) -> anyhow::Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("stored date `{text}` is not YYYY-MM-DD"))
}

/// The learners of `upns` that have a placement with this provider (SPEC §4.0), by UPN; a UPN
/// without one is absent, whether the learner exists or not. Nothing is created from a
/// provider's file.
async fn placed_learners<'r>(
    conn: &mut AnyConnection,
    backend: Backend,
    provider_org_id: i64,
    upns: impl Iterator<Item = &'r str>,
) -> anyhow::Result<FastMap<&'r str, PlacedLearner>> {
    // Distinct first (a register names a few thousand learners in a million rows), then sorted
    // for the binary search below.
    let mut distinct: FastMap<&str, ()> = fast_map(4096);
    for u in upns {
        distinct.insert(u, ());
    }
    let mut upns: Vec<&str> = distinct.into_keys().collect();
    upns.sort_unstable();
    let mut placed: FastMap<&str, PlacedLearner> = fast_map(upns.len());
    for chunk in upns.chunks(500) {
        let sql = format!(
            "SELECT l.upn, l.id, p.id, l.school_org_id, p.course, p.start_date, p.end_date
             FROM learners l JOIN placements p ON p.learner_id = l.id
             WHERE p.provider_org_id = {} AND l.upn IN ({})",
            backend.placeholder(1),
            (2..=chunk.len() + 1)
                .map(|i| backend.placeholder(i))
                .collect::<Vec<_>>()
                .join(",")
        );
        type Placed = (
            String,
            i64,
            i64,
            Option<i64>,
            String,
            String,
            Option<String>,
        );
        let mut q = sqlx::query_as::<_, Placed>(&sql).bind(provider_org_id);
        for u in chunk {
            q = q.bind(*u);
        }
        for (upn, learner_id, id, school, course, start, end) in q.fetch_all(&mut *conn).await? {
            let Ok(i) = chunk.binary_search(&upn.as_str()) else {
                continue;
            };
            let span = Span {
                start: stored_date(&start)?,
                end: end.as_deref().map(stored_date).transpose()?,
            };
            placed
                .entry(chunk[i])
                .or_insert_with(|| PlacedLearner {
                    id: learner_id,
                    school,
                    placements: Vec::new(),
                })
                .placements
                .push(PlacedOn { id, course, span });
        }
    }
    Ok(placed)
}

/// Applies a register set-wise. New lessons of a provider (none of its current marks in the
/// file's learners and dates, no lesson twice in the file) go straight into `marks` in index
/// order (SQLite). Otherwise the rows go into a temporary staging table in large INSERTs, then a
/// few statements find the versions being amended, retire them and insert every new version
/// with its history number.
async fn apply_register(
    conn: &mut AnyConnection,
    backend: Backend,
    job: &IngestJob,
    rows: &[RowResult<RegisterRow>],
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let parsed = accepted(rows, report);
    if parsed.is_empty() {
        return Ok(());
    }
    let now = now_text();
    let started = std::time::Instant::now();
    let learners = placed_learners(
        conn,
        backend,
        job.org.id,
        parsed.iter().map(|(_, r)| r.upn.as_str()),
    )
    .await?;
    let read_placements = started.elapsed();
    // A row about a learner without a placement on its course and day is rejected in the same
    // words whether the UPN is known or not (SPEC §1).
    let mut days: FastMap<chrono::NaiveDate, String> = fast_map(366);
    for (_, r) in &parsed {
        days.entry(r.date).or_insert_with(|| r.date.to_string());
    }
    let mut staged = Vec::with_capacity(parsed.len());
    for (row, r) in &parsed {
        match learners.get(r.upn.as_str()) {
            Some(l) if l.placed_on(&r.course, r.date) => staged.push(StagedMark {
                row: *row as i64,
                date: &days[&r.date],
                mark: r,
                rank: 1,
                last: 1,
                learner_id: l.id,
                key: 0,
            }),
            _ => report.reject(
                *row,
                not_placed(&job.org.slug, Some(r.course.as_str()), &days[&r.date]),
            ),
        }
    }
    if staged.is_empty() {
        return Ok(());
    }
    let checked = started.elapsed();
    let repeated = sort_and_rank(&mut staged);
    let sorted = started.elapsed();
    let learner_ids: Vec<i64> = {
        let mut ids: Vec<i64> = learners.values().map(|l| l.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let (first_day, last_day) = staged
        .iter()
        .fold((staged[0].mark.date, staged[0].mark.date), |(a, b), s| {
            (a.min(s.mark.date), b.max(s.mark.date))
        });
    let overlapping = provider_marks_exist(
        conn,
        backend,
        job.org.id,
        &learner_ids,
        &first_day.to_string(),
        &last_day.to_string(),
    )
    .await?;
    if backend == Backend::Sqlite && !overlapping && !repeated {
        insert_new_marks(conn, job, &staged, &now).await?;
    } else {
        apply_staged(conn, backend, job, &staged, overlapping, &now, report).await?;
    }
    tracing::debug!(
        placements_ms = read_placements.as_millis() as u64,
        check_ms = (checked - read_placements).as_millis() as u64,
        sort_ms = (sorted - checked).as_millis() as u64,
        insert_ms = (started.elapsed() - sorted).as_millis() as u64,
        "register apply timings"
    );
    report.accepted += staged.len();
    // Unexplained absences per home school, for the schools' notices.
    let mut per_school: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for s in &staged {
        if s.mark.status == Status::UnexplainedAbsence
            && let Some(school) = learners.get(s.mark.upn.as_str()).and_then(|l| l.school)
        {
            *per_school.entry(school).or_insert(0) += 1;
        }
    }
    for (school, count) in per_school {
        let notice = Notice::UnexplainedAbsences {
            school_org_id: school,
            provider_org_id: job.org.id,
            count,
        };
        insert_notice(conn, Some(job.upload_id), &notice).await?;
    }
    Ok(())
}

/// Whether the provider has current marks for any of these learners in these dates.
async fn provider_marks_exist(
    conn: &mut AnyConnection,
    backend: Backend,
    provider: i64,
    learner_ids: &[i64],
    first_day: &str,
    last_day: &str,
) -> anyhow::Result<bool> {
    for chunk in learner_ids.chunks(500) {
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM marks WHERE current = 1 AND learner_id IN ({})
                AND date BETWEEN {} AND {} AND provider_org_id = {} LIMIT 1) AS x",
            (1..=chunk.len())
                .map(|i| backend.placeholder(i))
                .collect::<Vec<_>>()
                .join(","),
            backend.placeholder(chunk.len() + 1),
            backend.placeholder(chunk.len() + 2),
            backend.placeholder(chunk.len() + 3),
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        if q.bind(first_day)
            .bind(last_day)
            .bind(provider)
            .fetch_one(&mut *conn)
            .await?
            > 0
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// New lessons only: every row is version 1 and current, inserted straight into `marks` in
/// index order (`staged` is sorted: the index then grows at its end). SQLite.
async fn insert_new_marks(
    conn: &mut AnyConnection,
    job: &IngestJob,
    staged: &[StagedMark<'_>],
    now: &str,
) -> anyhow::Result<()> {
    // The constants are the gateway's own values (ids and its clock), written into the SQL.
    let constants = format!(
        "{}, 1, 1, 'register', {}, '{}'",
        job.org.id,
        job.upload_id,
        now.replace('\'', "")
    );
    insert_rows(
        conn,
        "marks",
        &[],
        |_| [],
        "provider_org_id, version, current, source, upload_id, created_at",
        &constants,
        staged,
    )
    .await
}

/// Amendments or repeated lessons: through the staging table.
async fn apply_staged(
    conn: &mut AnyConnection,
    backend: Backend,
    job: &IngestJob,
    staged: &[StagedMark<'_>],
    overlapping: bool,
    now: &str,
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS staging_marks (
            row_number INTEGER PRIMARY KEY, date TEXT NOT NULL, start TEXT NOT NULL, end_time TEXT NOT NULL,
            course TEXT NOT NULL, status TEXT NOT NULL, contribution INTEGER NOT NULL, grp TEXT,
            location TEXT, dfe_code TEXT, note TEXT, rk INTEGER NOT NULL, last INTEGER NOT NULL,
            learner_id INTEGER, prior INTEGER)",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM staging_marks")
        .execute(&mut *conn)
        .await?;
    match backend {
        Backend::Sqlite => {
            insert_rows(
                conn,
                "staging_marks",
                &["rk", "last"],
                |s| [s.rank, s.last],
                "",
                "",
                staged,
            )
            .await?
        }
        Backend::Postgres => stage_as_json(conn, staged).await?,
    }
    if overlapping {
        sqlx::query(
            "UPDATE staging_marks SET prior = (
                SELECT m.version FROM marks m WHERE m.current = 1 AND m.provider_org_id = $1
                  AND m.learner_id = staging_marks.learner_id AND m.date = staging_marks.date
                  AND m.start = staging_marks.start AND m.course = staging_marks.course)",
        )
        .bind(job.org.id)
        .execute(&mut *conn)
        .await?;
    }
    let amended: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM staging_marks WHERE prior IS NOT NULL OR rk > 1")
            .fetch_one(&mut *conn)
            .await?;
    report.amended += amended as usize;
    sqlx::query(
        "UPDATE marks SET current = 0 WHERE current = 1 AND provider_org_id = $1
           AND (learner_id, date, start, course) IN
               (SELECT learner_id, date, start, course FROM staging_marks WHERE prior IS NOT NULL)",
    )
    .bind(job.org.id)
    .execute(&mut *conn)
    .await?;
    // In index order: both indexes of `marks` then grow at their ends instead of at random
    // places (measured: 6.6 s → see docs/benchmarks.md for 1,000,000 rows).
    sqlx::query(
        "INSERT INTO marks (provider_org_id, learner_id, date, start, end_time, course, status,
            contribution, grp, location, dfe_code, note, version, current, source, upload_id,
            row_number, created_at)
         SELECT $1, learner_id, date, start, end_time, course, status, contribution, grp, location,
            dfe_code, note, COALESCE(prior, 0) + rk, last, 'register', $2, row_number, $3
         FROM staging_marks ORDER BY learner_id, date, start, course, row_number",
    )
    .bind(job.org.id)
    .bind(job.upload_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM staging_marks")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A learner's id and home school, by UPN.
async fn learner_by_upn(
    conn: &mut AnyConnection,
    upn: &str,
) -> anyhow::Result<Option<(i64, Option<i64>)>> {
    Ok(
        sqlx::query_as("SELECT id, school_org_id FROM learners WHERE upn = $1")
            .bind(upn)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

async fn apply_absences(
    conn: &mut AnyConnection,
    job: &IngestJob,
    rows: &[RowResult<AbsenceDecision>],
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let now = now_text();
    for (row, d) in accepted(rows, report) {
        let learner = learner_by_upn(conn, &d.upn).await?;
        let Some((learner_id, Some(school))) = learner.filter(|(_, s)| *s == Some(job.org.id))
        else {
            report.reject(
                row,
                format!("learner {} is not on your school's roster; only your own learners' absences can be decided", d.upn),
            );
            continue;
        };
        debug_assert_eq!(school, job.org.id);
        let marks: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM marks WHERE learner_id = $1 AND date = $2 AND start = $3
             AND current = 1 AND status = 'unexplained_absence'",
        )
        .bind(learner_id)
        .bind(d.date.to_string())
        .bind(&d.start)
        .fetch_all(&mut *conn)
        .await?;
        if marks.is_empty() {
            report.reject(
                row,
                format!(
                    "there is no unexplained absence for {} on {} at {} to decide (it may be decided already)",
                    d.upn, d.date, d.start
                ),
            );
            continue;
        }
        for id in marks {
            sqlx::query("UPDATE marks SET current = 0 WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO marks (provider_org_id, learner_id, date, start, end_time, course, status,
                    contribution, grp, location, dfe_code, note, version, current, source, upload_id,
                    row_number, created_at)
                 SELECT provider_org_id, learner_id, date, start, end_time, course, $1, 0, grp, location,
                    $2, COALESCE($3, note), version + 1, 1, 'school decision', $4, $5, $6
                 FROM marks WHERE id = $7",
            )
            .bind(d.decision.as_str())
            .bind(d.dfe_code.clone().unwrap_or_else(|| {
                if d.decision == Status::AuthorisedAbsence { "C".into() } else { "O".into() }
            }))
            .bind(&d.note)
            .bind(job.upload_id)
            .bind(row as i64)
            .bind(&now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        report.accepted += 1;
    }
    Ok(())
}

/// The words a school reads when its roster or referral names a learner of another school (or
/// one without a home school): nothing says which school, or whether the UPN was known.
const REGISTERED_ELSEWHERE: &str =
    "this UPN is registered to another school; the hub has been told";

/// The hub's note on a learner that a school may not claim: who holds them, if anyone.
async fn holder_note(
    conn: &mut AnyConnection,
    upn: &str,
    school: Option<i64>,
    sender: &Org,
) -> anyhow::Result<String> {
    let holder: Option<String> = match school {
        Some(id) => {
            sqlx::query_scalar("SELECT slug FROM orgs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
        }
        None => None,
    };
    Ok(match holder {
        Some(h) => format!("{upn} is registered to {h}; {} named it too", sender.slug),
        None => format!(
            "{upn} is known without a home school (created from a register before placements); {} named it",
            sender.slug
        ),
    })
}

async fn apply_roster(
    conn: &mut AnyConnection,
    job: &IngestJob,
    rows: &[RowResult<RosterRow>],
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let now = now_text();
    for (row, r) in accepted(rows, report) {
        // A learner is created only by its home school and never taken from another one.
        if let Some((_, school)) = learner_by_upn(conn, &r.upn).await?
            && school != Some(job.org.id)
        {
            report.reject(row, REGISTERED_ELSEWHERE);
            let note = holder_note(conn, &r.upn, school, &job.org).await?;
            report.hub_note(row, note);
            continue;
        }
        sqlx::query(
            "INSERT INTO learners (upn, surname, forename, date_of_birth, gender, year_group,
                school_org_id, details, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
             ON CONFLICT (upn) DO UPDATE SET surname = excluded.surname, forename = excluded.forename,
                date_of_birth = excluded.date_of_birth, gender = excluded.gender,
                year_group = excluded.year_group, details = excluded.details,
                updated_at = excluded.updated_at
             WHERE learners.school_org_id = excluded.school_org_id",
        )
        .bind(&r.upn)
        .bind(&r.surname)
        .bind(&r.forename)
        .bind(&r.date_of_birth)
        .bind(&r.gender)
        .bind(&r.year_group)
        .bind(job.org.id)
        .bind(r.details.to_string())
        .bind(&now)
        .execute(&mut *conn)
        .await?;
        report.accepted += 1;
    }
    Ok(())
}

/// The references of one file: read the year's last number once, then count on (the write
/// transaction holds the database's lock, so nobody else numbers meanwhile). Once per file, not
/// once per row: a 50,000-row referral CSV is not quadratic.
struct References {
    prefix: &'static str,
    year: i32,
    last: i64,
}

impl References {
    async fn start(
        conn: &mut AnyConnection,
        table: &str,
        prefix: &'static str,
        year: i32,
    ) -> anyhow::Result<References> {
        let head = format!("{prefix}-{year}-");
        let newest: Option<String> = sqlx::query_scalar(&format!(
            "SELECT MAX(reference) FROM {table} WHERE reference LIKE $1"
        ))
        .bind(format!("{head}%"))
        .fetch_one(&mut *conn)
        .await?;
        let last = match newest {
            None => 0,
            Some(r) => r
                .strip_prefix(&head)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("stored reference `{r}` is not {head}NNNNNN"))?,
        };
        Ok(References { prefix, year, last })
    }

    fn next(&mut self) -> String {
        self.last += 1;
        format!("{}-{}-{:06}", self.prefix, self.year, self.last)
    }
}

fn received(job: &IngestJob) -> chrono::NaiveDate {
    chrono::DateTime::parse_from_rfc3339(&job.received_at)
        .map(|d| d.date_naive())
        .unwrap_or_else(|_| chrono::Utc::now().date_naive())
}

async fn apply_referrals(
    conn: &mut AnyConnection,
    job: &IngestJob,
    rows: &[RowResult<Referral>],
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let now = now_text();
    let mut references = References::start(conn, "referrals", "REF", received(job).year()).await?;
    let mut count = 0;
    for (row, r) in accepted(rows, report) {
        let reference = references.next();
        sqlx::query(
            "INSERT INTO referrals (reference, school_org_id, upload_id, upn, tier, form, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&reference)
        .bind(job.org.id)
        .bind(job.upload_id)
        .bind(&r.upn)
        .bind(i64::from(r.tier))
        .bind(r.form.to_string())
        .bind(&job.received_at)
        .execute(&mut *conn)
        .await?;
        // The referring school becomes the home school of a learner new to the hub; a learner
        // already known stays where it is (the referral is kept, and the hub is told).
        match learner_by_upn(conn, &r.upn).await? {
            None => {
                let student = &r.form["student"];
                let text = |key: &str| match &student[key] {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                };
                let mut details = serde_json::Map::new();
                for (key, column) in [
                    ("sen_status", "sen"),
                    ("ehcp", "ehcp"),
                    ("fsm", "fsm"),
                    ("pupil_premium", "pupil_premium"),
                    ("in_care", "in_care"),
                ] {
                    if let Some(v) = text(key) {
                        details.insert(column.into(), serde_json::Value::String(v));
                    }
                }
                sqlx::query(
                    "INSERT INTO learners (upn, surname, forename, date_of_birth, gender, year_group,
                        school_org_id, details, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                )
                .bind(&r.upn)
                .bind(&r.surname)
                .bind(&r.forename)
                .bind(r.date_of_birth.to_string())
                .bind(text("gender"))
                .bind(text("year_group"))
                .bind(job.org.id)
                .bind(serde_json::Value::Object(details).to_string())
                .bind(&now)
                .execute(&mut *conn)
                .await?;
            }
            Some((_, school)) if school != Some(job.org.id) => {
                let note = holder_note(conn, &r.upn, school, &job.org).await?;
                report.hub_note(row, note);
            }
            Some(_) => {}
        }
        report.note(row, format!("accepted: reference {reference}"));
        report.accepted += 1;
        count += 1;
    }
    if count > 0 {
        let notice = Notice::ReferralReceived {
            school_org_id: job.org.id,
            count,
        };
        insert_notice(conn, Some(job.upload_id), &notice).await?;
    }
    Ok(())
}

/// A known learner's home school and placements (open or not on a day, with their courses),
/// as visibility needs them.
struct KnownLearner {
    school: Option<i64>,
    placements: Vec<PlacementLink>,
    courses: Vec<String>,
}

impl KnownLearner {
    /// May `v` see (and so write about) this learner (SPEC §1)?
    fn seen_by(&self, v: Viewer<'_>) -> bool {
        may_see_learner(
            v,
            LearnerLinks {
                home_school: self.school,
                placements: &self.placements,
            },
        )
    }

    /// Whether the learner has an open placement with `provider` on `course`.
    fn open_with(&self, provider: i64, course: &str) -> bool {
        self.placements
            .iter()
            .zip(&self.courses)
            .any(|(p, c)| p.open && p.provider_org_id == provider && c == course)
    }
}

/// The learner of a UPN with its placements as of `today`; `None` when nobody has the UPN.
async fn known_learner(
    conn: &mut AnyConnection,
    upn: &str,
    today: chrono::NaiveDate,
) -> anyhow::Result<Option<KnownLearner>> {
    let Some((id, school)) = learner_by_upn(conn, upn).await? else {
        return Ok(None);
    };
    let rows: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT provider_org_id, course, start_date, end_date FROM placements WHERE learner_id = $1",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut learner = KnownLearner {
        school,
        placements: Vec::with_capacity(rows.len()),
        courses: Vec::with_capacity(rows.len()),
    };
    for (provider, course, start, end) in rows {
        let span = Span {
            start: stored_date(&start)?,
            end: end.as_deref().map(stored_date).transpose()?,
        };
        learner.placements.push(PlacementLink {
            provider_org_id: provider,
            open: span.is_open(today),
        });
        learner.courses.push(course);
    }
    Ok(Some(learner))
}

async fn apply_withdrawals(
    conn: &mut AnyConnection,
    job: &IngestJob,
    rows: &[RowResult<Withdrawal>],
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let day = received(job);
    let viewer = Viewer {
        org_id: job.org.id,
        kind: job.org.kind,
        roles: None,
    };
    let mut references = References::start(conn, "withdrawals", "WD", day.year()).await?;
    let mut count = 0;
    let mut other_org_id = None;
    for (row, w) in accepted(rows, report) {
        let provider: Option<(i64, String)> =
            sqlx::query_as("SELECT id, kind FROM orgs WHERE slug = $1")
                .bind(&w.provider)
                .fetch_optional(&mut *conn)
                .await?;
        let provider_id = match provider {
            Some((id, kind)) if kind == "provider" => id,
            _ => {
                report.reject(
                    row,
                    format!(
                        "provider `{}` is not a provider known to the hub",
                        w.provider
                    ),
                );
                continue;
            }
        };
        // The sender may see the learner, and the learner has an open placement with that
        // provider on that course; otherwise the same words, whether the UPN is known or not.
        let learner = known_learner(conn, &w.upn, day).await?;
        let school = learner.as_ref().and_then(|l| l.school);
        let allowed = learner
            .as_ref()
            .is_some_and(|l| l.seen_by(viewer) && l.open_with(provider_id, &w.course));
        if !allowed {
            report.reject(
                row,
                format!(
                    "no open placement of this learner with {} on this course ({}) that you may withdraw",
                    w.provider, w.course
                ),
            );
            continue;
        }
        let reference = references.next();
        sqlx::query(
            "INSERT INTO withdrawals (reference, requester_org_id, provider_org_id, upload_id, upn, course,
                requested_last_day, reason, impact_considered, meeting_date, received_at, deadline)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&reference)
        .bind(job.org.id)
        .bind(provider_id)
        .bind(job.upload_id)
        .bind(&w.upn)
        .bind(&w.course)
        .bind(w.requested_last_day.to_string())
        .bind(&w.reason)
        .bind(i64::from(w.impact_considered))
        .bind(w.meeting_date.map(|d| d.to_string()))
        .bind(&job.received_at)
        .bind(w.deadline.to_string())
        .execute(&mut *conn)
        .await?;
        report.note(
            row,
            format!(
                "accepted: reference {reference}; the hub will process it by {} (the fifth working day after receipt)",
                w.deadline.format("%A %-d %B %Y")
            ),
        );
        report.accepted += 1;
        count += 1;
        // The other party: the provider of the course, or the learner's school when the
        // provider asks.
        other_org_id = if job.org.kind == OrgKind::Provider {
            school
        } else {
            Some(provider_id)
        };
    }
    if count > 0 {
        let notice = Notice::WithdrawalRequested {
            requester_org_id: job.org.id,
            other_org_id,
            count,
        };
        insert_notice(conn, Some(job.upload_id), &notice).await?;
    }
    Ok(())
}

/// The hub's placements file (SPEC §4.0): each row creates the placement of (learner, provider,
/// course, start date), or updates it when it exists; an end date ends it.
async fn apply_placements(
    conn: &mut AnyConnection,
    job: &IngestJob,
    rows: &[RowResult<PlacementRow>],
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let now = now_text();
    for (row, p) in accepted(rows, report) {
        let provider: Option<(i64, String)> =
            sqlx::query_as("SELECT id, kind FROM orgs WHERE slug = $1")
                .bind(&p.provider)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(provider_id) = provider
            .filter(|(_, kind)| kind == "provider")
            .map(|(id, _)| id)
        else {
            report.reject(
                row,
                format!("provider `{}` is not a provider organisation", p.provider),
            );
            continue;
        };
        let Some((learner_id, school)) = learner_by_upn(conn, &p.upn).await? else {
            report.reject(
                row,
                format!(
                    "learner {} is not known: a learner comes from its school's roster or a referral",
                    p.upn
                ),
            );
            continue;
        };
        if let Some(reference) = &p.referral {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT id FROM referrals WHERE reference = $1 AND upn = $2")
                    .bind(reference)
                    .bind(&p.upn)
                    .fetch_optional(&mut *conn)
                    .await?;
            if found.is_none() {
                report.reject(
                    row,
                    format!("referral {reference} is not a referral of {}", p.upn),
                );
                continue;
            }
        }
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM placements WHERE learner_id = $1 AND provider_org_id = $2
               AND course = $3 AND start_date = $4",
        )
        .bind(learner_id)
        .bind(provider_id)
        .bind(&p.course)
        .bind(p.start_date.to_string())
        .fetch_optional(&mut *conn)
        .await?;
        // The row states the placement whole: a later row replaces every optional column.
        sqlx::query(
            "INSERT INTO placements (learner_id, provider_org_id, course, start_date, end_date,
                cohort, qualification, partnership, referral, upload_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
             ON CONFLICT (learner_id, provider_org_id, course, start_date) DO UPDATE SET
                end_date = excluded.end_date, cohort = excluded.cohort,
                qualification = excluded.qualification, partnership = excluded.partnership,
                referral = excluded.referral, upload_id = excluded.upload_id,
                updated_at = excluded.updated_at",
        )
        .bind(learner_id)
        .bind(provider_id)
        .bind(&p.course)
        .bind(p.start_date.to_string())
        .bind(p.end_date.map(|d| d.to_string()))
        .bind(&p.cohort)
        .bind(&p.qualification)
        .bind(&p.partnership)
        .bind(&p.referral)
        .bind(job.upload_id)
        .bind(&now)
        .execute(&mut *conn)
        .await?;
        let what = match (existing, p.end_date) {
            (None, None) => "created".to_string(),
            (None, Some(end)) => format!("created, ending {end}"),
            (Some(_), None) => "updated".to_string(),
            (Some(_), Some(end)) => format!("updated, ending {end}"),
        };
        report.note(
            row,
            format!(
                "placement of {} with {} on {} from {} {what}",
                p.upn, p.provider, p.course, p.start_date
            ),
        );
        if school.is_none() {
            report.note(
                row,
                format!(
                    "{} has no home school yet: no school sees this placement",
                    p.upn
                ),
            );
        }
        report.accepted += 1;
    }
    Ok(())
}

/// Progress, appraisals, assessments and targets from a provider (SPEC §4.6): each row belongs
/// to the sender's placement of the learner open on the day the file arrived (on the row's
/// course, where it names one); a later row with the same key is a new version.
async fn apply_training(
    conn: &mut AnyConnection,
    backend: Backend,
    job: &IngestJob,
    rows: &[RowResult<Entry>],
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let parsed = accepted(rows, report);
    if parsed.is_empty() {
        return Ok(());
    }
    let day = received(job);
    let now = now_text();
    let learners = placed_learners(
        conn,
        backend,
        job.org.id,
        parsed.iter().map(|(_, e)| e.upn.as_str()),
    )
    .await?;
    for (row, e) in parsed {
        let Some(placement) = learners
            .get(e.upn.as_str())
            .and_then(|l| l.open_on(e.course.as_deref(), day))
        else {
            report.reject(
                row,
                not_placed(&job.org.slug, e.course.as_deref(), &day.to_string()),
            );
            continue;
        };
        let prior: Option<(i64, i64)> = sqlx::query_as(
            "SELECT id, version FROM training_entries
             WHERE placement_id = $1 AND kind = $2 AND entry_key = $3 AND current = 1",
        )
        .bind(placement.id)
        .bind(e.kind.as_str())
        .bind(&e.key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((id, _)) = prior {
            sqlx::query("UPDATE training_entries SET current = 0 WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            report.amended += 1;
        }
        sqlx::query(
            "INSERT INTO training_entries (kind, placement_id, entry_key, fields, version, current,
                upload_id, row_number, created_at)
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8)",
        )
        .bind(e.kind.as_str())
        .bind(placement.id)
        .bind(&e.key)
        .bind(e.fields.to_string())
        .bind(prior.map_or(1, |(_, v)| v + 1))
        .bind(job.upload_id)
        .bind(row as i64)
        .bind(&now)
        .execute(&mut *conn)
        .await?;
        report.accepted += 1;
    }
    Ok(())
}

/// Notes on a learner (SPEC §4.6) from anyone who may see the learner: the hub, the home school,
/// a provider with an open placement.
async fn apply_notes(
    conn: &mut AnyConnection,
    job: &IngestJob,
    rows: &[RowResult<Note>],
    report: &mut ApplyReport,
) -> anyhow::Result<()> {
    let day = received(job);
    let now = now_text();
    let viewer = Viewer {
        org_id: job.org.id,
        kind: job.org.kind,
        roles: None,
    };
    for (row, n) in accepted(rows, report) {
        let visible = known_learner(conn, &n.upn, day)
            .await?
            .is_some_and(|l| l.seen_by(viewer));
        if !visible {
            let why = if job.org.kind == OrgKind::Hub {
                format!("learner {} is not known", n.upn)
            } else {
                NOT_YOURS.to_string()
            };
            report.reject(row, why);
            continue;
        }
        sqlx::query(
            "INSERT INTO learner_notes (learner_id, author_org_id, author, subject, note, upload_id,
                row_number, created_at)
             VALUES ((SELECT id FROM learners WHERE upn = $1), $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&n.upn)
        .bind(job.org.id)
        .bind(&job.sender_label)
        .bind(&n.subject)
        .bind(&n.note)
        .bind(job.upload_id)
        .bind(row as i64)
        .bind(&now)
        .execute(&mut *conn)
        .await?;
        report.accepted += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::register;

    #[test]
    fn rows_sorted_into_index_order_and_repeated_lessons_ranked_in_file_order() {
        let text = "date,start,end,course,upn,surname,forename,status\n\
            2026-11-24,09:00,12:00,MV,B801200005001,T,S,present\n\
            2026-11-23,13:00,15:00,MV,B801200005001,T,S,present\n\
            2026-11-23,09:00,12:00,MV,B801200005001,T,S,late\n\
            2026-11-23,09:00,12:00,Art,B801200005001,T,S,present\n\
            2026-11-23,09:00,12:00,MV,B801200005001,T,S,present\n\
            2026-11-23,09:00,12:00,MV,Q801200005002,T,S,present\n\
            2026-11-23,09:00,12:00,MV,B801200005001,T,S,not_required\n";
        let rows = register::parse(text).unwrap();
        let marks: Vec<&RegisterRow> = rows.iter().map(|r| r.result.as_ref().unwrap()).collect();
        let mut staged: Vec<StagedMark<'_>> = marks
            .iter()
            .zip(2..)
            .map(|(m, row)| StagedMark {
                row,
                date: "",
                mark: m,
                rank: 1,
                last: 1,
                key: 0,
                // The second learner has the smaller id.
                learner_id: if m.upn.starts_with('Q') { 1 } else { 2 },
            })
            .collect();
        assert!(sort_and_rank(&mut staged));
        let got: Vec<(i64, i64, i64)> = staged.iter().map(|s| (s.row, s.rank, s.last)).collect();
        assert_eq!(
            got,
            vec![
                (7, 1, 1), // learner 1
                (5, 1, 1), // Art before MV
                (4, 1, 0), // 09:00 MV three times: versions 1, 2, 3; the last is current
                (6, 2, 0),
                (8, 3, 1),
                (3, 1, 1), // 13:00
                (2, 1, 1), // the next day
            ]
        );
        let mut once: Vec<StagedMark<'_>> = staged
            .into_iter()
            .filter(|s| s.row != 6 && s.row != 8)
            .collect();
        for s in &mut once {
            (s.rank, s.last) = (1, 1);
        }
        assert!(!sort_and_rank(&mut once));
    }
}
