//! The rest of the training record (SPEC §4.6) through the real gateway: unit progress, tutor
//! appraisals, initial assessments, targets and notes put with the real `sftp`, amended, and read
//! back in every report by each kind of organisation.

mod common;

use common::{Gateway, upn};

fn put(g: &Gateway, user: &str, name: &str, content: &str, folder: &str) -> common::Run {
    let f = g.file(name, content.as_bytes());
    g.sftp(user, &format!("put {} {folder}/{name}\n", f.display()))
}

fn read(g: &Gateway, user: &str, path: &str) -> String {
    let dest = g.path(&format!("read-{}", common::rand_suffix()));
    g.sftp_ok(user, &format!("get \"{path}\" {}\n", dest.display()));
    std::fs::read_to_string(dest).unwrap()
}

fn receipt(g: &Gateway, user: &str, file: &str) -> String {
    let listing = g.sftp_ok(user, "ls -1 /receipts\n");
    let name = listing
        .lines()
        .map(|l| l.trim().rsplit('/').next().unwrap_or("").to_string())
        .rfind(|n| n.ends_with(&format!("-{file}.txt")))
        .unwrap_or_else(|| panic!("no receipt for {file} in {listing}"));
    read(g, user, &format!("/receipts/{name}"))
}

/// The value of `column` in the report's row that contains every one of `needles`.
fn cell(report: &str, needles: &[&str], column: &str) -> String {
    let mut lines = report.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = header
        .iter()
        .position(|h| *h == column)
        .unwrap_or_else(|| panic!("no column {column}: {header:?}"));
    let row = lines
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no row with {needles:?} in {report}"));
    row.split(',').nth(i).unwrap_or_default().to_string()
}

const REPORTS: [&str; 8] = [
    "training-records.csv",
    "learners.csv",
    "registers.csv",
    "progress.csv",
    "appraisals.csv",
    "assessments.csv",
    "targets.csv",
    "notes.csv",
];

