//! The catalog database: connection, migrations, and every query the services run.
//!
//! Queries are checked at run time (`sqlx::query_as` with bound parameters) so that the
//! workspace builds from a clean clone without a live database or a `.sqlx` cache.

pub mod assets;
pub mod audit;
pub mod catalog;
pub mod connections;
pub mod hot;
pub mod ingest;
pub mod keys;
pub mod locations;
pub mod maintenance;
pub mod rescans;
pub mod scans;
pub mod secrets;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::time::Duration;
use velour_core::settings::DatabaseSettings;

pub use sqlx::PgPool as Pool;

/// Every migration in the workspace's `migrations/` folder, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// What can go wrong in the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the row was not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// The request conflicts with the catalog's state in a way that has its own stable
    /// code (an invalid status transition, a limit reached).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// Maps a unique-constraint violation to `Conflict` with a message people can act on.
    pub(crate) fn conflict_or(err: sqlx::Error, message: &str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict(message.to_owned())
            }
            _ => Self::Sqlx(err),
        }
    }

    /// Whether Postgres chose this transaction as a deadlock's victim: it rolled back and
    /// may simply be run again.
    pub fn is_deadlock(&self) -> bool {
        match self {
            Self::Sqlx(sqlx::Error::Database(db)) => db.code().as_deref() == Some("40P01"),
            _ => false,
        }
    }
}

/// Connects to the catalog, creating the database if it does not exist yet and applying
/// any migration not applied before. Several processes may start at once: sqlx takes an
/// advisory lock around migrations.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let url = settings.database_url.as_str();
    // Two services starting together may both see the database missing; the loser of
    // that race gets "already exists", which is what it wanted anyway.
    if !Postgres::database_exists(url).await?
        && let Err(err) = Postgres::create_database(url).await
        && !Postgres::database_exists(url).await?
    {
        return Err(err.into());
    }
    let pool = connect(settings).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Connects to an existing, migrated catalog.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options =
        PgConnectOptions::from_str(settings.database_url.as_str())?.application_name("velour");
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Connections of the `planned_once` pool.
const PLANNED_ONCE_CONNECTIONS: u32 = 4;

/// A small second pool on `pool`'s database whose sessions plan each prepared statement
/// once and reuse that plan (`plan_cache_mode = force_generic_plan`), for statements
/// whose text already fixes their plan. Postgres otherwise plans a statement again on
/// every run for as long as its generic plan's estimate looks worse than the plans made
/// for the values: for a search by title pattern, always (it guesses 500 matches without
/// the pattern, 10 with it), and planning cost more than running (0.5 of 1.2 ms, which
/// under 64 connections made searches a third slower). Connects when first used.
pub fn planned_once(pool: &PgPool) -> PgPool {
    let options =
        (*pool.connect_options()).clone().options([("plan_cache_mode", "force_generic_plan")]);
    PgPoolOptions::new()
        .max_connections(PLANNED_ONCE_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options)
}

/// A page of a listing, parsed and bounded at the edge: `page` from 1, `per_page` 1..=100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    page: u32,
    per_page: u32,
}

/// A page request that is out of bounds.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("page must be a whole number between 1 and {max}")]
    Page { max: u32 },
    #[error("per_page must be between 1 and {max}")]
    PerPage { max: u32 },
}

impl PageRequest {
    pub const DEFAULT_PER_PAGE: u32 = 50;
    pub const MAX_PER_PAGE: u32 = 100;

    pub fn new(page: Option<i64>, per_page: Option<i64>) -> Result<Self, PageError> {
        let page = page.unwrap_or(1);
        let per_page = per_page.unwrap_or(i64::from(Self::DEFAULT_PER_PAGE));
        let page = u32::try_from(page)
            .ok()
            .filter(|p| *p >= 1)
            .ok_or(PageError::Page { max: u32::MAX })?;
        let per_page = u32::try_from(per_page)
            .ok()
            .filter(|p| (1..=Self::MAX_PER_PAGE).contains(p))
            .ok_or(PageError::PerPage { max: Self::MAX_PER_PAGE })?;
        Ok(Self { page, per_page })
    }

    pub fn page(self) -> u32 {
        self.page
    }

    pub fn per_page(self) -> u32 {
        self.per_page
    }

    pub(crate) fn limit(self) -> i64 {
        i64::from(self.per_page)
    }

    pub(crate) fn offset(self) -> i64 {
        (i64::from(self.page) - 1) * i64::from(self.per_page)
    }

    /// Pages needed for `total` rows (0 for an empty listing).
    pub fn total_pages(self, total: i64) -> i64 {
        let per_page = i64::from(self.per_page);
        (total.max(0) + per_page - 1) / per_page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_defaults_to_the_first_fifty() {
        let page = PageRequest::new(None, None).unwrap();
        assert_eq!((page.page(), page.per_page()), (1, 50));
        assert_eq!(page.offset(), 0);
    }

    #[test]
    fn out_of_range_pages_are_refused() {
        assert!(PageRequest::new(Some(0), None).is_err());
        assert!(PageRequest::new(Some(-3), None).is_err());
        assert!(PageRequest::new(None, Some(0)).is_err());
        assert!(PageRequest::new(None, Some(101)).is_err());
        assert!(PageRequest::new(Some(i64::MAX), None).is_err());
        assert!(PageRequest::new(Some(3), Some(100)).is_ok());
    }

    #[test]
    fn total_pages_round_up() {
        let page = PageRequest::new(Some(1), Some(10)).unwrap();
        assert_eq!(page.total_pages(0), 0);
        assert_eq!(page.total_pages(10), 1);
        assert_eq!(page.total_pages(11), 2);
    }
}
