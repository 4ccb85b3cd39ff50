//! The one write path of delivery state: a batch of [`Change`]s, each a compare-and-swap
//! on the version (and state) its writer read, applied in a few statements whatever the
//! batch size, with the `delivery_events` row of every state it enters.
//!
//! Every writer of a delivery — the dispatcher's attempts, provider events, an
//! acknowledgment, a recall, a replay, a suppression — decides in Rust with
//! [`crate::delivery::next`] and writes through [`apply`], in its own transaction. This
//! module never decides anything: state names arrive as bound parameters computed from
//! [`DeliveryState::as_str`], and no write here names a state.
//!
//! The dialects differ only in how a batch reaches the database: PostgreSQL takes
//! arrays (`unnest`) and writes the events in the same statement as the update (a
//! data-modifying `WITH`); SQLite takes multi-row `VALUES` and writes the events in a
//! second statement.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::delivery::{Change, Delivery};
use crate::store::deliveries::{state_timestamp_column, DELIVERY_COLUMNS};
use crate::store::dialect::{Args, Dialect};
use crate::store::{CasOutcome, StoreResult};
use crate::{Channel, DeliveryState};

/// How one dialect applies a round of changes (at most one per delivery) and reads
/// deliveries back. [`apply`] is the same on both on top of these.
#[async_trait]
pub(crate) trait Transitions: Dialect {
    /// Takes the row locks of `ids` in id order, the order every writer of several
    /// deliveries takes them in, so that two such transactions never wait on each other
    /// (nothing to do where writers are serialized).
    async fn lock_deliveries(conn: &mut Self::Connection, ids: &[uuid::Uuid]) -> StoreResult<()>;

    /// Applies `round` (distinct deliveries) and writes the event rows of the applied
    /// ones that enter a state; returns the deliveries that moved, as they are now.
    async fn apply_round(
        conn: &mut Self::Connection,
        round: &[&Change],
    ) -> StoreResult<HashMap<uuid::Uuid, Delivery>>;

    /// The deliveries of `ids` that exist, by id.
    async fn deliveries_now(
        conn: &mut Self::Connection,
        ids: &[uuid::Uuid],
    ) -> StoreResult<HashMap<uuid::Uuid, Delivery>>;
}

/// Applies `batch` in order, in the caller's transaction: each change moves its delivery
/// only if it is still at the version and in the state the change was decided on. A
/// delivery may appear several times (a provider's events decided one after the other):
/// its changes apply in batch order, and once one conflicts the later ones do too.
/// Returns, per change, the delivery after it (`Applied`), or as it is now (`Conflict`,
/// or `NotFound`).
pub(crate) async fn apply<DB: Transitions>(
    conn: &mut DB::Connection,
    batch: &[Change],
) -> StoreResult<Vec<CasOutcome>> {
    // Rounds with at most one change per delivery: one UPDATE cannot move a row twice.
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (index, change) in batch.iter().enumerate() {
        let round = seen
            .entry(*change.transition.delivery_id.as_uuid())
            .or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(index);
        *round += 1;
    }
    let mut outcomes: Vec<Option<Delivery>> = vec![None; batch.len()];
    let mut lost: HashSet<uuid::Uuid> = HashSet::new();
    for round in rounds {
        let live: Vec<&Change> = round
            .iter()
            .map(|&i| &batch[i])
            .filter(|c| !lost.contains(c.transition.delivery_id.as_uuid()))
            .collect();
        if live.is_empty() {
            continue;
        }
        let mut moved = DB::apply_round(conn, &live).await?;
        for &i in &round {
            let id = *batch[i].transition.delivery_id.as_uuid();
            if lost.contains(&id) {
                continue;
            }
            match moved.remove(&id) {
                Some(delivery) => outcomes[i] = Some(delivery),
                None => {
                    lost.insert(id);
                }
            }
        }
    }
    record_moves::<DB>(conn, batch, &outcomes).await?;
    // Counted as written: a transaction that fails after this (rare) and is tried again
    // counts its moves twice.
    for (change, outcome) in batch.iter().zip(&outcomes) {
        if let Some(after) = outcome {
            crate::telemetry::moved(change, after);
        }
    }
    let lost: Vec<uuid::Uuid> = lost.into_iter().collect();
    let now = if lost.is_empty() {
        HashMap::new()
    } else {
        DB::deliveries_now(conn, &lost).await?
    };
    Ok(batch
        .iter()
        .zip(outcomes)
        .map(|(change, outcome)| match outcome {
            Some(delivery) => CasOutcome::Applied(delivery),
            None => match now.get(change.transition.delivery_id.as_uuid()) {
                Some(current) => CasOutcome::Conflict(current.clone()),
                None => CasOutcome::NotFound,
            },
        })
        .collect())
}

