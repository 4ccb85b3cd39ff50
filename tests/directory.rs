//! The directory and roster import over HTTP: what each role sees and may change.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::{demo_zip, token_for, District};
use tidings_core::testing::TestDatabase;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo");

/// A teacher of the demo district: their email and the sourcedIds of their students.
fn a_teacher_and_their_students() -> (String, Vec<String>) {
    let mut users = csv::Reader::from_path(format!("{DEMO}/users.csv")).unwrap();
    let headers = users.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (sid, role, email) = (col("sourcedId"), col("role"), col("email"));
    let teacher = users
        .records()
        .map(|r| r.unwrap())
        .find(|r| &r[role] == "teacher")
        .unwrap();
    let mut enrollments = csv::Reader::from_path(format!("{DEMO}/enrollments.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = enrollments.records().map(|r| r.unwrap()).collect();
    // Columns: sourcedId, status, dateLastModified, classSourcedId, schoolSourcedId, userSourcedId, role
    let class = rows.iter().find(|r| r[5] == teacher[sid]).unwrap()[3].to_owned();
    let mut students: Vec<String> = rows
        .iter()
        .filter(|r| r[3] == class && &r[6] == "student")
        .map(|r| r[5].to_owned())
        .collect();
    students.sort();
    (teacher[email].to_lowercase(), students)
}

#[tokio::test]
async fn an_uploaded_roster_becomes_a_directory_each_role_sees_its_part_of() {
    let db = TestDatabase::sqlite();
    let api = District::start(db).await;
    let admin = api.admin.clone();

    let response = api
        .client
        .post(api.server.url("/api/v1/imports/oneroster"))
        .bearer_auth(&admin)
        .header("content-type", "application/zip")
        .body(demo_zip())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let import: Value = response.json().await.unwrap();
    assert_eq!(import["status"], "succeeded");
    assert_eq!(import["report"]["entities"]["students"]["created"], 300);
    let (status, again) = api
        .get(
            &format!("/api/v1/imports/{}", import["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["report"], import["report"]);

    // The administrator pages through every guardian.
    let guardians = api.all("/api/v1/guardians", &admin).await;
    let ids: std::collections::HashSet<&str> = guardians
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), guardians.len(), "no guardian on two pages");
    assert_eq!(
        guardians.len(),
        import["report"]["entities"]["guardians"]["created"]
            .as_u64()
            .unwrap() as usize
    );

    // A teacher sees the students of their class, and no one else.
    let (teacher_email, expected) = a_teacher_and_their_students();
    let teacher = token_for(&api.db.url, &teacher_email).await;
    let theirs_students = api.all("/api/v1/students", &teacher).await;
    let seen_ids: Vec<String> = theirs_students
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let mut seen: Vec<String> = theirs_students
        .iter()
        .map(|s| s["sourced_id"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, expected);
    let theirs = api.all("/api/v1/guardians", &teacher).await;
    assert!(!theirs.is_empty() && theirs.len() < guardians.len());
    let outsider = guardians
        .iter()
        .find(|g| !theirs.iter().any(|t| t["id"] == g["id"]))
        .unwrap();
    let (status, problem) = api
        .get(
            &format!("/api/v1/guardians/{}", outsider["id"].as_str().unwrap()),
            &teacher,
        )
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("/problems/not-found"))
    );
    let mine = theirs[0]["id"].as_str().unwrap();
    let (status, detail) = api
        .get(&format!("/api/v1/guardians/{mine}"), &teacher)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(detail["students"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| expected.contains(&s["sourced_id"].as_str().unwrap().to_owned())));

    // Teachers may not change how a guardian is reached, nor import rosters.
    let body = json!({"kind": "sms", "address": "+1 202 555 0150"});
    let (status, problem) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/guardians/{mine}/contact-points"),
            &teacher,
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::FORBIDDEN, Some("/problems/forbidden"))
    );
    let upload = api
        .client
        .post(api.server.url("/api/v1/imports/oneroster"))
        .bearer_auth(&teacher)
        .body(demo_zip())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::FORBIDDEN);

    // The administrator can, and a bad number is refused with the reason.
    let path = format!("/api/v1/guardians/{mine}/contact-points");
    let (status, added) = api
        .call(reqwest::Method::POST, &path, &admin, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(
        (added["address"].as_str(), added["source"].as_str()),
        (Some("+12025550150"), Some("staff"))
    );
    let bad = json!({"kind": "sms", "address": "555"});
    let (status, problem) = api
        .call(reqwest::Method::POST, &path, &admin, Some(bad))
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/invalid-body")
        )
    );
    let cp = format!("{path}/{}", added["id"].as_str().unwrap());
    let (status, off) = api
        .call(
            reqwest::Method::PATCH,
            &cp,
            &admin,
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(
        (status, off["active"].as_bool()),
        (StatusCode::OK, Some(false))
    );

    let (status, opt_out) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/guardians/{mine}/opt-outs"),
            &admin,
            Some(json!({"channel": "email"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, detail) = api.get(&format!("/api/v1/guardians/{mine}"), &admin).await;
    assert_eq!(detail["opt_outs"].as_array().unwrap().len(), 1);
    let revoke = format!(
        "/api/v1/guardians/{mine}/opt-outs/{}",
        opt_out["id"].as_str().unwrap()
    );
    let (status, _) = api
        .call(reqwest::Method::DELETE, &revoke, &admin, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, detail) = api.get(&format!("/api/v1/guardians/{mine}"), &admin).await;
    assert!(detail["opt_outs"].as_array().unwrap().is_empty());

    // Every change is in the audit log, with who made it.
    let store = tidings_core::store::connect(&api.db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    // The admin's token was used for these requests, and that is kept.
    let tokens = store.api_tokens(district, None, &[]).await.unwrap();
    assert!(
        tokens.iter().any(|t| t.last_used_at.is_some()),
        "no token's use was recorded: {tokens:?}"
    );
    let mut actions: Vec<String> = store
        .audit_entries(district, 20)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.staff_id.is_some())
        .map(|e| e.action)
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "api_token.create",
            "api_token.create",
            "contact_point.add",
            "contact_point.change",
            "opt_out.add",
            "opt_out.revoke",
            "roster.import"
        ]
    );

    // Single rows and filters follow the same scope.
    let (status, _) = api
        .get(&format!("/api/v1/students/{}", seen_ids[0]), &teacher)
        .await;
    assert_eq!(status, StatusCode::OK);
    let other = api
        .all("/api/v1/students", &admin)
        .await
        .into_iter()
        .find(|s| !seen_ids.contains(&s["id"].as_str().unwrap().to_owned()))
        .unwrap();
    let (status, _) = api
        .get(
            &format!("/api/v1/students/{}", other["id"].as_str().unwrap()),
            &teacher,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .get(
            &format!("/api/v1/students/{}", other["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let of_other = api
        .all(
            &format!(
                "/api/v1/guardians?student={}",
                other["id"].as_str().unwrap()
            ),
            &teacher,
        )
        .await;
    assert!(of_other.is_empty(), "a filter never widens the scope");
    assert!(api.server.terminate().await.success());
}

#[tokio::test]
async fn bad_uploads_and_bad_requests_are_problems_that_change_nothing() {
    let db = TestDatabase::sqlite();
    let api = District::start(db).await;
    let admin = api.admin.clone();

    let garbage = api
        .client
        .post(api.server.url("/api/v1/imports/oneroster"))
        .bearer_auth(&admin)
        .body("not a zip")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = garbage.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/invalid-roster");

    // A multipart form works like a raw zip.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(demo_zip()).file_name("roster.zip"),
    );
    let upload = api
        .client
        .post(api.server.url("/api/v1/imports/oneroster"))
        .bearer_auth(&admin)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::CREATED);

    let (status, problem) = api.get("/api/v1/students?limit=abc", &admin).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("/problems/invalid-query"))
    );
    let (status, _) = api.get("/api/v1/guardians/not-a-uuid", &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let some = api.all("/api/v1/guardians", &admin).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A body over the limit is refused once the limit is passed. (Sent by hand: a client
    // still writing a large body when the answer comes may see the connection close
    // instead of the 413.)
    let path = format!("/api/v1/guardians/{some}/contact-points");
    let response = support::send_oversized(&api.server, &path, &admin).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains("/problems/payload-too-large"),
        "{response}"
    );
    let (status, problem) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/guardians/{some}/contact-points"),
            &admin,
            Some(json!({"kind": "fax"})),
        )
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/invalid-body")
        )
    );
    assert!(api.server.terminate().await.success());
}

