//! OneRoster 1.1 import, run against both stores with spec-shaped bundles: siblings,
//! multi-household students, a byte-order mark, quoting, bad rows, re-import, deletion.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tidings_core::roster::{self, Bundle, EntityCounts, ImportError, ImportOptions, ImportReport};
use tidings_core::store::{FirstAdmin, GuardianDetail, GuardianRef, PageRequest, Scope, Store};
use tidings_core::time::now;
use tidings_core::{secret, Channel, DistrictId, EmailAddress, GuardianId};

tidings_core::on_both_stores! {
    a_bundle_becomes_the_directory_with_every_bad_row_reported,
    importing_the_same_bundle_twice_changes_nothing,
    a_later_bundle_updates_deletes_and_deactivates,
    a_zip_imports_like_its_directory,
    a_file_with_a_broken_header_deletes_nothing,
    a_failed_import_leaves_the_previous_directory_intact,
    each_role_sees_only_its_part_of_the_directory,
    staff_edit_contact_points_and_opt_outs_but_not_a_carrier_stop,
    audiences_resolve_to_each_guardian_once_within_the_senders_scope,
    a_header_only_users_file_is_held_back_and_audited_until_forced,
    a_dry_run_reports_what_it_would_do_and_changes_nothing,
    a_first_import_is_never_held_back_and_counts_tobedeleted_rows_it_never_had_as_skipped,
    a_demographics_row_naming_an_unknown_user_is_reported,
    a_field_or_row_too_long_is_rejected_with_its_line_and_deletes_nothing,
    a_nul_in_a_field_rejects_its_row_on_both_stores;
    databases: an_import_commits_with_its_history_and_audit_row_or_not_at_all,
}

const MANIFEST: &str = "propertyName,value
manifest.version,1.0
oneroster.version,1.1
file.academicSessions,bulk
file.categories,absent
file.classes,bulk
file.classResources,absent
file.courses,bulk
file.courseResources,absent
file.demographics,bulk
file.enrollments,bulk
file.lineItems,absent
file.orgs,bulk
file.resources,absent
file.results,absent
file.users,bulk
source.systemName,Example SIS
";

// A byte-order mark and CRLF line ends, as Excel-touched exports have.
const ORGS: &str =
    "\u{feff}sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\r
d1,active,2026-08-01T00:00:00Z,Riverside Unified,district,,\r
sch1,active,2026-08-01T00:00:00Z,\"Lincoln Elementary, Main Campus\",school,101,d1\r
sch2,active,2026-08-01T00:00:00Z,Roosevelt Middle,school,102,d1\r
dep1,active,2026-08-01T00:00:00Z,Athletics,department,,sch2\r
";

const SESSIONS: &str =
    "sourcedId,status,dateLastModified,title,type,startDate,endDate,parentSourcedId,schoolYear
t2026,active,2026-08-01T00:00:00Z,2026-2027,schoolYear,2026-08-15,2027-06-10,,2027
";

const COURSES: &str = "sourcedId,status,dateLastModified,schoolYearSourcedId,title,courseCode,grades,orgSourcedId,subjects,subjectCodes
co1,active,2026-08-01T00:00:00Z,t2026,Grade 3,G3,03,sch1,,
co2,active,2026-08-01T00:00:00Z,t2026,Math 7,M7,07,sch2,,
";

// Columns deliberately out of the specification's order: they are found by name.
const CLASSES: &str = "title,sourcedId,status,dateLastModified,grades,courseSourcedId,classCode,classType,location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods
\"Grade 3, Room 12\",c1,active,2026-08-01T00:00:00Z,03,co1,G3-12,homeroom,12,sch1,t2026,,,
Math 7,c2,active,2026-08-01T00:00:00Z,07,co2,M7-1,scheduled,B4,sch2,t2026,math,,1
Lost,c3,active,2026-08-01T00:00:00Z,07,co2,L,scheduled,,nope,t2026,,,
";

const USERS_HEADER: &str = "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\n";

/// Lines: header 1; stu1 2; stu2 3; stu3 4–5 (a quoted line break in familyName);
/// p1 6; p2 7; p3 8; p4 9; t1 10; a1 11; x1 12; stu1 again 13; stu4 14; aide1 15; t2 16.
const USERS_ROWS: &str = "stu1,active,2026-08-01T00:00:00Z,true,sch1,student,ana,,Ana,Lee,,,,,,\"p1,p2\",03,
stu2,active,2026-08-01T00:00:00Z,true,sch2,student,ben,,Ben,Lee,,,,,,p1,07,
stu3,active,2026-08-01T00:00:00Z,true,sch1,student,cal,,\"Cal \"\"CJ\"\"\",\"Diaz
Moreno\",,,,,,p3,03,
p1,active,2026-08-01T00:00:00Z,true,sch1,parent,,,Maria,Lee,,,Maria.Lee@Example.org,(202) 555-0143,,\"stu1,stu2\",,
p2,active,2026-08-01T00:00:00Z,true,sch1,guardian,,,Tom,Lee,,,,,+44 20 7946 0958,,,
p3,active,2026-08-01T00:00:00Z,true,sch1,parent,,,Rosa,Diaz,,,rosa@diaz.example.net,12345,,,,
p4,active,2026-08-01T00:00:00Z,true,sch1,relative,,,Luis,Moreno,,,,,,stu3,,
t1,active,2026-08-01T00:00:00Z,true,sch1,teacher,pquinn,,Pat,Quinn,,,Pat.Quinn@riverside.example.org,,,,,
a1,active,2026-08-01T00:00:00Z,true,sch2,administrator,,,Alex,Park,,,alex.park@riverside.example.org,,,,,
x1,active,2026-08-01T00:00:00Z,true,sch1,janitor,,,Sam,Vale,,,,,,,,
stu1,active,2026-08-01T00:00:00Z,true,sch1,student,ana2,,Ana,Lee,,,,,,,03,
stu4,active,2026-08-01T00:00:00Z,true,nope,student,,,Dee,Nobody,,,,,,,05,
aide1,active,2026-08-01T00:00:00Z,true,sch1,aide,,,Ida,Aide,,,,,,,,
t2,active,2026-08-01T00:00:00Z,true,sch1,teacher,,,No,Email,,,,,,,,
";

