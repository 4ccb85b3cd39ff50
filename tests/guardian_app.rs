//! The guardian app (`/app/`) in a real headless Chromium, as a guardian uses it on a
//! phone: sign in with the code the SMS brought (read from `tidings sandbox`), the
//! messages with the emergency marked, acknowledging one with the keyboard, Spanish, and
//! signing out; the service worker registers, the manifest makes it installable, and
//! axe-core finds nothing serious on any page. Screenshots in
//! `target/web-admin-screenshots/guardian-app-*/`.

mod support;

use fantoccini::Locator;
use serde_json::{json, Value};
use support::browser::{Browser, ENTER};
use support::{
    codes_sent_to, first_guardian_with_sms, free_port, sandbox_calling_back,
    twilio_env_calling_back, District,
};
use tidings_core::testing::TestDatabase;

tidings_core::on_both_stores! {
    databases: a_guardian_signs_in_with_a_code_reads_and_acknowledges_in_the_app,
}

/// Sends `kind` to `audience` by SMS, asking them to acknowledge: the message's id.
async fn send(d: &District, audience: Value, kind: &str, subject: &str, body: &str) -> String {
    let (status, sent) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(json!({
                "audience": audience,
                "channels": ["sms"],
                "kind": kind,
                "subject": subject,
                "body": body,
                "requires_ack": true,
            })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{sent}");
    sent["id"].as_str().unwrap().to_owned()
}

async fn a_guardian_signs_in_with_a_code_reads_and_acknowledges_in_the_app(db: TestDatabase) {
    let shots = if db.url.starts_with("sqlite") {
        "guardian-app"
    } else {
        "guardian-app-postgres"
    };
    let port = free_port();
    let serve_at = format!("http://127.0.0.1:{port}");
    let (base, mut sandbox) = sandbox_calling_back("{}", Some(&serve_at)).await;
    let mut env = twilio_env_calling_back(&base, port);
    env.push(("TIDINGS_WEB_PUSH__ALLOWED_ORIGINS", format!("[\"{base}\"]")));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = District::with_demo_env(db, &env).await;
    let (guardian, number) = first_guardian_with_sms(&d).await;
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
        .await;
    let child = detail["students"][0].clone();
    let (_, school) = d
        .get(
            &format!("/api/v1/schools/{}", child["school_id"].as_str().unwrap()),
            &d.admin,
        )
        .await;
    let general = send(
        &d,
        json!({"guardians": [guardian]}),
        "general",
        "Picture day",
        "Picture day is on Tuesday. Please send the form back.",
    )
    .await;
    let emergency = send(
        &d,
        json!({"students": [child["id"]]}),
        "emergency",
        "Lockdown",
        "All schools are in lockdown. Students are safe.\nWait for the next message.",
    )
    .await;

    let browser = Browser::start(shots).await;
    let b = &browser.client;
    b.set_window_size(390, 844).await.unwrap();
    b.goto(&format!("{serve_at}/app")).await.unwrap();
    browser.arrive("[data-page=app-sign-in] #address").await;
    browser.accessible("sign-in").await;
    browser.shot("sign-in").await;

    // The address field has the focus: type the number, Enter; then the code.
    browser
        .press(&format!("{number}{ENTER}"), "[data-page=app-sign-in] #code")
        .await;
    browser.accessible("code").await;
    browser.shot("code").await;
    let code = codes_sent_to(&base, &number, 1)
        .await
        .pop()
        .expect("the sign-in code reached the sandbox");
    // A wrong code first: refused with the reason, the code field again.
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    browser
        .press(&format!("{wrong}{ENTER}"), "[data-page=app-sign-in] #error")
        .await;
    assert!(
        browser
            .text("#error")
            .await
            .contains("wrong or has expired"),
        "{}",
        browser.text("#error").await
    );
    b.find(Locator::Id("code"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .press(&format!("{code}{ENTER}"), "[data-page=app-inbox]")
        .await;

    // The inbox: both messages, newest first, the emergency marked and both waiting for
    // an acknowledgment; the one about the child under the child and their school, the
    // one to the guardian by name under "For you".
    let headings: Vec<String> = {
        let mut found = Vec::new();
        for h in b.find_all(Locator::Css("main section h2")).await.unwrap() {
            found.push(h.text().await.unwrap());
        }
        found
    };
    assert_eq!(
        headings[..2],
        [
            format!(
                "{} · {}",
                child["given_name"].as_str().unwrap(),
                school["name"].as_str().unwrap()
            ),
            "For you".to_owned()
        ],
        "{headings:?}"
    );
    let listed: Vec<String> = {
        let mut ids = Vec::new();
        for link in b.find_all(Locator::Css("ul.inbox a")).await.unwrap() {
            ids.push(link.attr("data-message").await.unwrap().unwrap());
        }
        ids
    };
    assert_eq!(listed, vec![emergency.clone(), general.clone()]);
    let emergencies = b
        .find_all(Locator::Css("ul.inbox li.emergency .tag.emergency"))
        .await
        .unwrap();
    assert_eq!(emergencies.len(), 1);
    assert_eq!(
        b.find_all(Locator::Css(".tag.pending"))
            .await
            .unwrap()
            .len(),
        2
    );
    // The service worker registers for the app's scope, and push can be turned on.
    let scope = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             navigator.serviceWorker.ready.then(r => done(r.scope), e => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(scope, json!(format!("{serve_at}/app/")));
    browser.arrive("#push:not([hidden]) #push-on").await;
    browser.accessible("inbox").await;
    browser.shot("inbox").await;

    // The emergency, opened, and acknowledged with the keyboard.
    browser
        .click(
            &format!("a[data-message='{emergency}']"),
            "[data-page=app-message]",
        )
        .await;
    assert!(browser
        .text(".emergency-banner")
        .await
        .contains("Emergency"));
    assert_eq!(
        browser.text("#message-body").await,
        "All schools are in lockdown. Students are safe.\nWait for the next message."
    );
    browser.accessible("message").await;
    browser.shot("message").await;
    b.execute("document.getElementById('acknowledge').focus()", vec![])
        .await
        .unwrap();
    browser.press(ENTER, "#acknowledged").await;
    browser.shot("acknowledged").await;
    let (_, acked) = d
        .get(
            &format!("/api/v1/messages/{emergency}/recipients?acked=true"),
            &d.admin,
        )
        .await;
    assert_eq!(acked["items"][0]["ack_via"], "push", "{acked}");
    let (_, still) = d
        .get(
            &format!("/api/v1/messages/{general}/recipients?acked=false"),
            &d.admin,
        )
        .await;
    assert_eq!(still["items"].as_array().unwrap().len(), 1, "{still}");

    // Back to the inbox: one waits for an acknowledgment now. In Spanish.
    browser.click("#back", "[data-page=app-inbox]").await;
    assert_eq!(
        b.find_all(Locator::Css(".tag.pending"))
            .await
            .unwrap()
            .len(),
        1
    );
    browser
        .click("footer a[hreflang=es]", "[data-page=app-inbox]")
        .await;
    assert_eq!(browser.text("h1").await, "Mensajes");
    assert_eq!(browser.text(".tag.emergency").await, "Emergencia");
    browser.accessible("inbox-es").await;
    assert!(!browser.overflows().await, "the inbox wider than a phone");
    assert_eq!(
        browser.sticking_out().await,
        Vec::<String>::new(),
        "the inbox"
    );
    browser.shot("inbox-es").await;

    // Settings, from the keyboard where it matters: messages in Spanish, no texts for
    // what is not an emergency, quiet hours of their own.
    browser.click("#settings", "[data-page=app-settings]").await;
    browser.accessible("settings").await;
    browser.choose("language-1", "es").await;
    browser.tick("#channel-sms-1").await;
    // A time field as Chromium's en-US locale shows it: hours, minutes, AM/PM.
    browser.fill("quiet-start-1", "0900P").await;
    browser.fill("quiet-end-1", "0700A").await;
    browser.click("#save-1", "#saved").await;
    browser.shot("settings").await;
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
        .await;
    assert_eq!(detail["preferred_language"], "es", "{detail}");
    let opt_outs: Vec<(&str, &str)> = detail["opt_outs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["revoked_at"].is_null())
        .map(|o| {
            (
                o["channel"].as_str().unwrap(),
                o["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(opt_outs, vec![("sms", "guardian")], "{detail}");
    // A newsletter by SMS is now held back for this guardian; an emergency is not.
    let (_, sent) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(
                json!({"audience": {"guardians": [guardian]}, "channels": ["sms"],
                        "kind": "general", "subject": "Newsletter", "body": "This week"}),
            ),
        )
        .await;
    assert_eq!(sent["suppressed"]["opted_out"], 1, "{sent}");
    let (_, sent) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(
                json!({"audience": {"guardians": [guardian]}, "channels": ["sms"],
                        "kind": "emergency", "subject": "Closure", "body": "Closed today"}),
            ),
        )
        .await;
    assert_eq!(support::suppressed_total(&sent), 0, "{sent}");
    // The form shows what was saved; turning texts back on revokes the guardian's own
    // opt-out.
    assert_eq!(
        b.find(Locator::Id("quiet-start-1"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("21:00")
    );
    browser.tick("#channel-sms-1").await;
    browser.click("#save-1", "#saved").await;
    let (_, detail) = d
        .get(&format!("/api/v1/guardians/{guardian}"), &d.admin)
        .await;
    assert!(
        detail["opt_outs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| !o["revoked_at"].is_null()),
        "{detail}"
    );
    // Another device signed in as the same number shows, and is signed out from here.
    let client = reqwest::Client::new();
    let asked = client
        .post(format!("{serve_at}/api/v1/guardian/sign-in"))
        .json(&json!({"address": number}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), reqwest::StatusCode::ACCEPTED);
    let second_code = codes_sent_to(&base, &number, 2).await.pop().unwrap();
    let other = support::json_of(
        client
            .post(format!("{serve_at}/api/v1/guardian/sessions"))
            .json(&json!({"address": number, "code": second_code})),
    )
    .await;
    let other_token = other["token"].as_str().unwrap().to_owned();
    b.refresh().await.unwrap();
    browser
        .arrive("[data-page=app-settings] button[data-session]")
        .await;
    b.execute(
        "document.getElementById('sessions-heading').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    browser.shot("settings-devices").await;
    assert!(!browser.overflows().await, "settings wider than a phone");
    assert_eq!(
        browser.sticking_out().await,
        Vec::<String>::new(),
        "settings"
    );
    browser
        .click("button[data-session]", "[data-page=app-settings]")
        .await;
    assert!(b
        .find_all(Locator::Css("button[data-session]"))
        .await
        .unwrap()
        .is_empty());
    let refused = client
        .get(format!("{serve_at}/api/v1/guardian/messages"))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    for (action, times) in [("guardian.preferences", 2), ("guardian.sign_out", 1)] {
        let sql = format!("SELECT count(*) FROM audit_log WHERE action = '{action}'");
        assert_eq!(
            support::count(&d.db.url, &sql).await.unwrap(),
            times,
            "{action}"
        );
    }
    browser.click("#back", "[data-page=app-inbox]").await;

    // Installable: the manifest the page links, its icons, the offline page.
    let manifest =
        support::json_of(client.get(format!("{serve_at}/app/manifest.webmanifest"))).await;
    assert_eq!(manifest["start_url"], "/app/");
    assert_eq!(manifest["scope"], "/app/");
    assert_eq!(manifest["display"], "standalone");
    for icon in manifest["icons"].as_array().unwrap() {
        let got = client
            .get(format!("{serve_at}{}", icon["src"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(got.headers()["content-type"], "image/png");
        let png = got.bytes().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{icon}");
    }
    let offline = client
        .get(format!("{serve_at}/app/offline"))
        .send()
        .await
        .unwrap();
    assert_eq!(offline.status(), reqwest::StatusCode::OK);

    // What a first visit loads, uncompressed (it is under 100 KB compressed, and so
    // under it as it is): the page, its style sheet and script, the manifest and icon.
    let weights = b
        .execute(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
                 .map(e => [e.name, e.decodedBodySize]);",
            vec![],
        )
        .await
        .unwrap();
    let total: u64 = weights
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[1].as_u64().unwrap_or(0))
        .sum();
    println!("guardian app inbox page weights: {weights} = {total} bytes");
    assert!(total > 0 && total < 100 * 1024, "{weights}");

    // A push to this browser. The app registers the browser's subscription (one the
    // sandbox's push service made: Chromium cannot reach Google's offline), an emergency
    // goes out to it, and the payload the push service decrypted, handed to the service
    // worker as its push (DevTools), shows the notification that opens the message.
    let key = support::json_of(client.get(format!("{serve_at}/api/v1/guardian/web-push"))).await;
    let subscription = support::json_of(
        client
            .post(format!("{base}/_sandbox/web-push/subscriptions"))
            .json(&json!({"application_server_key": key["public_key"]})),
    )
    .await;
    let registered = b
        .execute_async(
            "const [subscription, done] = [arguments[0], arguments[arguments.length - 1]];
             fetch('/app/devices', {method: 'POST', headers: {'content-type': 'application/json',
                 'x-csrf-token': document.getElementById('push').dataset.csrf},
                 body: JSON.stringify(subscription)}).then(r => done(r.status));",
            vec![subscription],
        )
        .await
        .unwrap();
    assert_eq!(registered, json!(201));
    let (_, alert) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(
                json!({"audience": {"guardians": [guardian]}, "channels": ["push"],
                        "kind": "emergency", "subject": "Shelter in place",
                        "body": "Stay inside until the all-clear."}),
            ),
        )
        .await;
    let alert = alert["id"].as_str().unwrap().to_owned();
    let mut payload = None;
    for _ in 0..600 {
        let service = support::json_of(client.get(format!("{base}/_sandbox/web-push"))).await;
        if let Some(pushed) = service["pushed"].as_array().and_then(|p| p.first()) {
            payload = Some(pushed["payload"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let payload = payload.expect("the push reached the push service");
    let registration = browser
        .service_worker_registration(&format!("{serve_at}/app/"))
        .await;
    b.goto(&format!("{serve_at}/app/")).await.unwrap();
    browser.arrive("[data-page=app-inbox]").await;
    browser
        .devtools(
            "Browser.grantPermissions",
            json!({"permissions": ["notifications"], "origin": serve_at}),
        )
        .await;
    browser.devtools("ServiceWorker.enable", json!({})).await;
    // A push handed over right after the grant sometimes shows nothing (seen on every
    // PostgreSQL run and no SQLite one before this retry; not understood — the grant
    // reaching the worker's process late is the guess): it is handed over again until
    // the notification shows. One notification, by its tag, whatever the tries.
    let mut shown = Value::Null;
    for _ in 0..60 {
        browser
            .devtools(
                "ServiceWorker.deliverPushMessage",
                json!({"origin": serve_at, "registrationId": registration, "data": payload}),
            )
            .await;
        for _ in 0..10 {
            shown = b
                .execute_async(
                    "const done = arguments[arguments.length - 1];
                     navigator.serviceWorker.ready.then(r => r.getNotifications()).then(all => done(all.map(n =>
                         ({title: n.title, body: n.body, tag: n.tag, url: n.data && n.data.url,
                           stays: n.requireInteraction}))));",
                    vec![],
                )
                .await
                .unwrap();
            if shown.as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if shown.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
    }
    assert_eq!(
        shown,
        json!([{"title": "Shelter in place", "body": "Stay inside until the all-clear.",
                "tag": alert, "url": format!("https://tidings.example.org/app/messages/{alert}"),
                "stays": true}])
    );

    // The guardian taps the notification: the app (open on the inbox) shows the message.
    // Headless Chromium shows no notification to tap; the click is the service worker's
    // own `notificationclick` event, given the notification it shows.
    let click = |tag: &str| {
        format!(
            "self.registration.getNotifications({{tag: {tag:?}}}).then(function (shown) {{
                 shown.forEach(function (n) {{
                     self.dispatchEvent(new NotificationEvent('notificationclick', {{notification: n}}));
                 }});
                 return shown.length;
             }})"
        )
    };
    b.execute("document.documentElement.dataset.left = 'yes'", vec![])
        .await
        .unwrap();
    let clicked = browser
        .in_service_worker("/app/sw.js", &click(&alert))
        .await;
    assert_eq!(clicked, json!(1));
    browser
        .arrive("html:not([data-left]) [data-page=app-message]")
        .await;
    assert_eq!(browser.path().await, format!("/app/messages/{alert}"));
    assert!(browser
        .text("main")
        .await
        .contains("Stay inside until the all-clear."));
    // Tapped, it is gone from the tray.
    let left = browser
        .in_service_worker(
            "/app/sw.js",
            "self.registration.getNotifications().then(function (n) { return n.length; })",
        )
        .await;
    assert_eq!(left, json!(0));
    // A payload naming a page elsewhere opens the app, not that page.
    browser
        .in_service_worker(
            "/app/sw.js",
            "self.registration.showNotification('Elsewhere', {tag: 'elsewhere',
                 data: {url: 'https://attacker.example/app/../steal'}})",
        )
        .await;
    b.execute("document.documentElement.dataset.left = 'yes'", vec![])
        .await
        .unwrap();
    let clicked = browser
        .in_service_worker("/app/sw.js", &click("elsewhere"))
        .await;
    assert_eq!(clicked, json!(1));
    browser
        .arrive("html:not([data-left]) [data-page=app-inbox]")
        .await;
    assert_eq!(browser.path().await, "/app/");

    // Signing out ends the session: the app asks to sign in again.
    browser
        .click("#sign-out", "[data-page=app-sign-in] #address")
        .await;
    b.goto(&format!("{serve_at}/app/messages/{general}"))
        .await
        .unwrap();
    browser.arrive("[data-page=app-sign-in] #address").await;

    browser.client.clone().close().await.unwrap();
    assert!(d.server.terminate().await.success());
    sandbox.kill().await.unwrap();
}
