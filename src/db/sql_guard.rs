//! Failed logins, bans and live sessions in the database, so that every gateway process sharing
//! it enforces the same bans and the same sessions-per-user limit.

use std::time::Duration;

use chrono::Utc;

use super::sql::SqlDb;
use super::*;

fn after(d: Duration) -> String {
    time_text(Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::TimeDelta::MAX))
}

fn before(d: Duration) -> String {
    time_text(Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::TimeDelta::MAX))
}

pub(super) async fn record_auth_failure(
    db: &SqlDb,
    address: &str,
    username: &str,
    limit: u32,
    ban: Duration,
) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    let now = now_text();
    let window_start = before(ban);
    let mut banned = false;
    for (kind, subject) in [("address", address), ("user", username)] {
        let row: Option<(i64, String, Option<String>)> = sqlx::query_as(
            "SELECT failures, first_at, banned_until FROM auth_failures
             WHERE kind = $1 AND subject = $2",
        )
        .bind(kind)
        .bind(subject)
        .fetch_optional(&mut *tx)
        .await?;
        // Failures are counted in a window of `ban` from the first one.
        let (mut failures, mut first_at, mut until) = match row {
            Some((n, first, until)) if first > window_start => (n, first, until),
            Some((_, _, until)) => (0, now.clone(), until),
            None => (0, now.clone(), None),
        };
        failures += 1;
        if failures >= i64::from(limit) {
            until = Some(after(ban));
            failures = 0;
            first_at = now.clone();
            banned = true;
        }
        sqlx::query(
            "INSERT INTO auth_failures (kind, subject, failures, first_at, banned_until)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (kind, subject) DO UPDATE SET failures = excluded.failures,
                 first_at = excluded.first_at, banned_until = excluded.banned_until",
        )
        .bind(kind)
        .bind(subject)
        .bind(failures)
        .bind(&first_at)
        .bind(&until)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(banned)
}

pub(super) async fn auth_banned(
    db: &SqlDb,
    address: &str,
    username: Option<&str>,
) -> anyhow::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM auth_failures WHERE banned_until > $1
           AND ((kind = 'address' AND subject = $2) OR (kind = 'user' AND subject = $3))",
    )
    .bind(now_text())
    .bind(address)
    .bind(username.unwrap_or_default())
    .fetch_one(&db.pool)
    .await?;
    Ok(n > 0)
}

pub(super) async fn clear_auth_failures(db: &SqlDb, username: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE auth_failures SET failures = 0 WHERE kind = 'user' AND subject = $1 AND failures > 0",
    )
    .bind(username)
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub(super) async fn bans_in_force(db: &SqlDb) -> anyhow::Result<(i64, i64)> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, COUNT(*) FROM auth_failures WHERE banned_until > $1 GROUP BY kind",
    )
    .bind(now_text())
    .fetch_all(&db.pool)
    .await?;
    let count = |k: &str| {
        rows.iter()
            .find(|(kind, _)| kind == k)
            .map_or(0, |(_, n)| *n)
    };
    Ok((count("address"), count("user")))
}