/// Adds the batch's applied moves to `message_moves`, counted per message, channel,
/// states and second: the few rows the report's chart of states over time reads instead
/// of every event. Insert-only, so concurrent batches never wait on each other here.
async fn record_moves<D: Dialect>(
    conn: &mut D::Connection,
    batch: &[Change],
    outcomes: &[Option<Delivery>],
) -> StoreResult<()> {
    type Key = (
        uuid::Uuid,
        uuid::Uuid,
        Channel,
        DeliveryState,
        DeliveryState,
        i64,
    );
    let mut counts: BTreeMap<Key, i64> = BTreeMap::new();
    for (change, outcome) in batch.iter().zip(outcomes) {
        let (Some(delivery), true) = (outcome, change.moves()) else {
            continue;
        };
        let t = &change.transition;
        let key = (
            *delivery.message_id.as_uuid(),
            *delivery.district_id.as_uuid(),
            delivery.channel,
            t.from,
            t.to,
            t.at.timestamp(),
        );
        *counts.entry(key).or_insert(0) += 1;
    }
    let counts: Vec<(Key, i64)> = counts.into_iter().collect();
    for chunk in counts.chunks(100) {
        let mut args = Args::new();
        let rows: Vec<String> = chunk
            .iter()
            .map(|((message, district, channel, from, to, second), n)| {
                args.row(|a| {
                    a.id(*message)
                        .id(*district)
                        .text(channel.as_str())
                        .text(from.as_str())
                        .text(to.as_str())
                        .int(*second)
                        .int(*n)
                })
            })
            .collect();
        let sql = format!(
            "INSERT INTO message_moves (message_id, district_id, channel, from_state, to_state, \
             second, n) VALUES {}",
            rows.join(", ")
        );
        D::execute(conn, &sql, args).await?;
    }
    Ok(())
}

/// The columns a round writes besides state, version and `updated_at`: only those some
/// change of the round sets, so a batch of sends does not rewrite what it leaves alone.
#[derive(Debug, Default)]
struct Plan {
    /// The states entered in the round, whose timestamp columns are written.
    stamps: Vec<DeliveryState>,
    attempts: bool,
    attempt_base: bool,
    provider: bool,
    provider_ref: bool,
    suppressed_reason: bool,
    last_error: bool,
    next_attempt_at: bool,
}

impl Plan {
    fn of(round: &[&Change]) -> Self {
        let mut plan = Plan::default();
        for change in round {
            let e = &change.effects;
            if change.moves() && !plan.stamps.contains(&change.transition.to) {
                plan.stamps.push(change.transition.to);
            }
            plan.attempts |= e.attempts.is_some();
            plan.attempt_base |= e.attempt_base.is_some();
            plan.provider |= e.provider.is_some();
            plan.provider_ref |= e.provider_ref.is_some();
            plan.suppressed_reason |= e.suppressed_reason.is_some();
            plan.last_error |= e.last_error.is_some();
            plan.next_attempt_at |= e.next_attempt_at.is_some();
        }
        // `created_at` is when the row was written, never a state entered later.
        plan.stamps.retain(|s| *s != DeliveryState::Created);
        plan
    }

