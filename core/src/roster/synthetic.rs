//! A synthetic district as a OneRoster 1.1 bundle: fictional names, reserved example
//! email domains and 555-01xx numbers, households of siblings with one to three
//! guardians, some guardians with no phone or no email. Deterministic for a seed. The
//! demo district and the import benchmark are made with it.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct SyntheticDistrict {
    pub students: usize,
    pub schools: usize,
    pub seed: u64,
}

/// Rows written per file.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BundleStats {
    pub orgs: u64,
    pub users: u64,
    pub classes: u64,
    pub enrollments: u64,
    pub guardians: u64,
}

impl BundleStats {
    pub fn total_rows(&self) -> u64 {
        self.orgs + self.users + self.classes + self.enrollments
    }
}

/// SplitMix64: small, fast, and the same everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const GIVEN: &[&str] = &[
    "Ava", "Ben", "Chloe", "Diego", "Elena", "Farah", "Gabe", "Hana", "Isaac", "Jada", "Kai",
    "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tess", "Uma", "Victor",
    "Wren", "Yusuf", "Zoe",
];
const FAMILY: &[&str] = &[
    "Alvarez",
    "Brooks",
    "Chen",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Patel",
    "Quintero",
    "Rossi",
    "Silva",
    "Tanaka",
    "Usman",
    "Varga",
    "Whitfield",
    "Xu",
    "Yilmaz",
    "Zapata",
];
const SCHOOLS: &[&str] = &[
    "Maple Grove Elementary",
    "Cedar Ridge Middle",
    "Lakeview High",
    "Birch Hollow Elementary",
];
const AREA_CODES: &[&str] = &[
    "201", "202", "212", "305", "312", "415", "503", "617", "702", "808",
];
const DOMAINS: &[&str] = &["example.org", "example.net", "example.com"];

const DATE: &str = "2026-08-01T00:00:00Z";

/// Writes the bundle's CSV files into `dir`. Guardians number about as many as students
/// (households of one to three children with one to three guardians).
pub fn write_bundle(dir: &Path, spec: &SyntheticDistrict) -> io::Result<BundleStats> {
    write(dir, spec, None)
}

/// [`write_bundle`] with exactly `guardians` guardians (and exactly `spec.students`
/// students), for benchmarks sized in guardians: households keep their random make-up
/// while the running total stays within two of the share asked for, and the last
/// household takes up the rest.
pub fn write_bundle_with_guardians(
    dir: &Path,
    spec: &SyntheticDistrict,
    guardians: usize,
) -> io::Result<BundleStats> {
    write(dir, spec, Some(guardians))
}

/// How many guardians the household that brings the students to `students_after` gets,
/// when `exact` guardians are asked for: the random draw unless the running total would
/// stray more than two from its share, never more than are left, all that are left for
/// the last household.
fn steer(
    drawn: usize,
    guardian: usize,
    students_after: usize,
    spec_students: usize,
    exact: usize,
) -> usize {
    let left = exact.saturating_sub(guardian);
    if students_after >= spec_students {
        return left;
    }
    let share = (students_after as u128 * exact as u128 / spec_students.max(1) as u128) as usize;
    let stray = (guardian + drawn).abs_diff(share);
    let wanted = if stray > 2 {
        share.saturating_sub(guardian).clamp(1, 3)
    } else {
        drawn
    };
    wanted.min(left)
}

