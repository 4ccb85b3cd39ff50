//! Application services on both stores, with time moved by a `ManualClock` instead of
//! waited for.

use std::sync::Arc;

use chrono::Duration;
use tidings_core::clock::{Clock, ManualClock};
use tidings_core::services::accounts::{INVITATION_DAYS, SESSION_HOURS};
use tidings_core::services::{Refusal, ServiceError, Services};
use tidings_core::store::Store;
use tidings_core::testing::{member, seed};
use tidings_core::time::now;
use tidings_core::Role;

tidings_core::on_both_stores! {
    an_invitation_is_good_once_and_for_seven_days,
    api_tokens_are_listed_to_whom_they_belong_and_revoked_at_once,
    operators_create_rename_suspend_and_resume_districts,
    school_staff_are_assigned_schools_and_a_reset_link_replaces_a_lost_password,
    a_guardians_code_opens_a_session_until_either_runs_out,
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
        .invite(
            &admin,
            &member("late@riverside.example.org", "Late", Role::Teacher),
        )
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
            &member("prompt@riverside.example.org", "Prompt", Role::Teacher),
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
        .invite(
            &admin,
            &member("short@riverside.example.org", "Short", Role::Teacher),
        )
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

/// A teacher sees and revokes only their own tokens; a district admin sees every API
/// token of the district (never sessions or invitations) and revokes any; expiry and
/// revocation show in the list and in the stored record the API checks; each creation and
/// revocation is audited.
async fn api_tokens_are_listed_to_whom_they_belong_and_revoked_at_once(store: Arc<dyn Store>) {
    use tidings_core::delivery::Actor;
    let admin = seed(store.as_ref(), 0).await.staff;
    let clock = Arc::new(ManualClock::at(now()));
    let services = services(store.clone(), clock.clone());
    let invited = services
        .invite(
            &admin,
            &member("teacher@riverside.example.org", "Teacher", Role::Teacher),
        )
        .await
        .unwrap();
    let teacher = services
        .accept_invitation(&invited.token.reveal(), "a long enough passphrase")
        .await
        .unwrap()
        .staff;

    let in_a_week = clock.now() + Duration::days(7);
    let teachers = services
        .create_api_token(
            &Actor::staff(teacher.id),
            &teacher,
            "gradebook",
            Some(in_a_week),
        )
        .await
        .unwrap();
    clock.advance(Duration::minutes(1));
    let admins = services
        .create_api_token(&Actor::staff(admin.id), &admin, "sis sync", None)
        .await
        .unwrap();
    for (name, expires) in [
        ("web session", None),
        ("  ", None),
        ("late", Some(clock.now())),
    ] {
        let refused = services
            .create_api_token(&Actor::staff(admin.id), &admin, name, expires)
            .await;
        assert!(
            matches!(refused, Err(ServiceError::Refused(Refusal::Invalid(_)))),
            "{name:?} {expires:?}: {refused:?}"
        );
    }

    let names = |tokens: Vec<tidings_core::store::ApiTokenView>| -> Vec<String> {
        tokens.into_iter().map(|t| t.name).collect()
    };
    // The teacher signed in (a web session) and accepted an invitation: neither is listed.
    assert_eq!(
        names(services.api_tokens(&teacher).await.unwrap()),
        ["gradebook"]
    );
    assert_eq!(
        names(services.api_tokens(&admin).await.unwrap()),
        ["sis sync", "gradebook"]
    );
    let listed = services.api_tokens(&teacher).await.unwrap();
    assert_eq!(listed[0].expires_at, Some(in_a_week));
    assert_eq!(listed[0].owner_email, "teacher@riverside.example.org");

    // The teacher may not revoke the admin's token, and is told it does not exist.
    let refused = services.revoke_api_token(&teacher, admins.view.id).await;
    assert!(
        matches!(refused, Err(ServiceError::Refused(Refusal::NotFound))),
        "{refused:?}"
    );
    assert!(store
        .api_token(admins.view.id)
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());

    // The admin revokes the teacher's token: it stops at once; twice changes nothing.
    clock.advance(Duration::minutes(5));
    services
        .revoke_api_token(&admin, teachers.view.id)
        .await
        .unwrap();
    services
        .revoke_api_token(&admin, teachers.view.id)
        .await
        .unwrap();
    let record = store.api_token(teachers.view.id).await.unwrap().unwrap();
    assert_eq!(record.revoked_at, Some(clock.now()));
    assert!(teachers.token.matches(&record.secret_hash));
    assert_eq!(
        services.api_tokens(&teacher).await.unwrap()[0].revoked_at,
        Some(clock.now())
    );

    let audit = store.audit_entries(admin.district_id, 50).await.unwrap();
    let of = |action: &str| audit.iter().filter(|e| e.action == action).count();
    assert_eq!((of("api_token.create"), of("api_token.revoke")), (2, 1));

    // Its last use is kept to the minute: a use within a minute of the last writes nothing.
    let minute = Duration::minutes(1);
    let used = clock.now();
    let last_used = || async { services.api_tokens(&admin).await.unwrap()[0].last_used_at };
    assert_eq!(last_used().await, None);
    store
        .token_used(admins.view.id, used, minute)
        .await
        .unwrap();
    assert_eq!(last_used().await, Some(used));
    store
        .token_used(admins.view.id, used + Duration::seconds(30), minute)
        .await
        .unwrap();
    assert_eq!(last_used().await, Some(used));
    let later = used + Duration::minutes(2);
    store
        .token_used(admins.view.id, later, minute)
        .await
        .unwrap();
    assert_eq!(last_used().await, Some(later));
}

async fn operators_create_rename_suspend_and_resume_districts(store: Arc<dyn Store>) {
    use tidings_core::services::districts::{NewDistrict, Operator};
    let admin = seed(store.as_ref(), 0).await.staff;
    let clock = Arc::new(ManualClock::at(now()));
    let services = services(store.clone(), clock.clone());
    let refusal = |outcome: Result<(), ServiceError>| match outcome {
        Err(ServiceError::Refused(refusal)) => Some(refusal),
        _ => None,
    };

    // The install's first administrator operates it; another district administrator
    // does not until the command line makes them one.
    assert!(
        admin.operator,
        "the first administrator operates the install"
    );
    let colleague = services
        .invite(
            &admin,
            &member("it2@riverside.example.org", "IT", Role::DistrictAdmin),
        )
        .await
        .unwrap()
        .staff;
    assert!(!colleague.operator);
    assert_eq!(
        refusal(
            services
                .districts(Operator::Staff(&colleague))
                .await
                .map(drop)
        ),
        Some(Refusal::Forbidden)
    );
    let granted = services
        .set_operator(colleague.email.as_str(), true)
        .await
        .unwrap();
    assert!(granted.operator);
    assert!(services.districts(Operator::Staff(&granted)).await.is_ok());
    let operator = admin.clone();
    let op = Operator::Staff(&operator);

    // Creating: bad names, time zones and emails are refused; a good one invites its
    // first administrator, whose invitation works.
    let lakeside = NewDistrict {
        name: "Lakeside Schools",
        timezone: "America/Denver",
        admin_email: "head@lakeside.example.org",
        admin_name: "Head of IT",
    };
    for bad in [
        NewDistrict {
            name: " ",
            ..lakeside
        },
        NewDistrict {
            timezone: "Mars/Olympus",
            ..lakeside
        },
        NewDistrict {
            admin_email: "not an email",
            ..lakeside
        },
        NewDistrict {
            admin_email: admin.email.as_str(),
            ..lakeside
        },
    ] {
        let outcome = services.create_district(op, bad).await.map(drop);
        assert!(
            matches!(
                refusal(outcome),
                Some(Refusal::Invalid(_) | Refusal::Conflict(_))
            ),
            "{bad:?}"
        );
    }
    let created = services.create_district(op, lakeside).await.unwrap();
    let district = created.district.id;
    assert_eq!(created.district.timezone, "America/Denver");
    assert_eq!(created.invitation.staff.role, Role::DistrictAdmin);
    assert!(!created.invitation.staff.operator);
    let session = services
        .accept_invitation(&created.invitation.token.reveal(), "lakeside passphrase")
        .await
        .unwrap();
    assert_eq!(session.staff.district_id, district);
    let listed = services.districts(op).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].district.id, district);
    assert_eq!(listed[1].counts.staff, 1);
    // Their own district's administrator is not an operator: they see no district list.
    assert_eq!(
        refusal(
            services
                .districts(Operator::Staff(&session.staff))
                .await
                .map(drop)
        ),
        Some(Refusal::Forbidden)
    );

    services
        .rename_district(op, district, "  Lakeside Unified  ")
        .await
        .unwrap();
    assert_eq!(
        store.district(district).await.unwrap().unwrap().name,
        "Lakeside Unified"
    );

    // Suspending: never one's own district; another's stops its sign-ins and tokens,
    // and resuming brings them back. Twice is once.
    assert!(matches!(
        refusal(
            services
                .suspend_district(op, operator.district_id, true)
                .await
        ),
        Some(Refusal::Conflict(_))
    ));
    for _ in 0..2 {
        services.suspend_district(op, district, true).await.unwrap();
    }
    assert_eq!(
        refusal(
            services
                .sign_in("head@lakeside.example.org", "lakeside passphrase")
                .await
                .map(drop)
        ),
        Some(Refusal::DistrictSuspended)
    );
    let record = store.api_token(session.token.id).await.unwrap().unwrap();
    assert!(
        record.district_suspended_at.is_some(),
        "its session stops too"
    );
    services
        .suspend_district(Operator::CommandLine, district, false)
        .await
        .unwrap();
    services
        .sign_in("head@lakeside.example.org", "lakeside passphrase")
        .await
        .expect("resumed, its staff sign in again");
    let record = store.api_token(session.token.id).await.unwrap().unwrap();
    assert!(record.district_suspended_at.is_none());

    // Each change is audited once, in the district it changed.
    let actions: Vec<String> = store
        .audit_entries(district, 50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .filter(|a| a.starts_with("district."))
        .collect();
    let mut sorted = actions.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "district.create",
            "district.rename",
            "district.resume",
            "district.suspend"
        ],
        "{actions:?}"
    );
}

