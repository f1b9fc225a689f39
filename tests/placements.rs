//! Placements and who may see a learner (SPEC §1, §4.0), through the real gateway: the hub's
//! placements file put with the real `sftp`, registers from placed and unplaced providers,
//! rosters that try to take another school's learner, a coordinator looking for DSL files, and
//! report cells that try to be formulas.

mod common;

use common::{Gateway, upn};

const REGISTER_HEADER: &str = "date,start,end,course,upn,surname,forename,status,note\n";

fn put(g: &Gateway, user: &str, name: &str, content: &str, folder: &str) -> common::Run {
    let f = g.file(name, content.as_bytes());
    g.sftp(user, &format!("put {} {folder}/{name}\n", f.display()))
}

fn read(g: &Gateway, user: &str, path: &str) -> String {
    let dest = g.path(&format!("read-{}", common::rand_suffix()));
    g.sftp_ok(user, &format!("get \"{path}\" {}\n", dest.display()));
    std::fs::read_to_string(dest).unwrap()
}

/// The newest receipt in `folder` whose name ends with `-<file>.txt`.
fn receipt(g: &Gateway, user: &str, folder: &str, file: &str) -> String {
    let listing = g.sftp_ok(user, &format!("ls -1 {folder}\n"));
    let name = listing
        .lines()
        .map(|l| l.trim().rsplit('/').next().unwrap_or("").to_string())
        .rfind(|n| n.ends_with(&format!("-{file}.txt")))
        .unwrap_or_else(|| panic!("no receipt for {file} in {listing}"));
    read(g, user, &format!("{folder}/{name}"))
}

/// The rows of a report that mention `upn`.
fn rows_of(report: &str, upn: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.contains(upn))
        .map(String::from)
        .collect()
}