pub(super) async fn prune_auth_failures(db: &SqlDb, older_than: Duration) -> anyhow::Result<()> {
    sqlx::query(
        "DELETE FROM auth_failures WHERE first_at < $1 AND (banned_until IS NULL OR banned_until < $2)",
    )
    .bind(before(older_than))
    .bind(now_text())
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub(super) async fn open_session(
    db: &SqlDb,
    node: &str,
    user_id: i64,
    limit: u32,
    stale_after: Duration,
) -> anyhow::Result<Option<i64>> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM live_sessions WHERE seen_at < $1")
        .bind(before(stale_after))
        .execute(&mut *tx)
        .await?;
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM live_sessions WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    if live >= i64::from(limit) {
        return Ok(None);
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO live_sessions (node, user_id, seen_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(node)
    .bind(user_id)
    .bind(now_text())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(id))
}

pub(super) async fn close_session(db: &SqlDb, id: i64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM live_sessions WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub(super) async fn renew_sessions(db: &SqlDb, node: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE live_sessions SET seen_at = $1 WHERE node = $2")
        .bind(now_text())
        .bind(node)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub(super) async fn end_node_sessions(db: &SqlDb, node: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM live_sessions WHERE node = $1")
        .bind(node)
        .execute(&db.pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = open(&url).await.unwrap();
        (dir, db)
    }

    const BAN: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn an_address_is_banned_after_repeated_failures() {
        let (_d, db) = db().await;
        assert!(
            !db.record_auth_failure("127.0.0.9", "alice", 3, BAN)
                .await
                .unwrap()
        );
        assert!(
            !db.record_auth_failure("127.0.0.9", "bob", 3, BAN)
                .await
                .unwrap()
        );
        assert!(!db.auth_banned("127.0.0.9", Some("carol")).await.unwrap());
        assert!(
            db.record_auth_failure("127.0.0.9", "carol", 3, BAN)
                .await
                .unwrap(),
            "the third failure from one address bans it"
        );
        assert!(db.auth_banned("127.0.0.9", Some("anyone")).await.unwrap());
        assert!(db.auth_banned("127.0.0.9", None).await.unwrap());
        assert!(!db.auth_banned("127.0.0.10", Some("alice")).await.unwrap());
        assert_eq!(db.bans_in_force().await.unwrap(), (1, 0));
    }

    #[tokio::test]
    async fn a_user_attacked_from_many_addresses_is_banned() {
        let (_d, db) = db().await;
        for i in 1..=3 {
            db.record_auth_failure(&format!("127.0.1.{i}"), "alice", 3, BAN)
                .await
                .unwrap();
        }
        assert!(db.auth_banned("127.0.2.1", Some("alice")).await.unwrap());
        assert!(!db.auth_banned("127.0.2.1", Some("bob")).await.unwrap());
    }

    #[tokio::test]
    async fn a_success_clears_the_users_count_but_not_a_ban() {
        let (_d, db) = db().await;
        db.record_auth_failure("127.0.3.1", "alice", 3, BAN)
            .await
            .unwrap();
        db.record_auth_failure("127.0.3.2", "alice", 3, BAN)
            .await
            .unwrap();
        db.clear_auth_failures("alice").await.unwrap();
        assert!(
            !db.record_auth_failure("127.0.3.3", "alice", 3, BAN)
                .await
                .unwrap()
        );
        assert!(!db.auth_banned("127.0.4.1", Some("alice")).await.unwrap());
    }

    #[tokio::test]
    async fn sessions_per_user_are_limited_across_nodes() {
        let (_d, db) = db().await;
        let user = db
            .add_org(
                &NewOrg {
                    slug: "s".into(),
                    kind: OrgKind::School,
                    name: "S".into(),
                    urn: None,
                    ukprn: None,
                    coordinator_email: None,
                    dsl_email: None,
                },
                &crate::audit::AuditEntry::admin("org add", "s"),
            )
            .await
            .unwrap();
        let uid = db
            .add_user(
                &NewUser {
                    org_slug: user.slug,
                    username: "u".into(),
                    roles: vec![Role::Coordinator],
                    password_hash: None,
                    keys: vec![],
                    email: None,
                },
                &crate::audit::AuditEntry::admin("user add", "u"),
            )
            .await
            .unwrap();
        let fresh = Duration::from_secs(60);
        let a = db
            .open_session("node-a", uid, 2, fresh)
            .await
            .unwrap()
            .unwrap();
        assert!(
            db.open_session("node-b", uid, 2, fresh)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            db.open_session("node-b", uid, 2, fresh)
                .await
                .unwrap()
                .is_none()
        );
        db.close_session(a).await.unwrap();
        assert!(
            db.open_session("node-a", uid, 2, fresh)
                .await
                .unwrap()
                .is_some(),
            "a closed session frees its place"
        );
        // Rows a stopped node no longer renews stop counting.
        std::thread::sleep(Duration::from_millis(20));
        db.renew_sessions("node-a").await.unwrap();
        assert!(
            db.open_session("node-a", uid, 2, Duration::from_millis(10))
                .await
                .unwrap()
                .is_some()
        );
    }
}