/// School administrators and viewers are invited with the schools they see (at least
/// one, of the district); a teacher takes none; a role change keeps or drops them. A
/// reset link works once, only the newest works, and using it ends the member's sessions.
/// The staff list shows each member's last sign-in.
async fn school_staff_are_assigned_schools_and_a_reset_link_replaces_a_lost_password(
    store: Arc<dyn Store>,
) {
    use tidings_core::services::accounts::{LinkKind, MemberChange, NewMember, RESET_HOURS};
    use tidings_core::store::NewSchool;
    let admin = seed(store.as_ref(), 0).await.staff;
    let clock = Arc::new(ManualClock::at(now()));
    let services = services(store.clone(), clock.clone());
    let mut schools = Vec::new();
    for name in ["North Elementary", "South Middle"] {
        let school = store
            .create_school(
                &NewSchool {
                    district_id: admin.district_id,
                    name: name.into(),
                    timezone: "America/Chicago".into(),
                    sourced_id: None,
                },
                clock.now(),
            )
            .await
            .unwrap();
        schools.push(school.id);
    }
    let elsewhere = tidings_core::testing::seed_district(store.as_ref(), "Lakeside", 0).await;
    let other_school = store
        .create_school(
            &NewSchool {
                district_id: elsewhere.staff.district_id,
                name: "Lakeside High".into(),
                timezone: "America/Chicago".into(),
                sourced_id: None,
            },
            clock.now(),
        )
        .await
        .unwrap()
        .id;
    fn invalid<T>(outcome: Result<T, ServiceError>) -> bool {
        matches!(outcome, Err(ServiceError::Refused(Refusal::Invalid(_))))
    }
    let principal = |schools: Vec<_>| NewMember {
        schools,
        ..member(
            "principal@riverside.example.org",
            "Principal",
            Role::SchoolAdmin,
        )
    };
    assert!(
        invalid(services.invite(&admin, &principal(vec![])).await),
        "no school"
    );
    assert!(
        invalid(
            services
                .invite(&admin, &principal(vec![other_school]))
                .await
        ),
        "another district's school"
    );
    let teacher_with_school = NewMember {
        schools: vec![schools[0]],
        ..member("t@riverside.example.org", "T", Role::Teacher)
    };
    assert!(invalid(services.invite(&admin, &teacher_with_school).await));
    let invited = services
        .invite(&admin, &principal(vec![schools[1]]))
        .await
        .unwrap();
    let listed = |email: &'static str| {
        let store = store.clone();
        let district = admin.district_id;
        async move {
            store
                .staff_members(district)
                .await
                .unwrap()
                .into_iter()
                .find(|m| m.staff.email.as_str() == email)
                .unwrap()
        }
    };
    let principal_id = invited.staff.id;
    let before = listed("principal@riverside.example.org").await;
    assert_eq!(before.schools, vec![schools[1]]);
    assert_eq!(before.last_sign_in, None, "never signed in");

    // Moving to both schools; to teacher drops them; back to viewer needs them again.
    let change = |change: MemberChange| {
        let services = &services;
        let admin = &admin;
        async move { services.change_staff(admin, principal_id, &change).await }
    };
    change(MemberChange {
        schools: Some(schools.clone()),
        ..MemberChange::default()
    })
    .await
    .unwrap();
    let mut both = listed("principal@riverside.example.org").await.schools;
    both.sort();
    let mut expected = schools.clone();
    expected.sort();
    assert_eq!(both, expected);
    change(MemberChange {
        role: Some(Role::Teacher),
        ..MemberChange::default()
    })
    .await
    .unwrap();
    assert!(listed("principal@riverside.example.org")
        .await
        .schools
        .is_empty());
    assert!(invalid(
        change(MemberChange {
            role: Some(Role::Viewer),
            ..MemberChange::default()
        })
        .await
    ));
    change(MemberChange {
        role: Some(Role::Viewer),
        schools: Some(vec![schools[0]]),
        ..MemberChange::default()
    })
    .await
    .unwrap();
    let viewer = listed("principal@riverside.example.org").await;
    assert_eq!(
        (viewer.staff.role, viewer.schools),
        (Role::Viewer, vec![schools[0]])
    );

    // They accept, sign in (the list shows when), lose their password; two reset links
    // are made, only the newest works, and using it ends their sessions.
    let session = services
        .accept_invitation(&invited.token.reveal(), "the first passphrase")
        .await
        .unwrap();
    assert_eq!(
        listed("principal@riverside.example.org").await.last_sign_in,
        Some(clock.now())
    );
    clock.advance(Duration::minutes(5));
    let first = services.password_reset(&admin, principal_id).await.unwrap();
    let second = services.password_reset(&admin, principal_id).await.unwrap();
    assert_eq!(second.kind, LinkKind::Reset);
    assert_eq!(
        second.expires_at,
        clock.now() + Duration::hours(RESET_HOURS)
    );
    fn refused<T>(outcome: Result<T, ServiceError>) -> bool {
        matches!(outcome, Err(ServiceError::Refused(Refusal::NotFound)))
    }
    assert!(
        refused(services.invitation(&first.token.reveal()).await),
        "replaced"
    );
    assert_eq!(
        services.invitation(&second.token.reveal()).await.unwrap().1,
        LinkKind::Reset
    );
    let old_session = store.api_token(session.token.id).await.unwrap().unwrap();
    assert!(old_session.revoked_at.is_none());
    services
        .accept_invitation(&second.token.reveal(), "the second passphrase")
        .await
        .unwrap();
    let old_session = store.api_token(session.token.id).await.unwrap().unwrap();
    assert!(
        old_session.revoked_at.is_some(),
        "a reset ends their sessions"
    );
    assert!(refused(
        services
            .accept_invitation(&second.token.reveal(), "a third passphrase!")
            .await
            .map(drop)
    ));
    assert!(matches!(
        services
            .sign_in("principal@riverside.example.org", "the first passphrase")
            .await,
        Err(ServiceError::Refused(Refusal::BadCredentials))
    ));
    assert!(services
        .sign_in("principal@riverside.example.org", "the second passphrase")
        .await
        .is_ok());

    // Only district administrators make reset links; a disabled account gets none.
    assert!(matches!(
        services.password_reset(&viewer.staff, admin.id).await,
        Err(ServiceError::Refused(Refusal::Forbidden))
    ));
    change(MemberChange {
        disabled: Some(true),
        ..MemberChange::default()
    })
    .await
    .unwrap();
    assert!(matches!(
        services.password_reset(&admin, principal_id).await,
        Err(ServiceError::Refused(Refusal::Conflict(_)))
    ));
    let actions: Vec<String> = store
        .audit_entries(admin.district_id, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    for action in ["staff.password_reset", "staff.reset_password"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} audited: {actions:?}"
        );
    }
}