const ENROLLMENTS: &str = "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate
e1,active,2026-08-01T00:00:00Z,c1,sch1,stu1,student,false,,
e2,active,2026-08-01T00:00:00Z,c1,sch1,stu3,student,false,,
e3,active,2026-08-01T00:00:00Z,c2,sch2,stu2,student,false,,
e4,active,2026-08-01T00:00:00Z,c1,sch1,t1,teacher,true,,
e5,active,2026-08-01T00:00:00Z,c2,sch2,a1,administrator,false,,
e6,active,2026-08-01T00:00:00Z,c1,sch1,ghost,student,false,,
e7,active,2026-08-01T00:00:00Z,c3,sch2,stu1,student,false,,
";

const DEMOGRAPHICS: &str = "sourcedId,status,dateLastModified,birthDate,sex
stu1,active,2026-08-01T00:00:00Z,2018-03-04,female
";

fn files(users_rows: &str) -> Vec<(&'static str, String)> {
    vec![
        ("manifest.csv", MANIFEST.to_owned()),
        ("orgs.csv", ORGS.to_owned()),
        ("academicSessions.csv", SESSIONS.to_owned()),
        ("courses.csv", COURSES.to_owned()),
        ("classes.csv", CLASSES.to_owned()),
        ("users.csv", format!("{USERS_HEADER}{users_rows}")),
        ("enrollments.csv", ENROLLMENTS.to_owned()),
        ("demographics.csv", DEMOGRAPHICS.to_owned()),
    ]
}

fn write_dir(dir: &Path, files: &[(&str, String)]) {
    for (name, body) in files {
        std::fs::write(dir.join(name), body).unwrap();
    }
}

async fn district(store: &dyn Store) -> DistrictId {
    let first = FirstAdmin {
        district_name: "Riverside Unified".into(),
        email: EmailAddress::parse("admin@riverside.example.org").unwrap(),
        display_name: "Administrator".into(),
        password_hash: secret::hash_password("x").unwrap(),
    };
    store.bootstrap(&first, now()).await.unwrap().unwrap().0.id
}

async fn import_dir(
    store: &dyn Store,
    district: DistrictId,
    files: &[(&str, String)],
) -> Result<ImportReport, ImportError> {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), files);
    let bundle = Bundle::open(dir.path()).unwrap();
    roster::import(store, district, &bundle, &ImportOptions::default(), &|_| {}).await
}

fn counts(
    created: u64,
    updated: u64,
    deleted: u64,
    unchanged: u64,
    rejected: u64,
    ignored: u64,
) -> EntityCounts {
    EntityCounts {
        created,
        updated,
        deleted,
        unchanged,
        rejected,
        ignored,
        skipped: 0,
    }
}

/// The options of the CLI and the API: the default 10 % limit on deletions.
fn guarded(force: bool, dry_run: bool) -> ImportOptions {
    ImportOptions {
        max_delete_percent: Some(roster::DEFAULT_MAX_DELETE_PERCENT),
        force,
        dry_run,
        ..ImportOptions::default()
    }
}

/// [`import_dir`] through the recorded import (history and audit log), as the CLI and API do.
async fn import_recorded(
    store: &dyn Store,
    district: DistrictId,
    files: &[(&str, String)],
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), files);
    let bundle = Bundle::open(dir.path()).unwrap();
    roster::import_recorded(store, district, None, &bundle, "test", options, &|_| {})
        .await
        .map(|(_, report)| report)
}

async fn audit_actions(
    store: &dyn Store,
    district: DistrictId,
) -> Vec<(String, serde_json::Value)> {
    store
        .audit_entries(district, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.detail))
        .collect()
}

async fn guardian(store: &dyn Store, district: DistrictId, sourced_id: &str) -> GuardianDetail {
    let which = GuardianRef::SourcedId(sourced_id.to_owned());
    store
        .guardian_detail(&Scope::District(district), &which)
        .await
        .unwrap()
        .expect("guardian visible")
}

fn sids(detail: &GuardianDetail) -> Vec<&str> {
    detail
        .students
        .iter()
        .map(|s| s.sourced_id.as_deref().unwrap())
        .collect()
}