/// The roster's sourcedIds name rows everywhere the directory takes an id, as they do in
/// message audiences: in paths and in the `school`, `class` and `student` filters.
async fn sourced_ids_name_rows_wherever_ids_do(db: TestDatabase) {
    let d = District::with_demo(db).await;
    let (status, by_sid) = d.get("/api/v1/schools/school-0", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{by_sid}");
    let school = by_sid["id"].as_str().unwrap().to_owned();
    let (_, by_id) = d.get(&format!("/api/v1/schools/{school}"), &d.admin).await;
    assert_eq!(by_sid, by_id);
    for (path, sid, id) in [
        (
            "/api/v1/guardians?school=",
            "school-0".to_owned(),
            school.clone(),
        ),
        (
            "/api/v1/students?school=",
            "school-0".to_owned(),
            school.clone(),
        ),
    ] {
        let by_sid = d.all(&format!("{path}{sid}"), &d.admin).await;
        let by_id = d.all(&format!("{path}{id}"), &d.admin).await;
        assert!(!by_sid.is_empty(), "{path}{sid}");
        assert_eq!(by_sid, by_id, "{path}");
    }
    let (status, class) = d.get("/api/v1/classes/class-0", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{class}");
    let by_sid = d.all("/api/v1/students?class=class-0", &d.admin).await;
    let by_id = d
        .all(
            &format!("/api/v1/students?class={}", class["id"].as_str().unwrap()),
            &d.admin,
        )
        .await;
    assert!(!by_sid.is_empty());
    assert_eq!(by_sid, by_id);
    let (status, student) = d.get("/api/v1/students/student-0", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{student}");
    let guardians = d.all("/api/v1/guardians?student=student-0", &d.admin).await;
    assert_eq!(
        guardians.len(),
        2,
        "student-0 has two guardians in the demo roster"
    );
    let (status, guardian) = d.get("/api/v1/guardians/guardian-0", &d.admin).await;
    assert_eq!(status, StatusCode::OK, "{guardian}");
    assert_eq!(guardian["sourced_id"], "guardian-0");
    // A sourcedId of nothing is what an unknown id is: 404, or an empty page.
    let (status, _) = d.get("/api/v1/schools/school-99", &d.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(d
        .all("/api/v1/guardians?school=school-99", &d.admin)
        .await
        .is_empty());
    // A teacher is not shown another school's rows by their sourcedId either.
    let (teacher, _) = a_teacher_and_their_students();
    let teacher = token_for(&d.db.url, &teacher).await;
    let (_, own) = d.get("/api/v1/schools", &teacher).await;
    let own: Vec<&str> = own["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sourced_id"].as_str().unwrap())
        .collect();
    let other = ["school-0", "school-1", "school-2"]
        .into_iter()
        .find(|s| !own.contains(s))
        .unwrap();
    let (status, _) = d.get(&format!("/api/v1/schools/{other}"), &teacher).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(d.server.terminate().await.success());
}

tidings_core::on_both_stores! {
    databases: sourced_ids_name_rows_wherever_ids_do,
}

#[tokio::test]
async fn staff_make_list_and_revoke_their_api_tokens_over_the_api() {
    let api = District::with_demo(TestDatabase::sqlite()).await;
    let admin = api.admin.clone();
    let (teacher_email, _) = a_teacher_and_their_students();
    let teacher = token_for(&api.db.url, &teacher_email).await;
    let post = |token: &str, body: Value| {
        let token = token.to_owned();
        let api = &api;
        async move {
            api.call(reqwest::Method::POST, "/api/v1/tokens", &token, Some(body))
                .await
        }
    };

    // A teacher makes a token; its secret is in this answer and it works at once.
    let (status, made) = post(&teacher, json!({"name": "gradebook"})).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let gradebook = made["token"].as_str().unwrap().to_owned();
    assert_eq!(made["name"], "gradebook");
    assert_eq!(made["owner_email"], teacher_email.to_lowercase());
    let (status, me) = api.get("/api/v1/me", &gradebook).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["email"], teacher_email.to_lowercase());

    // Names empty, too long or reserved, and expiries in the past are refused.
    for bad in [
        json!({"name": "  "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "web session"}),
        json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"name": "n", "scopes": ["all"]}),
    ] {
        let (status, problem) = post(&teacher, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
    }
    let (status, dated) = post(
        &teacher,
        json!({"name": "term", "expires_at": "2099-06-30T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{dated}");
    assert_eq!(dated["expires_at"], "2099-06-30T00:00:00Z");

    // The teacher lists their own tokens, never a secret; the admin lists everyone's.
    let (status, mine) = api.get("/api/v1/tokens", &teacher).await;
    assert_eq!(status, StatusCode::OK);
    let mine = mine.as_array().unwrap();
    assert_eq!(mine.len(), 3, "the first, gradebook and term: {mine:?}");
    assert!(mine
        .iter()
        .all(|t| t["owner_email"] == teacher_email.to_lowercase() && t.get("token").is_none()));
    let (_, all) = api.get("/api/v1/tokens", &admin).await;
    let all = all.as_array().unwrap();
    assert!(all.len() > mine.len());
    let admins = all
        .iter()
        .find(|t| t["owner_email"] == support::ADMIN)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A teacher cannot revoke the admin's token, nor tell it exists.
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{admins}"),
            &teacher,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The admin revokes the teacher's gradebook token: it stops working at once; doing
    // it again changes nothing.
    let gradebook_id = made["id"].as_str().unwrap();
    for _ in 0..2 {
        let (status, _) = api
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v1/tokens/{gradebook_id}"),
                &admin,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, _) = api.get("/api/v1/me", &gradebook).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, mine) = api.get("/api/v1/tokens", &teacher).await;
    let revoked = mine
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == gradebook_id)
        .unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    // Each creation and the one revocation are audited, as the staff who did them.
    let store = tidings_core::store::connect(&api.db.url, &Default::default())
        .await
        .unwrap();
    let district = store.districts().await.unwrap()[0].id;
    let entries = store.audit_entries(district, 100).await.unwrap();
    let by = |action: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.staff_id.is_some())
            .count()
    };
    assert_eq!(by("api_token.revoke"), 1);
    assert!(
        by("api_token.create") >= 4,
        "two by the API, two by the CLI"
    );
}

