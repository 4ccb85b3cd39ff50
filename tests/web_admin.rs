//! The web admin as staff use it: in headless Chromium (Debian's, driven over WebDriver by
//! its chromedriver), with the keyboard where people use it, an axe-core accessibility
//! check on every page, and screenshots in `target/web-admin-screenshots/` to look at.

mod support;

use std::time::Duration;

use fantoccini::Locator;
use serde_json::{json, Value};
use support::browser::{Browser, ENTER, TAB};
use support::{demo_zip_with, first_login, tidings, Server};
use tidings_core::testing::TestDatabase;

async fn messages_in(db: &TestDatabase) -> Vec<Value> {
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    store
        .messages(
            &tidings_core::store::MessageScope::District(district),
            None,
            100,
        )
        .await
        .unwrap()
        .iter()
        .map(|m| json!({"id": m.id.to_string(), "subject": m.subject, "kind": m.kind.as_str()}))
        .collect()
}

#[tokio::test]
async fn staff_sign_in_compose_review_send_and_read_the_report_in_a_browser() {
    sign_in_compose_send_and_report(TestDatabase::sqlite(), "send").await;
}

/// The same on PostgreSQL (screenshots in `send-postgres/`).
#[tokio::test]
async fn staff_sign_in_compose_review_send_and_read_the_report_in_a_browser_on_postgres() {
    sign_in_compose_send_and_report(TestDatabase::postgres_empty().await, "send-postgres").await;
}

async fn sign_in_compose_send_and_report(db: TestDatabase, shots: &str) {
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let (email, password) = first_login(&server.banner).expect("a first login is printed");
    let browser = Browser::start(shots).await;
    let b = &browser.client;

    // Signed out, every page leads to sign-in.
    b.goto(&server.url("/")).await.unwrap();
    browser.arrive("[data-page=sign-in]").await;
    assert_eq!(browser.path().await, "/sign-in");
    browser.accessible("sign-in").await;

    // A wrong password is refused in words, on the same page.
    browser.type_here(&email).await;
    browser.type_here(TAB).await;
    browser.type_here("not the password").await;
    browser.type_here(ENTER).await;
    browser.arrive("[role=alert]").await;
    assert!(
        browser.text("[role=alert]").await.contains("wrong"),
        "the refusal is announced"
    );
    browser.shot("sign-in-refused").await;

    // With the keyboard only: the email is kept, Tab to the password, Enter to sign in.
    let field = b.find(Locator::Id("password")).await.unwrap();
    field.click().await.unwrap();
    browser.type_here(&password).await;
    browser.type_here(ENTER).await;
    browser.arrive("[data-page=messages]").await;
    assert_eq!(browser.path().await, "/", "signed in, on the messages");
    assert!(browser.text("main").await.contains("No messages yet"));
    browser.accessible("messages").await;
    browser.shot("messages-empty").await;

    // Compose to one class, review who it reaches, then send.
    browser.click("a.button", "[data-page=compose]").await;
    assert_eq!(browser.path().await, "/messages/new");
    browser.accessible("compose").await;
    browser.tick("input[name=class]").await;
    browser.fill("subject", "Picture day").await;
    browser
        .fill("body", "Picture day is on Friday. Please return the form.")
        .await;
    b.execute(
        "document.querySelectorAll('details').forEach(d => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    browser.choose("t_language-0", "es").await;
    browser.fill("t_subject-0", "Día de fotos").await;
    browser
        .fill(
            "t_body-0",
            "El día de fotos es el viernes. Devuelva el formulario.",
        )
        .await;
    browser.click("button[value=review]", "[role=status]").await;
    let preview = browser.text("[role=status]").await;
    let guardians: u64 = preview
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("a guardian count");
    assert!(guardians > 0, "{preview}");
    assert!(
        preview.contains("sms:") && preview.contains("email:"),
        "{preview}"
    );
    browser.accessible("compose-review").await;
    browser.shot("compose-review").await;
    browser
        .click("button[value=send]", "[data-page=report]")
        .await;
    let report = browser.path().await;
    assert!(report.starts_with("/messages/"), "{report}");
    assert_eq!(browser.text("h1").await, "Picture day");
    assert!(browser.text("table").await.contains("sms"));
    // Live progress: the counts change on this very page as the dispatcher sends (Server-
    // Sent Events; the mark shows the page was not reloaded).
    b.execute("document.documentElement.dataset.stay = 'yes'", vec![])
        .await
        .unwrap();
    browser
        .arrive("html[data-stay] #counts tr[data-state=SENT], html[data-stay] #counts tr[data-state=DELIVERED]")
        .await;
    browser.accessible("report").await;
    browser.shot("report").await;

    // Back to the filled-in form and Send again: the same message, not a second one.
    b.back().await.unwrap();
    browser.arrive("[data-page=compose]").await;
    browser
        .click("button[value=send]", "[data-page=report]")
        .await;
    assert_eq!(browser.path().await, report, "the first message's report");
    assert_eq!(messages_in(&db).await.len(), 1, "sent once");

    // In sandbox mode the outbox shows what was sent; play the guardian: follow a text's
    // link and acknowledge, and the report counts it.
    b.goto(&server.url("/")).await.unwrap();
    browser
        .click("a[href='/outbox']", "[data-page=outbox]")
        .await;
    // The page looks again by itself until the dispatcher has sent something.
    browser.arrive("td.sent a[href*='/a/']").await;
    browser.accessible("outbox").await;
    browser.shot("outbox").await;
    browser.click("td.sent a[href*='/a/']", "form button").await;
    browser.shot("guardian-link").await;
    // The answer arrives before the next page is asked for (else the form's navigation
    // could land after it).
    browser.click("form button", "p.notice").await;
    b.goto(&server.url(&report)).await.unwrap();
    browser.arrive("[data-page=report]").await;
    assert!(
        browser.text("main > p").await.contains("1 acknowledged"),
        "{}",
        browser.text("main > p").await
    );

    // The chart of states over time, per channel, kept live with the counts: the SMS
    // acknowledged is on it, and once all went out none is left CREATED.
    let acked_line = b
        .find(Locator::Css(
            "figure.chart[data-channel=sms] polyline[data-state=ACKED]",
        ))
        .await;
    assert!(acked_line.is_ok(), "an ACKED line on the SMS chart");
    let legend = browser.text("figure.chart[data-channel=sms] .legend").await;
    assert!(legend.contains("ACKED: 1"), "{legend}");
    assert!(legend.contains("CREATED: 0"), "{legend}");

    // Who acknowledged, and what happened to each of their deliveries: every state, when,
    // and who or what moved it.
    browser
        .click("a[href*='show=acked']", "[data-page=report]")
        .await;
    let acked = browser.text("table.people tbody").await;
    assert_eq!(acked.lines().count(), 1, "one acknowledged: {acked}");
    browser
        .click(
            "table.people a[href*='/recipients/']",
            "[data-page=recipient]",
        )
        .await;
    let timeline = browser.text("main").await;
    for seen in [
        "acknowledged",
        "QUEUED",
        "SENT",
        "ACKED",
        "the dispatcher",
        "the guardian",
    ] {
        assert!(timeline.contains(seen), "{seen:?} in {timeline}");
    }
    browser.accessible("recipient").await;
    browser.shot("recipient").await;
    b.goto(&server.url(&report)).await.unwrap();
    browser.arrive("[data-page=report]").await;

    // Who has not acknowledged, as CSV (fetched as the page's link would be), and a
    // reminder to them by email only.
    let csv = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.querySelector('a[href$=\".csv\"]').href)
                 .then(r => r.text()).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap();
    assert!(
        csv.starts_with("guardian_id,given_name,family_name,language"),
        "{csv}"
    );
    assert_eq!(
        csv.lines().count() as u64,
        guardians,
        "everyone but the one who acknowledged, once, and the header: {csv}"
    );
    browser.tick(".renotify input[value=sms]").await;
    browser
        .click(".renotify button", "[data-page=report]")
        .await;
    let reminder = browser.path().await;
    assert_ne!(reminder, report, "the reminder is a message of its own");
    assert!(browser.text("table").await.contains("email"));
    assert!(!browser.text("table").await.contains("sms"), "email only");
    assert_eq!(messages_in(&db).await.len(), 2);

    // An emergency asks for confirmation, with the count, before it goes.
    b.goto(&server.url("/messages/new")).await.unwrap();
    browser.arrive("[data-page=compose]").await;
    browser.tick("input[name=class]").await;
    browser.choose("kind", "emergency").await;
    browser.fill("subject", "Lockdown").await;
    browser
        .fill(
            "body",
            "The school is in lockdown. Do not come to the school.",
        )
        .await;
    browser.click("button[value=send]", "[role=status]").await;
    assert_eq!(browser.path().await, "/messages", "not sent yet");
    assert!(browser
        .text("[role=status]")
        .await
        .contains("Confirm this emergency"));
    assert_eq!(
        messages_in(&db).await.len(),
        2,
        "nothing sent before the confirmation"
    );
    browser.accessible("emergency-confirm").await;
    browser.shot("emergency-confirm").await;
    browser.click("button.danger", "[data-page=report]").await;
    assert_eq!(browser.text("h1").await, "Lockdown");
    let sent = messages_in(&db).await;
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().any(|m| m["kind"] == "emergency"), "{sent:?}");

    // Both on the list; then sign out, and the pages are closed again.
    b.goto(&server.url("/")).await.unwrap();
    browser.arrive("[data-page=messages]").await;
    let list = browser.text("table").await;
    assert!(
        list.contains("Picture day") && list.contains("Lockdown"),
        "{list}"
    );
    browser.shot("messages").await;
    // The administrator's pages on a 360-px phone: none scrolls sideways (tables
    // scroll inside themselves), each passes the accessibility check.
    b.set_window_size(360, 740).await.unwrap();
    for (path, name) in [
        ("/", "phone-messages"),
        ("/messages/new", "phone-compose"),
        (report.as_str(), "phone-report"),
        ("/schools", "phone-schools"),
        ("/guardians", "phone-guardians"),
        ("/dead-letters", "phone-dead-letters"),
        ("/audit", "phone-audit"),
        ("/staff", "phone-staff"),
        ("/settings", "phone-settings"),
        ("/imports", "phone-imports"),
        ("/districts", "phone-districts"),
    ] {
        b.goto(&server.url(path)).await.unwrap();
        browser.arrive("main[data-page]").await;
        browser.accessible(name).await;
        browser.shot(name).await;
        assert!(
            !browser.overflows().await,
            "{path} is wider than a 360-px phone"
        );
    }
    // A guardian's, a student's and a recipient's timeline, reached by their lists' first
    // links, fit too.
    for (list, link, name) in [
        (
            "/guardians",
            "main a[href^='/guardians/']",
            "phone-guardian",
        ),
        ("/students", "main a[href^='/students/']", "phone-student"),
        (
            report.as_str(),
            "main a[href*='/recipients/']",
            "phone-recipient",
        ),
    ] {
        b.goto(&server.url(list)).await.unwrap();
        browser.arrive("main[data-page]").await;
        browser.click(link, "main[data-page]").await;
        browser.accessible(name).await;
        browser.shot(name).await;
        assert!(
            !browser.overflows().await,
            "{} (from {list}) is wider than a 360-px phone",
            browser.path().await
        );
    }
    // On a phone the menu is one button at the top: its links stay hidden until it is
    // opened with the keyboard, then they lie over the page and take the member there.
    b.goto(&server.url("/")).await.unwrap();
    browser.arrive("main[data-page=messages]").await;
    let staff_link = ".menu-narrow a[href='/staff']";
    assert!(!shown(&browser, staff_link).await, "the menu starts closed");
    assert!(!shown(&browser, ".menu-wide a[href='/staff']").await);
    b.execute("document.querySelector('.brand').focus()", vec![])
        .await
        .unwrap();
    browser.type_here(TAB).await;
    browser.type_here(ENTER).await;
    assert!(shown(&browser, staff_link).await, "Enter opens the menu");
    assert!(
        shown(&browser, ".menu-narrow a[href='/account']").await,
        "the member's own account is in the menu (the bar has no room for the name)"
    );
    browser.shot("phone-menu-open").await;
    browser.accessible("phone-menu-open").await;
    browser.click(staff_link, "main[data-page=staff]").await;
    let current = b
        .execute(
            "return [...document.querySelectorAll('.menu-narrow a[aria-current=page]')]
                 .map(a => a.getAttribute('href'))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        current,
        json!(["/staff"]),
        "the staff page's entry is marked"
    );
    b.set_window_size(1280, 900).await.unwrap();
    assert!(
        shown(&browser, ".menu-wide a[href='/staff']").await
            && !shown(&browser, ".menu-narrow summary").await,
        "on a laptop the menu is in the bar"
    );
    browser
        .click(".signout button", "[data-page=sign-in]")
        .await;
    assert_eq!(browser.path().await, "/sign-in");
    b.goto(&server.url("/messages/new")).await.unwrap();
    browser.arrive("[data-page=sign-in]").await;
    assert_eq!(browser.path().await, "/sign-in", "the session is over");

    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