async fn a_bundle_becomes_the_directory_with_every_bad_row_reported(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    let report = import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();

    assert_eq!(report.entities["schools"], counts(2, 0, 0, 0, 0, 1));
    assert_eq!(report.entities["students"], counts(3, 0, 0, 0, 1, 0));
    assert_eq!(report.entities["guardians"], counts(4, 0, 0, 0, 0, 0));
    assert_eq!(report.entities["staff"], counts(2, 0, 0, 0, 1, 1));
    assert_eq!(report.entities["classes"], counts(2, 0, 0, 0, 1, 0));
    assert_eq!(report.entities["enrollments"], counts(4, 0, 0, 0, 2, 1));
    assert_eq!(
        report.entities["users"].rejected, 2,
        "bad role and duplicate sourcedId"
    );

    let mut rejected: Vec<(&str, u64, Option<&str>)> = report
        .rejected
        .iter()
        .map(|r| (r.file, r.line, r.sourced_id.as_deref()))
        .collect();
    rejected.sort();
    assert_eq!(
        rejected,
        [
            ("classes.csv", 4, Some("c3")),
            ("enrollments.csv", 7, Some("e6")),
            ("enrollments.csv", 8, Some("e7")),
            ("users.csv", 12, Some("x1")),
            ("users.csv", 13, Some("stu1")),
            ("users.csv", 14, Some("stu4")),
            ("users.csv", 16, Some("t2")),
        ]
    );
    let reason = |sid: &str| {
        report
            .rejected
            .iter()
            .find(|r| r.sourced_id.as_deref() == Some(sid))
            .unwrap()
            .reason
            .clone()
    };
    assert_eq!(reason("x1"), "invalid role \"janitor\"");
    assert_eq!(reason("stu1"), "duplicate sourcedId (first on line 2)");
    assert!(
        reason("stu4").starts_with("unknown reference"),
        "{}",
        reason("stu4")
    );
    assert!(
        reason("c3").contains("schoolSourcedId \"nope\""),
        "{}",
        reason("c3")
    );
    assert!(
        reason("e6").contains("userSourcedId \"ghost\""),
        "{}",
        reason("e6")
    );
    assert!(
        reason("e7").contains("classSourcedId \"c3\""),
        "{}",
        reason("e7")
    );
    assert!(reason("t2").contains("email"), "{}", reason("t2"));

    // p3's "12345" is not a phone number: the guardian is imported, the number is not.
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert_eq!(
        (
            report.warnings[0].line,
            report.warnings[0].sourced_id.as_deref()
        ),
        (8, Some("p3"))
    );
    assert!(
        report.warnings[0].reason.starts_with("sms not stored"),
        "{}",
        report.warnings[0].reason
    );

    let directory = store.directory_counts(district).await.unwrap();
    assert_eq!(directory.schools, 2);
    assert_eq!(directory.students, 3);
    assert_eq!(directory.guardians, 4);
    assert_eq!(
        directory.staff, 3,
        "the administrator, the teacher and the school admin"
    );
    assert_eq!(directory.classes, 2);
    assert_eq!(directory.enrollments, 4);
    // stu1–p1, stu1–p2, stu2–p1 (siblings share p1), stu3–p3, stu3–p4 (two households).
    assert_eq!(directory.guardian_links, 5);
    assert_eq!(directory.active_contact_points, 4);

    let p1 = guardian(store.as_ref(), district, "p1").await;
    assert_eq!(sids(&p1), ["stu1", "stu2"], "one guardian of two siblings");
    let addresses: Vec<_> = p1
        .contact_points
        .iter()
        .map(|c| (c.kind.as_str(), c.address.as_str(), c.active))
        .collect();
    assert_eq!(
        addresses,
        [
            ("email", "maria.lee@example.org", true),
            ("sms", "+12025550143", true)
        ]
    );
    let p2 = guardian(store.as_ref(), district, "p2").await;
    assert_eq!(
        p2.contact_points[0].address, "+442079460958",
        "phone is used when sms is blank"
    );
    let p4 = guardian(store.as_ref(), district, "p4").await;
    assert_eq!(sids(&p4), ["stu3"], "linked from the guardian's side");
    assert!(p4.contact_points.is_empty());
    let p3 = guardian(store.as_ref(), district, "p3").await;
    assert_eq!(sids(&p3), ["stu3"], "linked from the student's side");
    assert_eq!(
        report.rows_read["users.csv"], 14,
        "records, not lines: stu3 spans two"
    );
}

async fn importing_the_same_bundle_twice_changes_nothing(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    let before = guardian(store.as_ref(), district, "p1").await;
    let directory = store.directory_counts(district).await.unwrap();

    let again = import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    for (entity, c) in &again.entities {
        assert_eq!(
            (c.created, c.updated, c.deleted),
            (0, 0, 0),
            "{entity}: {c:?}"
        );
    }
    assert_eq!(again.entities["students"].unchanged, 3);
    assert_eq!(again.entities["enrollments"].unchanged, 4);
    assert_eq!(store.directory_counts(district).await.unwrap(), directory);
    assert_eq!(guardian(store.as_ref(), district, "p1").await, before);
}

