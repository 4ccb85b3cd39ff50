//! Single sign-on settings and sign-in on both stores: the client secret is sealed in the
//! database and never read back in the clear except to sign in, changes are audited
//! without it, and only enabled staff of the district are signed in (never created).

use std::sync::Arc;

use sqlx::Row;
use tidings_core::clock::ManualClock;
use tidings_core::link::LinkKeys;
use tidings_core::services::accounts::MemberChange;
use tidings_core::services::settings::SsoChange;
use tidings_core::services::{Refusal, ServiceError, Services};
use tidings_core::store::{NewStaff, Store};
use tidings_core::testing::{member, seed, seed_district, TestDatabase};
use tidings_core::time::now;
use tidings_core::{EmailAddress, Role};

tidings_core::on_both_stores! {
    sso_signs_in_only_enabled_staff_of_the_district_and_creates_no_one,
    ; databases: sso_settings_are_sealed_audited_changeable_and_removable,
}

const SECRET: &str = "GOCSPX-district-client-secret";

fn services(store: Arc<dyn Store>, keys: LinkKeys) -> Services {
    Services {
        store,
        clock: Arc::new(ManualClock::at(now())),
        partitions: 4,
        default_phone_region: "US".into(),
        link_keys: Arc::new(keys),
    }
}

fn refused_with(outcome: Result<impl std::fmt::Debug, ServiceError>, refusal: Refusal) {
    match outcome {
        Err(ServiceError::Refused(got)) => assert_eq!(got, refusal),
        other => panic!("expected {refusal:?}, got {other:?}"),
    }
}

/// Every column of the district's row, as bytes or text, straight from the database.
async fn raw_sso_row(db: &TestDatabase) -> Vec<Vec<u8>> {
    let sql = "SELECT issuer, client_id, client_secret_sealed FROM district_sso";
    let row_bytes = |issuer: String, client: String, sealed: Vec<u8>| {
        vec![issuer.into_bytes(), client.into_bytes(), sealed]
    };
    if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        let row = sqlx::query(sql).fetch_one(&pool).await.unwrap();
        row_bytes(row.get(0), row.get(1), row.get(2))
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let row = sqlx::query(sql).fetch_one(&pool).await.unwrap();
        row_bytes(row.get(0), row.get(1), row.get(2))
    }
}