    /// `x`'s columns after the five every change has (`x_id, x_seen, x_from, x_to, x_at`),
    /// in the order [`Plan::values`] gives them.
    fn columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = self
            .stamps
            .iter()
            .map(|s| format!("x_{}", state_timestamp_column(*s)))
            .collect();
        let optional = [
            (self.attempts, "x_attempts"),
            (self.attempt_base, "x_attempt_base"),
            (self.provider, "x_provider"),
            (self.provider_ref, "x_provider_ref"),
            (self.suppressed_reason, "x_suppressed_reason"),
        ];
        columns.extend(
            optional
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, c)| c.to_string()),
        );
        if self.last_error {
            columns.extend(["x_set_last_error".into(), "x_last_error".into()]);
        }
        if self.next_attempt_at {
            columns.extend(["x_set_next".into(), "x_next".into()]);
        }
        columns
    }

    /// The SET list after `state = x.x_to, version = version + 1, updated_at = x.x_at`.
    fn assignments(&self) -> String {
        let mut set = String::new();
        for state in &self.stamps {
            let column = state_timestamp_column(*state);
            set.push_str(&format!(", {column} = COALESCE(x.x_{column}, {column})"));
        }
        for (on, column) in [
            (self.attempts, "attempts"),
            (self.attempt_base, "attempt_base"),
            (self.provider, "provider"),
            (self.provider_ref, "provider_ref"),
            (self.suppressed_reason, "suppressed_reason"),
        ] {
            if on {
                set.push_str(&format!(", {column} = COALESCE(x.x_{column}, {column})"));
            }
        }
        if self.last_error {
            set.push_str(
                ", last_error = CASE WHEN x.x_set_last_error THEN x.x_last_error ELSE last_error END",
            );
        }
        if self.next_attempt_at {
            set.push_str(
                ", next_attempt_at = CASE WHEN x.x_set_next THEN x.x_next ELSE next_attempt_at END",
            );
        }
        set
    }

    /// The `UPDATE … FROM x … RETURNING` of a round, `x` being defined before it.
    fn update(&self) -> String {
        format!(
            "UPDATE deliveries SET state = x.x_to, version = version + 1, updated_at = x.x_at{} \
             FROM x WHERE id = x.x_id AND version = x.x_seen AND state = x.x_from \
             RETURNING {DELIVERY_COLUMNS}",
            self.assignments()
        )
    }
}

/// One change's values of a [`Plan`]'s optional columns.
struct Row<'a> {
    stamps: Vec<Option<DateTime<Utc>>>,
    change: &'a Change,
}

impl<'a> Row<'a> {
    fn t(&self) -> &'a crate::delivery::Transition {
        &self.change.transition
    }

    fn e(&self) -> &'a crate::delivery::Effects {
        &self.change.effects
    }

    fn of(plan: &Plan, change: &'a Change) -> Self {
        let t = &change.transition;
        Row {
            stamps: plan
                .stamps
                .iter()
                .map(|s| (change.moves() && t.to == *s).then_some(t.at))
                .collect(),
            change,
        }
    }
}

// PostgreSQL: one statement per round, the batch as arrays.