async fn a_later_bundle_updates_deletes_and_deactivates(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();

    // Next night: Maria has a new email, Ben (stu2) left the district, Cal (stu3) is marked
    // tobedeleted, and Ben's enrollment is gone with him.
    let users = USERS_ROWS
        .replace("Maria.Lee@Example.org", "maria@lee.example.com")
        .replace(
            "stu2,active,2026-08-01T00:00:00Z,true,sch2,student,ben,,Ben,Lee,,,,,,p1,07,\n",
            "",
        )
        .replace("stu3,active", "stu3,tobedeleted")
        .replace("\"stu1,stu2\"", "stu1");
    let mut later = files(&users);
    later[6].1 = ENROLLMENTS.replace(
        "e3,active,2026-08-01T00:00:00Z,c2,sch2,stu2,student,false,,\n",
        "",
    );
    let report = import_dir(store.as_ref(), district, &later).await.unwrap();

    assert_eq!(
        report.entities["guardians"],
        counts(0, 0, 0, 4, 0, 0),
        "names unchanged"
    );
    assert_eq!(
        report.entities["students"].deleted, 2,
        "stu3 by status, stu2 by absence"
    );
    assert_eq!(report.entities["enrollments"].deleted, 1);

    let p1 = guardian(store.as_ref(), district, "p1").await;
    assert_eq!(sids(&p1), ["stu1"]);
    let emails: Vec<_> = p1
        .contact_points
        .iter()
        .filter(|c| c.kind.as_str() == "email")
        .map(|c| (c.address.as_str(), c.active, c.inactive_reason.as_deref()))
        .collect();
    assert_eq!(
        emails,
        [
            ("maria.lee@example.org", false, Some("removed from roster")),
            ("maria@lee.example.com", true, None)
        ]
    );
    let directory = store.directory_counts(district).await.unwrap();
    assert_eq!(directory.students, 1);
    assert_eq!(
        directory.enrollments, 3,
        "e3 went with the bundle; e2 stays, as its row is still there"
    );
}

