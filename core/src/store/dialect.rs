//! What the two databases differ in, and nothing else: how an id is bound and read (a
//! `UUID` on PostgreSQL, hyphenated text on SQLite) and how a JSON column is read
//! (`jsonb`, text). The repositories (`store::messages`, …) are plain Rust generic over a
//! [`Dialect`]: they write their SQL once, bind their parameters as [`Args`] and read
//! their rows through [`Columns`], and never name a database.
//!
//! Every sqlx bound a generic query needs is stated here once, on the blanket
//! implementations, so that a repository function asks only for `D: Dialect`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use uuid::Uuid;

use super::{StoreError, StoreResult};

/// One bound parameter. Ids are bound the dialect's way; everything else the same on both.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Id(Option<Uuid>),
    Text(Option<String>),
    Int(Option<i64>),
    Flag(Option<bool>),
    Time(Option<DateTime<Utc>>),
    Bytes(Option<Vec<u8>>),
    Json(Option<serde_json::Value>),
}

/// The parameters of one statement, in `$1, $2, …` order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Args(Vec<Value>);

impl Args {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn id(self, id: impl Into<Uuid>) -> Self {
        self.with(Value::Id(Some(id.into())))
    }

    pub fn opt_id(self, id: Option<impl Into<Uuid>>) -> Self {
        self.with(Value::Id(id.map(Into::into)))
    }

    pub fn text(self, text: impl Into<String>) -> Self {
        self.with(Value::Text(Some(text.into())))
    }

    pub fn opt_text(self, text: Option<impl Into<String>>) -> Self {
        self.with(Value::Text(text.map(Into::into)))
    }

    pub fn int(self, n: impl Into<i64>) -> Self {
        self.with(Value::Int(Some(n.into())))
    }

    pub fn opt_int(self, n: Option<i64>) -> Self {
        self.with(Value::Int(n))
    }

    pub fn flag(self, flag: bool) -> Self {
        self.with(Value::Flag(Some(flag)))
    }

    pub fn time(self, at: DateTime<Utc>) -> Self {
        self.with(Value::Time(Some(at)))
    }

    pub fn opt_time(self, at: Option<DateTime<Utc>>) -> Self {
        self.with(Value::Time(at))
    }

    pub fn bytes(self, bytes: impl Into<Vec<u8>>) -> Self {
        self.with(Value::Bytes(Some(bytes.into())))
    }

    pub fn json(self, value: serde_json::Value) -> Self {
        self.with(Value::Json(Some(value)))
    }

    pub fn opt_json(self, value: Option<serde_json::Value>) -> Self {
        self.with(Value::Json(value))
    }

    fn with(mut self, value: Value) -> Self {
        self.push(value);
        self
    }

    /// Binds the values `build` adds and returns their placeholders as one row of a
    /// multi-row `VALUES`: `($4, $5, $6)`.
    pub fn row(&mut self, build: impl FnOnce(Args) -> Args) -> String {
        let start = self.0.len();
        self.0.extend(build(Args::new()).0);
        let placeholders: Vec<String> = (start + 1..=self.0.len())
            .map(|i| format!("${i}"))
            .collect();
        format!("({})", placeholders.join(", "))
    }

    /// Binds one more parameter (`$len` after).
    pub fn push(&mut self, value: Value) {
        self.0.push(value);
    }

    /// How many parameters are bound so far: the next one is `$len+1`.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Binds `ids` and returns their placeholders (`$4, $5, $6`) for an `IN (…)` list.
    pub fn ids(&mut self, ids: &[Uuid]) -> String {
        self.list(ids.iter().map(|id| Value::Id(Some(*id))))
    }

    /// Binds `texts` and returns their placeholders for an `IN (…)` list.
    pub fn texts<T: Into<String>>(&mut self, texts: impl IntoIterator<Item = T>) -> String {
        self.list(texts.into_iter().map(|t| Value::Text(Some(t.into()))))
    }

    fn list(&mut self, values: impl Iterator<Item = Value>) -> String {
        let mut placeholders = Vec::new();
        for value in values {
            self.0.push(value);
            placeholders.push(format!("${}", self.0.len()));
        }
        placeholders.join(", ")
    }
}

/// Where the two databases differ. Implemented for `sqlx::Sqlite` and `sqlx::Postgres`.
pub(crate) trait Binder: Database {
    /// The column type of ids (`uuid`, `TEXT`).
    const ID_TYPE: &'static str;

    /// Turns an id column into its hyphenated text (`::text`, nothing).
    const AS_TEXT: &'static str;

    /// Ends a SELECT whose rows the transaction takes for itself: each row locked to
    /// commit, and one another transaction holds skipped, not waited for (`FOR UPDATE SKIP
    /// LOCKED`; nothing on SQLite, whose one writer at a time holds them all).
    const CLAIM: &'static str;

