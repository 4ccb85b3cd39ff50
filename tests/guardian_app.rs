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

/// Sends `kind` to one guardian by SMS, asking them to acknowledge: the message's id.
async fn send(d: &District, guardian: &str, kind: &str, subject: &str, body: &str) -> String {
    let (status, sent) = d
        .call(
            reqwest::Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(json!({
                "audience": {"guardians": [guardian]},
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
    let general = send(
        &d,
        &guardian,
        "general",
        "Picture day",
        "Picture day is on Tuesday. Please send the form back.",
    )
    .await;
    let emergency = send(
        &d,
        &guardian,
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
    // an acknowledgment.
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
    browser.shot("inbox-es").await;

    // Installable: the manifest the page links, its icons, the offline page.
    let client = reqwest::Client::new();
    let manifest: Value = client
        .get(format!("{serve_at}/app/manifest.webmanifest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