async fn a_zip_imports_like_its_directory(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, body) in files(USERS_ROWS) {
        // Exports often wrap the files in one folder.
        zip.start_file(
            format!("export-2026-11-24/{name}"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(body.as_bytes()).unwrap();
    }
    // Nothing outside the known files is ever extracted.
    zip.start_file(
        "../../etc/evil.csv",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    zip.write_all(b"x").unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    let bundle = Bundle::from_zip(std::io::Cursor::new(bytes)).unwrap();
    let from_zip = roster::import(
        store.as_ref(),
        district,
        &bundle,
        &ImportOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(from_zip.entities["students"].created, 3);
    assert_eq!(from_zip.rejected.len(), 7);
    assert_eq!(
        store
            .directory_counts(district)
            .await
            .unwrap()
            .guardian_links,
        5
    );
}

async fn a_file_with_a_broken_header_deletes_nothing(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    let before = store.directory_counts(district).await.unwrap();

    let mut broken = files(USERS_ROWS);
    broken[5].1 = broken[5].1.replacen("givenName", "first_name", 1);
    let report = import_dir(store.as_ref(), district, &broken).await.unwrap();
    let header = report
        .rejected
        .iter()
        .find(|r| r.file == "users.csv")
        .unwrap();
    assert_eq!(header.line, 1);
    assert!(
        header
            .reason
            .starts_with("missing required column(s): givenName"),
        "{}",
        header.reason
    );
    let after = store.directory_counts(district).await.unwrap();
    // A row that is bad tonight leaves the person as they were: rejected, not deleted.
    let nameless = USERS_ROWS.replace(",Ben,Lee,", ",,Lee,");
    let report = import_dir(store.as_ref(), district, &files(&nameless))
        .await
        .unwrap();
    assert_eq!(
        report.entities["students"].rejected, 2,
        "Ben, and stu4 as always"
    );
    assert_eq!(report.entities["students"].deleted, 0);
    assert_eq!(
        store.directory_counts(district).await.unwrap().students,
        before.students
    );
    assert_eq!(
        after.students, before.students,
        "a bulk file that could not be read deletes nothing"
    );
    assert_eq!(after.guardians, before.guardians);
}

async fn a_failed_import_leaves_the_previous_directory_intact(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();

    // A school renamed, then a row claiming another district: the import must fail as a
    // whole, and the rename must not survive.
    let mut wrong = files(USERS_ROWS);
    wrong[1].1 = format!(
        "{}d9,active,2026-08-01T00:00:00Z,Other District,district,,\r\n",
        ORGS.replace("Roosevelt Middle", "Renamed Middle")
    );
    let err = import_dir(store.as_ref(), district, &wrong)
        .await
        .unwrap_err();
    assert!(matches!(err, ImportError::WrongDistrict { .. }), "{err:?}");
    let report = import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    assert_eq!(
        report.entities["schools"],
        counts(0, 0, 0, 2, 0, 1),
        "the rename was rolled back"
    );
}

fn all() -> PageRequest {
    PageRequest {
        limit: 100,
        ..PageRequest::default()
    }
}

async fn scope_of(store: &dyn Store, email: &str) -> Scope {
    let staff = store
        .staff_by_email(&EmailAddress::parse(email).unwrap())
        .await
        .unwrap()
        .unwrap();
    Scope::of(&staff)
}

async fn each_role_sees_only_its_part_of_the_directory(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    let s = store.as_ref();
    let names = |v: Vec<tidings_core::store::StudentView>| -> Vec<String> {
        let mut sids: Vec<String> = v.into_iter().map(|s| s.sourced_id.unwrap()).collect();
        sids.sort();
        sids
    };
    let gnames = |v: Vec<tidings_core::store::GuardianView>| -> Vec<String> {
        let mut sids: Vec<String> = v.into_iter().map(|g| g.sourced_id.unwrap()).collect();
        sids.sort();
        sids
    };

    // Pat Quinn teaches c1: Ana (stu1) and Cal (stu3), and sees their guardians.
    let teacher = scope_of(s, "pat.quinn@riverside.example.org").await;
    assert!(matches!(teacher, Scope::Teacher(..)));
    assert_eq!(
        names(s.students(&teacher, &all()).await.unwrap()),
        ["stu1", "stu3"]
    );
    assert_eq!(
        gnames(s.guardians(&teacher, &all()).await.unwrap()),
        ["p1", "p2", "p3", "p4"]
    );
    let classes: Vec<_> = s
        .classes(&teacher, &all())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.sourced_id.unwrap())
        .collect();
    assert_eq!(classes, ["c1"]);
    let schools: Vec<_> = s
        .schools(&teacher, &all())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.sourced_id.unwrap())
        .collect();
    assert_eq!(schools, ["sch1"]);
    // Maria (p1) also has Ben at Roosevelt Middle: the teacher does not see him.
    let p1 = s
        .guardian_detail(&teacher, &GuardianRef::SourcedId("p1".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sids(&p1), ["stu1"]);

    // Alex Park administers Roosevelt Middle (sch2): Ben, and Maria through him.
    let school_admin = scope_of(s, "alex.park@riverside.example.org").await;
    assert!(matches!(school_admin, Scope::Schools(..)));
    assert_eq!(
        names(s.students(&school_admin, &all()).await.unwrap()),
        ["stu2"]
    );
    assert_eq!(
        gnames(s.guardians(&school_admin, &all()).await.unwrap()),
        ["p1"]
    );
    let p1 = s
        .guardian_detail(&school_admin, &GuardianRef::SourcedId("p1".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sids(&p1), ["stu2"]);
    let hidden = s
        .guardian_detail(&school_admin, &GuardianRef::SourcedId("p3".into()))
        .await
        .unwrap();
    assert!(
        hidden.is_none(),
        "a guardian of another school's student is not visible"
    );
    let by_id = s
        .guardian_detail(
            &school_admin,
            &GuardianRef::Id(guardian(s, district, "p3").await.guardian.id),
        )
        .await
        .unwrap();
    assert!(by_id.is_none(), "not by id either");

    // The district administrator sees everyone; search and paging work on names and sourcedIds.
    let admin = scope_of(s, "admin@riverside.example.org").await;
    assert_eq!(
        names(s.students(&admin, &all()).await.unwrap()),
        ["stu1", "stu2", "stu3"]
    );
    let lee = PageRequest {
        search: Some("LEE".into()),
        ..all()
    };
    assert_eq!(
        names(s.students(&admin, &lee).await.unwrap()),
        ["stu1", "stu2"]
    );
    let by_sid = PageRequest {
        search: Some("stu3".into()),
        ..all()
    };
    assert_eq!(names(s.students(&admin, &by_sid).await.unwrap()), ["stu3"]);
    let wildcard = PageRequest {
        search: Some("%".into()),
        ..all()
    };
    assert!(
        s.students(&admin, &wildcard).await.unwrap().is_empty(),
        "% is a literal, not a wildcard"
    );
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .guardians(
                &admin,
                &PageRequest {
                    after,
                    limit: 3,
                    ..all()
                },
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|g| g.id);
        seen.extend(page.into_iter().map(|g| g.sourced_id.unwrap()));
    }
    seen.sort();
    assert_eq!(
        seen,
        ["p1", "p2", "p3", "p4"],
        "pages cover every guardian once"
    );
}

async fn staff_edit_contact_points_and_opt_outs_but_not_a_carrier_stop(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    let s = store.as_ref();
    let p2 = guardian(s, district, "p2").await;
    let id = GuardianId::from_uuid(p2.guardian.id);
    let at = now();

    let added = s
        .add_contact_point(district, id, Channel::Email, "tom@lee.example.org", at)
        .await
        .unwrap();
    assert_eq!((added.source.as_str(), added.active), ("staff", true));
    let off = s
        .set_contact_point_active(
            id,
            tidings_core::ContactPointId::from_uuid(added.id),
            false,
            at,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (off.active, off.inactive_reason.as_deref()),
        (false, Some("deactivated by staff"))
    );
    let again = s
        .add_contact_point(district, id, Channel::Email, "tom@lee.example.org", at)
        .await
        .unwrap();
    assert_eq!(
        (again.id, again.active),
        (added.id, true),
        "re-adding reactivates the same contact point"
    );

    let first = s
        .add_opt_out(district, id, Channel::Email, "staff", at)
        .await
        .unwrap();
    let second = s
        .add_opt_out(district, id, Channel::Email, "staff", at)
        .await
        .unwrap();
    assert_eq!(first.id, second.id, "opting out twice is one opt-out");
    let stop = s
        .add_opt_out(district, id, Channel::Sms, "carrier", at)
        .await
        .unwrap();
    assert_eq!(guardian(s, district, "p2").await.opt_outs.len(), 2);

    let revoked = s.revoke_opt_out(id, first.id, at).await.unwrap().unwrap();
    assert_eq!(revoked.source, "staff");
    let kept = s.revoke_opt_out(id, stop.id, at).await.unwrap().unwrap();
    assert_eq!(kept.source, "carrier");
    let remaining: Vec<_> = guardian(s, district, "p2")
        .await
        .opt_outs
        .into_iter()
        .map(|o| o.source)
        .collect();
    assert_eq!(
        remaining,
        ["carrier"],
        "only the guardian's START undoes a carrier STOP"
    );
}

async fn audiences_resolve_to_each_guardian_once_within_the_senders_scope(store: Arc<dyn Store>) {
    use tidings_core::audience::Audience;
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    let s = store.as_ref();
    let admin = scope_of(s, "admin@riverside.example.org").await;
    let teacher = scope_of(s, "pat.quinn@riverside.example.org").await;
    let sids = |members: Vec<tidings_core::audience::AudienceMember>| async move {
        let mut out = Vec::new();
        for m in members {
            let which = GuardianRef::Id(m.guardian_id);
            let detail = s
                .guardian_detail(&Scope::District(district), &which)
                .await
                .unwrap()
                .unwrap();
            out.push(detail.guardian.sourced_id.unwrap());
        }
        out.sort();
        out
    };
    let list = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let resolve = |scope: Scope, audience: Audience| async move {
        s.resolve_audience(&scope, &audience).await.unwrap()
    };

    let c1 = Audience {
        classes: list(&["c1"]),
        ..Audience::default()
    };
    assert_eq!(
        sids(resolve(admin, c1.clone()).await.unwrap()).await,
        ["p1", "p2", "p3", "p4"]
    );
    let siblings = Audience {
        students: list(&["stu1", "stu2"]),
        ..Audience::default()
    };
    assert_eq!(
        sids(resolve(admin, siblings).await.unwrap()).await,
        ["p1", "p2"],
        "Maria once for two children"
    );
    let school = Audience {
        schools: list(&["sch2"]),
        ..Audience::default()
    };
    assert_eq!(sids(resolve(admin, school).await.unwrap()).await, ["p1"]);
    let grade = Audience {
        grades: list(&["07"]),
        ..Audience::default()
    };
    assert_eq!(sids(resolve(admin, grade).await.unwrap()).await, ["p1"]);
    let everyone = Audience {
        district: true,
        ..Audience::default()
    };
    assert_eq!(
        sids(resolve(admin, everyone.clone()).await.unwrap()).await,
        ["p1", "p2", "p3", "p4"]
    );
    let p3 = guardian(s, district, "p3").await.guardian.id.to_string();
    let by_id = Audience {
        guardians: vec![p3],
        ..Audience::default()
    };
    assert_eq!(
        sids(resolve(admin, by_id).await.unwrap()).await,
        ["p3"],
        "ids work as well as sourcedIds"
    );

    let unknown = resolve(
        admin,
        Audience {
            classes: list(&["c1", "nope"]),
            ..Audience::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.unknown, ["classes:nope"]);

    // The teacher may message their class, and nothing beyond it.
    assert_eq!(
        sids(resolve(teacher, c1).await.unwrap()).await,
        ["p1", "p2", "p3", "p4"]
    );
    let beyond = Audience {
        classes: list(&["c2"]),
        students: list(&["stu2"]),
        ..everyone
    };
    let refused = resolve(teacher, beyond).await.unwrap_err();
    assert_eq!(
        refused.forbidden,
        ["district", "classes:c2", "students:stu2"]
    );
    assert!(refused.unknown.is_empty());

    let members = resolve(
        admin,
        Audience {
            guardians: list(&["p1"]),
            ..Audience::default()
        },
    )
    .await
    .unwrap();
    let kinds: Vec<_> = members[0]
        .contacts
        .iter()
        .map(|c| c.kind.as_str())
        .collect();
    assert_eq!(kinds, ["email", "sms"]);
}

/// A failed SIS export: users.csv with its header and no rows. Imported, it would
/// soft-delete every student, guardian and staff member.
async fn a_header_only_users_file_is_held_back_and_audited_until_forced(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    import_recorded(
        store.as_ref(),
        district,
        &files(USERS_ROWS),
        &guarded(false, false),
    )
    .await
    .unwrap();
    let before = store.directory_counts(district).await.unwrap();
    assert_eq!((before.students, before.guardians), (3, 4));

    let empty = files("");
    let held = import_recorded(store.as_ref(), district, &empty, &guarded(false, false)).await;
    let Err(ImportError::HeldBack { over, report }) = held else {
        panic!("held back, not {held:?}");
    };
    let counts: Vec<(&str, u64, u64)> = over
        .entities
        .iter()
        .map(|d| (d.entity, d.deleted, d.before))
        .collect();
    assert_eq!(
        counts,
        [("students", 3, 3), ("guardians", 4, 4), ("staff", 2, 3)],
        "the district administrator is live staff, and never deleted"
    );
    assert_eq!(over.max_delete_percent, 10);
    assert_eq!(
        report.entities["students"].deleted, 3,
        "the report says what it would do"
    );
    let message = ImportError::HeldBack { over, report }.to_string();
    assert!(message.contains("3 of 3 students"), "{message}");
    assert!(message.contains("force"), "{message}");
    assert_eq!(
        store.directory_counts(district).await.unwrap(),
        before,
        "nothing changed"
    );
    let audit = audit_actions(store.as_ref(), district).await;
    let (action, detail) = &audit[0];
    assert_eq!(action, "roster.import.held_back");
    assert_eq!(detail["over_delete_limit"]["entities"][0]["deleted"], 3);
    // Its history entry says it failed, and why (written after its rollback).
    let held_id: tidings_core::ImportId =
        serde_json::from_value(detail["import_id"].clone()).unwrap();
    let record = store
        .import_record(district, held_id)
        .await
        .unwrap()
        .expect("a failed import is in the history");
    assert_eq!(record.status, "failed");
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("3 of 3 students")),
        "{:?}",
        record.error
    );
    assert!(record.finished_at.is_some());

    // Forced, it goes ahead, and says so.
    let forced = import_recorded(store.as_ref(), district, &empty, &guarded(true, false))
        .await
        .unwrap();
    assert!(forced.forced);
    assert_eq!(forced.entities["students"].deleted, 3);
    assert!(forced.over_delete_limit.is_some());
    assert_eq!(store.directory_counts(district).await.unwrap().students, 0);
    let audit = audit_actions(store.as_ref(), district).await;
    let (action, detail) = &audit[0];
    assert_eq!(action, "roster.import");
    assert_eq!(detail["forced"], true);
    assert_eq!(
        detail["over_delete_limit"]["entities"][0]["entity"],
        "students"
    );
}

async fn a_dry_run_reports_what_it_would_do_and_changes_nothing(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    let first = import_recorded(
        store.as_ref(),
        district,
        &files(USERS_ROWS),
        &guarded(false, true),
    )
    .await
    .unwrap();
    assert!(first.dry_run);
    assert_eq!(first.entities["students"], counts(3, 0, 0, 0, 1, 0));
    assert_eq!(first.rejected.len(), 7, "{:?}", first.rejected);
    let empty = store.directory_counts(district).await.unwrap();
    assert_eq!((empty.schools, empty.students, empty.guardians), (0, 0, 0));

    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    let before = store.directory_counts(district).await.unwrap();
    // A dry run of the header-only export says it would be held back, and changes nothing.
    let dry = import_recorded(store.as_ref(), district, &files(""), &guarded(false, true))
        .await
        .unwrap();
    assert_eq!(dry.entities["students"].deleted, 3);
    let over = dry.over_delete_limit.expect("would be held back");
    assert_eq!(over.entities[0].entity, "students");
    assert_eq!(store.directory_counts(district).await.unwrap(), before);
    let audit = audit_actions(store.as_ref(), district).await;
    assert_eq!(audit[0].0, "roster.import.dry_run");
    // The import still works after a rolled-back one, and finds nothing to do.
    let again = import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    assert_eq!(again.entities["students"].unchanged, 3);
}

async fn a_first_import_is_never_held_back_and_counts_tobedeleted_rows_it_never_had_as_skipped(
    store: Arc<dyn Store>,
) {
    let district = district(store.as_ref()).await;
    // An SIS that lists the year's leavers as tobedeleted, imported into an empty district.
    let users = format!(
        "{USERS_ROWS}gone1,tobedeleted,2026-08-01T00:00:00Z,true,sch1,student,,,Old,Leaver,,,,,,,05,
gone2,tobedeleted,2026-08-01T00:00:00Z,true,sch1,parent,,,Old,Parent,,,,,,,,
"
    );
    let mut bundle = files(&users);
    bundle[1].1 = format!("{ORGS}sch9,tobedeleted,2026-08-01T00:00:00Z,Closed,school,109,d1\r\n");
    let report = import_recorded(store.as_ref(), district, &bundle, &guarded(false, false))
        .await
        .unwrap();
    let skipped = |entity: &str| {
        let c = &report.entities[entity];
        (c.deleted, c.unchanged, c.skipped)
    };
    assert_eq!(
        skipped("students"),
        (0, 0, 1),
        "never stored, so not unchanged"
    );
    assert_eq!(skipped("guardians"), (0, 0, 1));
    assert_eq!(skipped("schools"), (0, 0, 1));
    assert!(report.over_delete_limit.is_none());
}

async fn a_demographics_row_naming_an_unknown_user_is_reported(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    let mut bundle = files(USERS_ROWS);
    bundle[7].1 = format!(
        "{DEMOGRAPHICS}nobody,active,2026-08-01T00:00:00Z,2018-01-01,male\np1,active,2026-08-01T00:00:00Z,1980-01-01,female\n"
    );
    let report = import_dir(store.as_ref(), district, &bundle).await.unwrap();
    let demographics: Vec<(&str, u64, Option<&str>)> = report
        .rejected
        .iter()
        .filter(|r| r.file == "demographics.csv")
        .map(|r| (r.file, r.line, r.sourced_id.as_deref()))
        .collect();
    assert_eq!(demographics, [("demographics.csv", 3, Some("nobody"))]);
    let c = &report.entities["demographics"];
    assert_eq!((c.rejected, c.ignored), (1, 2), "checked, and not kept");
}

/// A generated value of `n` bytes that deflate cannot shrink much.
fn noise(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

async fn a_field_or_row_too_long_is_rejected_with_its_line_and_deletes_nothing(
    store: Arc<dyn Store>,
) {
    use tidings_core::roster::oneroster::{MAX_FIELD_BYTES, MAX_RECORD_BYTES};
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    let before = store.directory_counts(district).await.unwrap();

    // A given name over the field limit: that row is rejected, the rest go in.
    let long_name = noise(MAX_FIELD_BYTES + 1);
    let users = USERS_ROWS.replacen("Ben,Lee", &format!("{long_name},Lee"), 1);
    let report = import_dir(store.as_ref(), district, &files(&users))
        .await
        .unwrap();
    let problem = report
        .rejected
        .iter()
        .find(|r| r.file == "users.csv" && r.line == 3)
        .expect("stu2's row rejected");
    assert!(
        problem
            .reason
            .contains("\"givenName\" is longer than 64 KiB"),
        "{problem:?}"
    );
    assert_eq!(
        report.entities["students"].deleted, 0,
        "a row not read whole deletes no one"
    );

    // A row over the record limit (as a field of hundreds of megabytes would be): the
    // file stops there, with its line, and deletes nothing.
    let huge = noise(MAX_RECORD_BYTES as usize + 10);
    let users = USERS_ROWS.replacen("Maria,Lee", &format!("Maria,\"{huge}\""), 1);
    let report = import_dir(store.as_ref(), district, &files(&users))
        .await
        .unwrap();
    let problem = report
        .rejected
        .iter()
        .find(|r| r.file == "users.csv" && r.line == 6)
        .unwrap_or_else(|| panic!("p1's row rejected: {:?}", report.rejected));
    assert!(
        problem.reason.contains("longer than 1024 KiB"),
        "{problem:?}"
    );
    assert_eq!(
        report.rows_read["users.csv"], 4,
        "three students, then the row too long: {report:?}"
    );
    let after = store.directory_counts(district).await.unwrap();
    assert_eq!(
        (after.students, after.guardians, after.staff),
        (before.students, before.guardians, before.staff),
        "a file not read to its end deletes nothing"
    );
}

/// A NUL character, which PostgreSQL cannot store, rejects its row with file, line and
/// column on both stores; the rest goes in and the file deletes no one.
async fn a_nul_in_a_field_rejects_its_row_on_both_stores(store: Arc<dyn Store>) {
    let district = district(store.as_ref()).await;
    import_dir(store.as_ref(), district, &files(USERS_ROWS))
        .await
        .unwrap();
    let before = store.directory_counts(district).await.unwrap();
    let users = USERS_ROWS.replacen("Ben,Lee", "B\u{0}en,Lee", 1);
    let report = import_dir(store.as_ref(), district, &files(&users))
        .await
        .unwrap();
    let problem = report
        .rejected
        .iter()
        .find(|r| r.file == "users.csv" && r.line == 3)
        .unwrap_or_else(|| panic!("stu2's row rejected: {:?}", report.rejected));
    assert!(
        problem
            .reason
            .contains("\"givenName\" holds a NUL character"),
        "{problem:?}"
    );
    let after = store.directory_counts(district).await.unwrap();
    assert_eq!(
        (after.students, after.guardians, after.staff),
        (before.students, before.guardians, before.staff)
    );
}

/// A zip bomb: one field of tens of megabytes of the same byte, a few kilobytes zipped.
/// It is refused while unpacking, naming the file and line, and never unpacked whole.
#[test]
fn a_zip_that_unpacks_too_far_is_refused_with_its_file_and_line() {
    let mut users = format!("{USERS_HEADER}{}", USERS_ROWS.lines().next().unwrap());
    users.push('\n');
    users.push_str("stu9,active,2026-08-01T00:00:00Z,true,sch1,student,,,");
    users.push_str(&"A".repeat(20 * 1024 * 1024));
    users.push_str(",Lee,,,,,,,03,\n");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, body) in files("") {
        let body = if name == "users.csv" {
            users.clone()
        } else {
            body
        };
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(body.as_bytes()).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    assert!(bytes.len() < 100 * 1024, "{} bytes zipped", bytes.len());
    let error = Bundle::from_zip(std::io::Cursor::new(bytes)).expect_err("refused");
    let message = error.to_string();
    assert!(
        message.starts_with("users.csv line 3: unpacks to more than 100 times its compressed size"),
        "{message}"
    );

    // Each limit holds on its own, whatever the headers declare.
    let normal = |limits: &tidings_core::roster::ZipLimits| {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, body) in files(USERS_ROWS) {
            zip.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(body.as_bytes()).unwrap();
        }
        let bytes = zip.finish().unwrap().into_inner();
        Bundle::from_zip_limited(std::io::Cursor::new(bytes), limits).map(|_| ())
    };
    let defaults = tidings_core::roster::ZipLimits::default();
    assert!(normal(&defaults).is_ok(), "a normal bundle unpacks");
    let small_entries = tidings_core::roster::ZipLimits {
        entry_bytes: 1000,
        ..defaults
    };
    let message = normal(&small_entries).err().unwrap().to_string();
    assert!(message.contains("more than 1000 bytes"), "{message}");
    let small_total = tidings_core::roster::ZipLimits {
        total_bytes: 2000,
        ..defaults
    };
    let message = normal(&small_total).err().unwrap().to_string();
    assert!(message.contains("for the whole bundle"), "{message}");
}

/// The import, its history entry's success and its audit row are one transaction: when
/// the audit row cannot be written, nothing of the import is kept and its history says it
/// failed; once it can, the same bundle imports with its audit row.
async fn an_import_commits_with_its_history_and_audit_row_or_not_at_all(
    db: tidings_core::testing::TestDatabase,
) {
    let store = db.store().await;
    let district = district(store.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &files(USERS_ROWS));
    let bundle = Bundle::open(dir.path()).unwrap();
    let options = ImportOptions::default();
    let import = || {
        roster::import_recorded(
            store.as_ref(),
            district,
            None,
            &bundle,
            "test",
            &options,
            &|_| {},
        )
    };
    db.break_writes("audit_log", "INSERT").await;
    let error = import()
        .await
        .expect_err("the audit row could not be written");
    assert!(matches!(error, ImportError::Store(_)), "{error:?}");
    let directory = store.directory_counts(district).await.unwrap();
    assert_eq!(
        (directory.schools, directory.students, directory.guardians),
        (0, 0, 0),
        "nothing of the import was kept"
    );
    db.heal("audit_log", "INSERT").await;
    assert!(audit_actions(store.as_ref(), district).await.is_empty());

    let (id, report) = import().await.unwrap();
    let id = id.expect("a recorded import has an id");
    assert_eq!(report.entities["students"], counts(3, 0, 0, 0, 1, 0));
    let record = store.import_record(district, id).await.unwrap().unwrap();
    assert_eq!(record.status, "succeeded");
    assert!(record.report.is_some());
    let audit = audit_actions(store.as_ref(), district).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "roster.import");
    assert_eq!(audit[0].1["import_id"], serde_json::json!(id));
}
