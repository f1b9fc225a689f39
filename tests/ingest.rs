//! The batch processor through the real gateway: files put with the real `sftp` into ingest
//! folders, receipts and reports read back the same way.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Gateway, upn, wait_until};

const REGISTER_HEADER: &str =
    "date,start,end,course,upn,surname,forename,status,contribution,dfe_code\n";

fn put(g: &Gateway, user: &str, name: &str, content: &str, folder: &str) -> common::Run {
    let f = g.file(name, content.as_bytes());
    g.sftp(user, &format!("put {} {folder}/{name}\n", f.display()))
}

fn read(g: &Gateway, user: &str, path: &str) -> String {
    let dest = g.path(&format!("read-{}", common::rand_suffix()));
    g.sftp_ok(user, &format!("get \"{path}\" {}\n", dest.display()));
    std::fs::read_to_string(dest).unwrap()
}

fn receipts(g: &Gateway, user: &str, folder: &str) -> Vec<String> {
    g.sftp_ok(user, &format!("ls -1 {folder}\n"))
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .map(|l| l.trim().rsplit('/').next().unwrap_or("").to_string())
        .collect()
}

crate::on_both_backends! {
    fn register_rows_are_applied_rejected_and_receipted() {
        let g = Gateway::start();
        let (a, b) = (upn(1), upn(2));
        g.enrol("school-a", &[&a, &b]);
        g.place("prov-a", "Motor Vehicle L1", &[&a, &b]);
        let text = format!(
            "{REGISTER_HEADER}\
             2026-11-23,09:00,12:00,Motor Vehicle L1,{a},Taylor,Sam,present,1,/\n\
             2026-11-23,09:00,12:00,Motor Vehicle L1,{b},Jones,Ali,authorised_absence,,\n\
             23/11/2026,13:00,15:00,Motor Vehicle L1,{b},Jones,Ali,unexplained_absence,,N\n\
             2026-11-24,09:00,12:00,Motor Vehicle L1,A801200005001,Bad,Upn,present,,\n"
        );
        let r = put(&g, "prov-a-user", "reg-1.csv", &text, "/registers");
        assert!(r.ok, "row problems never refuse the file: {}", r.all());

        let names = receipts(&g, "prov-a-user", "/receipts");
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with("-reg-1.csv.txt"), "{names:?}");
        let receipt = read(&g, "prov-a-user", &format!("/receipts/{}", names[0]));
        assert!(
            receipt.contains("2 accepted (0 amended an earlier mark), 2 rejected"),
            "{receipt}"
        );
        assert!(
            receipt.contains(
                "row 3: REJECTED: status `authorised_absence` is not allowed from a provider"
            ),
            "{receipt}"
        );
        assert!(
            receipt.contains("row 5: REJECTED: UPN `A801200005001` has a wrong check letter"),
            "{receipt}"
        );
        // The hub sees the receipt too, and the raw file in its inbox.
        let hub_copy = read(&g, "cap-user", &format!("/receipts/prov-a/{}", names[0]));
        assert_eq!(hub_copy, receipt);
        assert!(
            g.sftp_ok("cap-user", "ls -1 /inbox/prov-a\n")
                .contains("reg-1.csv")
        );
        // Another provider sees neither.
        assert!(receipts(&g, "prov-b-user", "/receipts").is_empty());

        // The names come from the school's roster, never from the register.
        let registers = read(&g, "prov-a-user", "/reports/registers.csv");
        assert_eq!(registers.lines().count(), 3, "{registers}");
        assert!(registers.contains(&format!(
            "{b},Surname1,Forename1,school-a,prov-a,Motor Vehicle L1,2026-11-23,13:00,15:00,unexplained_absence"
        )), "{registers}");
        assert!(!registers.contains("Jones") && !registers.contains("Taylor"), "{registers}");
        assert!(!read(&g, "prov-b-user", "/reports/registers.csv").contains(&a));
    }

    /// A provider without a placement probes a UPN the gateway knows and one it does not: the
    /// receipts read the same, nothing is stored, and no report shows either learner.
    fn a_provider_cannot_tell_a_known_upn_from_an_unknown_one() {
        let g = Gateway::start();
        let (known, unknown) = (upn(3), upn(4));
        g.enrol("school-a", &[&known]);
        g.place("prov-a", "Motor Vehicle L1", &[&known]);
        let probe = |u: &str, file: &str| {
            let text = format!(
                "{REGISTER_HEADER}2026-11-23,09:00,12:00,Motor Vehicle L1,{u},Probe,Probe,present,,\n"
            );
            assert!(put(&g, "prov-b-user", file, &text, "/registers").ok);
            let name = receipts(&g, "prov-b-user", "/receipts")
                .into_iter()
                .find(|n| n.ends_with(&format!("-{file}.txt")))
                .unwrap();
            let receipt = read(&g, "prov-b-user", &format!("/receipts/{name}"));
            let rows: Vec<String> = receipt
                .lines()
                .filter(|l| l.starts_with("row ") || l.starts_with("Result:"))
                .map(|l| l.replace(u, "UPN"))
                .collect();
            rows
        };
        let a = probe(&known, "probe-known.csv");
        let b = probe(&unknown, "probe-unknown.csv");
        assert_eq!(a, b, "the two receipts must not differ");
        assert!(
            a.iter().any(|l| l.contains(
                "row 2: REJECTED: no placement of this learner with prov-b on this course (Motor Vehicle L1) on 2026-11-23"
            )),
            "{a:?}"
        );
        assert_eq!(g.sql("SELECT COUNT(*) FROM marks").trim(), "0");
        assert_eq!(
            g.sql(&format!("SELECT COUNT(*) FROM learners WHERE upn = '{unknown}'")).trim(),
            "0",
            "a register creates no learner"
        );
        for report in ["training-records.csv", "registers.csv"] {
            let text = read(&g, "prov-b-user", &format!("/reports/{report}"));
            assert!(!text.contains(&known) && !text.contains("Surname0"), "{report}: {text}");
        }
        // The placed provider's register of the same row is accepted.
        let text = format!(
            "{REGISTER_HEADER}2026-11-23,09:00,12:00,Motor Vehicle L1,{known},T,S,present,,\n"
        );
        assert!(put(&g, "prov-a-user", "ok.csv", &text, "/registers").ok);
        assert_eq!(g.sql("SELECT COUNT(*) FROM marks").trim(), "1");
    }

    /// A receipt's listed size is its size in bytes, for the sender and for the hub's copy.
    fn receipts_are_listed_with_their_size_in_bytes() {
        let g = Gateway::start();
        let text = format!("{REGISTER_HEADER}2026-11-23,09:00,12:00,Café Ünit,{},T,S,present,,\n", upn(5));
        assert!(put(&g, "prov-a-user", "café.csv", &text, "/registers").ok);
        for (user, folder) in [("prov-a-user", "/receipts"), ("cap-user", "/receipts/prov-a")] {
            let listing = g.sftp_ok(user, &format!("ls -l {folder}\n"));
            let line = listing.lines().find(|l| l.contains("café.csv")).unwrap();
            let listed: usize = line.split_whitespace().nth(4).unwrap().parse().unwrap();
            let name = line.split_whitespace().last().unwrap().rsplit('/').next().unwrap();
            let body = read(&g, user, &format!("{folder}/{name}"));
            assert!(body.contains("Café Ünit"), "{body}");
            assert_eq!(listed, body.len(), "{user}: {line}");
        }
    }

    fn unreadable_file_is_refused_at_close_but_kept_and_receipted() {
        let g = Gateway::start();
        let r = put(
            &g,
            "prov-a-user",
            "broken.csv",
            "date,start,course,upn\n2026-11-23,09:00,MV,X\n",
            "/registers",
        );
        assert!(!r.ok, "the upload must fail for an unattended script");
        let log = g.log();
        assert!(log.contains("transfer committed"), "the raw file is kept");
        assert!(
            g.sftp_ok("cap-user", "ls -1 /inbox/prov-a\n")
                .contains("broken.csv")
        );
        let names = receipts(&g, "prov-a-user", "/receipts");
        let receipt = read(&g, "prov-a-user", &format!("/receipts/{}", names[0]));
        assert!(receipt.contains("NOT APPLIED"), "{receipt}");
        assert!(
            receipt.contains("required columns missing: end, surname, forename, status"),
            "{receipt}"
        );

        // Not UTF-8 (a spreadsheet saved as Windows-1252).
        let f = g.file("latin1.csv", b"date,start,end,course,upn,surname,forename,status\n2026-11-23,09:00,12:00,MV,X,M\xfcller,A,present\n");
        let r = g.sftp(
            "prov-a-user",
            &format!("put {} /registers/latin1.csv\n", f.display()),
        );
        assert!(!r.ok);
        // A YAML syntax error in a form.
        let r = put(
            &g,
            "school-a-user",
            "w.yaml",
            "upn: [unclosed\n",
            "/withdrawals",
        );
        assert!(!r.ok);
        assert_eq!(g.sql("SELECT COUNT(*) FROM marks").trim(), "0");
    }

    fn amendments_keep_history_and_identical_files_apply_once() {
        let g = Gateway::start();
        let a = upn(7);
        g.enrol("school-a", &[&a]);
        g.place("prov-a", "MV", &[&a]);
        let first = format!(
            "{REGISTER_HEADER}2026-11-23,09:00,12:00,MV,{a},Taylor,Sam,unexplained_absence,,\n"
        );
        let second = format!("{REGISTER_HEADER}2026-11-23,09:00,12:00,MV,{a},Taylor,Sam,late,0,L\n");
        assert!(put(&g, "prov-a-user", "r1.csv", &first, "/registers").ok);
        assert!(put(&g, "prov-a-user", "r2.csv", &second, "/registers").ok);
        // The same bytes again, under another name.
        assert!(put(&g, "prov-a-user", "r2-again.csv", &second, "/registers").ok);
        let registers = read(&g, "cap-user", "/reports/registers.csv");
        let rows: Vec<&str> = registers.lines().skip(1).collect();
        assert_eq!(rows.len(), 2, "one amendment, no duplicate: {registers}");
        assert!(
            rows.iter()
                .any(|r| r.contains("unexplained_absence") && r.contains(",1,no,no,register")),
            "{registers}"
        );
        assert!(
            rows.iter()
                .any(|r| r.contains(",late,") && r.contains(",2,yes,yes,register")),
            "{registers}"
        );
        let names = receipts(&g, "prov-a-user", "/receipts");
        let again = names.iter().find(|n| n.contains("r2-again")).unwrap();
        let receipt = read(&g, "prov-a-user", &format!("/receipts/{again}"));
        assert!(
            receipt.contains("ALREADY APPLIED") && receipt.contains("r2.csv"),
            "{receipt}"
        );
        let r2 = names.iter().find(|n| n.ends_with("-r2.csv.txt")).unwrap();
        assert!(
            read(&g, "prov-a-user", &format!("/receipts/{r2}")).contains("(1 amended an earlier mark)")
        );
    }

    /// A register large enough to be parsed on several threads and staged in several statements,
    /// amending marks of an earlier file and naming some lessons twice: every row is a version,
    /// the last one current, and nothing is counted twice.
    fn large_register_with_amendments_and_repeated_lessons() {
        let g = Gateway::start();
        let day = |i: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 1, 5).unwrap() + chrono::Days::new(u64::from(i))
        };
        // A long note makes the second file larger than the 1 MiB from which files are parsed
        // on several threads.
        let header = "date,start,end,course,upn,surname,forename,status,note\n";
        let note = "n".repeat(120);
        let line = |i: u32, status: &str| {
            format!(
                "{},09:00,12:00,Course,{},T,S,{status},{note}\n",
                day(i / 200),
                upn(300 + i % 200)
            )
        };
        let learners: Vec<String> = (300..500).map(upn).collect();
        let learners: Vec<&str> = learners.iter().map(String::as_str).collect();
        g.enrol("school-a", &learners);
        g.place("prov-a", "Course", &learners);
        // First file: 6,000 lessons.
        let mut first = String::from(header);
        for i in 0..6_000 {
            first.push_str(&line(i, "present"));
        }
        assert!(put(&g, "prov-a-user", "first.csv", &first, "/registers").ok);
        // Second file: 3,000 of them amended, 3,000 new lessons, and 50 of the new ones named a
        // second time later in the same file.
        let mut second = String::from(header);
        for i in 3_000..9_000 {
            second.push_str(&line(i, "late"));
        }
        for i in 6_000..6_050 {
            second.push_str(&line(i, "not_required"));
        }
        assert!(second.len() > 1 << 20);
        assert!(put(&g, "prov-a-user", "second.csv", &second, "/registers").ok);
        assert_eq!(g.sql("SELECT COUNT(*) FROM marks").trim(), "12050");
        assert_eq!(
            g.sql("SELECT COUNT(*) FROM marks WHERE current = 1").trim(),
            "9000"
        );
        assert_eq!(
            g.sql("SELECT status || ':' || COUNT(*) FROM marks WHERE current = 1 GROUP BY status ORDER BY status")
                .split_whitespace()
                .collect::<Vec<_>>(),
            vec!["late:5950", "not_required:50", "present:3000"]
        );
        assert_eq!(
            g.sql("SELECT version || ':' || COUNT(*) FROM marks WHERE current = 1 GROUP BY version ORDER BY version")
                .split_whitespace()
                .collect::<Vec<_>>(),
            vec!["1:5950", "2:3050"]
        );
        let names = receipts(&g, "prov-a-user", "/receipts");
        let r2 = names.iter().find(|n| n.ends_with("-second.csv.txt")).unwrap();
        let receipt = read(&g, "prov-a-user", &format!("/receipts/{r2}"));
        assert!(
            receipt.contains("6050 accepted (3050 amended an earlier mark), 0 rejected"),
            "{receipt}"
        );
    }

    fn school_roster_and_absence_decisions() {
        let g = Gateway::start();
        let (a, b) = (upn(11), upn(12));
        let roster = format!(
            "UPN,Legal Surname,Preferred Forename,DOB,Sex,NC Year Actual,SEN Provision\n\
             {a},Taylor,Sam,14/03/2011,F,9,K\n{b},Jones,Ali,2011-05-01,M,9,N\n"
        );
        assert!(put(&g, "school-a-user", "roster.csv", &roster, "/roster").ok);
        g.place("prov-a", "MV", &[&a, &b]);
        let reg = format!(
            "{REGISTER_HEADER}2026-11-23,09:00,12:00,MV,{a},Taylor,Sam,unexplained_absence,,N\n\
             2026-11-24,09:00,12:00,MV,{a},Taylor,Sam,unexplained_absence,,\n"
        );
        assert!(put(&g, "prov-a-user", "reg.csv", &reg, "/registers").ok);
        let pending = read(&g, "school-a-user", "/reports/unprocessed-absences.csv");
        assert_eq!(pending.lines().count(), 3, "{pending}");
        assert!(
            read(&g, "school-b-user", "/reports/unprocessed-absences.csv")
                .lines()
                .count()
                == 1
        );

        let decisions = format!(
            "upn,date,start,decision,dfe_code,note\n\
             {a},2026-11-23,09:00,authorised,M,Dentist\n\
             {a},2026-11-25,09:00,unauthorised,,\n\
             {b},2026-11-24,09:00,unauthorised,,\n"
        );
        assert!(
            put(
                &g,
                "school-a-user",
                "decisions.csv",
                &decisions,
                "/absences"
            )
            .ok
        );
        let names = receipts(&g, "school-a-user", "/receipts");
        let rec = names.iter().find(|n| n.contains("decisions")).unwrap();
        let receipt = read(&g, "school-a-user", &format!("/receipts/{rec}"));
        assert!(receipt.contains("1 accepted"), "{receipt}");
        assert!(
            receipt.contains("row 3: REJECTED: there is no unexplained absence"),
            "{receipt}"
        );
        assert!(
            receipt.contains("row 4: REJECTED: there is no unexplained absence"),
            "{receipt}"
        );
        let pending = read(&g, "school-a-user", "/reports/unprocessed-absences.csv");
        assert_eq!(
            pending.lines().count(),
            2,
            "one absence left to decide: {pending}"
        );
        // Another school cannot decide this school's learners.
        let other = format!("upn,date,start,decision\n{a},2026-11-24,09:00,authorised\n");
        assert!(put(&g, "school-b-user", "steal.csv", &other, "/absences").ok);
        let rec = receipts(&g, "school-b-user", "/receipts");
        let receipt = read(&g, "school-b-user", &format!("/receipts/{}", rec[0]));
        assert!(receipt.contains("not on your school's roster"), "{receipt}");
    }

    /// The worked example of SPEC §6 through a real upload and the real report.
    fn training_record_reproduces_the_worked_example() {
        let g = Gateway::start();
        let a = upn(21);
        g.enrol("school-a", &[&a]);
        g.place("prov-a", "Motor Vehicle L1", &[&a]);
        let mut text = String::from(REGISTER_HEADER);
        let day = |i: u32| {
            let d =
                chrono::NaiveDate::from_ymd_opt(2026, 1, 5).unwrap() + chrono::Days::new(u64::from(i));
            d.to_string()
        };
        let mut i = 0;
        let mut mark = |status: &str, contribution: &str| {
            text.push_str(&format!(
                "{},09:00,12:00,Motor Vehicle L1,{a},Taylor,Sam,{status},{contribution},\n",
                day(i)
            ));
            i += 1;
        };
        for _ in 0..4 {
            mark("present", "1");
        }
        mark("present", "-1");
        for _ in 0..170 {
            mark("present", "0");
        }
        for _ in 0..17 {
            mark("late", "0");
        }
        for _ in 0..6 {
            mark("unexplained_absence", "");
        }
        mark("not_required", "");
        assert!(put(&g, "prov-a-user", "year.csv", &text, "/registers").ok);
        let report = read(&g, "cap-user", "/reports/training-records.csv");
        let mut lines = report.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("registers_taken"), "198");
        assert_eq!(col("attended"), "192");
        assert_eq!(col("attended_pct"), "97.0");
        assert_eq!(col("present_pct"), "88.4");
        assert_eq!(col("late_pct"), "8.6");
        assert_eq!(col("unexplained_pct"), "3.0");
        let contributions: Vec<&str> = ["plus2", "plus1", "0", "minus1", "minus2"]
            .iter()
            .map(|c| col(&format!("contribution_{c}_pct")))
            .collect();
        assert_eq!(contributions, ["0.0", "2.1", "97.4", "0.5", "0.0"]);
        assert_eq!(col("contribution_balance"), "+3");
        assert_eq!(col("provider"), "prov-a");
        assert_eq!(col("start"), "2020-01-01", "the placement's start");
        assert_eq!(col("status"), "active");
        assert_eq!(col("first_mark"), "2026-01-05");
        assert_eq!(col("school"), "school-a");
    }

    fn referrals_and_withdrawals_get_references_and_deadlines() {
        let g = Gateway::start();
        let referral = format!(
            "tier: 2\nschool: {{ name: School A, urn: \"103725\" }}\n\
             student: {{ upn: {}, forename: Sam, surname: Taylor, date_of_birth: 2011-03-14 }}\n\
             parent_carer: {{ name: Pat Taylor, phone: 07700 900123 }}\n\
             safeguarding: {{ concerns: None known }}\nattendance: {{ percentage: 82.5 }}\n\
             behaviour: {{ summary: Disengaged }}\nacademic: {{ attainment: Grade 4 }}\n\
             provision: {{ requested_courses: [Motor Vehicle Level 1] }}\n\
             risk_assessment: {{ date_completed: {} }}\nhobby: fishing\n",
            upn(31),
            chrono::Utc::now().date_naive()
        );
        assert!(
            put(
                &g,
                "school-a-user",
                "referral.yaml",
                &referral,
                "/referrals"
            )
            .ok
        );
        let old = referral.replace(&chrono::Utc::now().date_naive().to_string(), "2020-01-01");
        assert!(put(&g, "school-a-user", "old-referral.yaml", &old, "/referrals").ok);
        let names = receipts(&g, "school-a-user", "/receipts");
        let year = chrono::Utc::now().format("%Y").to_string();
        let ok = read(
            &g,
            "school-a-user",
            &format!(
                "/receipts/{}",
                names
                    .iter()
                    .find(|n| n.ends_with("Z-referral.yaml.txt"))
                    .unwrap()
            ),
        );
        assert!(ok.contains(&format!("reference REF-{year}-000001")), "{ok}");
        let old = read(
            &g,
            "school-a-user",
            &format!(
                "/receipts/{}",
                names.iter().find(|n| n.contains("old-referral")).unwrap()
            ),
        );
        assert!(old.contains("more than three calendar months"), "{old}");
        let csv = read(&g, "cap-user", "/reports/referrals.csv");
        assert!(csv.contains("fishing"), "unknown fields are kept: {csv}");
        // Three referrals in one CSV make one notice with the count, so one message.
        let today = chrono::Utc::now().date_naive();
        let mut many = String::from(
            "tier,student.upn,student.forename,student.surname,student.date_of_birth,school.name,\
             parent_carer.name,parent_carer.phone,safeguarding.concerns,attendance.percentage,\
             behaviour.summary,academic.attainment,provision.requested_courses,risk_assessment.date_completed\n",
        );
        for n in 33..36 {
            many.push_str(&format!(
                "2,{},Sam,Taylor,14/03/2011,School A,Pat,0770,None,82.5,OK,G4,MV L1,{today}\n",
                upn(n)
            ));
        }
        assert!(put(&g, "school-a-user", "many.csv", &many, "/referrals").ok);
        let events = g.sql(
            "SELECT e.payload FROM events e JOIN uploads u ON u.id = e.upload_id \
             WHERE u.name = 'many.csv' AND e.kind = 'referral_received'",
        );
        assert_eq!(events.lines().count(), 1, "{events}");
        // Numbered on from the last reference of the year, one each.
        let names = receipts(&g, "school-a-user", "/receipts");
        let many = read(
            &g,
            "school-a-user",
            &format!("/receipts/{}", names.iter().find(|n| n.ends_with("-many.csv.txt")).unwrap()),
        );
        for n in 2..5 {
            assert!(many.contains(&format!("reference REF-{year}-00000{n}")), "{many}");
        }
        assert!(events.contains("\"count\":3"), "{events}");

        // A withdrawal needs an open placement of the learner with that provider on that course.
        g.place("prov-a", "MV", &[&upn(31)]);
        let withdrawal = format!(
            "{{\"upn\": \"{}\", \"course\": \"MV\", \"provider\": \"prov-a\", \"requested_last_day\": \"2026-12-18\", \
             \"reason\": \"College place\", \"impact_considered\": true, \"meeting_date\": \"2026-11-20\"}}",
            upn(31)
        );
        assert!(put(&g, "prov-a-user", "wd.json", &withdrawal, "/withdrawals").ok);
        let names = receipts(&g, "prov-a-user", "/receipts");
        let receipt = read(&g, "prov-a-user", &format!("/receipts/{}", names[0]));
        assert!(
            receipt.contains(&format!("reference WD-{year}-000001")),
            "{receipt}"
        );
        assert!(
            receipt.contains("the fifth working day after receipt"),
            "{receipt}"
        );
        // A provider cannot withdraw a learner from another provider's course, nor a school
        // another school's learner: the same words as for a UPN nobody knows.
        let refused = "no open placement of this learner with prov-a on this course (MV) that you may withdraw";
        assert!(put(&g, "prov-b-user", "wd.json", &withdrawal, "/withdrawals").ok);
        let names = receipts(&g, "prov-b-user", "/receipts");
        let receipt = read(&g, "prov-b-user", &format!("/receipts/{}", names[0]));
        assert!(receipt.contains(refused), "{receipt}");
        let school_form = withdrawal.replace(", \"meeting_date\": \"2026-11-20\"", "");
        assert!(put(&g, "school-b-user", "wd.json", &school_form, "/withdrawals").ok);
        let names = receipts(&g, "school-b-user", "/receipts");
        let receipt = read(&g, "school-b-user", &format!("/receipts/{}", names[0]));
        assert!(receipt.contains(refused), "{receipt}");
        let unknown = school_form.replace(&upn(31), &upn(39));
        assert!(put(&g, "school-a-user", "wd-unknown.json", &unknown, "/withdrawals").ok);
        let names = receipts(&g, "school-a-user", "/receipts");
        let name = names.iter().find(|n| n.contains("wd-unknown")).unwrap();
        let receipt = read(&g, "school-a-user", &format!("/receipts/{name}"));
        assert!(receipt.contains(refused), "{receipt}");
        // The home school sees the provider's request about its learner; school-b does not.
        assert!(read(&g, "school-a-user", "/reports/withdrawals.csv").contains("WD-"));
        assert_eq!(
            read(&g, "school-b-user", "/reports/withdrawals.csv").lines().count(),
            1
        );
        assert!(read(&g, "cap-user", "/reports/withdrawals.csv").contains("WD-"));
    }

    /// A one-off bank holiday from config moves a withdrawal's deadline by a working day.
    fn bank_holidays_from_config_move_the_withdrawal_deadline() {
        use apgate::domain::dates::Calendar;
        let day = |d: chrono::NaiveDate| d.format("%A %-d %B %Y").to_string();
        let today = chrono::Utc::now().date_naive();
        // The next working day after today (and after tomorrow, should the date turn meanwhile).
        let plain = Calendar::default();
        let extra: Vec<chrono::NaiveDate> = [today, today.succ_opt().unwrap()]
            .iter()
            .map(|d| plain.add_working_days(*d, 1))
            .collect();
        let g = Gateway::start_with(&format!(
            "bank_holidays: {{ extra: [\"{}\", \"{}\"] }}",
            extra[0], extra[1]
        ));
        let learner = upn(45);
        g.enrol("school-a", &[&learner]);
        g.place("prov-a", "MV", &[&learner]);
        let form = format!(
            "{{\"upn\": \"{learner}\", \"course\": \"MV\", \"provider\": \"prov-a\", \
             \"requested_last_day\": \"2026-12-18\", \"reason\": \"College place\", \"impact_considered\": true}}"
        );
        assert!(put(&g, "school-a-user", "wd.json", &form, "/withdrawals").ok);
        let names = receipts(&g, "school-a-user", "/receipts");
        let name = names.iter().find(|n| n.ends_with("-wd.json.txt")).unwrap();
        let receipt = read(&g, "school-a-user", &format!("/receipts/{name}"));
        let with = Calendar {
            extra: extra.clone(),
            cancelled: Vec::new(),
        };
        let expected: Vec<String> = [today, today.succ_opt().unwrap()]
            .iter()
            .map(|d| day(with.add_working_days(*d, 5)))
            .collect();
        assert!(
            expected.iter().any(|e| receipt.contains(&format!("process it by {e}"))),
            "{expected:?}: {receipt}"
        );
        assert!(
            !receipt.contains(&format!("process it by {}", day(plain.add_working_days(today, 5)))),
            "the extra day was not counted: {receipt}"
        );
    }

    fn cli_ingest_and_report() {
        let g = Gateway::start();
        g.enrol("school-a", &[&upn(41)]);
        g.place("prov-a", "MV", &[&upn(41)]);
        let f = g.file(
            "cli-reg.csv",
            format!(
                "{REGISTER_HEADER}2026-11-23,09:00,12:00,MV,{},T,S,present,,\n",
                upn(41)
            )
            .as_bytes(),
        );
        let out = g.cli_ok(&[
            "ingest",
            f.to_str().unwrap(),
            "--org",
            "prov-a",
            "--kind",
            "register",
        ]);
        assert!(out.contains("1 accepted"), "{out}");
        let bad = g.file("cli-bad.csv", b"nothing,useful\n");
        let r = g.cli(&[
            "ingest",
            bad.to_str().unwrap(),
            "--org",
            "prov-a",
            "--kind",
            "register",
        ]);
        assert!(!r.ok && r.stderr.contains("not applied"), "{}", r.all());
        let r = g.cli(&[
            "ingest",
            f.to_str().unwrap(),
            "--org",
            "school-a",
            "--kind",
            "register",
        ]);
        assert!(!r.ok, "schools do not send registers");
        let report = g.cli_ok(&["report", "registers", "--org", "prov-a"]);
        assert!(report.contains(&upn(41)), "{report}");
        let none = g.cli_ok(&["report", "registers.csv", "--org", "prov-b"]);
        assert_eq!(none.lines().count(), 1, "scoped: {none}");
        assert!(
            g.cli(&["report", "activity", "--org", "school-a"])
                .stderr
                .contains("no report")
        );
        let activity = g.cli_ok(&["report", "activity"]);
        assert!(
            activity.starts_with("day,organisation,logins"),
            "{activity}"
        );
    }

    /// kill -9 while a large register is being applied: after a restart the file is applied
    /// exactly once and receipted once.
    fn crash_during_ingest_resumes_exactly_once() {
        let mut g = Gateway::start();
        let rows = 60_000u32;
        let learners: Vec<String> = (100..600).map(upn).collect();
        let learners: Vec<&str> = learners.iter().map(String::as_str).collect();
        g.enrol("school-a", &learners);
        g.place("prov-a", "C", &learners);
        let mut text = String::with_capacity(rows as usize * 80);
        text.push_str(REGISTER_HEADER);
        for i in 0..rows {
            let d = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()
                + chrono::Days::new(u64::from(i / 500));
            text.push_str(&format!(
                "{d},09:00,12:00,C,{},T,S,present,0,\n",
                learners[(i % 500) as usize]
            ));
        }
        let f = g.file("big.csv", text.as_bytes());
        let batch = g.path("big-batch");
        std::fs::write(&batch, format!("put {} /registers/big.csv\n", f.display())).unwrap();
        let mut client = g
            .sftp_command("prov-a-user", &["-b", batch.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            "the upload to be committed",
            Duration::from_secs(60),
            || g.log().contains("transfer committed"),
        );
        g.stop_server(); // SIGKILL, mid-ingest (or just after)
        let _ = client.wait();
        g.start_server();
        // The roster and the placements have their receipts too.
        wait_until("the receipt", Duration::from_secs(120), || {
            g.sql("SELECT COUNT(*) FROM receipts").trim() == "3"
        });
        assert_eq!(
            g.sql("SELECT COUNT(*) FROM marks").trim(),
            rows.to_string()
        );
        assert_eq!(
            g.sql("SELECT COUNT(*) FROM ingest_jobs WHERE state = 'done'")
                .trim(),
            "3"
        );
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            g.sql("SELECT COUNT(*) FROM receipts").trim(),
            "3",
            "receipted once"
        );
    }

    /// Files written by local programs into a drop folder are taken once closed and stable,
    /// ingested, and removed only after they are committed; a restart picks up what arrived while
    /// the gateway was down.
    fn drop_folder_files_are_ingested_then_removed() {
        use std::io::Write;
        let folder = tempfile::tempdir().unwrap();
        let mut g = Gateway::start_with(&format!(
            "drop_dirs: [ {{ path: \"{}\", org: school-a, kind: roster }} ]",
            folder.path().display()
        ));
        let roster = format!(
            "upn,surname,forename,date_of_birth,gender,year_group\n{},Taylor,Sam,2011-03-14,F,9\n{},Jones,Ali,2011-05-01,M,9\n",
            upn(51),
            upn(52)
        );
        // Written in two parts with a pause, as a slow exporter would.
        let path = folder.path().join("roster-nightly.csv");
        let mut f = std::fs::File::create(&path).unwrap();
        let (a, b) = roster.split_at(roster.len() / 2);
        f.write_all(a.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        f.write_all(b.as_bytes()).unwrap();
        drop(f);
        std::fs::write(
            folder.path().join("ignored.csv.tmp"),
            b"still being written",
        )
        .unwrap();
        wait_until(
            "the drop-folder file to be taken",
            Duration::from_secs(20),
            || !path.exists(),
        );
        assert_eq!(
            g.sql("SELECT COUNT(*) FROM learners WHERE school_org_id IS NOT NULL")
                .trim(),
            "2"
        );
        let names = receipts(&g, "school-a-user", "/receipts");
        assert!(
            names.iter().any(|n| n.ends_with("-roster-nightly.csv.txt")),
            "{names:?}"
        );
        assert!(
            g.sftp_ok("cap-user", "ls -1 /inbox/school-a\n")
                .contains("roster-nightly.csv")
        );
        assert!(
            folder.path().join("ignored.csv.tmp").exists(),
            "temporary names are left alone"
        );

        // Arrives while the gateway is down.
        g.stop_server();
        let later = folder.path().join("roster-2.csv");
        std::fs::write(&later, roster.replace("Taylor", "Taylor-Smith")).unwrap();
        g.start_server();
        wait_until("the file left while down", Duration::from_secs(20), || {
            !later.exists()
        });
        let surname = g.sql(&format!(
            "SELECT surname FROM learners WHERE upn = '{}'",
            upn(51)
        ));
        assert_eq!(surname.trim(), "Taylor-Smith");
    }
}