#[async_trait]
impl Transitions for sqlx::Postgres {
    async fn lock_deliveries(conn: &mut sqlx::PgConnection, ids: &[uuid::Uuid]) -> StoreResult<()> {
        sqlx::query("SELECT 1 FROM deliveries WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(ids)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply_round(
        conn: &mut sqlx::PgConnection,
        round: &[&Change],
    ) -> StoreResult<HashMap<uuid::Uuid, Delivery>> {
        let plan = Plan::of(round);
        let rows: Vec<Row> = round.iter().map(|c| Row::of(&plan, c)).collect();
        // Array parameters in the order of `x`'s columns.
        let mut arrays: Vec<(&str, &str)> = vec![
            ("x_id", "uuid"),
            ("x_seen", "bigint"),
            ("x_from", "text"),
            ("x_to", "text"),
            ("x_at", "timestamptz"),
        ];
        let optional = plan.columns();
        for column in &optional {
            let ty = match column.as_str() {
                "x_attempts" | "x_attempt_base" => "int",
                "x_provider" | "x_provider_ref" | "x_suppressed_reason" | "x_last_error" => "text",
                "x_set_last_error" | "x_set_next" => "bool",
                _ => "timestamptz",
            };
            arrays.push((column.as_str(), ty));
        }
        arrays.extend([
            ("x_actor_kind", "text"),
            ("x_actor_ref", "text"),
            ("x_detail", "text"),
        ]);
        let params: Vec<String> = arrays
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
            .collect();
        let names: Vec<&str> = arrays.iter().map(|(name, _)| *name).collect();
        let sql = format!(
            "WITH x AS (SELECT * FROM unnest({}) AS x({})), \
             moved AS ({}), \
             events AS (INSERT INTO delivery_events (district_id, delivery_id, from_state, to_state, version, at, \
                                                    actor_kind, actor_ref, detail) \
                        SELECT m.district_id, m.id, x.x_from, x.x_to, m.version, x.x_at, \
                               x.x_actor_kind, x.x_actor_ref, x.x_detail \
                        FROM moved m JOIN x ON x.x_id = m.id WHERE x.x_from <> x.x_to) \
             SELECT * FROM moved",
            params.join(", "),
            names.join(", "),
            plan.update()
        );
        let mut query = sqlx::query(&sql)
            .bind(
                rows.iter()
                    .map(|r| *r.t().delivery_id.as_uuid())
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|r| r.t().seen_version).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.t().from.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.t().to.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.t().at).collect::<Vec<_>>());
        for i in 0..plan.stamps.len() {
            query = query.bind(rows.iter().map(|r| r.stamps[i]).collect::<Vec<_>>());
        }
        if plan.attempts {
            query = query.bind(rows.iter().map(|r| r.e().attempts).collect::<Vec<_>>());
        }
        if plan.attempt_base {
            query = query.bind(rows.iter().map(|r| r.e().attempt_base).collect::<Vec<_>>());
        }
        if plan.provider {
            query = query.bind(
                rows.iter()
                    .map(|r| r.e().provider.clone())
                    .collect::<Vec<_>>(),
            );
        }
        if plan.provider_ref {
            query = query.bind(
                rows.iter()
                    .map(|r| r.e().provider_ref.clone())
                    .collect::<Vec<_>>(),
            );
        }
        if plan.suppressed_reason {
            query = query.bind(
                rows.iter()
                    .map(|r| r.e().suppressed_reason.clone())
                    .collect::<Vec<_>>(),
            );
        }
        if plan.last_error {
            query = query
                .bind(
                    rows.iter()
                        .map(|r| r.e().last_error.is_some())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|r| r.e().last_error.clone().flatten())
                        .collect::<Vec<_>>(),
                );
        }
        if plan.next_attempt_at {
            query = query
                .bind(
                    rows.iter()
                        .map(|r| r.e().next_attempt_at.is_some())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|r| r.e().next_attempt_at.flatten())
                        .collect::<Vec<_>>(),
                );
        }
        let query = query
            .bind(
                rows.iter()
                    .map(|r| r.t().actor.kind.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|r| r.t().actor.reference.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|r| r.t().detail.clone())
                    .collect::<Vec<_>>(),
            );
        let mut moved = HashMap::with_capacity(round.len());
        for row in query.fetch_all(conn).await? {
            let d = crate::store::deliveries::from_row(&row)?;
            moved.insert(*d.id.as_uuid(), d);
        }
        Ok(moved)
    }

    async fn deliveries_now(
        conn: &mut sqlx::PgConnection,
        ids: &[uuid::Uuid],
    ) -> StoreResult<HashMap<uuid::Uuid, Delivery>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|row| {
                let d = crate::store::deliveries::from_row(row)?;
                Ok((*d.id.as_uuid(), d))
            })
            .collect()
    }
}

// SQLite: multi-row VALUES, a chunk at a time; the events in a second statement.

/// A value of one of `x`'s columns, as SQLite is given it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Time(Option<DateTime<Utc>>),
    Bool(bool),
}

/// One of `x`'s columns, with its value on each row.
struct SqliteColumn {
    name: &'static str,
    values: Vec<Value>,
}