async fn sso_settings_are_sealed_audited_changeable_and_removable(db: TestDatabase) {
    let store = db.store().await;
    let admin = seed(store.as_ref(), 0).await.staff;
    let keys = LinkKeys::generate();
    let services = services(store.clone(), keys.clone());
    let district = admin.district_id;
    assert!(services.district_sso(&admin).await.unwrap().is_none());
    assert!(store.sso_districts().await.unwrap().is_empty());

    // A first setting needs its secret; a bad issuer is refused in words.
    let change = |issuer, secret| SsoChange {
        issuer,
        client_id: "1234.apps.googleusercontent.com",
        client_secret: secret,
    };
    refused_with(
        services
            .set_district_sso(&admin, &change("https://accounts.google.com", None))
            .await,
        Refusal::Invalid("the client secret is needed to turn single sign-on on".into()),
    );
    assert!(matches!(
        services
            .set_district_sso(&admin, &change("http://accounts.google.com", Some(SECRET)))
            .await,
        Err(ServiceError::Refused(Refusal::Invalid(why))) if why.contains("https")
    ));
    let saved = services
        .set_district_sso(&admin, &change("https://accounts.google.com", Some(SECRET)))
        .await
        .unwrap();
    assert!(saved.client_secret_set);
    let shown = services.district_sso(&admin).await.unwrap().unwrap();
    assert_eq!(shown.issuer, "https://accounts.google.com");
    assert!(shown.client_secret_set && shown.client_secret_readable);
    assert!(
        !serde_json::to_string(&shown).unwrap().contains(SECRET),
        "the settings never carry the secret"
    );

    // In the database: sealed, nowhere in the clear; it opens for signing in only.
    let row = raw_sso_row(&db).await;
    for column in &row {
        assert!(
            !column.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is in the clear in the database"
        );
    }
    assert!(row[2].len() > SECRET.len(), "the sealed secret is stored");
    let client = services.sso_client(district).await.unwrap().unwrap();
    assert_eq!(client.client_secret.reveal(), SECRET);
    assert_eq!(client.client_id.as_str(), "1234.apps.googleusercontent.com");
    // Another installation's keys (a stolen database without the key file) cannot open it.
    let elsewhere = self::services(store.clone(), LinkKeys::generate());
    assert!(matches!(
        elsewhere.sso_client(district).await,
        Err(ServiceError::Store(_))
    ));
    assert!(
        !elsewhere
            .district_sso(&admin)
            .await
            .unwrap()
            .unwrap()
            .client_secret_readable
    );
    let listed = store.sso_districts().await.unwrap();
    assert_eq!(listed.iter().map(|d| d.id).collect::<Vec<_>>(), [district]);

    // Changing the provider without a new secret keeps the secret.
    services
        .set_district_sso(
            &admin,
            &SsoChange {
                issuer:
                    "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
                client_id: "entra-app",
                client_secret: Some("  "),
            },
        )
        .await
        .unwrap();
    let client = services.sso_client(district).await.unwrap().unwrap();
    assert_eq!(client.client_id.as_str(), "entra-app");
    assert_eq!(client.client_secret.reveal(), SECRET, "kept");

    // Only district administrators see or change it.
    let teacher = store
        .create_staff(
            &NewStaff {
                district_id: district,
                email: EmailAddress::parse("teacher@riverside.example.org").unwrap(),
                display_name: "Teacher".into(),
                role: Role::Teacher,
                password_hash: None,
            },
            now(),
        )
        .await
        .unwrap();
    refused_with(services.district_sso(&teacher).await, Refusal::Forbidden);
    refused_with(
        services
            .set_district_sso(&teacher, &change("https://evil.example", Some("x")))
            .await,
        Refusal::Forbidden,
    );
    refused_with(
        services.remove_district_sso(&teacher).await,
        Refusal::Forbidden,
    );

    // Every change audited, and no audit row holds the secret.
    let audit = store.audit_entries(district, 50).await.unwrap();
    let sso: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "district.sso")
        .collect();
    assert_eq!(sso.len(), 2, "{audit:?}");
    assert!(sso
        .iter()
        .any(|e| e.detail["client_secret_changed"] == true));
    assert!(sso
        .iter()
        .any(|e| e.detail["client_secret_changed"] == false));
    for entry in &audit {
        assert!(!entry.detail.to_string().contains(SECRET), "{entry:?}");
    }

    // Removed: gone from the database, the sign-in page's list, and the client.
    services.remove_district_sso(&admin).await.unwrap();
    assert!(services.district_sso(&admin).await.unwrap().is_none());
    assert!(services.sso_client(district).await.unwrap().is_none());
    assert!(store.sso_districts().await.unwrap().is_empty());
    refused_with(
        services.remove_district_sso(&admin).await,
        Refusal::NotFound,
    );
    let audit = store.audit_entries(district, 50).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "district.sso_removed"));
}

async fn sso_signs_in_only_enabled_staff_of_the_district_and_creates_no_one(store: Arc<dyn Store>) {
    let admin = seed(store.as_ref(), 0).await.staff;
    let other = seed_district(store.as_ref(), "Lakeside", 0).await.staff;
    let services = services(store.clone(), LinkKeys::generate());
    let district = admin.district_id;

    // The provider's spelling of the address does not matter.
    let session = services
        .sign_in_sso(district, "Admin@Riverside.example.org")
        .await
        .unwrap();
    assert_eq!(session.staff.id, admin.id);
    let record = store.api_token(session.token.id).await.unwrap().unwrap();
    assert!(session.token.matches(&record.secret_hash));
    let audit = store.audit_entries(district, 10).await.unwrap();
    let signed_in = audit.iter().find(|e| e.action == "staff.sign_in").unwrap();
    assert_eq!(signed_in.detail["method"], "sso");

    let members = store.staff_members(district).await.unwrap().len();
    refused_with(
        services
            .sign_in_sso(district, "stranger@riverside.example.org")
            .await,
        Refusal::NoAccount,
    );
    refused_with(
        services.sign_in_sso(district, "not an address").await,
        Refusal::NoAccount,
    );
    // Another district's staff member is no one here.
    refused_with(
        services.sign_in_sso(district, other.email.as_str()).await,
        Refusal::NoAccount,
    );
    assert_eq!(
        store.staff_members(district).await.unwrap().len(),
        members,
        "no account was created"
    );

    // A disabled account is refused, and says so.
    let teacher = services
        .invite(
            &admin,
            &member("teacher@riverside.example.org", "Teacher", Role::Teacher),
        )
        .await
        .unwrap()
        .staff;
    assert!(services
        .sign_in_sso(district, "teacher@riverside.example.org")
        .await
        .is_ok());
    services
        .change_staff(
            &admin,
            teacher.id,
            &MemberChange {
                disabled: Some(true),
                ..MemberChange::default()
            },
        )
        .await
        .unwrap();
    refused_with(
        services
            .sign_in_sso(district, "teacher@riverside.example.org")
            .await,
        Refusal::AccountDisabled,
    );
}
