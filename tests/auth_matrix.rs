//! Who may call what: every operation of the served OpenAPI document, called with no
//! credentials, broken or revoked ones, the wrong kind (a guardian's session on a staff
//! route, a staff token on the guardian app's), and as each role and as another
//! district's administrator, on both stores. The operations come from the document, so
//! a route added later is checked without anyone remembering to add it here.

mod support;

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{demo_zip_with, District};
use tidings_core::secret::{ApiToken, GuardianToken};
use tidings_core::store::guardian::GuardianSession;
use tidings_core::store::{NewStaff, Store};
use tidings_core::testing::TestDatabase;
use tidings_core::{Channel, EmailAddress, Role};

tidings_core::on_both_stores! {
    databases: every_operation_refuses_whoever_may_not_call_it,
}

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo");

/// Operations anyone may call.
const PUBLIC: &[&str] = &[
    "GET /healthz",
    "GET /readyz",
    "POST /api/v1/guardian/sign-in",
    "POST /api/v1/guardian/sessions",
    // The Web Push public key a browser subscribes with: public by nature.
    "GET /api/v1/guardian/web-push",
];

fn csv_rows(file: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(format!("{DEMO}/{file}")).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// The demo roster's facts the matrix needs: a school administrator (teacher-0, made
/// one by the import), a teacher of another school, and a guardian neither may see.
struct Cast {
    school_admin_email: String,
    teacher_email: String,
    outsider_guardian: String,
    outsider_phone: String,
}

fn cast() -> Cast {
    let users = csv_rows("users.csv");
    let enrollments = csv_rows("enrollments.csv");
    let user = |sid: &str| users.iter().find(|u| u["sourcedId"] == sid).unwrap();
    let school_admin = user("teacher-0");
    let admin_school = school_admin["orgSourcedIds"].clone();
    let teacher = users
        .iter()
        .find(|u| u["role"] == "teacher" && u["orgSourcedIds"] != admin_school)
        .unwrap();
    let teacher_class = enrollments
        .iter()
        .find(|e| e["userSourcedId"] == teacher["sourcedId"])
        .unwrap()["classSourcedId"]
        .clone();
    let taught: BTreeSet<&str> = enrollments
        .iter()
        .filter(|e| e["classSourcedId"] == teacher_class && e["role"] == "student")
        .map(|e| e["userSourcedId"].as_str())
        .collect();
    // A guardian with a phone whose children are all outside the administrator's school
    // and the teacher's class.
    let outsider = users
        .iter()
        .filter(|u| matches!(u["role"].as_str(), "guardian" | "parent" | "relative"))
        .filter(|u| !u["sms"].is_empty() || !u["phone"].is_empty())
        .find(|g| {
            let children: Vec<_> = users
                .iter()
                .filter(|s| {
                    s["role"] == "student"
                        && s["agentSourcedIds"]
                            .split(',')
                            .any(|a| a.trim() == g["sourcedId"])
                })
                .collect();
            !children.is_empty()
                && children.iter().all(|s| {
                    s["orgSourcedIds"] != admin_school && !taught.contains(s["sourcedId"].as_str())
                })
        })
        .unwrap();
    let phone = if outsider["sms"].is_empty() {
        &outsider["phone"]
    } else {
        &outsider["sms"]
    };
    Cast {
        school_admin_email: school_admin["email"].to_lowercase(),
        teacher_email: teacher["email"].to_lowercase(),
        outsider_guardian: outsider["sourcedId"].clone(),
        outsider_phone: phone.clone(),
    }
}

/// A new API token for `staff`, written straight to the store (no audit row: the test's
/// own setup, not a staff action).
async fn token_of(store: &dyn Store, staff: &tidings_core::Staff, name: &str) -> String {
    let token = ApiToken::generate();
    let mut tx = store.begin().await.unwrap();
    tx.create_token(
        token.id,
        staff,
        name,
        &token.secret_hash(),
        chrono::Utc::now(),
        None,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    token.reveal()
}

async fn new_staff(
    store: &dyn Store,
    district: tidings_core::DistrictId,
    email: &str,
    role: Role,
) -> tidings_core::Staff {
    store
        .create_staff(
            &NewStaff {
                district_id: district,
                email: EmailAddress::parse(email).unwrap(),
                display_name: email.into(),
                role,
                password_hash: None,
            },
            chrono::Utc::now(),
        )
        .await
        .unwrap()
}

/// Runs `sql` on the test database (for what no API does yet, such as revoking a token).
async fn execute(url: &str, sql: &str) {
    use sqlx::Connection as _;
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

async fn first_id(url: &str, sql: &str) -> String {
    use sqlx::Connection as _;
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

/// The resources of district A each path parameter names.
struct Ids {
    message: String,
    delivery: String,
    guardian: String,
    contact_point: String,
    opt_out: String,
    import: String,
    school: String,
    class: String,
    student: String,
    /// District A's administrator's API token.
    token: String,
    /// A teacher of district A.
    staff: String,
    district: String,
}

impl Ids {
    fn fill(&self, path: &str) -> String {
        let id = if path.starts_with("/api/v1/messages/")
            || path.starts_with("/api/v1/guardian/messages/")
        {
            &self.message
        } else if path.starts_with("/api/v1/deliveries/")
            || path.starts_with("/api/v1/dead-letters/")
        {
            &self.delivery
        } else if path.starts_with("/api/v1/guardians/") {
            &self.guardian
        } else if path.starts_with("/api/v1/imports/") {
            &self.import
        } else if path.starts_with("/api/v1/schools/") {
            &self.school
        } else if path.starts_with("/api/v1/classes/") {
            &self.class
        } else if path.starts_with("/api/v1/students/") {
            &self.student
        } else if path.starts_with("/api/v1/tokens/") {
            &self.token
        } else if path.starts_with("/api/v1/staff/") {
            &self.staff
        } else if path.starts_with("/api/v1/districts/") {
            &self.district
        } else {
            "none"
        };
        path.replace("{id}", id)
            .replace("{contact_point}", &self.contact_point)
            .replace("{opt_out}", &self.opt_out)
            .replace("{platform}", "ios")
            .replace("{token}", "0f0e0d0c0b0a09080706050403020100")
    }

    /// Every id of district A, to look for in what others are shown.
    fn all(&self) -> [&str; 6] {
        [
            &self.message,
            &self.delivery,
            &self.guardian,
            &self.contact_point,
            &self.school,
            &self.student,
        ]
    }
}

/// A body that would succeed for someone allowed, so that a refusal is the caller's
/// doing and not the body's.
fn body_for(method: &Method, path: &str, zip: &[u8]) -> Option<reqwest::Body> {
    let value = match (method.as_str(), path) {
        ("POST", "/api/v1/messages") => json!({
            "audience": {"district": true}, "channels": ["sms"], "kind": "general",
            "subject": "Matrix", "body": "Who may send this?"
        }),
        ("POST", "/api/v1/messages/{id}/renotify") => json!({"channels": ["sms"]}),
        ("POST", "/api/v1/guardians/{id}/contact-points") => {
            json!({"kind": "email", "address": "matrix@example.org"})
        }
        ("PATCH", "/api/v1/guardians/{id}/contact-points/{contact_point}") => {
            json!({"active": true})
        }
        ("POST", "/api/v1/guardians/{id}/opt-outs") => json!({"channel": "push"}),
        ("POST", "/api/v1/guardian/devices") => {
            json!({"platform": "ios", "token": "0f0e0d0c0b0a09080706050403020100"})
        }
        ("PUT", "/api/v1/settings/sso") => json!({
            "issuer": "https://accounts.google.com", "client_id": "matrix",
            "client_secret": "matrix-secret"
        }),
        ("PUT", "/api/v1/settings/retention") => json!({"messages_days": 400}),
        ("POST", "/api/v1/settings/retention/purge") => json!({"dry_run": true}),
        ("POST", "/api/v1/log/rewind") => {
            json!({"lane": "bulk", "partition": 0, "from_offset": 0})
        }
        ("POST", "/api/v1/guardian/sign-in") => json!({"address": "+12025550199"}),
        ("POST", "/api/v1/guardian/sessions") => {
            json!({"address": "+12025550199", "code": "000000"})
        }
        ("POST", "/api/v1/tokens") => json!({"name": "matrix"}),
        ("POST", "/api/v1/staff") => json!({
            "email": "invited@district.example.org", "display_name": "Invited", "role": "teacher"
        }),
        ("PATCH", "/api/v1/staff/{id}") => json!({"disabled": false}),
        ("POST", "/api/v1/districts") => json!({
            "name": "Matrix District", "timezone": "America/Chicago",
            "admin_email": "admin@matrix.example.org", "admin_name": "Matrix"
        }),
        ("PATCH", "/api/v1/districts/{id}") => json!({"name": "Renamed"}),
        ("POST", "/api/v1/imports/oneroster") => return Some(zip.to_vec().into()),
        _ => return None,
    };
    Some(value.to_string().into())
}

/// Operations only the install's operators may call.
fn operators_only(op: &Operation) -> bool {
    op.path.starts_with("/api/v1/districts") || op.path.starts_with("/api/v1/log/")
}

struct Operation {
    method: Method,
    path: String,
    secured: bool,
}

impl Operation {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn guardian_app(&self) -> bool {
        self.path.starts_with("/api/v1/guardian/")
    }
}

async fn call(
    d: &District,
    op: &Operation,
    ids: &Ids,
    token: Option<&str>,
    zip: &[u8],
) -> (StatusCode, Value) {
    let mut request = d
        .client
        .request(op.method.clone(), d.server.url(&ids.fill(&op.path)));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body_for(&op.method, &op.path, zip) {
        let content_type = if op.path.ends_with("/oneroster") {
            "application/zip"
        } else {
            "application/json"
        };
        request = request.header("content-type", content_type).body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let problem = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(
        status.is_success() || problem,
        "{} answered {status} without problem+json",
        op.name()
    );
    assert!(
        !status.is_server_error(),
        "{} answered {status}: {body}",
        op.name()
    );
    (status, body)
}

async fn every_operation_refuses_whoever_may_not_call_it(db: TestDatabase) {
    let cast = cast();
    let d = District::start(db).await;
    let store = tidings_core::store::connect(&d.db.url, &Default::default())
        .await
        .unwrap();
    // District A: the demo roster, teacher-0 made a school administrator.
    let zip = demo_zip_with(Some((
        "users.csv",
        "teacher-0,active,2026-08-01T00:00:00Z,true,school-2,teacher",
        "teacher-0,active,2026-08-01T00:00:00Z,true,school-2,administrator",
    )));
    let imported = d
        .client
        .post(d.server.url("/api/v1/imports/oneroster"))
        .bearer_auth(&d.admin)
        .header("content-type", "application/zip")
        .body(zip.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), StatusCode::CREATED);
    let import: Value = imported.json().await.unwrap();
    let district_a = store.districts().await.unwrap()[0].id;
    let by_email = |email: String| {
        let store = store.clone();
        async move {
            store
                .staff_by_email(&EmailAddress::parse(&email).unwrap())
                .await
                .unwrap()
                .unwrap()
        }
    };
    let school_admin = by_email(cast.school_admin_email.clone()).await;
    assert_eq!(school_admin.role, Role::SchoolAdmin);
    let teacher = by_email(cast.teacher_email.clone()).await;
    let viewer = new_staff(
        store.as_ref(),
        district_a,
        "viewer@district.example.org",
        Role::Viewer,
    )
    .await;
    let revoked = token_of(store.as_ref(), &viewer, "revoked").await;
    execute(
        &d.db.url,
        "UPDATE api_tokens SET revoked_at = created_at WHERE name = 'revoked'",
    )
    .await;
    let tokens = [
        (
            "school admin",
            token_of(store.as_ref(), &school_admin, "matrix").await,
        ),
        (
            "teacher",
            token_of(store.as_ref(), &teacher, "matrix").await,
        ),
        ("viewer", token_of(store.as_ref(), &viewer, "matrix").await),
    ];
    // District B and its administrator.
    let district_b = store
        .create_district("Other District", chrono::Utc::now())
        .await
        .unwrap();
    let other_admin = new_staff(
        store.as_ref(),
        district_b.id,
        "admin@other.example.org",
        Role::DistrictAdmin,
    )
    .await;
    let other = token_of(store.as_ref(), &other_admin, "matrix").await;
    // A guardian's app session (of the outsider guardian's phone).
    let session = GuardianToken::generate();
    let phone = tidings_core::PhoneNumber::parse_in(&cast.outsider_phone, "US").unwrap();
    store
        .create_guardian_session(
            &GuardianSession {
                id: session.session,
                channel: Channel::Sms,
                address: phone.as_str().to_owned(),
                secret_hash: session.secret_hash(),
                expires_at: chrono::Utc::now() + chrono::Duration::days(1),
                revoked_at: None,
            },
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let guardian_token = session.reveal();

    // District A's resources, made by its administrator.
    let (status, sent) = d
        .call(
            Method::POST,
            "/api/v1/messages",
            &d.admin,
            Some(json!({
                "audience": {"district": true}, "channels": ["sms", "email"], "kind": "general",
                "subject": "Field trip", "body": "Sign the form, please.", "requires_ack": true
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let (_, found) = d
        .get(
            &format!("/api/v1/guardians?q={}", cast.outsider_guardian),
            &d.admin,
        )
        .await;
    let guardian_id = found["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, guardian) = d
        .get(&format!("/api/v1/guardians/{guardian_id}"), &d.admin)
        .await;
    let (status, opt_out) = d
        .call(
            Method::POST,
            &format!("/api/v1/guardians/{guardian_id}/opt-outs"),
            &d.admin,
            Some(json!({"channel": "email"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{opt_out}");
    let (_, schools) = d.get("/api/v1/schools?q=school-0", &d.admin).await;
    let school = &schools["items"][0];
    let (_, class) = d.get("/api/v1/classes?limit=1", &d.admin).await;
    let (_, student) = d.get("/api/v1/students?limit=1", &d.admin).await;
    let ids = Ids {
        message: sent["id"].as_str().unwrap().to_owned(),
        delivery: first_id(
            &d.db.url,
            "SELECT CAST(id AS TEXT) FROM deliveries ORDER BY id LIMIT 1",
        )
        .await,
        contact_point: guardian["contact_points"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        opt_out: opt_out["id"].as_str().unwrap().to_owned(),
        guardian: guardian_id,
        import: import["id"].as_str().unwrap().to_owned(),
        school: school["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{school}"))
            .to_owned(),
        class: class["items"][0]["id"].as_str().unwrap().to_owned(),
        student: student["items"][0]["id"].as_str().unwrap().to_owned(),
        token: store
            .api_tokens(district_a, None, &[])
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.owner_email == support::ADMIN)
            .expect("the administrator's token")
            .id
            .to_string(),
        staff: teacher.id.to_string(),
        district: district_a.to_string(),
    };

    // The operations, from the document.
    let (_, doc) = d.get("/api/v1/openapi.json", &d.admin).await;
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.push(Operation {
                method: method.to_uppercase().parse().unwrap(),
                path: path.clone(),
                secured: operation.get("security").is_some(),
            });
        }
    }
    assert!(operations.len() > 30, "{} operations", operations.len());
    let public: BTreeSet<String> = operations
        .iter()
        .filter(|o| !o.secured)
        .map(Operation::name)
        .collect();
    assert_eq!(
        public,
        PUBLIC.iter().map(|s| s.to_string()).collect(),
        "operations open to anyone"
    );

    let unknown = ApiToken::generate().reveal();
    let unknown_guardian = GuardianToken::generate().reveal();
    let mut checked = 0;
    for op in operations.iter().filter(|o| o.secured) {
        // Nobody, or credentials that are not (or no longer) any.
        let wrong_kind = if op.guardian_app() {
            d.admin.as_str()
        } else {
            guardian_token.as_str()
        };
        let strangers = [
            ("no token", None),
            ("a malformed token", Some("nonsense")),
            (
                "an unknown token",
                Some(if op.guardian_app() {
                    unknown_guardian.as_str()
                } else {
                    unknown.as_str()
                }),
            ),
            ("a revoked token", Some(revoked.as_str())),
            ("the wrong kind of token", Some(wrong_kind)),
        ];
        for (who, token) in strangers {
            let (status, problem) = call(&d, op, &ids, token, &zip).await;
            assert_eq!(
                (status, problem["type"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("/problems/unauthorized")),
                "{} with {who}",
                op.name()
            );
            checked += 1;
        }
        if op.guardian_app() {
            continue;
        }
        // Another district's administrator reaches nothing of district A's.
        if op.path.contains('{') {
            let (status, body) = call(&d, op, &ids, Some(&other), &zip).await;
            assert!(
                matches!(status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
                "{} by another district's administrator: {status} {body}",
                op.name()
            );
        } else if operators_only(op) {
            let (status, body) = call(&d, op, &ids, Some(&other), &zip).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{}: {body}", op.name());
        } else if op.method == Method::GET {
            let (status, body) = call(&d, op, &ids, Some(&other), &zip).await;
            assert_eq!(status, StatusCode::OK, "{}", op.name());
            let text = body.to_string();
            for id in ids.all() {
                assert!(
                    !text.contains(id),
                    "{} shows another district's {id}: {text}",
                    op.name()
                );
            }
        }
        checked += 1;
        // The roles of district A: read-only for the viewer; nothing of the outsider
        // guardian or the administrator's message for the teacher and the school
        // administrator.
        for (role, token) in &tokens {
            let writes = op.method != Method::GET;
            let under = |prefix: &str| op.path.starts_with(prefix) && op.path.contains("{id}");
            // Messages, their deliveries and import reports are the author's (and the
            // district administrators'); guardians are seen within the caller's scope.
            let authored = under("/api/v1/messages/")
                || under("/api/v1/deliveries/")
                || under("/api/v1/dead-letters/")
                || under("/api/v1/imports/")
                || under("/api/v1/tokens/");
            // Everyone makes API tokens of their own, with their own role.
            let own_token = op.path == "/api/v1/tokens";
            // District settings and staff are the district administrators' alone;
            // districts the install's operators'.
            let settings = op.path.starts_with("/api/v1/settings/")
                || op.path.starts_with("/api/v1/staff")
                || operators_only(op);
            let refused = settings
                || match *role {
                    "viewer" => (writes && !own_token) || authored,
                    _ => {
                        authored
                            || under("/api/v1/guardians/")
                            || (writes && op.path == "/api/v1/messages")
                    }
                };
            if !refused {
                continue;
            }
            let (status, body) = call(&d, op, &ids, Some(token), &zip).await;
            assert!(
                matches!(status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
                "{} by the {role}: {status} {body}",
                op.name()
            );
            checked += 1;
        }
        // Listings show the teacher and the school administrator none of the outsider.
        if op.method == Method::GET
            && !op.path.contains('{')
            && op.path.starts_with("/api/v1/guardians")
        {
            for (role, token) in &tokens[..2] {
                let (_, body) = call(&d, op, &ids, Some(token), &zip).await;
                assert!(
                    !body.to_string().contains(&ids.guardian),
                    "{} shows the {role} an outsider",
                    op.name()
                );
            }
        }
    }
    assert!(checked > 150, "{checked} checks");
    assert!(d.server.terminate().await.success());
}