impl SqliteColumn {
    fn is_uniform(&self) -> bool {
        self.values.windows(2).all(|w| w[0] == w[1])
    }
}

/// `x`'s columns of a chunk: the five every change has, then the plan's.
fn sqlite_columns(plan: &Plan, rows: &[Row<'_>]) -> Vec<SqliteColumn> {
    let column = |name: &'static str, value: &dyn Fn(&Row<'_>) -> Value| SqliteColumn {
        name,
        values: rows.iter().map(value).collect(),
    };
    let text = |v: Option<&str>| Value::Text(v.map(str::to_owned));
    let mut columns = vec![
        column("x_id", &|r| {
            Value::Text(Some(text_id(r.t().delivery_id.as_uuid())))
        }),
        column("x_seen", &|r| Value::Int(Some(r.t().seen_version))),
        column("x_from", &|r| text(Some(r.t().from.as_str()))),
        column("x_to", &|r| text(Some(r.t().to.as_str()))),
        column("x_at", &|r| Value::Time(Some(r.t().at))),
    ];
    for (i, state) in plan.stamps.iter().enumerate() {
        columns.push(column(stamp_name(*state), &|r| Value::Time(r.stamps[i])));
    }
    if plan.attempts {
        columns.push(column("x_attempts", &|r| {
            Value::Int(r.e().attempts.map(i64::from))
        }));
    }
    if plan.attempt_base {
        columns.push(column("x_attempt_base", &|r| {
            Value::Int(r.e().attempt_base.map(i64::from))
        }));
    }
    if plan.provider {
        columns.push(column("x_provider", &|r| text(r.e().provider.as_deref())));
    }
    if plan.provider_ref {
        columns.push(column("x_provider_ref", &|r| {
            text(r.e().provider_ref.as_deref())
        }));
    }
    if plan.suppressed_reason {
        columns.push(column("x_suppressed_reason", &|r| {
            text(r.e().suppressed_reason.as_deref())
        }));
    }
    if plan.last_error {
        columns.push(column("x_set_last_error", &|r| {
            Value::Bool(r.e().last_error.is_some())
        }));
        columns.push(column("x_last_error", &|r| {
            text(r.e().last_error.as_ref().and_then(|e| e.as_deref()))
        }));
    }
    if plan.next_attempt_at {
        columns.push(column("x_set_next", &|r| {
            Value::Bool(r.e().next_attempt_at.is_some())
        }));
        columns.push(column("x_next", &|r| {
            Value::Time(r.e().next_attempt_at.flatten())
        }));
    }
    columns
}

/// The name of `x`'s column with the time `state` was entered.
fn stamp_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Created => "x_created_at",
        DeliveryState::Queued => "x_queued_at",
        DeliveryState::Sent => "x_sent_at",
        DeliveryState::Delivered => "x_delivered_at",
        DeliveryState::Acked => "x_acked_at",
        DeliveryState::Failed => "x_failed_at",
        DeliveryState::Cancelled => "x_cancelled_at",
        DeliveryState::Suppressed => "x_suppressed_at",
    }
}

/// Changes per statement: with every optional column, well under SQLite's limit on
/// parameters.
const SQLITE_CHUNK: usize = 400;

fn text_id(id: &uuid::Uuid) -> String {
    id.hyphenated().to_string()
}

#[async_trait]
impl Transitions for sqlx::Sqlite {
    async fn lock_deliveries(_: &mut sqlx::SqliteConnection, _: &[uuid::Uuid]) -> StoreResult<()> {
        // One writer at a time: nothing to order.
        Ok(())
    }