async fn a_guardians_code_opens_a_session_until_either_runs_out(store: Arc<dyn Store>) {
    use tidings_core::services::guardian_access::{CODES_PER_HOUR, CODE_MINUTES, SESSION_DAYS};
    use tidings_core::Channel;
    let seed = seed(store.as_ref(), 1).await;
    let (district, guardian) = (seed.staff.district_id, seed.guardians[0].id);
    let number = "+12025550177";
    tidings_core::testing::add_contact(store.as_ref(), district, guardian, Channel::Sms, number)
        .await;
    let clock = Arc::new(ManualClock::at(now()));
    let services = services(store.clone(), clock.clone());
    fn refused<T: std::fmt::Debug>(result: Result<T, ServiceError>) -> Refusal {
        match result {
            Err(ServiceError::Refused(refusal)) => refusal,
            other => panic!("not refused: {other:?}"),
        }
    }

    let code = || async {
        services
            .issue_sign_in_code(Channel::Sms, number)
            .await
            .unwrap()
    };

    // A code runs out after CODE_MINUTES by the clock.
    let stale = code().await;
    clock.advance(Duration::minutes(CODE_MINUTES) + Duration::seconds(1));
    assert_eq!(
        refused(
            services
                .redeem_sign_in_code(Channel::Sms, number, &stale.code)
                .await
        ),
        Refusal::InvalidCode
    );

    // A fresh one opens a session that sees the guardian, once.
    let issued = code().await;
    let opened = services
        .redeem_sign_in_code(Channel::Sms, number, &issued.code)
        .await
        .unwrap();
    assert_eq!(opened.guardians, vec![(district, guardian)]);
    assert_eq!(
        refused(
            services
                .redeem_sign_in_code(Channel::Sms, number, &issued.code)
                .await
        ),
        Refusal::InvalidCode,
        "a code is good once"
    );
    let access = services.guardian_access(&opened.token).await.unwrap();
    assert_eq!(access.guardians, vec![(district, guardian)]);

    // The session lasts SESSION_DAYS by the clock; signing out ends it at once.
    clock.advance(Duration::days(SESSION_DAYS) - Duration::minutes(1));
    assert!(services.guardian_access(&opened.token).await.is_ok());
    clock.advance(Duration::minutes(2));
    assert_eq!(
        refused(services.guardian_access(&opened.token).await),
        Refusal::BadCredentials
    );
    let again = code().await;
    let second = services
        .redeem_sign_in_code(Channel::Sms, number, &again.code)
        .await
        .unwrap();
    let access = services.guardian_access(&second.token).await.unwrap();
    services.end_guardian_session(&access).await.unwrap();
    assert_eq!(
        refused(services.guardian_access(&second.token).await),
        Refusal::BadCredentials
    );

    // At most CODES_PER_HOUR codes an hour for an address, known or not.
    let stranger = "+12025550999";
    for _ in 0..CODES_PER_HOUR {
        services
            .issue_sign_in_code(Channel::Sms, stranger)
            .await
            .unwrap();
    }
    assert_eq!(
        refused(services.issue_sign_in_code(Channel::Sms, stranger).await),
        Refusal::TooManyCodes
    );
    clock.advance(Duration::hours(1) + Duration::minutes(1));
    assert!(services
        .issue_sign_in_code(Channel::Sms, stranger)
        .await
        .is_ok());
}