    /// Binds an id (or a NULL id).
    fn bind_id<'q>(
        query: Query<'q, Self, Self::Arguments<'q>>,
        id: Option<Uuid>,
    ) -> Query<'q, Self, Self::Arguments<'q>>;

    /// Reads an id column (`None` for NULL).
    fn read_id(row: &Self::Row, column: &str) -> StoreResult<Option<Uuid>>;

    /// Reads a JSON column (`None` for NULL).
    fn read_json(row: &Self::Row, column: &str) -> StoreResult<Option<serde_json::Value>>;

    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
}

impl Binder for sqlx::Sqlite {
    const ID_TYPE: &'static str = "TEXT";
    const AS_TEXT: &'static str = "";
    const CLAIM: &'static str = "";

    fn bind_id<'q>(
        query: Query<'q, Self, Self::Arguments<'q>>,
        id: Option<Uuid>,
    ) -> Query<'q, Self, Self::Arguments<'q>> {
        query.bind(id.map(|id| id.hyphenated().to_string()))
    }

    fn read_id(row: &Self::Row, column: &str) -> StoreResult<Option<Uuid>> {
        let raw: Option<String> = row.try_get(column)?;
        raw.map(|raw| Uuid::parse_str(&raw).map_err(|e| corrupt(column, e)))
            .transpose()
    }

    fn read_json(row: &Self::Row, column: &str) -> StoreResult<Option<serde_json::Value>> {
        let raw: Option<String> = row.try_get(column)?;
        raw.map(|raw| serde_json::from_str(&raw).map_err(|e| corrupt(column, e)))
            .transpose()
    }

    fn rows_affected(done: &Self::QueryResult) -> u64 {
        done.rows_affected()
    }
}

impl Binder for sqlx::Postgres {
    const ID_TYPE: &'static str = "uuid";
    const AS_TEXT: &'static str = "::text";
    const CLAIM: &'static str = "FOR UPDATE SKIP LOCKED";

    fn bind_id<'q>(
        query: Query<'q, Self, Self::Arguments<'q>>,
        id: Option<Uuid>,
    ) -> Query<'q, Self, Self::Arguments<'q>> {
        query.bind(id)
    }

    fn read_id(row: &Self::Row, column: &str) -> StoreResult<Option<Uuid>> {
        Ok(row.try_get(column)?)
    }

    fn read_json(row: &Self::Row, column: &str) -> StoreResult<Option<serde_json::Value>> {
        Ok(row.try_get(column)?)
    }

    fn rows_affected(done: &Self::QueryResult) -> u64 {
        done.rows_affected()
    }
}

fn corrupt(column: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{column}: {error}"))
}

/// A database a repository can run its SQL on.
#[async_trait]
pub(crate) trait Dialect: Binder<Row: Columns> {
    /// All rows of `sql`.
    async fn fetch_all(
        conn: &mut Self::Connection,
        sql: &str,
        args: Args,
    ) -> StoreResult<Vec<Self::Row>>;

    /// The first row of `sql`, if any.
    async fn fetch_optional(
        conn: &mut Self::Connection,
        sql: &str,
        args: Args,
    ) -> StoreResult<Option<Self::Row>>;

    /// The one row of `sql` (an error if there is none).
    async fn fetch_one(
        conn: &mut Self::Connection,
        sql: &str,
        args: Args,
    ) -> StoreResult<Self::Row>;

    /// Runs `sql`; returns how many rows it changed.
    async fn execute(conn: &mut Self::Connection, sql: &str, args: Args) -> StoreResult<u64>;
}

#[async_trait]
impl<DB> Dialect for DB
where
    DB: Binder<Row: Columns>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    i64: Type<DB>,
    for<'q> Option<bool>: Encode<'q, DB>,
    bool: Type<DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
    DateTime<Utc>: Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB>,
    Vec<u8>: Type<DB>,
    for<'q> Option<serde_json::Value>: Encode<'q, DB>,
    serde_json::Value: Type<DB>,
{
    async fn fetch_all(
        conn: &mut DB::Connection,
        sql: &str,
        args: Args,
    ) -> StoreResult<Vec<DB::Row>> {
        Ok(bound::<DB>(sql, args).fetch_all(conn).await?)
    }

    async fn fetch_optional(
        conn: &mut DB::Connection,
        sql: &str,
        args: Args,
    ) -> StoreResult<Option<DB::Row>> {
        Ok(bound::<DB>(sql, args).fetch_optional(conn).await?)
    }

    async fn fetch_one(conn: &mut DB::Connection, sql: &str, args: Args) -> StoreResult<DB::Row> {
        Ok(bound::<DB>(sql, args).fetch_one(conn).await?)
    }

    async fn execute(conn: &mut DB::Connection, sql: &str, args: Args) -> StoreResult<u64> {
        Ok(bound::<DB>(sql, args)
            .execute(conn)
            .await
            .map(|done| DB::rows_affected(&done))?)
    }
}