crate::on_both_backends! {
    fn progress_appraisals_assessments_targets_and_notes() {
        let g = Gateway::start();
        let (a, unplaced, unknown) = (upn(101), upn(102), upn(103));
        let roster = format!(
            "upn,surname,forename,date_of_birth,gender,year_group,medical_flag,contact1_name,contact1_relationship,contact1_phone\n\
             {a},Taylor,Sam,2011-03-14,F,10,Asthma,Pat Taylor,Mother,07700 900123\n\
             {unplaced},Jones,Ali,2011-05-01,M,10,,,,\n"
        );
        assert!(put(&g, "school-a-user", "roster.csv", &roster, "/roster").ok);
        g.place("prov-a", "MV", &[&a]);
        let register = format!(
            "date,start,end,course,upn,surname,forename,status,note\n2026-11-23,09:00,12:00,MV,{a},T,S,present,Brought own tools\n"
        );
        assert!(put(&g, "prov-a-user", "reg.csv", &register, "/registers").ok);

        // Unit progress; rows about a learner not placed with the sender, known or not, are
        // refused in the same words.
        let units = format!(
            "upn,course,unit,status,predicted_grade,comment\n\
             {a},MV,Unit 1,on_track,Merit,\n\
             {a},MV,Unit 2,completed,Pass,Signed off\n\
             {a},MV,Unit 3,behind,,\n\
             {unplaced},MV,Unit 1,on_track,,\n\
             {unknown},MV,Unit 1,on_track,,\n\
             {a},Art,Unit 1,on_track,,\n"
        );
        assert!(put(&g, "prov-a-user", "units.csv", &units, "/progress").ok);
        let r = receipt(&g, "prov-a-user", "units.csv");
        assert!(r.contains("3 accepted (0 amended an earlier mark), 3 rejected"), "{r}");
        let today = chrono::Utc::now().date_naive();
        let refused = format!("no placement of this learner with prov-a on this course (MV) on {today}");
        assert!(r.contains(&format!("row 5: REJECTED: {refused}")), "{r}");
        assert!(r.contains(&format!("row 6: REJECTED: {refused}")), "{r}");
        assert!(r.contains(&format!("row 7: REJECTED: no placement of this learner with prov-a on this course (Art) on {today}")), "{r}");

        // An amendment keeps the earlier version.
        let amend = format!("upn,course,unit,status\n{a},MV,Unit 1,completed\n");
        assert!(put(&g, "prov-a-user", "units-2.csv", &amend, "/progress").ok);
        assert!(receipt(&g, "prov-a-user", "units-2.csv").contains("1 accepted (1 amended an earlier mark)"));
        // The same bytes again apply nothing.
        assert!(put(&g, "prov-a-user", "units-2-again.csv", &amend, "/progress").ok);
        assert!(receipt(&g, "prov-a-user", "units-2-again.csv").contains("ALREADY APPLIED"));

        // Tutor appraisals, in the same folder: the header tells them apart.
        let appraisals = format!(
            "upn,course,date,aptitude,effort,comment\n\
             {a},MV,2026-11-20,B,2,Settling in\n\
             {a},MV,2026-11-27,A,1,=cmd()\n\
             {a},MV,2026-11-27,A,6,\n"
        );
        assert!(put(&g, "prov-a-user", "appraisals.csv", &appraisals, "/progress").ok);
        let r = receipt(&g, "prov-a-user", "appraisals.csv");
        assert!(r.contains("2 accepted") && r.contains("row 4: REJECTED: effort `6`"), "{r}");

        let assessments = format!(
            "upn,description,date,level,comments\n{a},Maths,2026-09-08,Entry 3,\n{unplaced},Maths,2026-09-08,,\n"
        );
        assert!(put(&g, "prov-a-user", "assess.csv", &assessments, "/assessments").ok);
        let r = receipt(&g, "prov-a-user", "assess.csv");
        assert!(r.contains(&format!("row 3: REJECTED: no placement of this learner with prov-a on {today}")), "{r}");
        let targets = format!(
            "upn,description,set_date,target_date,achieved\n{a},Punctuality,2026-09-08,2026-12-18,no\n"
        );
        assert!(put(&g, "prov-a-user", "targets.csv", &targets, "/targets").ok);
        let met = targets.replace(",no\n", ",yes\n").replace("achieved\n", "achieved,reviewed_date\n").replace(",yes\n", ",yes,2026-11-30\n");
        assert!(put(&g, "prov-a-user", "targets-2.csv", &met, "/targets").ok);
        assert!(receipt(&g, "prov-a-user", "targets-2.csv").contains("(1 amended an earlier mark)"));

        // Notes from the school, the provider and the hub; from another school or provider
        // they are refused without saying whether the learner exists.
        let note = |u: &str, subject: &str| format!("upn,subject,note\n{u},{subject},Collected by grandad on Fridays\n");
        assert!(put(&g, "school-a-user", "n.csv", &note(&a, "Pick-up"), "/notes").ok);
        assert!(put(&g, "prov-a-user", "n.csv", &note(&a, "Kit"), "/notes").ok);
        assert!(put(&g, "cap-user", "n.csv", &note(&a, "Review"), "/notes").ok);
        for user in ["school-b-user", "prov-b-user"] {
            for (u, file) in [(&a, "probe-known.csv"), (&unknown, "probe-unknown.csv")] {
                assert!(put(&g, user, file, &note(u, "Probe"), "/notes").ok);
                let r = receipt(&g, user, file);
                assert!(
                    r.contains("row 2: REJECTED: this UPN is not a learner of your school or one placed with you"),
                    "{user} {file}: {r}"
                );
            }
        }

        // What the reports say.
        let training = read(&g, "school-a-user", "/reports/training-records.csv");
        let col = |c: &str| cell(&training, &[&a, "prov-a"], c);
        assert_eq!(
            ["units_total", "units_not_started", "units_behind", "units_on_track", "units_under_assessment", "units_completed"]
                .map(col),
            ["3", "0", "1", "0", "0", "2"]
        );
        assert_eq!(
            ["latest_appraisal_date", "latest_aptitude", "latest_effort"].map(col),
            ["2026-11-27", "A", "1"]
        );
        let progress = read(&g, "cap-user", "/reports/progress.csv");
        assert_eq!(progress.lines().count(), 5, "four versions of three units: {progress}");
        assert_eq!(cell(&progress, &["Unit 1", ",on_track,"], "current"), "no");
        assert_eq!(cell(&progress, &["Unit 1", ",completed,"], "version"), "2");
        let appraisals = read(&g, "prov-a-user", "/reports/appraisals.csv");
        assert!(appraisals.contains(",'=cmd(),"), "defused: {appraisals}");
        let targets = read(&g, "school-a-user", "/reports/targets.csv");
        assert_eq!(cell(&targets, &["Punctuality", ",yes,"], "reviewed_date"), "2026-11-30");
        let learners = read(&g, "prov-a-user", "/reports/learners.csv");
        assert_eq!(cell(&learners, &[&a], "contact1_phone"), "07700 900123");
        assert_eq!(cell(&learners, &[&a], "medical_flag"), "Asthma");
        assert_eq!(cell(&learners, &[&a], "school_email"), "coord@school-a.example.org");
        assert!(!learners.contains(&unplaced), "only placed learners: {learners}");
        let notes = read(&g, "prov-a-user", "/reports/notes.csv");
        for who in ["school-a", "prov-a", "cap"] {
            assert!(notes.contains(&format!(",{who},{who}-user,")), "{who}: {notes}");
        }
        assert!(notes.contains(",register,MV 2026-11-23 09:00,Brought own tools,prov-a,"), "{notes}");

        // Every report, as each kind of organisation sees it while the placement is open.
        for (user, sees) in [
            ("cap-user", true),
            ("school-a-user", true),
            ("prov-a-user", true),
            ("school-b-user", false),
            ("prov-b-user", false),
        ] {
            for report in REPORTS {
                let text = read(&g, user, &format!("/reports/{report}"));
                assert_eq!(text.contains(&a), sees, "{user} {report}: {text}");
                assert!(!text.contains("Taylor") || sees, "{user} {report}: {text}");
            }
        }

        // The placement ends: the provider keeps its placement's records but no longer sees
        // the learner, its contacts or the notes of others.
        g.ingest_placements(&format!("upn,provider,course,start_date,end_date\n{a},prov-a,MV,2020-01-01,2021-07-16\n"), 1);
        let learners = read(&g, "prov-a-user", "/reports/learners.csv");
        assert!(!learners.contains(&a), "{learners}");
        assert!(read(&g, "prov-a-user", "/reports/progress.csv").contains(&a));
        let notes = read(&g, "prov-a-user", "/reports/notes.csv");
        assert!(notes.contains("Brought own tools"), "its register's notes stay: {notes}");
        assert!(
            notes.lines().skip(1).all(|l| !l.contains(",note,")),
            "the learner's other notes go: {notes}"
        );
        assert!(read(&g, "school-a-user", "/reports/learners.csv").contains("07700 900123"));
        // And may no longer write about the learner.
        assert!(put(&g, "prov-a-user", "late.csv", &format!("upn,course,unit,status\n{a},MV,Unit 4,on_track\n"), "/progress").ok);
        assert!(receipt(&g, "prov-a-user", "late.csv").contains(&refused));
        assert!(put(&g, "prov-a-user", "late-note.csv", &note(&a, "Late"), "/notes").ok);
        assert!(receipt(&g, "prov-a-user", "late-note.csv").contains("this UPN is not a learner of your school"));
    }
}
