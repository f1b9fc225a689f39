//! Referral (SPEC §4.3) and withdrawal (SPEC §4.4) forms: YAML or JSON documents (and CSV for
//! referrals), parsed with limits because they come from outside.

use chrono::NaiveDate;
use serde_json::Value;

use super::table::{ColumnSpec, RowResult, Sheet, Unreadable, check_note_length};
use crate::domain::dates::{Calendar, older_than_three_months, parse_date};
use crate::domain::identifiers::check_upn;
use crate::domain::org::OrgKind;

/// Forms are small: anything larger is refused before parsing.
const MAX_FORM_BYTES: usize = 1024 * 1024;

/// Parses one YAML or JSON document with resource limits (depth, aliases, nodes, size).
pub fn parse_document(text: &str) -> Result<Value, Unreadable> {
    if text.len() > MAX_FORM_BYTES {
        return Err(Unreadable(format!(
            "the form is larger than {} KiB",
            MAX_FORM_BYTES / 1024
        )));
    }
    let trimmed = text.trim_start();
    let value: Value = if trimmed.starts_with('{') {
        serde_json::from_str(trimmed)
            .map_err(|e| Unreadable(format!("the JSON cannot be read: {e}")))?
    } else {
        let mut budget = serde_saphyr::Budget::default();
        budget.max_depth = 32;
        budget.max_aliases = 16;
        budget.max_anchors = 16;
        budget.max_documents = 1;
        budget.max_nodes = 20_000;
        budget.max_events = 100_000;
        budget.max_total_scalar_bytes = MAX_FORM_BYTES;
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget);
        serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| Unreadable(format!("the YAML cannot be read: {e}")))?
    };
    if !value.is_object() {
        return Err(Unreadable(
            "the form must be a set of fields (a YAML mapping or a JSON object)".into(),
        ));
    }
    Ok(value)
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |node, key| node.get(key))
}

/// A field as text (numbers and booleans too); `None` when missing, null or empty.
fn text(v: &Value, path: &str) -> Option<String> {
    match at(v, path)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn present(v: &Value, path: &str) -> bool {
    match at(v, path) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    }
}

fn require(v: &Value, fields: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = fields.iter().copied().filter(|f| !present(v, f)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing mandatory field{}: {}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        ))
    }
}

fn date_field(v: &Value, path: &str) -> Result<NaiveDate, String> {
    let t = text(v, path).ok_or_else(|| format!("{path} is missing"))?;
    parse_date(&t).map_err(|e| format!("{path}: {e}"))
}

fn bool_field(v: &Value, path: &str) -> Result<bool, String> {
    match at(v, path) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s))
            if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("yes") =>
        {
            Ok(true)
        }
        Some(Value::String(s))
            if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("no") =>
        {
            Ok(false)
        }
        _ => Err(format!("{path} must be true or false")),
    }
}

// ----- referrals -----

pub const REFERRAL_MANDATORY: &[&str] = &[
    "tier",
    "school",
    "student.upn",
    "student.forename",
    "student.surname",
    "student.date_of_birth",
    "parent_carer.name",
    "parent_carer.phone",
    "safeguarding",
    "attendance",
    "behaviour",
    "academic",
    "provision",
    "risk_assessment.date_completed",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Referral {
    pub tier: u8,
    pub upn: String,
    pub forename: String,
    pub surname: String,
    pub date_of_birth: NaiveDate,
    /// The whole form, unknown fields kept.
    pub form: Value,
}

/// Checks a referral received on `received`.
pub fn check_referral(form: Value, received: NaiveDate) -> Result<Referral, String> {
    require(&form, REFERRAL_MANDATORY)?;
    let tier = text(&form, "tier")
        .and_then(|t| t.parse::<u8>().ok())
        .filter(|t| (1..=3).contains(t))
        .ok_or("tier must be 1, 2 or 3")?;
    let upn = text(&form, "student.upn")
        .unwrap_or_default()
        .to_ascii_uppercase();
    check_upn(&upn).map_err(|e| format!("student.upn: {e}"))?;
    let dob = date_field(&form, "student.date_of_birth")?;
    let completed = date_field(&form, "risk_assessment.date_completed")?;
    if older_than_three_months(completed, received) {
        return Err(format!(
            "the risk assessment was completed on {completed}, more than three calendar months before the referral was received ({received}); complete a new one and send the referral again"
        ));
    }
    Ok(Referral {
        tier,
        forename: text(&form, "student.forename").unwrap_or_default(),
        surname: text(&form, "student.surname").unwrap_or_default(),
        upn,
        date_of_birth: dob,
        form,
    })
}

/// List fields of a referral written in CSV cells separated by `;`.
const LIST_FIELDS: &[&str] = &["provision.requested_courses", "provision.days"];

/// A referral CSV: one referral per row, headers like `student.upn`.
pub fn parse_referral_csv(
    text: &str,
    received: NaiveDate,
) -> Result<Vec<RowResult<Referral>>, Unreadable> {
    const COLUMNS: ColumnSpec = ColumnSpec {
        required: &["tier", "student.upn"],
        optional: &[],
        aliases: &[],
        loose: false,
    };
    // Every header becomes a field: read the header row ourselves for the names.
    let header: Vec<String> = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes())
        .headers()
        .map(|h| h.iter().map(|s| s.trim().to_lowercase()).collect())
        .map_err(|e| Unreadable(format!("the header row cannot be read: {e}")))?;
    Sheet::open(text, &COLUMNS)?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for record in reader.records() {
        let (row, result) = match record {
            Ok(rec) => {
                let row = rec.position().map_or(0, |p| p.line() as usize);
                if rec.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                let mut form = Value::Object(Default::default());
                for (name, cell) in header.iter().zip(rec.iter()) {
                    let cell = cell.trim();
                    if cell.is_empty() {
                        continue;
                    }
                    let value = if LIST_FIELDS.contains(&name.as_str()) {
                        Value::Array(
                            cell.split(';')
                                .map(|s| Value::String(s.trim().to_string()))
                                .collect(),
                        )
                    } else {
                        Value::String(cell.to_string())
                    };
                    set_path(&mut form, name, value);
                }
                (row, check_referral(form, received))
            }
            Err(e) => (
                e.position().map_or(0, |p| p.line() as usize),
                Err(format!("the row cannot be read: {e}")),
            ),
        };
        out.push(RowResult { row, result });
    }
    Ok(out)
}

fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, key) in parts.iter().enumerate() {
        let Value::Object(map) = node else { return };
        if i + 1 == parts.len() {
            map.insert((*key).to_string(), value);
            return;
        }
        node = map
            .entry((*key).to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

// ----- withdrawals -----

#[derive(Debug, Clone, PartialEq)]
pub struct Withdrawal {
    pub upn: String,
    pub course: String,
    pub provider: String,
    pub requested_last_day: NaiveDate,
    pub reason: String,
    pub impact_considered: bool,
    pub meeting_date: Option<NaiveDate>,
    /// When the hub will have processed it: the fifth working day after receipt.
    pub deadline: NaiveDate,
}

/// Checks a withdrawal form sent by an organisation of `requester`, received on `received`.
pub fn check_withdrawal(
    form: &Value,
    requester: OrgKind,
    received: NaiveDate,
    calendar: &Calendar,
) -> Result<Withdrawal, String> {
    let mut mandatory = vec![
        "upn",
        "course",
        "provider",
        "requested_last_day",
        "reason",
        "impact_considered",
    ];
    if requester == OrgKind::Provider {
        mandatory.push("meeting_date");
    }
    require(form, &mandatory).map_err(|e| {
        if requester == OrgKind::Provider && !present(form, "meeting_date") {
            format!("{e} (a provider's request needs the date of its meeting with the hub and the school)")
        } else {
            e
        }
    })?;
    let upn = text(form, "upn").unwrap_or_default().to_ascii_uppercase();
    check_upn(&upn)?;
    let impact_considered = bool_field(form, "impact_considered")?;
    if !impact_considered {
        return Err("impact_considered must be true: consider the impact on the learner's achievement, health and wellbeing before requesting a withdrawal".into());
    }
    let meeting_date = if present(form, "meeting_date") {
        Some(date_field(form, "meeting_date")?)
    } else {
        None
    };
    let reason = text(form, "reason").unwrap_or_default();
    check_note_length("reason", &reason)?;
    Ok(Withdrawal {
        upn,
        course: text(form, "course").unwrap_or_default(),
        provider: text(form, "provider")
            .unwrap_or_default()
            .to_ascii_lowercase(),
        requested_last_day: date_field(form, "requested_last_day")?,
        reason,
        impact_considered,
        meeting_date,
        deadline: calendar.add_working_days(received, 5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERRAL: &str = r#"
tier: 2
school: { name: School A, urn: "103725", contact_name: A Coordinator, contact_email: coord@school-a.example.org }
student: { upn: B801200005001, forename: Sam, surname: Taylor, date_of_birth: 2011-03-14, gender: F,
           year_group: 9, sen_status: SEN support, ehcp: false, fsm: true, pupil_premium: true, in_care: false }
parent_carer: { name: Pat Taylor, relationship: Mother, phone: 07700 900123, email: pat@example.org,
                address: "1 Example Street, Coventry" }
safeguarding: { concerns: None known, child_protection_plan: false }
attendance: { percentage: 82.5, notes: Persistent lateness }
behaviour: { summary: Disengaged in lessons, exclusions: 0 }
academic: { attainment: Working towards grade 4, curriculum: Reduced timetable, interests: Motor vehicles }
provision: { requested_courses: [Motor Vehicle Level 1], days: [Monday, Wednesday], start_date: 2026-12-14 }
agencies: [ { name: Early Help, contact: early.help@example.org } ]
risk_assessment: { date_completed: 2026-11-02 }
favourite_colour: green
"#;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn the_spec_referral_is_accepted_and_keeps_unknown_fields() {
        let form = parse_document(REFERRAL).unwrap();
        let r = check_referral(form, day(2026, 11, 28)).unwrap();
        assert_eq!(
            (r.tier, r.upn.as_str(), r.surname.as_str()),
            (2, "B801200005001", "Taylor")
        );
        assert_eq!(r.form["favourite_colour"], "green");
    }

    #[test]
    fn referral_rejections() {
        let form = parse_document(REFERRAL).unwrap();
        let e = check_referral(form.clone(), day(2027, 2, 3)).unwrap_err();
        assert!(e.contains("more than three calendar months"), "{e}");
        let mut f = form.clone();
        f["student"]
            .as_object_mut()
            .unwrap()
            .remove("date_of_birth");
        f["parent_carer"].as_object_mut().unwrap().remove("phone");
        let e = check_referral(f, day(2026, 11, 28)).unwrap_err();
        assert!(
            e.contains("student.date_of_birth, parent_carer.phone"),
            "{e}"
        );
        let mut f = form.clone();
        f["student"]["upn"] = Value::String("A801200005001".into());
        assert!(
            check_referral(f, day(2026, 11, 28))
                .unwrap_err()
                .contains("check letter")
        );
        let mut f = form;
        f["tier"] = Value::from(4);
        assert!(
            check_referral(f, day(2026, 11, 28))
                .unwrap_err()
                .contains("tier")
        );
    }

    #[test]
    fn json_and_unreadable_documents() {
        let v = parse_document(r#"{"tier": 1, "student": {"upn": "B801200005001"}}"#).unwrap();
        assert_eq!(text(&v, "student.upn").unwrap(), "B801200005001");
        assert!(
            parse_document("tier: [1, 2\n")
                .unwrap_err()
                .0
                .contains("YAML")
        );
        assert!(
            parse_document("{\"tier\": }")
                .unwrap_err()
                .0
                .contains("JSON")
        );
        assert!(
            parse_document("- a\n- b\n").is_err(),
            "a list is not a form"
        );
        // Alias bombs are stopped by the budget.
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        assert!(parse_document(bomb).is_err());
    }

    #[test]
    fn referral_csv_rows() {
        let text = "tier,student.upn,student.forename,student.surname,student.date_of_birth,school.name,\
                    parent_carer.name,parent_carer.phone,safeguarding.concerns,attendance.percentage,\
                    behaviour.summary,academic.attainment,provision.requested_courses,risk_assessment.date_completed\n\
                    2,B801200005001,Sam,Taylor,14/03/2011,School A,Pat,0770,None,82.5,OK,G4,MV L1;Catering,2026-11-02\n\
                    2,B801200005001,Sam,Taylor,14/03/2011,School A,,0770,None,82.5,OK,G4,MV L1,2026-11-02\n";
        let rows = parse_referral_csv(text, day(2026, 11, 28)).unwrap();
        let r = rows[0].result.as_ref().unwrap();
        assert_eq!(r.form["provision"]["requested_courses"][1], "Catering");
        assert!(
            rows[1]
                .result
                .as_ref()
                .unwrap_err()
                .contains("parent_carer.name")
        );
        assert_eq!(rows[1].row, 3);
    }

    #[test]
    fn withdrawals() {
        let doc = "upn: B801200005001\ncourse: Motor Vehicle Level 1\nprovider: prov-a\n\
                   requested_last_day: 2026-12-18\nreason: College place\nimpact_considered: true\n";
        let form = parse_document(doc).unwrap();
        let w = check_withdrawal(
            &form,
            OrgKind::School,
            day(2026, 11, 27),
            &Calendar::default(),
        )
        .unwrap();
        assert_eq!(w.requested_last_day, day(2026, 12, 18));
        let e = check_withdrawal(
            &form,
            OrgKind::Provider,
            day(2026, 11, 27),
            &Calendar::default(),
        )
        .unwrap_err();
        assert!(e.contains("meeting_date"), "{e}");
        let form = parse_document(&format!("{doc}meeting_date: 20/11/2026\n")).unwrap();
        assert!(
            check_withdrawal(
                &form,
                OrgKind::Provider,
                day(2026, 11, 27),
                &Calendar::default()
            )
            .is_ok()
        );
        let form = parse_document(&doc.replace("true", "false")).unwrap();
        assert!(
            check_withdrawal(
                &form,
                OrgKind::School,
                day(2026, 11, 27),
                &Calendar::default()
            )
            .unwrap_err()
            .contains("impact")
        );
    }
}
