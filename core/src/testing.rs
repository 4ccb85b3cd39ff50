//! Fresh databases for tests: a new PostgreSQL database per test, cloned from a migrated
//! template, or a new SQLite file in a temporary directory. Dropped when the test ends.
//!
//! PostgreSQL is found at `TIDINGS_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). If it does not answer, the test fails
//! and says how to start it: tests never skip silently.

use std::sync::Arc;

use sqlx::{Connection, Executor, PgConnection};

use crate::store::{
    self, ConnectOptions, FirstAdmin, Guardian, NewDelivery, NewGuardian, NewMessage, NewRecipient,
    NewStaff, PostgresStore, SqliteStore, Store,
};
use crate::time::now;
use crate::{
    secret, Channel, DeliveryGuarantee, DeliveryId, EmailAddress, Lane, MessageId, MessageKind,
    RecipientId, Staff,
};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Serialises template creation and cloning across test processes.
const TEMPLATE_LOCK: i64 = 0x7469_6469_6e67_7465;

/// A database that exists for one test.
pub struct TestDatabase {
    /// The URL a store or the `tidings` binary connects with.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { admin_url: String, name: String },
    Sqlite { _dir: tempfile::TempDir },
}

fn pg_admin_url() -> String {
    std::env::var("TIDINGS_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

impl TestDatabase {
    /// A new, migrated PostgreSQL database.
    pub async fn postgres() -> Self {
        let admin_url = pg_admin_url();
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL for tests is not reachable at {}: {e}\n\
                 Start the test services with `scripts/test-services` (or point \
                 TIDINGS_TEST_PG_URL at a server where this user may create databases).",
                store::redact_url(&admin_url)
            )
        });
        let template = format!(
            "tidings_template_{}",
            store::migrations_fingerprint(&store::postgres::MIGRATOR)
        );
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut admin)
            .await
            .expect("take the template lock");
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&template)
                .fetch_one(&mut admin)
                .await
                .expect("look for the template database");
        if !exists {
            // Built under another name and renamed when complete, so that a test process
            // killed half-way never leaves a half-migrated template behind.
            let building = format!("{template}_building");
            admin
                .execute(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)").as_str())
                .await
                .expect("drop a stale template");
            admin
                .execute(format!("CREATE DATABASE {building}").as_str())
                .await
                .expect("create the template database");
            let store = PostgresStore::connect(
                &store::with_database(&admin_url, &building),
                &ConnectOptions { max_connections: 1 },
            )
            .await
            .expect("connect to the template database");
            store
                .migrate()
                .await
                .expect("migrate the template database");
            store.pool().close().await;
            // The closed pool's last connection may take a moment to go away.
            let rename = format!("ALTER DATABASE {building} RENAME TO {template}");
            let mut tries = 0;
            while let Err(error) = admin.execute(rename.as_str()).await {
                tries += 1;
                assert!(tries < 50, "publish the template database: {error}");
                // Whatever still holds a connection to it (our closed pool's last one,
                // autovacuum) is let go of.
                let _ = admin
                    .execute(
                        format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE datname = '{building}' AND pid <> pg_backend_pid()"
                        )
                        .as_str(),
                    )
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        let name = format!("tidings_test_{}", uuid::Uuid::now_v7().simple());
        admin
            .execute(format!("CREATE DATABASE {name} TEMPLATE {template}").as_str())
            .await
            .expect("clone the template database");
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(TEMPLATE_LOCK)
            .execute(&mut admin)
            .await
            .expect("release the template lock");
        let _ = admin.close().await;
        Self {
            url: store::with_database(&admin_url, &name),
            cleanup: Cleanup::Postgres { admin_url, name },
        }
    }

    /// A new, empty PostgreSQL database with no migrations applied.
    pub async fn postgres_empty() -> Self {
        let admin_url = pg_admin_url();
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL for tests is not reachable: {e}; run scripts/test-services")
        });
        let name = format!("tidings_test_{}", uuid::Uuid::now_v7().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create an empty database");
        let _ = admin.close().await;
        Self {
            url: store::with_database(&admin_url, &name),
            cleanup: Cleanup::Postgres { admin_url, name },
        }
    }

    /// A path for a new SQLite database (the file is created on first connect).
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("tidings.db").display());
        Self {
            url,
            cleanup: Cleanup::Sqlite { _dir: dir },
        }
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Arc<dyn Store> {
        let store = store::connect(&self.url, &ConnectOptions::default())
            .await
            .expect("connect to the test database");
        store.migrate().await.expect("migrate the test database");
        store
    }

    /// A migrated SQLite store, typed.
    pub async fn sqlite_store(&self) -> SqliteStore {
        let store = SqliteStore::connect(&self.url, &ConnectOptions::default())
            .await
            .expect("connect to the test database");
        store.migrate().await.expect("migrate the test database");
        store
    }

    /// From now on every `operation` (`INSERT` or `UPDATE`) on `table` fails, as a write
    /// does when the disk fills or the database goes away mid-transaction, until
    /// [`TestDatabase::heal`]. A database trigger does it, so the failure comes from the
    /// database itself, wherever the write is made.
    pub async fn break_writes(&self, table: &str, operation: &str) {
        let name = fault_trigger(table, operation);
        if self.is_postgres() {
            self.execute(
                "CREATE OR REPLACE FUNCTION tidings_injected_fault() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$",
            )
            .await;
            self.execute(&format!(
                "CREATE TRIGGER {name} BEFORE {operation} ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION tidings_injected_fault()"
            ))
            .await;
        } else {
            self.execute(&format!(
                "CREATE TRIGGER {name} BEFORE {operation} ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            ))
            .await;
        }
    }

    /// Undoes [`TestDatabase::break_writes`].
    pub async fn heal(&self, table: &str, operation: &str) {
        let name = fault_trigger(table, operation);
        if self.is_postgres() {
            self.execute(&format!("DROP TRIGGER {name} ON {table}"))
                .await;
        } else {
            self.execute(&format!("DROP TRIGGER {name}")).await;
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self.cleanup, Cleanup::Postgres { .. })
    }

    /// Runs one SQL statement on its own connection.
    pub async fn execute(&self, sql: &str) {
        if let Err(error) = self.try_execute(sql).await {
            panic!("{sql}: {error:?}");
        }
    }

    /// Runs one SQL statement on its own connection, with the error as the store
    /// classifies it.
    pub async fn try_execute(&self, sql: &str) -> Result<(), store::StoreError> {
        if self.is_postgres() {
            let mut conn = PgConnection::connect(&self.url).await?;
            let done = conn.execute(sql).await;
            let _ = conn.close().await;
            done?;
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await?;
            let done = conn.execute(sql).await;
            let _ = conn.close().await;
            done?;
        }
        Ok(())
    }
}

fn fault_trigger(table: &str, operation: &str) -> String {
    format!("tidings_fault_{table}_{}", operation.to_lowercase())
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: the database is
        // dropped from a thread with its own small runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a runtime to drop the test database");
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.url);
        }
    }
}