/// `sql` with `args` bound.
fn bound<'q, DB>(sql: &'q str, args: Args) -> Query<'q, DB, DB::Arguments<'q>>
where
    DB: Binder,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB>,
    Option<i64>: Encode<'q, DB>,
    i64: Type<DB>,
    Option<bool>: Encode<'q, DB>,
    bool: Type<DB>,
    Option<DateTime<Utc>>: Encode<'q, DB>,
    DateTime<Utc>: Type<DB>,
    Option<Vec<u8>>: Encode<'q, DB>,
    Vec<u8>: Type<DB>,
    Option<serde_json::Value>: Encode<'q, DB>,
    serde_json::Value: Type<DB>,
{
    args.0
        .into_iter()
        .fold(sqlx::query(sql), |query, value| match value {
            Value::Id(id) => DB::bind_id(query, id),
            Value::Text(text) => query.bind(text),
            Value::Int(n) => query.bind(n),
            Value::Flag(flag) => query.bind(flag),
            Value::Time(at) => query.bind(at),
            Value::Bytes(bytes) => query.bind(bytes),
            Value::Json(value) => query.bind(value),
        })
}

/// Reading a row's columns by name, the same on both databases.
pub(crate) trait Columns {
    fn id(&self, column: &str) -> StoreResult<Uuid> {
        self.opt_id(column)?
            .ok_or_else(|| corrupt(column, "NULL where an id belongs"))
    }
    fn opt_id(&self, column: &str) -> StoreResult<Option<Uuid>>;
    fn json(&self, column: &str) -> StoreResult<serde_json::Value> {
        Ok(self.opt_json(column)?.unwrap_or(serde_json::Value::Null))
    }
    fn opt_json(&self, column: &str) -> StoreResult<Option<serde_json::Value>>;
    fn text(&self, column: &str) -> StoreResult<String>;
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>>;
    /// A `BIGINT` (or SQLite INTEGER) column, such as a `count(*)`.
    fn i64(&self, column: &str) -> StoreResult<i64>;
    fn opt_i64(&self, column: &str) -> StoreResult<Option<i64>>;
    /// An `INTEGER` column.
    fn i32(&self, column: &str) -> StoreResult<i32>;
    fn opt_i32(&self, column: &str) -> StoreResult<Option<i32>>;
    fn flag(&self, column: &str) -> StoreResult<bool>;
    fn time(&self, column: &str) -> StoreResult<DateTime<Utc>>;
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>>;
    fn opt_bytes(&self, column: &str) -> StoreResult<Option<Vec<u8>>>;

    /// A text column parsed with `FromStr` (states, channels, kinds, …).
    fn parsed<T: std::str::FromStr>(&self, column: &str) -> StoreResult<T>
    where
        T::Err: std::fmt::Display,
    {
        self.text(column)?.parse().map_err(|e| corrupt(column, e))
    }
}

impl<R> Columns for R
where
    R: Row<Database: Binder<Row = R>>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn opt_id(&self, column: &str) -> StoreResult<Option<Uuid>> {
        <R::Database as Binder>::read_id(self, column)
    }
    fn opt_json(&self, column: &str) -> StoreResult<Option<serde_json::Value>> {
        <R::Database as Binder>::read_json(self, column)
    }
    fn text(&self, column: &str) -> StoreResult<String> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn i64(&self, column: &str) -> StoreResult<i64> {
        Ok(self.try_get(column)?)
    }
    fn opt_i64(&self, column: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(column)?)
    }
    fn i32(&self, column: &str) -> StoreResult<i32> {
        Ok(self.try_get(column)?)
    }
    fn opt_i32(&self, column: &str) -> StoreResult<Option<i32>> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &str) -> StoreResult<bool> {
        Ok(self.try_get(column)?)
    }
    fn time(&self, column: &str) -> StoreResult<DateTime<Utc>> {
        Ok(self.try_get(column)?)
    }
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(self.try_get(column)?)
    }
    fn opt_bytes(&self, column: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.try_get(column)?)
    }
}

/// A store's connections, for the repositories implemented once for both stores: reads
/// go to the pool, writes to the write pool (SQLite's one writer; PostgreSQL's pool).
#[async_trait]
pub(crate) trait Pools: Send + Sync {
    type Db: Dialect + super::transitions::Transitions;

    fn reads(&self) -> &sqlx::Pool<Self::Db>;

    /// Where a write about to be made goes.
    fn writes(&self) -> &sqlx::Pool<Self::Db>;

    /// A transaction for work that reads before it writes (on SQLite it holds the write
    /// lock from its start).
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, Self::Db>>;
}
