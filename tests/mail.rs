//! Notifications end to end: real `sftp` uploads, the gateway's outbox, a real SMTP server on a
//! socket (Python's aiosmtpd), and what arrives there.

mod common;

use std::time::Duration;

use common::{Gateway, Mail, SmtpServer, free_port, smtp_config, upn, wait_until};

fn put(g: &Gateway, user: &str, name: &str, content: &str, folder: &str) {
    let f = g.file(name, content.as_bytes());
    g.sftp_ok(user, &format!("put {} {folder}/{name}\n", f.display()));
}

fn wait_for_count(smtp: &SmtpServer, n: usize, what: &str) -> Vec<Mail> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while smtp.messages().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; arrived: {:#?}",
            smtp.messages()
                .iter()
                .map(|m| (m.to.clone(), m.subject.clone()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing more (no duplicate) arrives after a few more sender passes.
    std::thread::sleep(Duration::from_secs(3));
    smtp.messages()
}

fn one<'a>(mail: &'a [Mail], subject_part: &str) -> &'a Mail {
    let found: Vec<&Mail> = mail
        .iter()
        .filter(|m| m.subject.contains(subject_part))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one message with `{subject_part}` expected in {:#?}",
        mail.iter().map(|m| (&m.to, &m.subject)).collect::<Vec<_>>()
    );
    found[0]
}