/// Runs each `async fn name(store: Arc<dyn Store>)` of the calling module as a test on
/// a fresh SQLite file (`mod sqlite`) and on a fresh PostgreSQL database (`mod postgres`).
/// After `databases:` (following the stores' names and a `;`, or alone), each
/// `async fn name(db: TestDatabase)` likewise, for tests that need the database itself
/// (its URL, raw SQL, another process).
#[macro_export]
macro_rules! on_both_stores {
    (databases: $($db:ident),* $(,)?) => {
        $crate::on_both_stores! { ; databases: $($db),* }
    };
    ($($name:ident),* $(,)? $(; databases: $($db:ident),* $(,)?)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::testing::TestDatabase::sqlite();
                    super::$name(db.store().await).await;
                }
            )*
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $db() {
                    super::$db($crate::testing::TestDatabase::sqlite()).await;
                }
            )*)?
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::testing::TestDatabase::postgres().await;
                    super::$name(db.store().await).await;
                }
            )*
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $db() {
                    super::$db($crate::testing::TestDatabase::postgres().await).await;
                }
            )*)?
        }
    };
}

/// A district with its first admin and some guardians.
pub struct Seed {
    pub staff: Staff,
    pub guardians: Vec<Guardian>,
}

/// Bootstraps an empty store and adds `guardians` guardians.
pub async fn seed(store: &dyn Store, guardians: usize) -> Seed {
    let at = now();
    let first = FirstAdmin {
        district_name: "Riverside Unified".into(),
        email: EmailAddress::parse("admin@riverside.example.org").unwrap(),
        display_name: "Administrator".into(),
        password_hash: secret::hash_password("not-used").unwrap(),
    };
    let (district, staff) = store
        .bootstrap(&first, at)
        .await
        .unwrap()
        .expect("empty database");
    Seed {
        guardians: add_guardians(store, district.id, guardians).await,
        staff,
    }
}

/// Like [`seed`], with the guardians written in bulk, as a roster import writes them (and
/// without a preferred language): for tests that need tens of thousands.
pub async fn seed_many(store: &dyn Store, guardians: usize) -> Seed {
    let seed = seed(store, 0).await;
    let district = seed.staff.district_id;
    let rows: Vec<crate::store::roster::GuardianRow> = (0..guardians)
        .map(|i| crate::store::roster::GuardianRow {
            id: uuid::Uuid::now_v7(),
            sourced_id: format!("g-{i}"),
            given_name: format!("Guardian{i}"),
            family_name: "Example".into(),
            hash: String::new(),
        })
        .collect();
    let mut writer = store.begin_roster_import(district).await.unwrap();
    for chunk in rows.chunks(1_000) {
        writer.upsert_guardians(chunk, now()).await.unwrap();
    }
    writer.commit().await.unwrap();
    let guardians = rows
        .into_iter()
        .map(|row| Guardian {
            id: crate::GuardianId::from_uuid(row.id),
            district_id: district,
            given_name: row.given_name,
            family_name: row.family_name,
            preferred_language: None,
            sourced_id: Some(row.sourced_id),
        })
        .collect();
    Seed { guardians, ..seed }
}