    async fn apply_round(
        conn: &mut sqlx::SqliteConnection,
        round: &[&Change],
    ) -> StoreResult<HashMap<uuid::Uuid, Delivery>> {
        let mut moved = HashMap::with_capacity(round.len());
        for chunk in round.chunks(SQLITE_CHUNK) {
            let plan = Plan::of(chunk);
            let rows: Vec<Row> = chunk.iter().map(|c| Row::of(&plan, c)).collect();
            // Columns whose value is the same on every row (the time, the provider, the
            // retry time of a batch of starts…) are bound once, not once per row: a bind
            // is a good part of what a row costs here.
            let columns = sqlite_columns(&plan, &rows);
            let (same, varying): (Vec<&SqliteColumn>, Vec<&SqliteColumn>) = columns
                .iter()
                .partition(|c| c.is_uniform() && c.name != "x_id");
            let names: Vec<&str> = varying.iter().map(|c| c.name).collect();
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "WITH v ({}) AS (",
                names.join(", ")
            ));
            q.push_values(0..rows.len(), |mut b, i| {
                for column in &varying {
                    match &column.values[i] {
                        Value::Text(v) => b.push_bind(v.clone()),
                        Value::Int(v) => b.push_bind(*v),
                        Value::Time(v) => b.push_bind(*v),
                        Value::Bool(v) => b.push_bind(*v),
                    };
                }
            });
            q.push("), x AS (SELECT v.*");
            for column in &same {
                q.push(", ");
                match &column.values[0] {
                    Value::Text(v) => q.push_bind(v.clone()),
                    Value::Int(v) => q.push_bind(*v),
                    Value::Time(v) => q.push_bind(*v),
                    Value::Bool(v) => q.push_bind(*v),
                };
                q.push(format!(" AS {}", column.name));
            }
            q.push(" FROM v");
            q.push(") ");
            q.push(plan.update());
            let mut applied = Vec::new();
            for row in q.build().fetch_all(&mut *conn).await? {
                let d = crate::store::deliveries::from_row(&row)?;
                applied.push(*d.id.as_uuid());
                moved.insert(*d.id.as_uuid(), d);
            }
            let applied: HashSet<uuid::Uuid> = applied.into_iter().collect();
            let events: Vec<(&Change, &Delivery)> = chunk
                .iter()
                .filter(|c| c.moves() && applied.contains(c.transition.delivery_id.as_uuid()))
                .map(|c| (*c, &moved[c.transition.delivery_id.as_uuid()]))
                .collect();
            if events.is_empty() {
                continue;
            }
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO delivery_events (district_id, delivery_id, from_state, to_state, version, at, \
                                              actor_kind, actor_ref, detail) ",
            );
            q.push_values(&events, |mut b, (c, d)| {
                let t = &c.transition;
                b.push_bind(text_id(d.district_id.as_uuid()))
                    .push_bind(text_id(d.id.as_uuid()))
                    .push_bind(t.from.as_str())
                    .push_bind(t.to.as_str())
                    .push_bind(d.version)
                    .push_bind(t.at)
                    .push_bind(t.actor.kind.as_str())
                    .push_bind(t.actor.reference.clone())
                    .push_bind(t.detail.clone());
            });
            q.build().execute(&mut *conn).await?;
        }
        Ok(moved)
    }

    async fn deliveries_now(
        conn: &mut sqlx::SqliteConnection,
        ids: &[uuid::Uuid],
    ) -> StoreResult<HashMap<uuid::Uuid, Delivery>> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id IN ("
            ));
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(text_id(id));
            }
            q.push(")");
            for row in q.build().fetch_all(&mut *conn).await? {
                let d = crate::store::deliveries::from_row(&row)?;
                found.insert(*d.id.as_uuid(), d);
            }
        }
        Ok(found)
    }
}

/// Changes written in a transaction a store operation holds open (an acknowledgment, a
/// recall): [`crate::delivery::decide_and_apply`] runs in it.
pub(crate) struct InTx<'c, DB: sqlx::Database>(pub &'c mut DB::Connection);

#[async_trait]
impl<DB: Transitions> crate::delivery::WriteChanges for InTx<'_, DB> {
    type Error = crate::store::StoreError;

    async fn write_changes(&mut self, batch: &[Change]) -> StoreResult<Vec<CasOutcome>> {
        let mut ids: Vec<uuid::Uuid> = batch
            .iter()
            .map(|c| *c.transition.delivery_id.as_uuid())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > 1 {
            DB::lock_deliveries(&mut *self.0, &ids).await?;
        }
        apply::<DB>(&mut *self.0, batch).await
    }
}