/// Forms posted without the session's CSRF token are refused (what another site's page
/// would send with the staff member's cookie).
#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let (email, password) = first_login(&server.banner).unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Sign in as a browser would: the form's cookie, then the form with its token.
    let page = client.get(server.url("/sign-in")).send().await.unwrap();
    let form_cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let csrf_sign_in = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let forged = client
        .post(server.url("/sign-in"))
        .header("cookie", &form_cookie)
        .form(&[
            ("email", email.as_str()),
            ("password", password.as_str()),
            ("csrf", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), reqwest::StatusCode::FORBIDDEN);
    let signed_in = client
        .post(server.url("/sign-in"))
        .header("cookie", &form_cookie)
        .form(&[
            ("email", email.as_str()),
            ("password", password.as_str()),
            ("csrf", csrf_sign_in.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), reqwest::StatusCode::SEE_OTHER);
    let set = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let session = set.split(';').next().unwrap().to_owned();

    let sent = client
        .post(server.url("/messages"))
        .header("cookie", &session)
        .form(&[
            ("reach", "district"),
            ("channel", "sms"),
            ("kind", "general"),
            ("subject", "Forged"),
            ("body", "Sent from another site"),
            ("once", "k1"),
            ("action", "send"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), reqwest::StatusCode::FORBIDDEN);
    assert!(messages_in(&db).await.is_empty(), "nothing was sent");

    // With the page's token it is sent; a time on the form is the district's local time.
    let page = client
        .get(server.url("/messages/new"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = &store.districts().await.unwrap()[0];
    let zone: chrono_tz::Tz = district.timezone.parse().unwrap();
    // A month from now at 07:30 local time, as the form's field holds it.
    let day = (chrono::Utc::now() + chrono::Duration::days(30))
        .with_timezone(&zone)
        .date_naive();
    let local = day.and_hms_opt(7, 30, 0).unwrap();
    let send_at = local.format("%Y-%m-%dT%H:%M").to_string();
    let sent = client
        .post(server.url("/messages"))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("reach", "district"),
            ("channel", "email"),
            ("kind", "general"),
            ("subject", "Winter concert"),
            ("body", "The winter concert is on January 15 at 7:30."),
            ("send_at", send_at.as_str()),
            ("once", "k2"),
            ("action", "send"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), reqwest::StatusCode::SEE_OTHER);
    let id = sent.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches("/messages/")
        .to_owned();
    let summary = store
        .message_summary(
            &tidings_core::store::MessageScope::District(district.id),
            tidings_core::MessageId::from_uuid(id.parse().unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
    use chrono::TimeZone;
    let expected = zone
        .from_local_datetime(&local)
        .earliest()
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert_eq!(summary.scheduled_at, Some(expected), "07:30 in {zone}");

    // It waits until then, so it can still be recalled from its report.
    let report = client
        .get(server.url(&format!("/messages/{id}")))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(report.contains("id=\"cancel\""), "a Cancel button");
    let recalled = client
        .post(server.url(&format!("/messages/{id}/cancel")))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(recalled.status(), reqwest::StatusCode::SEE_OTHER);
    let summary = store
        .message_summary(
            &tidings_core::store::MessageScope::District(district.id),
            tidings_core::MessageId::from_uuid(id.parse().unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        summary.counts.iter().all(|c| matches!(
            c.state,
            tidings_core::DeliveryState::Cancelled | tidings_core::DeliveryState::Suppressed
        )),
        "{:?}",
        summary.counts
    );
    let audited = store.audit_entries(district.id, 20).await.unwrap();
    assert!(audited.iter().any(|e| e.action == "message.cancel"));

    // Guessing one account's password is stopped after 5 tries a minute; other accounts
    // (from the same address, under its own bound of 20) are not held up by it.
    let try_sign_in = |email: &'static str, password: String| {
        let (client, url, cookie, csrf) = (
            client.clone(),
            server.url("/sign-in"),
            form_cookie.clone(),
            csrf_sign_in.clone(),
        );
        async move {
            client
                .post(url)
                .header("cookie", cookie)
                .form(&[("email", email), ("password", &password), ("csrf", &csrf)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..5 {
        assert_eq!(
            try_sign_in("ana@district.example.org", "guess".into()).await,
            reqwest::StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        try_sign_in("ana@district.example.org", "guess".into()).await,
        reqwest::StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        try_sign_in("admin@tidings.local", password.clone()).await,
        reqwest::StatusCode::SEE_OTHER
    );
    assert!(server.terminate().await.success());
}

/// Signs in through the form, with the keyboard.
async fn sign_in(browser: &Browser, server: &Server) {
    let (email, password) = first_login(&server.banner).expect("a first login is printed");
    browser.client.goto(&server.url("/sign-in")).await.unwrap();
    browser.arrive("[data-page=sign-in]").await;
    browser.type_here(&email).await;
    browser.type_here(TAB).await;
    browser.type_here(&password).await;
    browser.type_here(ENTER).await;
    browser.arrive("[data-page=messages]").await;
}

#[tokio::test]
async fn an_administrator_finds_a_guardian_and_changes_how_they_are_reached() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let browser = Browser::start("directory").await;
    let b = &browser.client;
    sign_in(&browser, &server).await;

    // Find a guardian of the demo district by family name.
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    let scope = tidings_core::store::Scope::District(district);
    let first = store
        .guardians(
            &scope,
            &tidings_core::store::PageRequest {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .remove(0);
    // The directory: a school, one of its classes, a student of it, their guardians.
    browser
        .click("nav a[href='/schools']", "[data-page=schools]")
        .await;
    browser.accessible("schools").await;
    browser.shot("schools").await;
    let schools = store
        .schools(
            &scope,
            &tidings_core::store::PageRequest {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for school in &schools {
        assert!(browser.text("table").await.contains(&school.name));
    }
    let school = &schools[0];
    browser
        .click(
            &format!("a[href='/schools/{}']", school.id),
            "[data-page=school]",
        )
        .await;
    browser.accessible("school").await;
    let class = store
        .classes(
            &scope,
            &tidings_core::store::PageRequest {
                limit: 1,
                school: Some(school.id),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .remove(0);
    browser
        .click(
            &format!("a[href='/classes/{}']", class.id),
            "[data-page=class]",
        )
        .await;
    browser.accessible("class").await;
    browser.shot("class").await;
    b.set_window_size(390, 844).await.unwrap();
    browser.shot("phone-class").await;
    b.set_window_size(1280, 900).await.unwrap();
    let enrolled = store
        .students(
            &scope,
            &tidings_core::store::PageRequest {
                limit: 500,
                class: Some(class.id),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!enrolled.is_empty());
    assert!(
        browser
            .text("caption")
            .await
            .contains(&format!("({})", enrolled.len())),
        "the class page lists its {} students",
        enrolled.len()
    );
    let pupil = &enrolled[0];
    browser
        .click(
            &format!("a[href='/students/{}']", pupil.id),
            "[data-page=student]",
        )
        .await;
    browser.accessible("student").await;
    browser.shot("student").await;
    let theirs = store
        .guardians(
            &scope,
            &tidings_core::store::PageRequest {
                limit: 100,
                student: Some(pupil.id),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for guardian in &theirs {
        b.find(Locator::Css(&format!(
            "a[href='/guardians/{}']",
            guardian.id
        )))
        .await
        .expect("each of the student's guardians is linked");
    }
    // "Message this student's guardians" opens compose with the student chosen.
    browser
        .click("a[href^='/messages/new?student=']", "[data-page=compose]")
        .await;
    b.find(Locator::Css(&format!(
        "input[name=student][value='{}']:checked",
        pupil.id
    )))
    .await
    .expect("the student is chosen");
    b.find(Locator::Css("input[name=reach][value=people]:checked"))
        .await
        .expect("reach is chosen people");
    // The students tab searches by name.
    b.goto(&server.url("/students")).await.unwrap();
    browser.arrive("[data-page=students]").await;
    browser.accessible("students").await;
    browser.fill("q", &pupil.family_name).await;
    b.execute("document.documentElement.dataset.left = 'yes'", vec![])
        .await
        .unwrap();
    browser.type_here(ENTER).await;
    browser
        .arrive(&format!(
            "html:not([data-left]) a[href='/students/{}']",
            pupil.id
        ))
        .await;

    browser
        .click(".filters a[href='/guardians']", "[data-page=guardians]")
        .await;
    browser.accessible("guardians").await;
    browser.fill("q", &first.family_name).await;
    browser.type_here(ENTER).await;
    browser
        .arrive(&format!(
            "html:not([data-left]) a[href='/guardians/{}']",
            first.id
        ))
        .await;
    browser.shot("guardians-search").await;
    browser
        .click(
            &format!("a[href='/guardians/{}']", first.id),
            "[data-page=guardian]",
        )
        .await;
    browser.accessible("guardian").await;

    // An address that is not one is refused in words; a good one is added.
    browser.choose("kind", "email").await;
    browser.fill("address", "not an address").await;
    browser.click("#add-contact", "[role=alert]").await;
    assert!(browser.text("[role=alert]").await.contains("Please check"));
    browser.choose("kind", "email").await;
    browser.fill("address", "New.Address@Example.org").await;
    browser
        .click("#add-contact", "tr[data-contact='new.address@example.org']")
        .await;

    // An opt-out from email, then revoked.
    browser.choose("channel", "email").await;
    browser
        .click("#add-opt-out", "tr[data-opt-out=email]")
        .await;
    browser.accessible("guardian-opted-out").await;
    browser.shot("guardian").await;
    browser
        .click("tr[data-opt-out=email] button", "[data-page=guardian]")
        .await;
    assert!(
        b.find(Locator::Css("tr[data-opt-out=email]"))
            .await
            .is_err(),
        "revoked"
    );

    // Each change is in the audit log, as the staff member's.
    let actions: Vec<String> = store
        .audit_entries(district, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.staff_id.is_some())
        .map(|e| e.action)
        .collect();
    for action in ["contact_point.add", "opt_out.add", "opt_out.revoke"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    // … and on the audit log's page, with who did it.
    browser
        .click("nav a[href='/audit']", "[data-page=audit]")
        .await;
    browser.accessible("audit").await;
    let revoked = browser.text("tr[data-action='opt_out.revoke']").await;
    assert!(revoked.contains("admin@"), "{revoked}");
    browser.shot("audit").await;

    // Settings: a quota, a wrong time refused in words, quiet hours for a school.
    browser
        .click("nav a[href='/settings']", "[data-page=settings]")
        .await;
    browser.accessible("settings").await;
    // The district's language and time zone: a zone that is none is refused in words.
    browser.choose("language", "es").await;
    let zone = b.find(Locator::Id("district_timezone")).await.unwrap();
    zone.clear().await.unwrap();
    zone.send_keys("Central Time").await.unwrap();
    browser.click("#save-locale", "[role=alert]").await;
    assert!(browser.text("[role=alert]").await.contains("time zone"));
    browser.choose("language", "es").await;
    let zone = b.find(Locator::Id("district_timezone")).await.unwrap();
    zone.clear().await.unwrap();
    zone.send_keys("America/Chicago").await.unwrap();
    browser.click("#save-locale", "[role=status]").await;
    let located = store.district(district).await.unwrap().unwrap();
    assert_eq!(
        (located.default_language.as_str(), located.timezone.as_str()),
        ("es", "America/Chicago")
    );
    browser.fill("max_recipients", "5000").await;
    browser.click("#save-quotas", "[role=status]").await;
    let quotas = store.district(district).await.unwrap().unwrap();
    assert_eq!(quotas.max_recipients_per_message, Some(5000));
    assert_eq!(quotas.max_messages_per_hour, None);
    let start = b.find(Locator::Id("start")).await.unwrap();
    start.clear().await.unwrap();
    start.send_keys("25:99").await.unwrap();
    browser.click("#save-quiet", "[role=alert]").await;
    assert!(browser.text("[role=alert]").await.contains("Please check"));
    browser.click("#save-quiet", "[role=status]").await;
    browser.shot("settings").await;
    let actions: Vec<String> = store
        .audit_entries(district, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.iter().any(|a| a == "district.quotas"),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a == "school.quiet_hours"),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a == "district.locale"),
        "{actions:?}"
    );
    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn failed_deliveries_are_listed_and_replayed_from_the_dead_letters_page() {
    let db = TestDatabase::sqlite();
    let mut command = tidings(&db.url);
    command.env("TIDINGS_SANDBOX_FAULTS", "{permanent=1.0,seed=3}");
    let server = Server::start_with(&mut command, &["--demo"]).await;
    let (email, _) = first_login(&server.banner).unwrap();
    let token = support::token_for(&db.url, &email).await;
    let (_, class) = support::demo_teacher();
    let sent = reqwest::Client::new()
        .post(server.url("/api/v1/messages"))
        .bearer_auth(&token)
        .json(
            &json!({"audience": {"classes": [class]}, "channels": ["email"], "kind": "general",
                      "subject": "Field trip", "body": "The field trip is on Monday."}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), reqwest::StatusCode::CREATED);

    // Every send is refused for good: wait for the dead letters to appear.
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    let scope = tidings_core::store::MessageScope::District(district);
    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let failed = store.dead_letters(&scope, None, 10).await.unwrap();
            if !failed.is_empty() {
                return failed;
            }
            // Looked at again shortly: what is awaited is the condition, not a time.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the refused sends reach the dead letters");

    let browser = Browser::start("dead-letters").await;
    sign_in(&browser, &server).await;
    browser
        .click("nav a[href='/dead-letters']", "[data-page=dead-letters]")
        .await;
    browser.arrive("tr[data-delivery]").await;
    browser.accessible("dead-letters").await;
    browser.shot("dead-letters").await;
    let first = failed[0].id;
    browser
        .click(
            &format!("tr[data-delivery='{first}'] button"),
            "[data-page=dead-letters]",
        )
        .await;
    let events = store.delivery_events(first).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.from == tidings_core::DeliveryState::Failed
                && e.to == tidings_core::DeliveryState::Queued),
        "replayed: {events:?}"
    );
    let actions: Vec<String> = store
        .audit_entries(district, 50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.iter().any(|a| a == "delivery.replay"),
        "{actions:?}"
    );
    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn an_administrator_invites_a_teacher_who_sets_a_password_and_is_later_disabled() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let (admin_email, admin_password) = first_login(&server.banner).unwrap();
    let browser = Browser::start("staff").await;
    let b = &browser.client;
    sign_in(&browser, &server).await;

    browser
        .click("nav a[href='/staff']", "[data-page=staff]")
        .await;
    browser.accessible("staff").await;
    browser.fill("name", "Ana Rivera").await;
    browser
        .fill("email", "ana.rivera@district.example.org")
        .await;
    browser.click("#invite", "#invitation-link").await;
    let link = browser.text("#invitation-link").await;
    assert!(link.contains("/invitation/"), "{link}");
    assert!(browser
        .text("tr[data-staff='ana.rivera@district.example.org']")
        .await
        .contains("no password yet"));
    browser.accessible("staff-invited").await;
    browser.shot("staff-invited").await;
    // The invitation's token is no API token.
    let token = link.rsplit('/').next().unwrap();
    let me = reqwest::Client::new()
        .get(server.url("/api/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), reqwest::StatusCode::UNAUTHORIZED);

    // The teacher opens the link (signed out), chooses a password, and is in.
    browser
        .click(".signout button", "[data-page=sign-in]")
        .await;
    b.goto(&link).await.unwrap();
    browser.arrive("[data-page=invitation]").await;
    browser.accessible("invitation").await;
    // (Too short a password the browser refuses itself: `minlength`.)
    browser.type_here("a long enough passphrase").await;
    browser.type_here(TAB).await;
    browser.type_here("a different passphrase").await;
    browser.type_here(ENTER).await;
    browser.arrive("[role=alert]").await;
    assert!(browser.text("[role=alert]").await.contains("differ"));
    let password = "a long enough passphrase";
    browser.fill("password", password).await;
    browser.fill("again", password).await;
    browser.type_here(ENTER).await;
    browser.arrive("[data-page=messages]").await;
    assert_eq!(
        browser.text(".signout .who").await,
        "Ana Rivera",
        "signed in as the teacher"
    );
    // A teacher manages no one; the link was good for one use.
    b.goto(&server.url("/staff")).await.unwrap();
    assert!(browser
        .text("body")
        .await
        .contains("Only district administrators"));
    b.goto(&link).await.unwrap();
    assert!(browser.text("body").await.contains("used or has expired"));
    b.goto(&server.url("/")).await.unwrap();
    browser.arrive("[data-page=messages]").await;
    browser
        .click(".signout button", "[data-page=sign-in]")
        .await;

    // The administrator changes their own password, then disables the teacher.
    sign_in(&browser, &server).await;
    browser.click(".signout a.who", "[data-page=account]").await;
    browser.accessible("account").await;
    browser.fill("current", "not it").await;
    for id in ["new", "again"] {
        browser.fill(id, "the new admin passphrase").await;
    }
    browser.click("#change-password", "[role=alert]").await;
    assert!(browser
        .text("[role=alert]")
        .await
        .contains("current password is wrong"));
    browser.fill("current", &admin_password).await;
    for id in ["new", "again"] {
        browser.fill(id, "the new admin passphrase").await;
    }
    browser.click("#change-password", "[role=status]").await;
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let services = tidings_core::services::Services {
        store: store.clone(),
        clock: std::sync::Arc::new(tidings_core::clock::SystemClock),
        partitions: 1,
        default_phone_region: "US".into(),
        link_keys: std::sync::Arc::new(support::link_keys()),
    };
    assert!(services
        .sign_in(&admin_email, "the new admin passphrase")
        .await
        .is_ok());
    assert!(services
        .sign_in(&admin_email, &admin_password)
        .await
        .is_err());

    browser
        .click("nav a[href='/staff']", "[data-page=staff]")
        .await;
    browser
        .click(
            "tr[data-staff='ana.rivera@district.example.org'] a.change",
            "[data-page=staff-member]",
        )
        .await;
    browser.accessible("staff-member").await;
    browser.shot("staff-member").await;
    browser
        .click("button[value=yes]", "[data-page=staff]")
        .await;
    assert!(browser
        .text("tr[data-staff='ana.rivera@district.example.org']")
        .await
        .contains("disabled"));
    assert!(
        services
            .sign_in("ana.rivera@district.example.org", password)
            .await
            .is_err(),
        "a disabled account cannot sign in"
    );
    let actions: Vec<String> = store
        .audit_entries(store.districts().await.unwrap()[0].id, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for action in [
        "staff.invite",
        "staff.accept_invitation",
        "staff.change_password",
        "staff.change",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

impl Browser {
    /// From the sign-in page, with the keyboard: past the email, the password and its
    /// button to "Sign in with your district account", on to the sandbox's provider.
    async fn to_district_account(&self) {
        self.arrive("[data-page=sign-in]").await;
        self.press(
            &format!("{TAB}{TAB}{TAB}{ENTER}"),
            "[data-page=sandbox-idp]",
        )
        .await;
    }

    /// At the sandbox's provider (its email field focused), signs in as `email`.
    async fn sign_in_at_provider(&self, email: &str, then: &str) {
        self.press(&format!("{email}{ENTER}"), then).await;
    }
}

#[tokio::test]
async fn an_administrator_turns_on_single_sign_on_and_staff_sign_in_with_their_district_account() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let (admin_email, _) = first_login(&server.banner).unwrap();
    let browser = Browser::start("sso").await;
    let b = &browser.client;
    sign_in(&browser, &server).await;

    // Settings: the sandbox's provider is offered in sandbox mode, with the redirect URI
    // to register; the secret is taken and never shown again.
    browser
        .click("nav a[href='/settings']", "[data-page=settings]")
        .await;
    assert!(browser.text("#sso-state").await.contains("off"));
    let offered = browser.text("#sandbox-idp").await;
    assert!(offered.contains("/_sandbox/oidc"), "{offered}");
    assert_eq!(
        browser.text("#redirect-uri").await,
        server.url("/sign-in/oidc/callback")
    );
    browser.fill("issuer", &server.url("/_sandbox/oidc")).await;
    browser.fill("client_id", "tidings-sandbox").await;
    browser.fill("client_secret", "sandbox-oidc-secret").await;
    browser.click("#save-sso", "[role=status]").await;
    assert!(browser.text("#sso-state").await.contains("on"));
    assert!(browser
        .text("#secret-state")
        .await
        .contains("Client secret: set"));
    let secret_field = b.find(Locator::Id("client_secret")).await.unwrap();
    assert_eq!(
        secret_field.prop("value").await.unwrap().as_deref(),
        Some(""),
        "the secret is not rendered back"
    );
    browser.accessible("settings-sso").await;
    b.execute("document.getElementById('sso').scrollIntoView()", vec![])
        .await
        .unwrap();
    browser.shot("settings-sso").await;
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    let kept = store.district_sso(district).await.unwrap().unwrap();
    assert!(!kept
        .client_secret_sealed
        .windows(b"sandbox-oidc-secret".len())
        .any(|w| w == b"sandbox-oidc-secret"));

    // Signed out, the administrator signs in with the district account, keyboard only.
    browser
        .click(".signout button", "[data-page=sign-in]")
        .await;
    browser.accessible("sign-in-with-sso").await;
    browser.shot("sign-in-with-sso").await;
    browser.to_district_account().await;
    browser.accessible("sandbox-provider").await;
    browser.shot("sandbox-provider").await;
    browser
        .sign_in_at_provider(&admin_email, "[data-page=messages]")
        .await;
    assert_eq!(browser.path().await, "/", "signed in, on the messages");
    browser.shot("signed-in-with-sso").await;
    let audit = store.audit_entries(district, 50).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "staff.sign_in" && e.detail["method"] == "sso"));

    // An address with no staff account is refused in words, and no one is signed in.
    browser
        .click(".signout button", "[data-page=sign-in]")
        .await;
    browser.to_district_account().await;
    browser
        .sign_in_at_provider("stranger@example.org", "[role=alert]")
        .await;
    assert_eq!(browser.path().await, "/sign-in/oidc/callback");
    assert!(browser
        .text("[role=alert]")
        .await
        .contains("No staff account"));
    browser.accessible("sso-no-account").await;
    browser.shot("sso-no-account").await;
    // The same pages on a phone: nothing cut off, nothing overlapping.
    b.set_window_size(390, 844).await.unwrap();
    browser.shot("phone-sso-no-account").await;
    browser.accessible("phone-sso-no-account").await;
    b.goto(&server.url("/sign-in")).await.unwrap();
    browser.arrive("[data-page=sign-in]").await;
    let fits: bool = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap()
        .as_bool()
        .unwrap();
    assert!(fits, "the sign-in page scrolls sideways on a phone");
    browser.shot("phone-sign-in-with-sso").await;
    browser.to_district_account().await;
    browser.shot("phone-sandbox-provider").await;
    b.set_window_size(1280, 900).await.unwrap();
    b.goto(&server.url("/")).await.unwrap();
    browser.arrive("[data-page=sign-in]").await;

    // A state changed on the way back is refused.
    b.goto(&server.url("/sign-in")).await.unwrap();
    browser.to_district_account().await;
    b.execute(
        "document.querySelector('input[name=state]').value = 'forged-state'",
        vec![],
    )
    .await
    .unwrap();
    browser
        .sign_in_at_provider(&admin_email, "[role=alert]")
        .await;
    assert!(browser
        .text("[role=alert]")
        .await
        .contains("did not start here"));

    // A disabled account is refused, and says so.
    let (teacher_email, _) = support::demo_teacher();
    let teacher = store
        .staff_by_email(&tidings_core::EmailAddress::parse(&teacher_email).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.set_staff_disabled(district, teacher.id, true, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    b.goto(&server.url("/sign-in")).await.unwrap();
    browser.to_district_account().await;
    browser
        .sign_in_at_provider(&teacher_email, "[role=alert]")
        .await;
    assert!(browser.text("[role=alert]").await.contains("disabled"));
    browser.shot("sso-disabled").await;
    b.goto(&server.url("/")).await.unwrap();
    browser.arrive("[data-page=sign-in]").await;
    assert_eq!(browser.path().await, "/sign-in", "nobody is signed in");

    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

/// The guardians `audience` reaches in the demo district, by the store's own resolution.
async fn reached(db: &TestDatabase, audience: tidings_core::audience::Audience) -> usize {
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    store
        .resolve_audience(&tidings_core::store::Scope::District(district), &audience)
        .await
        .unwrap()
        .expect("the audience resolves")
        .len()
}

/// The number of guardians a review shows.
async fn previewed(browser: &Browser) -> usize {
    let preview = browser.text("section.preview").await;
    preview
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("a guardian count in {preview:?}"))
}

#[tokio::test]
async fn staff_message_a_grade_in_two_more_languages_and_then_chosen_students_and_guardians() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let browser = Browser::start("compose-audiences").await;
    let b = &browser.client;
    sign_in(&browser, &server).await;
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    let scope = tidings_core::store::Scope::District(district);

    // A grade, chosen from the grades the district has, in grade order.
    browser
        .click("nav a[href='/messages/new']", "[data-page=compose]")
        .await;
    let grades: Vec<String> = {
        let mut found = Vec::new();
        for input in b.find_all(Locator::Css("input[name=grade]")).await.unwrap() {
            found.push(input.attr("value").await.unwrap().unwrap());
        }
        found
    };
    assert_eq!(grades.first().map(String::as_str), Some("01"), "{grades:?}");
    assert_eq!(grades.last().map(String::as_str), Some("12"), "{grades:?}");
    browser.tick("input[name=reach][value=grades]").await;
    b.execute(
        "document.querySelectorAll('details').forEach(d => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    browser.tick("input[name=grade][value='07']").await;
    browser.fill("subject", "Field trip").await;
    browser
        .fill("body", "Grade 7 visits the science museum on Tuesday.")
        .await;

    // Two translations: the second slot appears when asked for, the first is kept.
    browser.choose("t_language-0", "es").await;
    browser.fill("t_subject-0", "Excursión").await;
    browser
        .fill(
            "t_body-0",
            "El grado 7 visita el museo de ciencias el martes.",
        )
        .await;
    browser.click("#add-translation", "#t_body-1").await;
    assert_eq!(
        b.find(Locator::Id("t_subject-0"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("Excursión"),
        "the first translation is kept"
    );
    browser.choose("t_language-1", "vi").await;
    browser.fill("t_subject-1", "Chuyến đi thực tế").await;
    browser
        .fill("t_body-1", "Lớp 7 tham quan bảo tàng khoa học vào thứ Ba.")
        .await;
    browser.accessible("compose-translations").await;
    browser
        .click("button[value=review]", "section.preview")
        .await;
    let grade_seven = tidings_core::audience::Audience {
        grades: vec!["07".into()],
        ..Default::default()
    };
    assert_eq!(previewed(&browser).await, reached(&db, grade_seven).await);
    let preview = browser.text("section.preview").await;
    assert!(
        preview.contains("Spanish") && preview.contains("Vietnamese"),
        "segments per language: {preview}"
    );
    assert!(
        preview.contains("Unicode"),
        "Vietnamese needs Unicode: {preview}"
    );
    // Each language's text as guardians read it: the district's own shown, the others
    // one summary away, each marked with its language.
    let texts = b
        .find_all(Locator::Css("details.text-preview"))
        .await
        .unwrap();
    assert_eq!(texts.len(), 3);
    assert!(browser
        .text("details.text-preview[open]")
        .await
        .contains("Grade 7 visits the science museum on Tuesday."));
    let vietnamese = "details.text-preview div[lang=vi]";
    let hidden = b.find(Locator::Css(vietnamese)).await.unwrap();
    assert!(!hidden.is_displayed().await.unwrap(), "closed until opened");
    // Opened from the keyboard: its summary focused, then Enter.
    b.execute(
        "document.querySelectorAll('details.text-preview summary')[2].focus()",
        vec![],
    )
    .await
    .unwrap();
    browser.type_here(ENTER).await;
    assert_eq!(
        browser.text(vietnamese).await,
        "Chuyến đi thực tế\nLớp 7 tham quan bảo tàng khoa học vào thứ Ba."
    );
    browser.accessible("compose-grade-review").await;
    browser.shot("compose-grade-review").await;
    browser
        .click("button[value=send]", "[data-page=report]")
        .await;
    let sent = messages_in(&db).await;
    assert_eq!(sent.len(), 1);
    let id: tidings_core::MessageId = sent[0]["id"].as_str().unwrap().parse().unwrap();
    let content = store
        .message_content(&tidings_core::store::MessageScope::District(district), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(content.translations["es"]["subject"], "Excursión");
    assert_eq!(content.translations["vi"]["subject"], "Chuyến đi thực tế");

    // Chosen people: a student found by name, and a guardian found by name.
    let student = store
        .students(
            &scope,
            &tidings_core::store::PageRequest {
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .remove(0);
    let guardian = store
        .guardians(
            &scope,
            &tidings_core::store::PageRequest {
                limit: 1,
                search: Some("guardian-200".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let guardian = guardian
        .into_iter()
        .next()
        .expect("guardian-200 in the demo");
    b.goto(&server.url("/messages/new")).await.unwrap();
    browser.arrive("[data-page=compose]").await;
    browser.tick("input[name=reach][value=people]").await;
    b.execute(
        "document.querySelectorAll('details').forEach(d => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
    browser.fill("find", &student.given_name).await;
    browser
        .click(
            "#find-people",
            &format!("input[name=student][value='{}']", student.id),
        )
        .await;
    browser.accessible("compose-found").await;
    browser
        .tick(&format!("input[name=student][value='{}']", student.id))
        .await;
    // Enter in the search field finds; it never sends.
    let find = b.find(Locator::Id("find")).await.unwrap();
    find.clear().await.unwrap();
    find.send_keys("guardian-200").await.unwrap();
    b.execute("document.documentElement.dataset.left = 'yes'", vec![])
        .await
        .unwrap();
    find.send_keys(ENTER).await.unwrap();
    browser
        .arrive(&format!(
            "html:not([data-left]) input[name=guardian][value='{}']",
            guardian.id
        ))
        .await;
    // The student ticked before is still chosen, shown ticked.
    assert!(b
        .find(Locator::Css(&format!(
            "input[name=student][value='{}']:checked",
            student.id
        )))
        .await
        .is_ok());
    browser
        .tick(&format!("input[name=guardian][value='{}']", guardian.id))
        .await;
    assert_eq!(messages_in(&db).await.len(), 1, "searching sends nothing");
    browser.fill("subject", "Library books").await;
    browser
        .fill("body", "Please return the library books.")
        .await;
    browser
        .click("button[value=review]", "section.preview")
        .await;
    let people = tidings_core::audience::Audience {
        students: vec![student.id.to_string()],
        guardians: vec![guardian.id.to_string()],
        ..Default::default()
    };
    let expected = reached(&db, people).await;
    assert!(expected >= 1);
    assert_eq!(previewed(&browser).await, expected);
    browser.accessible("compose-people-review").await;
    browser.shot("compose-people-review").await;
    browser
        .click("button[value=send]", "[data-page=report]")
        .await;
    assert_eq!(messages_in(&db).await.len(), 2);
    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn staff_make_an_api_token_in_the_browser_use_it_and_revoke_it() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let browser = Browser::start("tokens").await;
    let b = &browser.client;
    sign_in(&browser, &server).await;
    browser.click("a.who", "[data-page=account]").await;
    browser
        .click("a[href='/tokens']", "[data-page=tokens]")
        .await;
    browser.accessible("tokens").await;

    // A token needs a name; with one, its secret is shown once and works at once.
    browser.choose("days", "30").await;
    browser.fill("name", "Student information system").await;
    browser.click("#make-token", "#new-token").await;
    browser.accessible("token-made").await;
    browser.shot("token-made").await;
    b.set_window_size(390, 844).await.unwrap();
    browser.shot("phone-token-made").await;
    b.set_window_size(1280, 900).await.unwrap();
    let secret = browser.text("#new-token").await;
    let http = reqwest::Client::new();
    let me = http
        .get(server.url("/api/v1/me"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), reqwest::StatusCode::OK);
    let row = browser.text("tbody tr:first-child").await;
    assert!(
        row.contains("Student information system") && row.contains("active"),
        "{row}"
    );
    // Used just now: the list says when (to the minute).
    b.goto(&server.url("/tokens")).await.unwrap();
    browser.arrive("[data-page=tokens]").await;
    assert!(
        b.find(Locator::Id("new-token")).await.is_err(),
        "the secret is shown only once"
    );
    let row = browser.text("tbody tr:first-child").await;
    assert!(row.contains("UTC"), "last used: {row}");
    let expires = store_token_expiry(&db).await;
    let days = (expires - chrono::Utc::now()).num_days();
    assert!((29..=30).contains(&days), "expires in {days} days");

    // Revoked, it stops working.
    browser
        .click(
            "tbody tr:first-child button[aria-label^='Revoke']",
            "[data-page=tokens]",
        )
        .await;
    assert!(browser
        .text("tbody tr:first-child")
        .await
        .contains("revoked"));
    browser.shot("token-revoked").await;
    let me = http
        .get(server.url("/api/v1/me"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), reqwest::StatusCode::UNAUTHORIZED);
    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

/// When the newest API token of the demo district expires.
async fn store_token_expiry(db: &TestDatabase) -> chrono::DateTime<chrono::Utc> {
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    store
        .api_tokens(district, None, &["web session", "invitation"])
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|t| t.created_at)
        .and_then(|t| t.expires_at)
        .expect("the new token expires")
}

#[tokio::test]
async fn an_administrator_tries_a_roster_then_imports_it_and_reads_the_rejected_row() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let browser = Browser::start("imports").await;
    let b = &browser.client;
    sign_in(&browser, &server).await;
    // The demo roster with one student at a school that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("district-roster.zip");
    std::fs::write(
        &zip,
        demo_zip_with(Some(("users.csv", "school-0,student", "school-99,student"))),
    )
    .unwrap();

    browser
        .click("nav a[href='/schools']", "[data-page=schools]")
        .await;
    browser
        .click("a[href='/imports']", "[data-page=imports]")
        .await;
    browser.accessible("imports").await;
    b.find(Locator::Id("file"))
        .await
        .unwrap()
        .send_keys(zip.to_str().unwrap())
        .await
        .unwrap();
    // A dry run first (ticked by default): it reports and changes nothing.
    let imports_before = import_count(&db).await;
    browser.click("#import", "#done").await;
    assert!(browser.path().await.starts_with("/imports/running/"));
    browser.accessible("import-dry-run").await;
    browser.shot("import-dry-run").await;
    let students = browser.text("#entities tr[data-entity=students]").await;
    assert!(
        students.contains("299"),
        "299 students unchanged: {students}"
    );
    let rejected = browser.text("#rejected").await;
    assert!(
        rejected.contains("users.csv") && rejected.contains("school-99"),
        "{rejected}"
    );
    assert_eq!(
        import_count(&db).await,
        imports_before,
        "a dry run records no import"
    );

    // Now for real: the report is the import's own page, kept in its history.
    b.goto(&server.url("/imports")).await.unwrap();
    browser.arrive("[data-page=imports]").await;
    assert!(browser.text("table").await.contains("tried (dry run)"));
    browser.tick("input[name=dry_run]").await;
    b.find(Locator::Id("file"))
        .await
        .unwrap()
        .send_keys(zip.to_str().unwrap())
        .await
        .unwrap();
    browser.click("#import", "[data-page=import] #done").await;
    let report = browser.path().await;
    let id = report.strip_prefix("/imports/").unwrap();
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    let record = store
        .import_record(district, id.parse().unwrap())
        .await
        .unwrap()
        .expect("the import is recorded");
    assert_eq!(record.status, "succeeded");
    assert!(record.source_name.contains("district-roster.zip"));
    assert!(browser.text("#rejected").await.contains("school-99"));
    browser.accessible("import-report").await;
    browser.shot("import-report").await;
    b.set_window_size(390, 844).await.unwrap();
    browser.shot("phone-import-report").await;
    b.set_window_size(1280, 900).await.unwrap();
    assert!(store
        .audit_entries(district, 50)
        .await
        .unwrap()
        .iter()
        .any(|e| e.action == "roster.import" && e.staff_id.is_some()));
    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

/// How many imports the demo district has recorded, by the audit log.
async fn import_count(db: &TestDatabase) -> usize {
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    store
        .audit_entries(district, 500)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == "roster.import")
        .count()
}

#[tokio::test]
async fn an_operator_adds_a_district_whose_administrator_joins_and_suspends_it() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let browser = Browser::start("districts").await;
    let b = &browser.client;
    sign_in(&browser, &server).await;

    // The first administrator operates the install: the districts page is theirs.
    browser
        .click("nav a[href='/districts']", "[data-page=districts]")
        .await;
    browser.accessible("districts").await;
    browser.fill("name", "Lakeside Unified").await;
    let zone = b.find(Locator::Id("timezone")).await.unwrap();
    zone.clear().await.unwrap();
    zone.send_keys("Mars/Olympus").await.unwrap();
    browser
        .fill("admin_email", "head@lakeside.example.org")
        .await;
    browser.click("#create-district", "[role=alert]").await;
    assert!(browser.text("[role=alert]").await.contains("time zone"));
    browser.fill("name", "Lakeside Unified").await;
    let zone = b.find(Locator::Id("timezone")).await.unwrap();
    zone.clear().await.unwrap();
    zone.send_keys("America/Denver").await.unwrap();
    browser
        .fill("admin_email", "head@lakeside.example.org")
        .await;
    browser.fill("admin_name", "Head of IT").await;
    browser.click("#create-district", "#invitation-link").await;
    browser.accessible("district-created").await;
    browser.shot("district-created").await;
    let link = browser.text("#invitation-link").await;
    assert!(link.contains("/invitation/"), "{link}");
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let lakeside = store
        .districts()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.name == "Lakeside Unified")
        .expect("created");
    assert_eq!(lakeside.timezone, "America/Denver");

    // The new district's administrator accepts: signed in to their own, empty district,
    // without the districts page.
    b.goto(&link).await.unwrap();
    browser.arrive("[data-page=invitation]").await;
    browser.fill("password", "lakeside passphrase").await;
    browser.fill("again", "lakeside passphrase").await;
    browser
        .click("[data-page=invitation] button", "[data-page=messages]")
        .await;
    assert!(b
        .find(Locator::Css("nav a[href='/districts']"))
        .await
        .is_err());
    b.goto(&server.url("/districts")).await.unwrap();
    assert!(browser.text("body").await.contains("Only operators"));
    b.goto(&server.url("/")).await.unwrap();
    browser.arrive("[data-page=messages]").await;
    browser
        .click("form.signout button", "[data-page=sign-in]")
        .await;
    sign_in(&browser, &server).await;
    b.goto(&server.url("/districts")).await.unwrap();
    browser.arrive("[data-page=districts]").await;
    let token = support::token_for(&db.url, "head@lakeside.example.org").await;
    let http = reqwest::Client::new();
    let schools = http
        .get(server.url("/api/v1/schools"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(schools.status(), reqwest::StatusCode::OK);
    let schools: Value = schools.json().await.unwrap();
    assert_eq!(schools["items"], json!([]), "a new district has no school");

    // Suspended from the districts page: its staff are refused, with a reason.
    browser
        .click(
            &format!("tr[data-district='{}'] button.danger", lakeside.id),
            "[data-page=districts]",
        )
        .await;
    assert!(browser
        .text(&format!("tr[data-district='{}'] .state", lakeside.id))
        .await
        .contains("suspended"));
    browser.shot("district-suspended").await;
    b.set_window_size(390, 844).await.unwrap();
    browser.shot("phone-districts").await;
    b.set_window_size(1280, 900).await.unwrap();
    let refused = http
        .get(server.url("/api/v1/schools"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/district-suspended");
    // The operator's own district cannot be suspended from here.
    let own = store.districts().await.unwrap()[0].id;
    assert!(b
        .find(Locator::Css(&format!(
            "tr[data-district='{own}'] button.danger"
        )))
        .await
        .is_err());

    // The command line lists it as suspended and resumes it.
    let list = tidings(&db.url)
        .args(["district", "list"])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.contains("Lakeside Unified") && l.contains("suspended since")),
        "{listed}"
    );
    let resumed = tidings(&db.url)
        .args(["district", "resume", &lakeside.id.to_string()])
        .output()
        .await
        .unwrap();
    assert!(resumed.status.success());
    let again = http
        .get(server.url("/api/v1/schools"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::OK);
    let created = tidings(&db.url)
        .args([
            "district",
            "create",
            "--name",
            "Hillcrest",
            "--admin-email",
            "it@hillcrest.example.org",
        ])
        .output()
        .await
        .unwrap();
    assert!(created.status.success());
    let link = String::from_utf8(created.stdout).unwrap();
    assert!(link.trim().contains("/invitation/tid_"), "{link}");
    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}

/// The ids of the demo district's class with this roster id.
async fn class_id(db: &TestDatabase, sourced_id: &str) -> String {
    use tidings_core::store::{PageRequest, Scope};
    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    let page = PageRequest {
        limit: 10,
        search: Some(sourced_id.to_owned()),
        ..PageRequest::default()
    };
    store
        .classes(&Scope::District(district), &page)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.sourced_id.as_deref() == Some(sourced_id))
        .unwrap_or_else(|| panic!("no class {sourced_id}"))
        .id
        .to_string()
}

/// Whether what `css` finds is shown on the page.
async fn shown(browser: &Browser, css: &str) -> bool {
    browser
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .is_displayed()
        .await
        .unwrap()
}

/// A roster teacher (no password of their own) gets a password link from the
/// administrator, opens it in Spanish, works in Spanish on a 360-px phone, sees their
/// class and not another, and cannot message another class by altering the form.
#[tokio::test]
async fn a_teacher_given_a_password_link_works_in_spanish_on_a_phone_within_their_class() {
    let db = TestDatabase::sqlite();
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let browser = Browser::start("spanish").await;
    let b = &browser.client;
    let (teacher_email, own_class) = support::demo_teacher();
    let own = class_id(&db, &own_class).await;
    let other_class = if own_class == "class-0" {
        "class-1"
    } else {
        "class-0"
    };
    let other = class_id(&db, other_class).await;

    // The administrator makes a password link for the teacher from the staff page; the
    // list says when each member last signed in.
    sign_in(&browser, &server).await;
    browser
        .click("nav a[href='/staff']", "[data-page=staff]")
        .await;
    let row = format!("tr[data-staff='{teacher_email}']");
    assert!(browser
        .text(&format!("{row} .last-sign-in"))
        .await
        .contains("never"));
    browser
        .click(&format!("{row} a.change"), "[data-page=staff-member]")
        .await;
    browser.click("button.reset", "#invitation-link").await;
    assert!(browser
        .text("#link-title")
        .await
        .starts_with("Password reset for"));
    let link = browser.text("#invitation-link").await;
    browser
        .click(".signout button", "[data-page=sign-in]")
        .await;

    // Signed out, the sign-in page offers Spanish; the choice is kept for the link.
    browser
        .click("footer a[hreflang=es]", "[data-page=sign-in]")
        .await;
    browser.arrive("html[lang=es]").await;
    assert!(
        browser.text("h1").await.contains("Iniciar sesión"),
        "{}",
        browser.text("h1").await
    );
    browser.accessible("sign-in-es").await;
    b.goto(&link).await.unwrap();
    browser.arrive("html[lang=es] [data-page=invitation]").await;
    assert!(browser.text("h1").await.starts_with("Una contraseña nueva"));
    browser.accessible("password-link-es").await;
    let password = "la clase de la maestra";
    browser.fill("password", password).await;
    browser.fill("again", password).await;
    browser.type_here(ENTER).await;
    browser.arrive("html[lang=es] [data-page=messages]").await;
    assert_eq!(
        browser.text("nav[aria-label=Principal] a[href='/']").await,
        "Mensajes"
    );
    for admins_only in ["/staff", "/audit", "/settings"] {
        let link = format!("nav a[href='{admins_only}']");
        assert!(
            b.find(Locator::Css(&link)).await.is_err(),
            "a teacher's menu has no {admins_only}"
        );
    }
    browser.accessible("messages-es").await;
    browser.shot("messages-es").await;

    // On a 360-px phone no page scrolls sideways; tables scroll inside themselves.
    b.set_window_size(360, 740).await.unwrap();
    for (path, name) in [
        ("/".to_owned(), "phone-messages-es"),
        ("/messages/new".to_owned(), "phone-compose-es"),
        (format!("/classes/{own}"), "phone-class-es"),
        ("/students".to_owned(), "phone-students-es"),
        ("/tokens".to_owned(), "phone-tokens-es"),
    ] {
        b.goto(&server.url(&path)).await.unwrap();
        browser.arrive("main[data-page]").await;
        browser.accessible(name).await;
        browser.shot(name).await;
        assert!(
            !browser.overflows().await,
            "{path} is wider than a 360-px phone"
        );
    }
    b.set_window_size(1280, 900).await.unwrap();

    // Their class opens; another class does not, and its page shows nothing of it.
    b.goto(&server.url(&format!("/classes/{own}")))
        .await
        .unwrap();
    browser.arrive("[data-page=class]").await;
    b.goto(&server.url(&format!("/classes/{other}")))
        .await
        .unwrap();
    let refused = browser.text("body").await;
    assert!(!refused.contains(other_class), "{refused}");
    assert!(
        b.find(Locator::Css("[data-page=class]")).await.is_err(),
        "another class's page is not shown: {refused}"
    );
    // Pages for administrators refuse them in their language.
    b.goto(&server.url("/audit")).await.unwrap();
    let refused = browser.text("body").await;
    assert!(
        refused.contains("El registro de auditoría es para los administradores del distrito."),
        "{refused}"
    );
    // Compose offers only their own class; altering a box to another class's id is
    // refused and sends nothing.
    b.goto(&server.url("/messages/new")).await.unwrap();
    browser.arrive("[data-page=compose]").await;
    let offered: Vec<String> = {
        let mut values = Vec::new();
        for input in b.find_all(Locator::Css("input[name=class]")).await.unwrap() {
            values.push(input.attr("value").await.unwrap().unwrap());
        }
        values
    };
    assert_eq!(offered, vec![own.clone()], "only the teacher's class");
    b.execute(
        "document.querySelector('input[name=class]').value = arguments[0]",
        vec![json!(other)],
    )
    .await
    .unwrap();
    browser.tick("input[name=class]").await;
    browser.fill("subject", "No").await;
    browser.fill("body", "Not my class.").await;
    browser.click("button[value=review]", "[role=alert]").await;
    assert!(messages_in(&db).await.is_empty(), "nothing was sent");

    // The reset link worked once; the teacher's new password is theirs.
    b.goto(&link).await.unwrap();
    assert!(browser.text("body").await.contains("ya se usó o venció"));
    browser.client.clone().close().await.unwrap();
    assert!(server.terminate().await.success());
}