/// Adds a further district with an administrator and `guardians` guardians (on a store
/// seeded already).
pub async fn seed_district(store: &dyn Store, name: &str, guardians: usize) -> Seed {
    let at = now();
    let district = store.create_district(name, at).await.unwrap();
    let staff = NewStaff {
        district_id: district.id,
        email: EmailAddress::parse(&format!("admin@{}.example.org", district.id)).unwrap(),
        display_name: "Administrator".into(),
        role: crate::Role::DistrictAdmin,
        password_hash: None,
    };
    Seed {
        staff: store.create_staff(&staff, at).await.unwrap(),
        guardians: add_guardians(store, district.id, guardians).await,
    }
}

async fn add_guardians(
    store: &dyn Store,
    district_id: crate::DistrictId,
    guardians: usize,
) -> Vec<Guardian> {
    let at = now();
    let mut created = Vec::new();
    for i in 0..guardians {
        let guardian = NewGuardian {
            district_id,
            given_name: format!("Guardian{i}"),
            family_name: "Example".into(),
            preferred_language: Some("en".into()),
            sourced_id: Some(format!("g-{i}")),
        };
        created.push(store.create_guardian(&guardian, at).await.unwrap());
    }
    created
}

/// An emergency to every seeded guardian on `channels`, one address per channel.
pub fn message_to(seed: &Seed, channels: &[Channel]) -> NewMessage {
    NewMessage {
        id: MessageId::new(),
        district_id: seed.staff.district_id,
        author_id: seed.staff.id,
        kind: MessageKind::Emergency,
        lane: Lane::Emergency,
        guarantee: DeliveryGuarantee::AtLeastOnce,
        subject: "Shelter in place".into(),
        body: "All schools are sheltering in place. Students are safe.".into(),
        channels: channels.to_vec(),
        audience: serde_json::json!({"district": true}),
        translations: serde_json::json!({}),
        requires_ack: true,
        partitions: 4,
        hourly_quota: None,
        renotify_of: None,
        scheduled_at: None,
        ack_deadline: None,
        fallback_after: None,
        recipients: seed
            .guardians
            .iter()
            .map(|g| NewRecipient {
                id: RecipientId::new(),
                guardian_id: g.id,
                language: "en".into(),
                deliveries: channels
                    .iter()
                    .map(|&channel| NewDelivery {
                        id: DeliveryId::new(),
                        channel,
                        address: Some(format!("{}-{channel}", g.given_name)),
                        suppressed_reason: None,
                        not_before: None,
                        fallback_of: None,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// `message` with every delivery held until `at`.
pub fn scheduled(mut message: NewMessage, at: chrono::DateTime<chrono::Utc>) -> NewMessage {
    for recipient in &mut message.recipients {
        for delivery in &mut recipient.deliveries {
            delivery.not_before = Some(at);
        }
    }
    message
}

/// Every delivery of a message, in order.
pub fn delivery_ids(message: &NewMessage) -> Vec<DeliveryId> {
    message
        .recipients
        .iter()
        .flat_map(|r| r.deliveries.iter().map(|d| d.id))
        .collect()
}

/// A program of the test tools `scripts/test-services` installs in its own Python
/// environment (`api-tools/bin/NAME` under `TIDINGS_TEST_SERVICES_DIR`, by default
/// `$TMPDIR/tidings-test-services`).
/// Adds (or reactivates) a contact point for `guardian`, as staff would.
pub async fn add_contact(
    store: &dyn Store,
    district: crate::DistrictId,
    guardian: crate::GuardianId,
    channel: Channel,
    address: &str,
) {
    let mut tx = store.begin().await.unwrap();
    tx.add_contact_point(district, guardian, channel, address, now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// The guardian as the district's administrators see them.
pub async fn detail_of(
    store: &dyn Store,
    district: crate::DistrictId,
    guardian: crate::GuardianId,
) -> store::GuardianDetail {
    store
        .guardian_detail(
            &store::Scope::District(district),
            &store::GuardianRef::Id(*guardian.as_uuid()),
        )
        .await
        .unwrap()
        .expect("the guardian")
}

pub fn test_tool(name: &str) -> std::path::PathBuf {
    test_services_file(&std::path::Path::new("api-tools").join("bin").join(name))
}

/// A file `scripts/test-services` put in its state directory, e.g.
/// `axe-core/axe.min.js`.
pub fn test_services_file(relative: &std::path::Path) -> std::path::PathBuf {
    let state = std::env::var_os("TIDINGS_TEST_SERVICES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tidings-test-services"));
    let tool = state.join(relative);
    assert!(
        tool.exists(),
        "{} is missing: run scripts/test-services first",
        tool.display()
    );
    tool
}

/// Someone to invite, with no schools.
pub fn member(email: &str, name: &str, role: crate::Role) -> crate::services::accounts::NewMember {
    crate::services::accounts::NewMember {
        email: email.into(),
        display_name: name.into(),
        role,
        schools: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use crate::store;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(
            store::with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            store::with_database("postgres://u@h", "x"),
            "postgres://u@h/x"
        );
        assert_eq!(
            store::with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