crate::on_both_backends! {
    /// One learner, seen by a provider, the home school, another school, another provider and
    /// the hub, before a placement, while it is open and after it ended.
    fn what_each_organisation_sees_before_during_and_after_a_placement() {
        let g = Gateway::start();
        let learner = upn(61);
        g.enrol("school-a", &[&learner]);
        let register = |day: &str| {
            format!("{REGISTER_HEADER}{day},09:00,12:00,Motor Vehicle L1,{learner},X,Y,present,\n")
        };

        // Before: only the hub and the home school see the learner; a register is refused.
        for (user, sees) in [
            ("cap-user", false),
            ("school-a-user", false),
            ("prov-a-user", false),
        ] {
            let text = read(&g, user, "/reports/training-records.csv");
            assert_eq!(!rows_of(&text, &learner).is_empty(), sees, "{user}: {text}");
        }
        assert!(put(&g, "prov-a-user", "early.csv", &register("2026-09-14"), "/registers").ok);
        let early = receipt(&g, "prov-a-user", "/receipts", "early.csv");
        assert!(early.contains("0 accepted"), "{early}");

        // The hub places the learner with prov-a through /placements/ with the real client;
        // bad rows are rejected with their row numbers and reasons.
        let placements = format!(
            "upn,provider,course,start_date,end_date,cohort\n\
             {learner},prov-a,Motor Vehicle L1,2026-09-07,2026-10-16,2026/27\n\
             {learner},nobody,Motor Vehicle L1,2026-09-07,,\n\
             {unknown},prov-a,Motor Vehicle L1,2026-09-07,,\n\
             {learner},prov-a,Motor Vehicle L1,2026-09-07,2026-09-01,\n\
             {learner},school-a,Motor Vehicle L1,2026-09-07,,\n",
            unknown = upn(62)
        );
        let r = put(&g, "cap-user", "placements.csv", &placements, "/placements");
        assert!(r.ok, "{}", r.all());
        let rec = receipt(&g, "cap-user", "/receipts/cap", "placements.csv");
        assert!(rec.contains("1 accepted (0 amended an earlier mark), 4 rejected"), "{rec}");
        assert!(rec.contains("row 3: REJECTED: provider `nobody` is not a provider organisation"), "{rec}");
        assert!(rec.contains(&format!("row 4: REJECTED: learner {} is not known", upn(62))), "{rec}");
        assert!(rec.contains("row 5: REJECTED: end_date 2026-09-01 is before start_date 2026-09-07"), "{rec}");
        assert!(rec.contains("row 6: REJECTED: provider `school-a` is not a provider organisation"), "{rec}");
        assert!(g.sftp_ok("cap-user", "ls -1 /inbox/cap\n").contains("placements.csv"), "the raw file is kept");
        let outbox = g.sftp_ok("cap-user", "ls -1 /outbox\n");
        assert!(outbox.contains("school-a") && !outbox.lines().any(|l| l.trim().ends_with("/cap") || l.trim() == "cap"), "{outbox}");

        // During the placement (it ends 2026-10-16, so it is ended now): the register of a day
        // it covers is accepted (the very file refused before: a file none of whose rows were
        // applied is no duplicate); a day after its end is refused in the usual words.
        assert!(put(&g, "prov-a-user", "during.csv", &register("2026-09-14"), "/registers").ok);
        assert!(receipt(&g, "prov-a-user", "/receipts", "during.csv").contains("1 accepted"));
        assert!(put(&g, "prov-a-user", "after.csv", &register("2026-10-19"), "/registers").ok);
        let after = receipt(&g, "prov-a-user", "/receipts", "after.csv");
        assert!(
            after.contains("no placement of this learner with prov-a on this course (Motor Vehicle L1) on 2026-10-19"),
            "{after}"
        );
        let placements = read(&g, "cap-user", "/reports/placements.csv");
        assert!(
            placements.contains(&format!(
                "{learner},Surname0,Forename0,school-a,prov-a,Motor Vehicle L1,2026-09-07,2026-10-16,ended,2026/27"
            )),
            "{placements}"
        );
        // Who sees the placement's training record now.
        for (user, sees) in [
            ("cap-user", true),
            ("school-a-user", true),
            ("prov-a-user", true), // its own placement's records, after the end too
            ("school-b-user", false),
            ("prov-b-user", false),
        ] {
            let text = read(&g, user, "/reports/training-records.csv");
            let rows = rows_of(&text, &learner);
            assert_eq!(!rows.is_empty(), sees, "{user}: {text}");
            if sees {
                assert!(rows[0].contains(",2026-09-07,2026-10-16,ended,1,1,1,"), "{user}: {rows:?}");
            }
            let registers = read(&g, user, "/reports/registers.csv");
            assert_eq!(!rows_of(&registers, &learner).is_empty(), sees, "{user}: {registers}");
        }
        // Only the hub has placements.csv.
        assert!(!g.sftp("school-a-user", "get /reports/placements.csv /dev/null\n").ok);

        // Reopened by a later row for the same placement: the provider may register again.
        g.ingest_placements(
            &format!("upn,provider,course,start_date\n{learner},prov-a,Motor Vehicle L1,2026-09-07\n"),
            1,
        );
        assert!(put(&g, "prov-a-user", "reopened.csv", &register("2026-10-19"), "/registers").ok);
        assert!(receipt(&g, "prov-a-user", "/receipts", "reopened.csv").contains("1 accepted"));
        let text = read(&g, "prov-a-user", "/reports/training-records.csv");
        assert!(text.contains(",2026-09-07,,active,2,2,2,"), "{text}");
        assert_eq!(g.sql("SELECT COUNT(*) FROM placements").trim(), "1");
    }

    /// A school's roster cannot take a learner of another school; the school is not named to
    /// the sender, and the hub's copy of the receipt names both.
    fn a_roster_cannot_take_another_schools_learner() {
        let g = Gateway::start();
        let learner = upn(71);
        g.enrol("school-a", &[&learner]);
        let roster = format!(
            "upn,surname,forename,date_of_birth,gender,year_group\n\
             {learner},Stolen,Name,2011-03-14,F,10\n{},New,Learner,2011-03-14,M,10\n",
            upn(72)
        );
        assert!(put(&g, "school-b-user", "roster.csv", &roster, "/roster").ok);
        let mine = receipt(&g, "school-b-user", "/receipts", "roster.csv");
        assert!(
            mine.contains("row 2: REJECTED: this UPN is registered to another school; the hub has been told"),
            "{mine}"
        );
        assert!(!mine.contains("school-a"), "the holder is not named: {mine}");
        assert!(mine.contains("1 accepted"), "{mine}");
        let hub = receipt(&g, "cap-user", "/receipts/school-b", "roster.csv");
        assert!(
            hub.contains(&format!("row 2: for the hub only: {learner} is registered to school-a; school-b named it too")),
            "{hub}"
        );
        assert_eq!(
            g.sql(&format!("SELECT s.slug || ':' || l.surname FROM learners l JOIN orgs s ON s.id = l.school_org_id WHERE l.upn = '{learner}'")).trim(),
            "school-a:Surname0",
            "the learner stays where it was, names unchanged"
        );
        // The same words for a learner that has no home school (made from a register before
        // placements existed).
        g.sql(&format!(
            "INSERT INTO learners (upn, surname, forename, flagged, created_at, updated_at) \
             VALUES ('{}', 'Old', 'Row', 'created from a register', '2026-01-01', '2026-01-01')",
            upn(73)
        ));
        let orphan = format!(
            "upn,surname,forename,date_of_birth,gender,year_group\n{},Claim,Ed,2011-03-14,F,10\n",
            upn(73)
        );
        assert!(put(&g, "school-b-user", "claim.csv", &orphan, "/roster").ok);
        let claim = receipt(&g, "school-b-user", "/receipts", "claim.csv");
        assert!(claim.contains("this UPN is registered to another school"), "{claim}");
        assert_eq!(
            g.sql(&format!("SELECT COUNT(*) FROM learners WHERE upn = '{}' AND school_org_id IS NULL", upn(73))).trim(),
            "1"
        );
    }

    /// A coordinator-only user of a school sees none of its school's DSL transfers: not in
    /// /outbox/dsl/, not in transfers.csv, and cannot recall or rename them.
    fn a_coordinator_does_not_see_dsl_transfers() {
        let g = Gateway::start();
        g.add_user("school-a-coord", "school-a", &["coordinator"]);
        g.add_user("cap-coord", "cap", &["coordinator"]);
        let f = g.file("JS-concern.pdf", b"safeguarding");
        g.sftp_ok("school-a-user", &format!("put {} /outbox/dsl/\n", f.display()));
        let plan = g.file("plan.pdf", b"plan");
        g.sftp_ok("school-a-user", &format!("put {} /outbox/coordinator/\n", plan.display()));

        assert!(g.sftp_ok("school-a-user", "ls -1 /outbox/dsl\n").contains("JS-concern.pdf"));
        let listing = g.sftp_ok("school-a-coord", "ls -1 /outbox/dsl\n");
        assert!(!listing.contains("JS-concern"), "{listing}");
        assert!(!g.sftp("school-a-coord", "rm /outbox/dsl/JS-concern.pdf\n").ok);
        assert!(!g.sftp("school-a-coord", "rename /outbox/dsl/JS-concern.pdf /outbox/dsl/x.pdf\n").ok);
        assert_eq!(
            g.sql("SELECT COUNT(*) FROM uploads WHERE recalled_at IS NULL AND name = 'JS-concern.pdf'").trim(),
            "1",
            "still delivered"
        );
        for (user, sees_dsl) in [
            ("school-a-user", true),
            ("school-a-coord", false),
            ("cap-user", true),
            ("cap-coord", false),
        ] {
            let t = read(&g, user, "/reports/transfers.csv");
            assert_eq!(t.contains("JS-concern"), sees_dsl, "{user}: {t}");
            assert!(t.contains("plan.pdf"), "{user}: {t}");
        }
        // The DSL user still recalls it.
        g.sftp_ok("school-a-user", "rm /outbox/dsl/JS-concern.pdf\n");
        assert!(!g.sftp_ok("cap-user", "ls -1 /inbox/school-a\n").contains("JS-concern"));
    }

    /// Text from an upload that Excel would evaluate is written with a leading quote; figures
    /// stay numbers.
    fn report_cells_from_uploads_are_never_formulas() {
        let g = Gateway::start();
        let learner = upn(81);
        g.enrol("school-a", &[&learner]);
        g.place("prov-a", "=1+2", &[&learner]);
        let text = format!(
            "{REGISTER_HEADER}2026-11-23,09:00,12:00,=1+2,{learner},T,S,present,\"=HYPERLINK(\"\"http://127.0.0.1/x\"\")\"\n\
             2026-11-24,09:00,12:00,=1+2,{learner},T,S,present,@SUM(A1)\n"
        );
        assert!(put(&g, "prov-a-user", "reg.csv", &text, "/registers").ok);
        let registers = read(&g, "cap-user", "/reports/registers.csv");
        let rows = rows_of(&registers, &learner);
        assert_eq!(rows.len(), 2, "{registers}");
        assert!(rows[0].contains(",'=1+2,2026-11-23,"), "{}", rows[0]);
        assert!(rows[0].contains("\"'=HYPERLINK(\"\"http://127.0.0.1/x\"\")\""), "{}", rows[0]);
        assert!(rows[0].contains(",present,0,"), "the contribution stays a number: {}", rows[0]);
        assert!(rows[1].contains(",'@SUM(A1),"), "{}", rows[1]);
        let training = read(&g, "school-a-user", "/reports/training-records.csv");
        let row = rows_of(&training, &learner).remove(0);
        assert!(row.contains(",'=1+2,2020-01-01,,active,2,2,2,0,"), "{row}");
        assert!(!training.contains(",=") && !registers.contains(",@"), "{training}{registers}");
    }

    /// A database made by the previous release (migrations up to 0007, marks without
    /// placements) upgrades in place: each (learner, provider, course) with marks becomes a
    /// placement from its first mark, and every figure stays.
    fn a_database_of_the_previous_release_keeps_its_figures() {
        let g = Gateway::configured("");
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(apgate::db::create_as_of(&g.database_url(), 7))
            .unwrap();
        let (a, b) = (upn(91), upn(92));
        let t = "2026-10-01T08:00:00.000Z";
        // No ids written: PostgreSQL's identity columns then go on counting from them.
        let org = |slug: &str| format!("(SELECT id FROM orgs WHERE slug = '{slug}')");
        let learner = |u: &str| format!("(SELECT id FROM learners WHERE upn = '{u}')");
        let mark = |l: &str, day: &str, course: &str, status: &str, c: i32, row: i32| {
            format!(
                "INSERT INTO marks (provider_org_id, learner_id, date, start, end_time, course, status, \
                 contribution, version, current, source, upload_id, row_number, created_at) \
                 VALUES ({}, {}, '{day}', '09:00', '12:00', '{course}', '{status}', {c}, 1, 1, 'register', \
                 (SELECT id FROM uploads WHERE name = 'r.csv'), {row}, '{t}');",
                org("prov-a"),
                learner(l)
            )
        };
        let mut sql = format!(
            "INSERT INTO orgs (slug, kind, name, disabled, created_at) VALUES
                ('cap', 'hub', 'Hub', 0, '{t}'), ('school-a', 'school', 'A', 0, '{t}'),
                ('prov-a', 'provider', 'P', 0, '{t}'), ('prov-b', 'provider', 'Q', 0, '{t}');
             INSERT INTO learners (upn, surname, forename, school_org_id, created_at, updated_at) VALUES
                ('{a}', 'Taylor', 'Sam', {}, '{t}', '{t}');
             INSERT INTO learners (upn, surname, forename, flagged, created_at, updated_at) VALUES
                ('{b}', 'Jones', 'Ali', 'created from a register of prov-a', '{t}', '{t}');
             INSERT INTO uploads (sender_org_id, folder, name, recipient_role, ingest_kind, blob, size, sha256, created_at)
                VALUES ({}, 'registers', 'r.csv', 'coordinator', 'register', 'gone', 1, 'x', '{t}');",
            org("school-a"),
            org("prov-a")
        );
        for (l, day, course, status, c, row) in [
            (&a, "2026-10-05", "MV", "present", 1, 2),
            (&a, "2026-10-06", "MV", "present", 1, 3),
            (&a, "2026-10-07", "MV", "late", 1, 4),
            (&a, "2026-10-08", "MV", "unexplained_absence", 0, 5),
            (&a, "2026-10-12", "Art", "present", 0, 6),
            (&b, "2026-10-09", "MV", "present", 0, 7),
        ] {
            sql.push_str(&mark(l, day, course, status, c, row));
        }
        g.sql(&sql);
        let g = g.spawn();
        for (user, org) in [("cap-user", "cap"), ("school-a-user", "school-a"), ("prov-a-user", "prov-a"), ("prov-b-user", "prov-b")] {
            g.add_user(user, org, &["coordinator", "dsl"]);
        }
        assert_eq!(
            g.sql("SELECT p.course || ':' || p.start_date || ':' || COALESCE(p.end_date, 'open') FROM placements p ORDER BY p.learner_id, p.course")
                .split_whitespace()
                .collect::<Vec<_>>(),
            vec!["Art:2026-10-12:open", "MV:2026-10-05:open", "MV:2026-10-09:open"]
        );
        let hub = read(&g, "cap-user", "/reports/training-records.csv");
        let mv = rows_of(&hub, &a).into_iter().find(|r| r.contains(",MV,")).unwrap();
        assert!(
            mv.starts_with(&format!("Sam Taylor,{a},school-a,prov-a,MV,2026-10-05,,active,4,3,2,1,0,1,0,")),
            "{mv}"
        );
        assert!(mv.contains(",75.0,50.0,25.0,0.0,25.0,0.0,"), "{mv}");
        assert!(mv.ends_with(",+3,2026-10-05,0,0,0,0,0,0,,,"), "{mv}");
        // The school sees its learner's two placements; the learner without a school is the
        // hub's and its provider's only.
        let school = read(&g, "school-a-user", "/reports/training-records.csv");
        assert_eq!(school.lines().count(), 3, "{school}");
        assert!(!school.contains(&b));
        let provider = read(&g, "prov-a-user", "/reports/training-records.csv");
        assert_eq!(provider.lines().count(), 4, "{provider}");
        assert_eq!(read(&g, "prov-b-user", "/reports/training-records.csv").lines().count(), 1);
        // The migrated placement is open: the provider goes on sending registers.
        assert!(put(&g, "prov-a-user", "next.csv",
            &format!("{REGISTER_HEADER}2026-11-02,09:00,12:00,MV,{a},T,S,present,\n"), "/registers").ok);
        assert!(receipt(&g, "prov-a-user", "/receipts", "next.csv").contains("1 accepted"));
    }
}
