//! Single sign-on end to end on both stores, over HTTP as a browser would go: a district
//! administrator turns it on through the API pointing at the sandbox's identity provider
//! (in process with `serve --demo`), and staff sign in through it: the code flow with
//! PKCE, the ID token checked, the session the same as a password's. Unknown and
//! disabled accounts, unverified addresses and a tampered state are refused.

mod support;

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{first_login, tidings, Server};
use tidings_core::testing::TestDatabase;

tidings_core::on_both_stores! {
    databases: staff_sign_in_with_their_district_account_and_nobody_else_does,
}

struct Browserless {
    http: reqwest::Client,
    server: Server,
}

/// What a sign-in through the identity provider came to.
struct Outcome {
    status: StatusCode,
    /// Where it sent the browser, if it did.
    location: Option<String>,
    /// The session cookie it set, if any.
    session: Option<String>,
    page: String,
}

fn cookie_named(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn query_of(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

impl Browserless {
    /// Signs in as `email` through the district's provider; `tamper` changes the `state`
    /// the provider sends back.
    async fn sso(&self, district: &str, email: &str, verified: bool, tamper: bool) -> Outcome {
        let started = self
            .http
            .get(
                self.server
                    .url(&format!("/sign-in/oidc?district={district}")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), StatusCode::SEE_OTHER);
        let flow = cookie_named(&started, "tidings_oidc").expect("the flow's cookie");
        assert!(
            flow.contains("HttpOnly")
                && flow.contains("SameSite=Lax")
                && flow.contains("Max-Age=600"),
            "{flow}"
        );
        let flow = flow.split(';').next().unwrap().to_owned();
        let authorize = started.headers()["location"].to_str().unwrap().to_owned();
        assert!(authorize.starts_with(&self.server.url("/_sandbox/oidc/authorize")));
        let asked = query_of(&authorize);
        assert_eq!(asked["code_challenge_method"], "S256");
        // The provider's page, then its form as a person sends it.
        let page = self.http.get(&authorize).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let mut form = vec![
            ("client_id", asked["client_id"].clone()),
            ("redirect_uri", asked["redirect_uri"].clone()),
            ("state", asked["state"].clone()),
            ("nonce", asked["nonce"].clone()),
            ("code_challenge", asked["code_challenge"].clone()),
            ("email", email.to_owned()),
            ("decision", "approve".to_owned()),
        ];
        if verified {
            form.push(("verified", "yes".to_owned()));
        }
        let approved = self
            .http
            .post(self.server.url("/_sandbox/oidc/authorize"))
            .form(&form)
            .send()
            .await
            .unwrap();
        let mut back = approved.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            back.starts_with(&self.server.url("/sign-in/oidc/callback")),
            "{back}"
        );
        if tamper {
            let state = &asked["state"];
            back = back.replace(state.as_str(), &state.chars().rev().collect::<String>());
        }
        let done = self
            .http
            .get(&back)
            .header("cookie", &flow)
            .send()
            .await
            .unwrap();
        let forgotten = cookie_named(&done, "tidings_oidc").unwrap_or_default();
        assert!(
            forgotten.contains("Max-Age=0"),
            "the flow is used once: {forgotten}"
        );
        Outcome {
            status: done.status(),
            location: done
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            session: cookie_named(&done, "tidings_session")
                .map(|c| c.split(';').next().unwrap().to_owned()),
            page: done.text().await.unwrap(),
        }
    }
}

async fn staff_sign_in_with_their_district_account_and_nobody_else_does(db: TestDatabase) {
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let (admin_email, _) = first_login(&server.banner).expect("a first login");
    let admin = support::token_for(&db.url, &admin_email).await;
    let (teacher_email, _) = support::demo_teacher();
    let teacher = support::token_for(&db.url, &teacher_email).await;
    let b = Browserless {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        server,
    };
    let api = |method: Method, token: &str, body: Option<serde_json::Value>| {
        let request = b
            .http
            .request(method, b.server.url("/api/v1/settings/sso"))
            .bearer_auth(token);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };

    // Off at first, and the sign-in page offers no district account.
    let (status, state) = api(Method::GET, &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&state).unwrap()["enabled"],
        false
    );
    let sign_in = b.http.get(b.server.url("/sign-in")).send().await.unwrap();
    assert!(!sign_in.text().await.unwrap().contains("district account"));

    // The district administrator turns it on; a teacher may not; the secret never
    // comes back.
    let settings = json!({
        "issuer": b.server.url("/_sandbox/oidc"),
        "client_id": "tidings-sandbox",
        "client_secret": "sandbox-oidc-secret",
    });
    let (status, _) = api(Method::PUT, &teacher, Some(settings.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, saved) = api(Method::PUT, &admin, Some(settings)).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    let (status, shown) = api(Method::GET, &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    for answer in [&saved, &shown] {
        assert!(!answer.contains("sandbox-oidc-secret"), "{answer}");
    }
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["enabled"], true);
    assert_eq!(shown["settings"]["client_secret_set"], true);
    let (status, _) = api(
        Method::PUT,
        &admin,
        Some(json!({"issuer": "http://idp.example.org", "client_id": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "https only");

    let store = tidings_core::store::connect(&db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id.to_string();
    let page = b
        .http
        .get(b.server.url("/sign-in"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Sign in with your district account"));
    assert!(page.contains(&district));

    // The administrator signs in with the district account: a session like a password's.
    let signed_in = b
        .sso(&district, &admin_email.to_uppercase(), true, false)
        .await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.page
    );
    assert_eq!(signed_in.location.as_deref(), Some("/"));
    let session = signed_in.session.expect("a session cookie");
    let home = b
        .http
        .get(b.server.url("/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), StatusCode::OK);
    assert!(home
        .text()
        .await
        .unwrap()
        .contains("data-page=\"messages\""));
    let audit = store
        .audit_entries(store.districts().await.unwrap()[0].id, 50)
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "staff.sign_in" && e.detail["method"] == "sso"),
        "{audit:?}"
    );

    // Refused, each in words, and no session: no account for the address (and none is
    // made); the provider does not vouch for the address; the state was changed.
    let members = store
        .staff_members(store.districts().await.unwrap()[0].id)
        .await
        .unwrap()
        .len();
    let unknown = b.sso(&district, "stranger@example.org", true, false).await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    assert!(
        unknown.page.contains("No staff account"),
        "{}",
        unknown.page
    );
    assert!(unknown.session.is_none());
    assert_eq!(
        store
            .staff_members(store.districts().await.unwrap()[0].id)
            .await
            .unwrap()
            .len(),
        members
    );
    let unverified = b.sso(&district, &admin_email, false, false).await;
    assert_eq!(unverified.status, StatusCode::FORBIDDEN);
    assert!(unverified.page.contains("did not confirm your email"));
    assert!(unverified.session.is_none());
    let tampered = b.sso(&district, &admin_email, true, true).await;
    assert_eq!(tampered.status, StatusCode::BAD_REQUEST);
    assert!(tampered.page.contains("did not start here"));
    assert!(tampered.session.is_none());

    // A teacher signs in; once disabled, no longer.
    let teacher_in = b.sso(&district, &teacher_email, true, false).await;
    assert!(teacher_in.session.is_some(), "{}", teacher_in.page);
    let member = store
        .staff_by_email(&tidings_core::EmailAddress::parse(&teacher_email).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.set_staff_disabled(member.district_id, member.id, true, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let disabled = b.sso(&district, &teacher_email, true, false).await;
    assert_eq!(disabled.status, StatusCode::FORBIDDEN);
    assert!(disabled.page.contains("disabled"), "{}", disabled.page);
    assert!(disabled.session.is_none());

    // Turned off: the sign-in page no longer offers it, and a flow started before ends.
    let (status, _) = api(Method::DELETE, &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api(Method::DELETE, &admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let page = b
        .http
        .get(b.server.url("/sign-in"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("district account"));
    let gone = b
        .http
        .get(b.server.url(&format!("/sign-in/oidc?district={district}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert!(b.server.terminate().await.success());
}
