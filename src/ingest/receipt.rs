//! The receipt a sender reads: what was accepted, what was rejected and why, row by row.

use std::fmt::Write as _;

/// What applying one file did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub accepted: usize,
    /// Accepted rows that replaced an earlier mark (the earlier one is kept as history).
    pub amended: usize,
    pub rejected: Vec<(usize, String)>,
    /// Per-row information: references, deadlines, learners created.
    pub notes: Vec<(usize, String)>,
    /// Per-row information for the hub's copy only (which school holds a UPN): the sender may
    /// not learn it (SPEC §1).
    pub hub_notes: Vec<(usize, String)>,
    /// Set when the file could not be read as a whole: nothing was applied.
    pub unreadable: Option<String>,
    /// Set when the same bytes were already applied: nothing was applied again.
    pub duplicate_of: Option<String>,
}

impl ApplyReport {
    pub fn reject(&mut self, row: usize, reason: impl Into<String>) {
        self.rejected.push((row, reason.into()));
    }

    pub fn note(&mut self, row: usize, note: impl Into<String>) {
        self.notes.push((row, note.into()));
    }

    pub fn hub_note(&mut self, row: usize, note: impl Into<String>) {
        self.hub_notes.push((row, note.into()));
    }
}

/// Facts about the file a receipt is for.
pub struct ReceiptHeader<'a> {
    pub file_name: &'a str,
    pub organisation: &'a str,
    pub kind: &'a str,
    pub received_at: &'a str,
    pub sha256: &'a str,
}

/// `20261128T231001Z-register.csv.txt`: sorts by time, names the file it is for.
pub fn receipt_name(received_at: &str, file_name: &str) -> String {
    let stamp: String = received_at
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!("{stamp}Z-{}.txt", file_name.replace('/', "_"))
}

/// The receipt as the sender reads it, or (`for_hub`) with the hub's notes too.
pub fn render(h: &ReceiptHeader<'_>, r: &ApplyReport, for_hub: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "apgate receipt");
    let _ = writeln!(s, "File:         {}", h.file_name);
    let _ = writeln!(s, "From:         {}", h.organisation);
    let _ = writeln!(s, "Kind:         {}", h.kind);
    let _ = writeln!(s, "Received:     {}", h.received_at);
    let _ = writeln!(s, "SHA-256:      {}", h.sha256);
    let _ = writeln!(s);
    if let Some(reason) = &r.unreadable {
        let _ = writeln!(s, "Result:       NOT APPLIED: the file could not be read.");
        let _ = writeln!(s, "Reason:       {reason}");
        let _ = writeln!(
            s,
            "Nothing in this file was applied. Correct it and send it again."
        );
        return s;
    }
    if let Some(of) = &r.duplicate_of {
        let _ = writeln!(
            s,
            "Result:       ALREADY APPLIED: this file is identical to {of}."
        );
        let _ = writeln!(s, "Nothing was applied twice.");
        return s;
    }
    let _ = writeln!(
        s,
        "Result:       {} accepted ({} amended an earlier mark), {} rejected",
        r.accepted,
        r.amended,
        r.rejected.len()
    );
    let mut lines: Vec<(usize, String)> = r
        .rejected
        .iter()
        .map(|(row, why)| (*row, format!("row {row}: REJECTED: {why}")))
        .chain(
            r.notes
                .iter()
                .map(|(row, note)| (*row, format!("row {row}: {note}"))),
        )
        .chain(
            r.hub_notes
                .iter()
                .filter(|_| for_hub)
                .map(|(row, note)| (*row, format!("row {row}: for the hub only: {note}"))),
        )
        .collect();
    lines.sort_by_key(|(row, _)| *row);
    if !lines.is_empty() {
        let _ = writeln!(s);
    }
    for (_, line) in lines {
        let _ = writeln!(s, "{line}");
    }
    if !r.rejected.is_empty() {
        let _ = writeln!(
            s,
            "\nRejected rows were not applied; the other rows were. Correct the rejected rows and send only them again."
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ReceiptHeader<'static> {
        ReceiptHeader {
            file_name: "reg.csv",
            organisation: "prov-a",
            kind: "register",
            received_at: "2026-11-28T23:10:01.123Z",
            sha256: "ab",
        }
    }

    #[test]
    fn rows_in_order_with_reasons() {
        let mut r = ApplyReport {
            accepted: 2,
            amended: 1,
            ..Default::default()
        };
        r.reject(14, "status `x` is not one of …");
        r.note(
            3,
            "learner B801200005001 was not known: created and flagged for the hub",
        );
        r.hub_note(14, "B801200005001 is on the roll of school-b");
        let text = render(&header(), &r, false);
        assert!(!text.contains("school-b"), "{text}");
        let hub = render(&header(), &r, true);
        assert!(
            hub.contains("row 14: for the hub only: B801200005001 is on the roll of school-b"),
            "{hub}"
        );
        assert!(
            text.contains("2 accepted (1 amended an earlier mark), 1 rejected"),
            "{text}"
        );
        let (a, b) = (
            text.find("row 3:").unwrap(),
            text.find("row 14: REJECTED").unwrap(),
        );
        assert!(a < b, "{text}");
    }

    #[test]
    fn unreadable_and_duplicate() {
        let r = ApplyReport {
            unreadable: Some("required column missing: upn".into()),
            ..Default::default()
        };
        assert!(render(&header(), &r, false).contains("NOT APPLIED"));
        assert_eq!(
            receipt_name("2026-11-28T23:10:01.123Z", "dir/reg.csv"),
            "20261128T231001Z-dir_reg.csv.txt"
        );
    }
}