crate::on_both_backends! {
    fn every_event_kind_reaches_its_contacts_without_personal_data() {
        let smtp = SmtpServer::start(free_port());
        let g = Gateway::start_with(&smtp_config(smtp.port, ", dsl_escalate_minutes: 0.1"));
        // A hub DSL with an address of their own also hears about DSL files.
        let key = g.key_path("cap-dsl2");
        assert!(
            std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()
                .unwrap()
                .success()
        );
        let pubkey = format!("{}.pub", key.display());
        g.cli_ok(&[
            "user",
            "add",
            "--org",
            "cap",
            "--username",
            "cap-dsl2",
            "--role",
            "dsl",
            "--email",
            "jo.dsl@cap.example.org",
            "--key-file",
            &pubkey,
        ]);

        // A safeguarding file the hub DSL downloads at once is not escalated.
        put(
            &g,
            "prov-a-user",
            "AB-zqx-seen.pdf",
            "CONTENT-MARKER",
            "/outbox/dsl",
        );
        g.sftp_ok(
            "cap-dsl2",
            &format!(
                "get /inbox/prov-a/AB-zqx-seen.pdf {}\n",
                g.path("seen").display()
            ),
        );

        // Two ordinary transfers from one school: one grouped message to the hub coordinator.
        let plan = g.file("JS-zqx-plan.pdf", b"CONTENT-MARKER support plan");
        let ehcp = g.file("KT-zqx-ehcp.pdf", b"CONTENT-MARKER ehcp");
        g.sftp_ok(
            "school-a-user",
            &format!(
                "put {} /outbox/coordinator/\nput {} /outbox/coordinator/\n",
                plan.display(),
                ehcp.display()
            ),
        );
        // A safeguarding file: at once, high priority; not downloaded, so escalated.
        put(
            &g,
            "school-a-user",
            "JS-zqx-concern.pdf",
            "CONTENT-MARKER concern",
            "/outbox/dsl",
        );
        // The hub's safeguarding file to school B, not downloaded either.
        put(
            &g,
            "cap-user",
            "KT-zqx-note.pdf",
            "CONTENT-MARKER",
            "/outbox/school-b/dsl",
        );
        // The learner belongs to school A (roster: no message), a provider's register has an
        // unexplained absence and a bad row.
        let learner = upn(1);
        put(
            &g,
            "school-a-user",
            "zqx-roster.csv",
            &format!(
                "upn,surname,forename,date_of_birth,gender,year_group\n{learner},Zebedee,Quillon,2011-03-14,M,9\n"
            ),
            "/roster",
        );
        g.place("prov-a", "Motor Vehicle L1", &[&learner]);
        put(
            &g,
            "prov-a-user",
            "zqx-register.csv",
            &format!(
                "date,start,end,course,upn,surname,forename,status\n\
                 2026-11-23,09:00,12:00,Motor Vehicle L1,{learner},Zebedee,Quillon,unexplained_absence\n\
                 2026-11-23,13:00,15:00,Motor Vehicle L1,{learner},Zebedee,Quillon,authorised_absence\n"
            ),
            "/registers",
        );
        put(
            &g,
            "school-a-user",
            "zqx-referral.yaml",
            &format!(
                "tier: 2\nschool: {{ name: School A, urn: \"103725\" }}\n\
                 student: {{ upn: {learner}, forename: Quillon, surname: Zebedee, date_of_birth: 2011-03-14 }}\n\
                 parent_carer: {{ name: Pat Zebedee, phone: 07700 900123 }}\n\
                 safeguarding: {{ concerns: CONTENT-MARKER }}\nattendance: {{ percentage: 82.5 }}\n\
                 behaviour: {{ summary: Disengaged }}\nacademic: {{ attainment: Grade 4 }}\n\
                 provision: {{ requested_courses: [Motor Vehicle Level 1] }}\n\
                 risk_assessment: {{ date_completed: {} }}\n",
                chrono::Utc::now().date_naive()
            ),
            "/referrals",
        );
        put(
            &g,
            "prov-a-user",
            "zqx-withdrawal.json",
            &format!(
                "{{\"upn\": \"{learner}\", \"course\": \"Motor Vehicle L1\", \"provider\": \"prov-a\", \
                 \"requested_last_day\": \"2026-12-18\", \"reason\": \"CONTENT-MARKER\", \
                 \"impact_considered\": true, \"meeting_date\": \"2026-11-20\"}}"
            ),
            "/withdrawals",
        );

        let mail = wait_for_count(&smtp, 11, "eleven messages");
        assert_eq!(
            mail.len(),
            11,
            "{:#?}",
            mail.iter().map(|m| (&m.to, &m.subject)).collect::<Vec<_>>()
        );

        let grouped = one(&mail, "2 new files for the coordinator from Org school-a");
        assert_eq!(grouped.to, "coord@cap.example.org");
        assert!(
            grouped.body.contains("/inbox/school-a/"),
            "{}",
            grouped.body
        );

        let dsl = one(&mail, "URGENT: safeguarding file from Org school-a");
        assert!(dsl.to.contains("dsl@cap.example.org") && dsl.to.contains("jo.dsl@cap.example.org"));
        assert_eq!(dsl.priority, "1 (Highest)");
        assert!(dsl.raw.contains("Importance: high"));

        let escalation = one(&mail, "ESCALATION: a safeguarding file from Org school-a");
        assert_eq!(escalation.to, "coord@cap.example.org");
        assert!(escalation.body.contains("/inbox/school-a/"));
        assert_eq!(escalation.priority, "1 (Highest)");

        one(&mail, "URGENT: safeguarding file from Org prov-a");
        assert!(
            !mail
                .iter()
                .any(|m| m.subject.contains("ESCALATION") && m.body.contains("prov-a"))
        );

        let to_school = one(&mail, "URGENT: safeguarding file from Org cap");
        assert_eq!(to_school.to, "dsl@school-b.example.org");
        assert!(
            to_school.body.contains("Where to look: /inbox/\n"),
            "{}",
            to_school.body
        );
        let escalation = one(&mail, "ESCALATION: a safeguarding file for Org school-b");
        assert_eq!(escalation.to, "coord@cap.example.org");
        assert!(escalation.body.contains("/reports/transfers.csv"));

        let rejected = one(&mail, "were not accepted");
        assert_eq!(rejected.to, "coord@prov-a.example.org");
        assert!(rejected.body.contains("/receipts/"));

        let absences = one(&mail, "Unexplained absences to process from Org prov-a");
        assert_eq!(absences.to, "coord@school-a.example.org");
        assert!(absences.body.contains("1 unexplained absence of learners"));

        let referral = one(&mail, "New referral from Org school-a");
        assert_eq!(referral.to, "coord@cap.example.org");

        let withdrawals: Vec<&Mail> = mail
            .iter()
            .filter(|m| m.subject.contains("Withdrawal requested by Org prov-a"))
            .collect();
        let mut to: Vec<&str> = withdrawals.iter().map(|m| m.to.as_str()).collect();
        to.sort();
        assert_eq!(to, ["coord@cap.example.org", "coord@school-a.example.org"]);

        // The content rule, on every message as it arrived: no file names (they carry initials),
        // no learner's name or UPN, no file content.
        for m in &mail {
            let raw = m.raw.to_lowercase();
            for secret in ["zqx", "zebedee", "quillon", "content-marker", "07700"] {
                assert!(!raw.contains(secret), "`{secret}` in {}", m.raw);
            }
            assert!(!m.raw.contains(&learner), "UPN in {}", m.raw);
            assert!(m.body.contains("Where to look: /") || m.body.contains("Where to look (DSL): /"));
        }
        assert!(
            !g.log().contains("example.org"),
            "no address in the log:\n{}",
            g.log()
        );
    }

    /// Three referrals in one CSV are one message with the count, as the SMTP server receives it.
    fn the_referrals_of_one_file_are_one_message_with_the_count() {
        let smtp = SmtpServer::start(free_port());
        let g = Gateway::start_with(&smtp_config(smtp.port, ""));
        let today = chrono::Utc::now().date_naive();
        let mut csv = String::from(
            "tier,student.upn,student.forename,student.surname,student.date_of_birth,school.name,\
             parent_carer.name,parent_carer.phone,safeguarding.concerns,attendance.percentage,\
             behaviour.summary,academic.attainment,provision.requested_courses,risk_assessment.date_completed\n",
        );
        for n in 71..74 {
            csv.push_str(&format!(
                "2,{},Sam,Taylor,14/03/2011,School A,Pat,0770,None,82.5,OK,G4,MV L1,{today}\n",
                upn(n)
            ));
        }
        put(&g, "school-a-user", "referrals.csv", &csv, "/referrals");
        let mail = wait_for_count(&smtp, 1, "the referral message");
        let referral = one(&mail, "New referral from Org school-a");
        assert_eq!(mail.len(), 1, "one message for the file");
        assert!(referral.body.contains("sent 3 new referrals"), "{}", referral.body);
        assert!(referral.to.contains("coord@cap.example.org"), "{}", referral.to);
    }

    fn an_smtp_outage_delays_mail_and_loses_none() {
        let port = free_port();
        let g = Gateway::start_with(&smtp_config(port, ""));
        // No server: the upload still succeeds at once.
        put(&g, "school-a-user", "JS-urgent.pdf", "x", "/outbox/dsl");
        wait_until("a failed attempt", Duration::from_secs(30), || {
            g.sql("SELECT COUNT(*) FROM mail WHERE attempts >= 1 AND state = 'pending' AND last_error IS NOT NULL")
                .trim()
                == "1"
        });
        assert!(
            g.log().contains("not delivered, attempt 1 of 8"),
            "{}",
            g.log()
        );
        let smtp = SmtpServer::start(port);
        let mail = wait_for_count(&smtp, 1, "the delayed message");
        assert_eq!(mail.len(), 1, "sent exactly once");
        assert!(mail[0].subject.starts_with("URGENT"));
        assert_eq!(
            g.sql("SELECT state FROM mail").trim(),
            "sent",
            "the row is marked sent"
        );
    }

    fn a_message_that_keeps_failing_is_dead_and_logged() {
        let port = free_port();
        let g = Gateway::start_with(&smtp_config(port, ", max_attempts: 2"));
        // An organisation without any contact address.
        g.cli_ok(&[
            "org",
            "add",
            "--kind",
            "school",
            "--slug",
            "school-c",
            "--name",
            "Org school-c",
        ]);
        put(&g, "cap-user", "a.pdf", "x", "/outbox/school-c/dsl");
        put(&g, "school-a-user", "b.pdf", "x", "/outbox/dsl");
        wait_until("both messages dead", Duration::from_secs(40), || {
            g.sql("SELECT COUNT(*) FROM mail WHERE state = 'dead'")
                .trim()
                == "2"
        });
        let log = g.log();
        assert!(
            log.contains("is dead after 1 attempt(s): organisation `school-c` has no email address for its dsl contact"),
            "{log}"
        );
        assert!(log.contains("is dead after 2 attempt(s)"), "{log}");
        let errors = g.sql("SELECT last_error FROM mail ORDER BY id");
        assert!(
            errors.contains("SMTP server did not take the message"),
            "{errors}"
        );
        // A server that comes back later does not revive dead messages.
        let smtp = SmtpServer::start(port);
        std::thread::sleep(Duration::from_secs(3));
        assert!(smtp.messages().is_empty());
    }

    fn the_default_file_transport_writes_eml_files() {
        let g = Gateway::start();
        put(&g, "cap-user", "a.pdf", "x", "/outbox/school-b/dsl");
        let dir = g.path("data/mail");
        wait_until("an .eml file", Duration::from_secs(20), || {
            common::walk(&dir)
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "eml"))
        });
        let files = common::walk(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.contains("To: dsl@school-b.example.org"), "{text}");
        assert!(text.contains("X-Priority: 1 (Highest)"), "{text}");
        assert!(text.contains("Where to look: /inbox/"), "{text}");
    }

    fn malformed_addresses_are_refused_naming_the_key() {
        let g = Gateway::configured("mail: { from: \"not an address\" }");
        let r = g.cli(&["check-config"]);
        assert!(!r.ok);
        assert!(r.all().contains("key `mail.from`"), "{}", r.all());
        let g = Gateway::configured("");
        g.cli_ok(&["init"]);
        let r = g.cli(&[
            "org",
            "add",
            "--kind",
            "hub",
            "--slug",
            "cap",
            "--name",
            "Hub",
            "--coordinator-email",
            "nobody",
        ]);
        assert!(!r.ok);
        assert!(
            r.all()
                .contains("--coordinator-email `nobody` is not an email address"),
            "{}",
            r.all()
        );
    }

    /// STARTTLS and implicit TLS to a relay whose certificate a private CA signed
    /// (`mail.smtp.ca_file`); without that CA the certificate is refused and nothing is sent.
    fn tls_modes_deliver_to_a_relay_with_a_private_ca() {
        let certs = tempfile::tempdir().unwrap();
        let (ca, cert, key) = common::private_ca_and_server_cert(certs.path());
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        for (mode, args) in [
            ("starttls", ["--tlscert", cert.as_str(), "--tlskey", key.as_str()]),
            ("tls", ["--smtpscert", cert.as_str(), "--smtpskey", key.as_str()]),
        ] {
            let smtp = SmtpServer::start_with(free_port(), &args);
            let g = Gateway::start_with(&format!(
                "mail: {{ transport: smtp, smtp: {{ host: 127.0.0.1, port: {}, tls: {mode}, ca_file: \"{}\" }} }}",
                smtp.port,
                ca.display()
            ));
            put(&g, "school-a-user", "x.pdf", "x", "/outbox/dsl");
            let mail = wait_for_count(&smtp, 1, mode);
            assert_eq!(mail.len(), 1, "{mode}");
            assert!(mail[0].subject.starts_with("URGENT"), "{mode}");
        }
        // The system's CAs alone do not know this one: refused, kept for a retry, not sent.
        let smtp = SmtpServer::start_with(free_port(), &["--tlscert", &cert, "--tlskey", &key]);
        let g = Gateway::start_with(&smtp_config(smtp.port, "").replace("tls: none", "tls: starttls"));
        put(&g, "school-a-user", "x.pdf", "x", "/outbox/dsl");
        wait_until("a refused attempt", Duration::from_secs(30), || {
            g.sql("SELECT COUNT(*) FROM mail WHERE attempts >= 1 AND state = 'pending'").trim() == "1"
        });
        assert!(smtp.messages().is_empty());
    }

    /// SMTP credentials from the environment (never the config file), over STARTTLS: the right
    /// password delivers; the password never reaches the log; a wrong one delivers nothing.
    fn smtp_login_with_credentials_from_the_environment() {
        let certs = tempfile::tempdir().unwrap();
        let (ca, cert, key) = common::private_ca_and_server_cert(certs.path());
        let secret = "s3cret-Smtp-Pass";
        let smtp = SmtpServer::start_with_login(free_port(), "gateway", secret, &cert, &key);
        let config = format!(
            "mail: {{ transport: smtp, smtp: {{ host: 127.0.0.1, port: {}, tls: starttls, \
             username: gateway, ca_file: \"{}\" }} }}",
            smtp.port,
            ca.display()
        );
        let mut g = Gateway::start_with(&config);
        g.stop_server();
        g.env.push(("APGATE_MAIL__SMTP__PASSWORD".into(), secret.into()));
        g.start_server();
        put(&g, "school-a-user", "x.pdf", "x", "/outbox/dsl");
        let mail = wait_for_count(&smtp, 1, "the message sent after login");
        assert_eq!(mail.len(), 1);
        assert!(!g.log().contains(secret), "the password is never logged");

        let wrong = SmtpServer::start_with_login(free_port(), "gateway", "another", &cert, &key);
        let g = Gateway::start_with(&format!(
            "mail: {{ transport: smtp, smtp: {{ host: 127.0.0.1, port: {}, tls: starttls, \
             username: gateway, password: {secret}, ca_file: \"{}\" }} }}",
            wrong.port,
            ca.display()
        ));
        put(&g, "school-a-user", "x.pdf", "x", "/outbox/dsl");
        wait_until("a refused login", Duration::from_secs(30), || {
            g.sql("SELECT COUNT(*) FROM mail WHERE attempts >= 1 AND state = 'pending'").trim() == "1"
        });
        assert!(wrong.messages().is_empty());
        let error = g.sql("SELECT last_error FROM mail");
        assert!(error.contains("535"), "the server's refusal is kept: {error}");
        assert!(!g.log().contains(secret), "the password is never logged");
    }
}
