//! Application services on both stores, with time moved by a `ManualClock` instead of
//! waited for.

use std::sync::Arc;

use chrono::Duration;
use tidings_core::clock::{Clock, ManualClock};
use tidings_core::services::accounts::{INVITATION_DAYS, SESSION_HOURS};
use tidings_core::services::{Refusal, ServiceError, Services};
use tidings_core::store::Store;
use tidings_core::testing::seed;
use tidings_core::time::now;
use tidings_core::Role;

tidings_core::on_both_stores! {
    an_invitation_is_good_once_and_for_seven_days,
}

fn services(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Services {
    Services {
        store,
        clock,
        partitions: 4,
        default_phone_region: "US".into(),
        link_keys: Arc::new(tidings_core::link::LinkKeys::generate()),
    }
}

async fn an_invitation_is_good_once_and_for_seven_days(store: Arc<dyn Store>) {
    let admin = seed(store.as_ref(), 0).await.staff;
    let clock = Arc::new(ManualClock::at(now()));
    let services = services(store.clone(), clock.clone());
    let refused = |outcome: Result<_, ServiceError>| {
        matches!(outcome, Err(ServiceError::Refused(Refusal::NotFound)))
    };

    let late = services
        .invite(&admin, "late@riverside.example.org", "Late", Role::Teacher)
        .await
        .unwrap();
    clock.advance(Duration::days(INVITATION_DAYS) - Duration::minutes(1));
    assert!(services.invitation(&late.token.reveal()).await.is_ok());
    clock.advance(Duration::minutes(2));
    assert!(
        refused(services.invitation(&late.token.reveal()).await.map(drop)),
        "expired after {INVITATION_DAYS} days"
    );

    let prompt = services
        .invite(
            &admin,
            "prompt@riverside.example.org",
            "Prompt",
            Role::Viewer,
        )
        .await
        .unwrap();
    let session = services
        .accept_invitation(&prompt.token.reveal(), "a long enough passphrase")
        .await
        .unwrap();
    assert_eq!(session.staff.email.as_str(), "prompt@riverside.example.org");
    assert_eq!(
        session.expires_at,
        clock.now() + Duration::hours(SESSION_HOURS),
        "a session lasts {SESSION_HOURS} hours from sign-in"
    );
    assert!(
        refused(
            services
                .accept_invitation(&prompt.token.reveal(), "another long passphrase")
                .await
                .map(drop)
        ),
        "used once"
    );
    // A password shorter than twelve characters is refused before anything changes.
    let short = services
        .invite(&admin, "short@riverside.example.org", "Short", Role::Viewer)
        .await
        .unwrap();
    assert!(matches!(
        services
            .accept_invitation(&short.token.reveal(), "too short")
            .await,
        Err(ServiceError::Refused(Refusal::Invalid(_)))
    ));
    assert!(services.invitation(&short.token.reveal()).await.is_ok());
}
