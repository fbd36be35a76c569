//! The audit log of federated requests: written in batches by the gateway, read by admins.

use crate::{DbError, PageRequest};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

/// One request to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub api_key_id: i64,
    /// What was asked, e.g. `catalog.list_works` or `stream.video`.
    pub action: &'static str,
    /// What it was asked of, e.g. a video id; `None` for listings.
    pub target: Option<String>,
    pub status: u16,
    /// Body bytes actually sent, which for a stream cut short is less than its length.
    pub bytes_sent: u64,
    pub occurred_at: DateTime<Utc>,
}

/// A recorded request, as the admin API shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub api_key_id: i64,
    pub federation_connection_id: Option<i64>,
    pub action: String,
    pub target: Option<String>,
    pub status: i32,
    pub bytes_sent: i64,
    pub occurred_at: DateTime<Utc>,
}

/// Writes entries in one statement. Each key's federation connection is looked up as the
/// rows are written (the lowest id if a key serves several connections).
pub async fn insert_entries(pool: &PgPool, entries: &[AuditEntry]) -> Result<(), DbError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(entries.len());
    let mut actions = Vec::with_capacity(entries.len());
    let mut targets = Vec::with_capacity(entries.len());
    let mut statuses = Vec::with_capacity(entries.len());
    let mut bytes = Vec::with_capacity(entries.len());
    let mut times = Vec::with_capacity(entries.len());
    for entry in entries {
        keys.push(entry.api_key_id);
        actions.push(entry.action);
        targets.push(entry.target.as_deref());
        statuses.push(i32::from(entry.status));
        bytes.push(i64::try_from(entry.bytes_sent).unwrap_or(i64::MAX));
        times.push(entry.occurred_at);
    }
    sqlx::query(
        "INSERT INTO audit_log (api_key_id, federation_connection_id, action, target, status,
                                bytes_sent, occurred_at)
         SELECT e.key_id,
                (SELECT min(c.id) FROM federation_connections c WHERE c.api_key_id = e.key_id),
                e.action, e.target, e.status, e.bytes, e.at
         FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::INTEGER[], $5::BIGINT[],
                     $6::TIMESTAMPTZ[]) AS e (key_id, action, target, status, bytes, at)",
    )
    .bind(&keys)
    .bind(&actions)
    .bind(&targets)
    .bind(&statuses)
    .bind(&bytes)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(())
}

/// What an admin may narrow the log to; every field is optional.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub api_key_id: Option<i64>,
    pub federation_connection_id: Option<i64>,
    pub action: Option<String>,
    pub status: Option<i32>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
}

fn push_filter(query: &mut QueryBuilder<Postgres>, filter: &AuditFilter) {
    query.push(" WHERE TRUE");
    if let Some(key) = filter.api_key_id {
        query.push(" AND api_key_id = ").push_bind(key);
    }
    if let Some(connection) = filter.federation_connection_id {
        query.push(" AND federation_connection_id = ").push_bind(connection);
    }
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action.clone());
    }
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status);
    }
    if let Some(since) = filter.since {
        query.push(" AND occurred_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND occurred_at < ").push_bind(until);
    }
}

/// One page of the log, newest first, with the total matching the filter.
pub async fn list_entries(
    pool: &PgPool,
    filter: &AuditFilter,
    page: PageRequest,
) -> Result<(Vec<AuditRow>, i64), DbError> {
    let mut count = QueryBuilder::new("SELECT count(*) FROM audit_log");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;

    let mut select = QueryBuilder::new(
        "SELECT id, api_key_id, federation_connection_id, action, target, status, bytes_sent,
                occurred_at FROM audit_log",
    );
    push_filter(&mut select, filter);
    select.push(" ORDER BY occurred_at DESC, id DESC LIMIT ").push_bind(page.limit());
    select.push(" OFFSET ").push_bind(page.offset());
    let rows = select.build_query_as().fetch_all(pool).await?;
    Ok((rows, total))
}