#[tokio::test]
async fn staff_are_listed_whole_or_a_page_at_a_time_following_link_headers() {
    let api = District::with_demo(TestDatabase::sqlite()).await;
    let admin = api.admin.clone();

    // Without paging: every member in one array, by email, and no Link header.
    let response = api
        .client
        .get(api.server.url("/api/v1/staff"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("link").is_none());
    let everyone: Vec<Value> = response.json().await.unwrap();
    let emails = |members: &[Value]| -> Vec<String> {
        members
            .iter()
            .map(|m| m["email"].as_str().unwrap().to_owned())
            .collect()
    };
    let all_emails = emails(&everyone);
    assert!(
        all_emails.len() > 7,
        "the demo has {} staff",
        all_emails.len()
    );
    assert!(all_emails.windows(2).all(|w| w[0] < w[1]));

    // Seven at a time, following each page's Link header to the end.
    let mut paged = Vec::new();
    let mut next = Some("/api/v1/staff?limit=7".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let response = api
            .client
            .get(api.server.url(&path))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        next = response
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned())
            .map(|l| {
                assert!(l.ends_with(">; rel=\"next\""), "{l}");
                l.trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned()
            });
        let page: Vec<Value> = response.json().await.unwrap();
        assert!(page.len() <= 7);
        paged.extend(page);
        pages += 1;
    }
    assert_eq!(emails(&paged), all_emails);
    assert_eq!(pages, all_emails.len() / 7 + 1);

    // A search by part of an email finds that member; an overlong one is refused.
    let wanted = &all_emails[all_emails.len() / 2];
    let part = &wanted[..wanted.find('@').unwrap()];
    let (status, found) = api.get(&format!("/api/v1/staff?q={part}"), &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        emails(found.as_array().unwrap()).contains(wanted),
        "{found}"
    );
    let (status, problem) = api
        .get(&format!("/api/v1/staff?q={}", "x".repeat(201)), &admin)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
}