fn write(dir: &Path, spec: &SyntheticDistrict, exact: Option<usize>) -> io::Result<BundleStats> {
    let open = |name: &str| -> io::Result<csv::Writer<BufWriter<File>>> {
        Ok(csv::Writer::from_writer(BufWriter::with_capacity(
            256 * 1024,
            File::create(dir.join(name))?,
        )))
    };
    let mut rng = Rng(spec.seed);
    let mut stats = BundleStats::default();
    let schools = spec.schools.max(1);

    let mut manifest = open("manifest.csv")?;
    manifest.write_record(["propertyName", "value"])?;
    for (key, value) in [
        ("manifest.version", "1.0"),
        ("oneroster.version", "1.1"),
        ("file.academicSessions", "bulk"),
        ("file.classes", "bulk"),
        ("file.courses", "bulk"),
        ("file.demographics", "absent"),
        ("file.enrollments", "bulk"),
        ("file.orgs", "bulk"),
        ("file.users", "bulk"),
        ("source.systemName", "Tidings synthetic district"),
    ] {
        manifest.write_record([key, value])?;
    }
    manifest.flush()?;

    let mut orgs = open("orgs.csv")?;
    orgs.write_record([
        "sourcedId",
        "status",
        "dateLastModified",
        "name",
        "type",
        "identifier",
        "parentSourcedId",
    ])?;
    orgs.write_record([
        "district-1",
        "active",
        DATE,
        "Tidings Demo District",
        "district",
        "",
        "",
    ])?;
    stats.orgs += 1;
    for s in 0..schools {
        let name = match SCHOOLS.get(s) {
            Some(name) => (*name).to_owned(),
            None => format!("School {}", s + 1),
        };
        orgs.write_record([
            &format!("school-{s}"),
            "active",
            DATE,
            &name,
            "school",
            &format!("{}", 100 + s),
            "district-1",
        ])?;
        stats.orgs += 1;
    }
    orgs.flush()?;

    let mut sessions = open("academicSessions.csv")?;
    sessions.write_record([
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "type",
        "startDate",
        "endDate",
        "parentSourcedId",
        "schoolYear",
    ])?;
    sessions.write_record([
        "year-2027",
        "active",
        DATE,
        "2026-2027",
        "schoolYear",
        "2026-08-15",
        "2027-06-10",
        "",
        "2027",
    ])?;
    sessions.flush()?;
    let mut courses = open("courses.csv")?;
    courses.write_record([
        "sourcedId",
        "status",
        "dateLastModified",
        "schoolYearSourcedId",
        "title",
        "courseCode",
        "grades",
        "orgSourcedId",
        "subjects",
        "subjectCodes",
    ])?;
    for s in 0..schools {
        courses.write_record([
            &format!("homeroom-{s}"),
            "active",
            DATE,
            "year-2027",
            "Homeroom",
            "HR",
            "",
            &format!("school-{s}"),
            "",
            "",
        ])?;
    }
    courses.flush()?;

    let mut users = open("users.csv")?;
    users.write_record([
        "sourcedId",
        "status",
        "dateLastModified",
        "enabledUser",
        "orgSourcedIds",
        "role",
        "username",
        "userIds",
        "givenName",
        "familyName",
        "middleName",
        "identifier",
        "email",
        "sms",
        "phone",
        "agentSourcedIds",
        "grades",
        "password",
    ])?;
    let mut classes = open("classes.csv")?;
    classes.write_record([
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "grades",
        "courseSourcedId",
        "classCode",
        "classType",
        "location",
        "schoolSourcedId",
        "termSourcedIds",
        "subjects",
        "subjectCodes",
        "periods",
    ])?;
    let mut enrollments = open("enrollments.csv")?;
    enrollments.write_record([
        "sourcedId",
        "status",
        "dateLastModified",
        "classSourcedId",
        "schoolSourcedId",
        "userSourcedId",
        "role",
        "primary",
        "beginDate",
        "endDate",
    ])?;

    // One homeroom (and its teacher) per 25 students of a school.
    const CLASS_SIZE: usize = 25;
    let mut student = 0;
    let mut guardian = 0;
    let mut homerooms_open: Vec<(usize, usize)> = vec![(usize::MAX, CLASS_SIZE); schools];
    let mut class_count = 0;
    while student < spec.students {
        let family = rng.pick(FAMILY);
        let school = rng.below(schools);
        let children = (1 + rng.below(3)).min(spec.students - student);
        let guardians = if rng.chance(15) {
            1
        } else if rng.chance(10) {
            3
        } else {
            2
        };
        let guardians = match exact {
            Some(exact) => steer(
                guardians,
                guardian,
                student + children,
                spec.students,
                exact,
            ),
            None => guardians,
        };
        let child_ids: Vec<String> = (student..student + children)
            .map(|i| format!("student-{i}"))
            .collect();
        let guardian_ids: Vec<String> = (guardian..guardian + guardians)
            .map(|i| format!("guardian-{i}"))
            .collect();
        for (k, id) in child_ids.iter().enumerate() {
            let grade = format!("{:02}", 1 + (student + k) % 12);
            users.write_record([
                id,
                "active",
                DATE,
                "true",
                &format!("school-{school}"),
                "student",
                "",
                "",
                rng.pick(GIVEN),
                family,
                "",
                "",
                "",
                "",
                "",
                &guardian_ids.join(","),
                &grade,
                "",
            ])?;
            stats.users += 1;
            let (open_class, seats) = &mut homerooms_open[school];
            if *seats == CLASS_SIZE {
                *open_class = class_count;
                *seats = 0;
                class_count += 1;
            }
            *seats += 1;
            let class = *open_class;
            if *seats == 1 {
                let teacher = format!("teacher-{class}");
                let given = rng.pick(GIVEN);
                let family = rng.pick(FAMILY);
                let email = format!(
                    "{}.{}{}@staff.example.org",
                    given.to_lowercase(),
                    family.to_lowercase(),
                    class
                );
                users.write_record([
                    &teacher,
                    "active",
                    DATE,
                    "true",
                    &format!("school-{school}"),
                    "teacher",
                    "",
                    "",
                    given,
                    family,
                    "",
                    "",
                    &email,
                    "",
                    "",
                    "",
                    "",
                    "",
                ])?;
                stats.users += 1;
                classes.write_record([
                    &format!("class-{class}"),
                    "active",
                    DATE,
                    &format!("Homeroom {}", class + 1),
                    "",
                    &format!("homeroom-{school}"),
                    &format!("HR-{class}"),
                    "homeroom",
                    "",
                    &format!("school-{school}"),
                    "year-2027",
                    "",
                    "",
                    "",
                ])?;
                stats.classes += 1;
                enrollments.write_record([
                    &format!("enrollment-t{class}"),
                    "active",
                    DATE,
                    &format!("class-{class}"),
                    &format!("school-{school}"),
                    &teacher,
                    "teacher",
                    "true",
                    "",
                    "",
                ])?;
                stats.enrollments += 1;
            }
            enrollments.write_record([
                &format!("enrollment-{id}"),
                "active",
                DATE,
                &format!("class-{class}"),
                &format!("school-{school}"),
                id,
                "student",
                "false",
                "",
                "",
            ])?;
            stats.enrollments += 1;
        }
        for (k, id) in guardian_ids.iter().enumerate() {
            // A third guardian is a relative in another household, with their own name.
            let (role, family) = if k == 2 {
                ("relative", rng.pick(FAMILY))
            } else {
                (if k == 0 { "parent" } else { "guardian" }, family)
            };
            let given = rng.pick(GIVEN);
            let email = if rng.chance(85) {
                format!(
                    "{}.{}{}@{}",
                    given.to_lowercase(),
                    family.to_lowercase(),
                    guardian + k,
                    rng.pick(DOMAINS)
                )
            } else {
                String::new()
            };
            let phone = if rng.chance(80) {
                format!("({}) 555-01{:02}", rng.pick(AREA_CODES), rng.below(100))
            } else {
                String::new()
            };
            users.write_record([
                id,
                "active",
                DATE,
                "true",
                &format!("school-{school}"),
                role,
                "",
                "",
                given,
                family,
                "",
                "",
                &email,
                &phone,
                "",
                &child_ids.join(","),
                "",
                "",
            ])?;
            stats.users += 1;
            stats.guardians += 1;
        }
        student += children;
        guardian += guardians;
    }
    users.flush()?;
    classes.flush()?;
    enrollments.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roles(dir: &Path) -> (usize, usize) {
        let mut users = csv::Reader::from_path(dir.join("users.csv")).unwrap();
        let (mut students, mut guardians) = (0, 0);
        for record in users.records() {
            match &record.unwrap()[5] {
                "student" => students += 1,
                "parent" | "guardian" | "relative" => guardians += 1,
                _ => {}
            }
        }
        (students, guardians)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Asked for N guardians, the bundle has exactly N, and exactly the students asked.
        #[test]
        fn a_district_sized_in_guardians_has_exactly_that_many(
            students in 1usize..400,
            ratio in 0.5f64..1.5,
            seed in any::<u64>(),
        ) {
            let guardians = ((students as f64 * ratio) as usize).max(1);
            let dir = tempfile::tempdir().unwrap();
            let spec = SyntheticDistrict { students, schools: 2, seed };
            let stats = write_bundle_with_guardians(dir.path(), &spec, guardians).unwrap();
            prop_assert_eq!(stats.guardians as usize, guardians);
            prop_assert_eq!(roles(dir.path()), (students, guardians));
        }
    }

    #[test]
    fn a_hundred_thousand_guardians_are_a_hundred_thousand() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SyntheticDistrict {
            students: 100_000,
            schools: 200,
            seed: 2,
        };
        let stats = write_bundle_with_guardians(dir.path(), &spec, 100_000).unwrap();
        assert_eq!(stats.guardians, 100_000);
        let plain = write_bundle(dir.path(), &spec).unwrap();
        assert_eq!(
            plain.guardians, 96_830,
            "about as many, as the plain generator makes"
        );
    }
}
