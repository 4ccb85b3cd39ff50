//! What a database does on its own, without Tidings: the yardsticks `tidings bench`
//! compares the fan-out and the callbacks against. Kept apart from the [`super::Store`]:
//! nothing in production measures itself this way. Owns only scratch tables
//! (`bench_raw_rows`, `bench_cas`), created and dropped by each measure.

use std::sync::Arc;

use async_trait::async_trait;

use super::dialect::{Args, Dialect};
use super::{Backend, ConnectOptions, PostgresStore, SqliteStore, StoreResult};
use crate::DeliveryState;

/// The raw speed of one database.
#[async_trait]
pub trait RawSpeed: Send + Sync {
    /// Writes `rows` plain rows (an id, two short texts, a timestamp) into a scratch table
    /// the way the store writes in bulk, and returns the seconds it took: the raw write
    /// speed of this database, which `tidings bench fanout` compares the fan-out against.
    async fn measure_raw_insert(&self, rows: usize) -> StoreResult<f64>;

    /// Runs `rows` single-row compare-and-swap UPDATEs, one statement and one commit each,
    /// on a scratch table of this database, and returns the seconds they took: the raw
    /// rate `tidings bench callbacks` compares applying provider reports against.
    async fn measure_raw_cas(&self, rows: usize) -> StoreResult<f64>;
}

/// The database at `url`, to measure.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn RawSpeed>> {
    let options = ConnectOptions::default();
    Ok(match Backend::of_url(url)? {
        Backend::Sqlite => Arc::new(SqliteStore::connect(url, &options).await?),
        Backend::Postgres => Arc::new(PostgresStore::connect(url, &options).await?),
    })
}

/// [`RawSpeed::measure_raw_cas`], the same SQL on both databases.
pub(crate) async fn measure_cas<D: Dialect>(pool: &sqlx::Pool<D>, rows: usize) -> StoreResult<f64> {
    let mut conn = pool.acquire().await?;
    D::execute(&mut conn, "DROP TABLE IF EXISTS bench_cas", Args::new()).await?;
    D::execute(
        &mut conn,
        "CREATE TABLE bench_cas (id BIGINT PRIMARY KEY, state TEXT NOT NULL, version BIGINT NOT NULL)",
        Args::new(),
    )
    .await?;
    D::execute(
        &mut conn,
        "WITH RECURSIVE c (x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1) \
         INSERT INTO bench_cas (id, state, version) SELECT x, $2, 0 FROM c",
        Args::new()
            .int(rows as i64)
            .text(DeliveryState::Sent.as_str()),
    )
    .await?;
    let started = std::time::Instant::now();
    for id in 1..=rows as i64 {
        D::execute(
            &mut conn,
            "UPDATE bench_cas SET state = $2, version = version + 1 \
             WHERE id = $1 AND version = 0 AND state = $3",
            Args::new()
                .int(id)
                .text(DeliveryState::Delivered.as_str())
                .text(DeliveryState::Sent.as_str()),
        )
        .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    D::execute(&mut conn, "DROP TABLE bench_cas", Args::new()).await?;
    Ok(seconds)
}
