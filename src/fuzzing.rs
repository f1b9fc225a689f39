//! Fuzz targets: one function per parser that takes bytes from the network or from files, each
//! checking what must hold for any input (no panic, and a property of its own). `fuzz/` runs
//! them under libFuzzer (`cargo fuzz`); `tests/fuzz.rs` runs them over the checked-in corpus
//! `fuzz/corpus/<target>/` and a short mutation pass in the suite.

use bytes::Bytes;
use chrono::NaiveDate;

use crate::domain::dates::Calendar;
use crate::domain::org::OrgKind;
use crate::domain::tree::{IngestKind, classify, display_path, normalize};
use crate::ingest::{Batch, parse_file, table};

/// A fuzz target: any bytes in, a panic when something that must hold does not.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: [(&str, Target); 5] = [
    ("sftp_stream", sftp_stream),
    ("sftp_request", sftp_request),
    ("tree_path", tree_path),
    ("ingest_file", ingest_file),
    ("age_open", age_open),
];

/// The byte stream of an SFTP channel (the first byte sets the size of the pieces it arrives
/// in): the framer gives exactly the length-prefixed bodies a plain reading of the stream gives,
/// whatever the pieces, and fails exactly where a length is 0 or over the limit.
pub fn sftp_stream(data: &[u8]) {
    use crate::sftp::protocol::{Framer, MAX_PACKET};
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let mut expected: Vec<&[u8]> = Vec::new();
    let mut rest = stream;
    let mut bad = false;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if len == 0 || len > MAX_PACKET {
            bad = true;
            break;
        }
        let Some(body) = rest.get(4..4 + len as usize) else {
            break;
        };
        expected.push(body);
        rest = &rest[4 + len as usize..];
    }
    let mut framer = Framer::default();
    let mut got: Vec<Bytes> = Vec::new();
    let mut failed = false;
    for piece in stream.chunks(1 + step as usize) {
        if framer
            .push(piece, |p| {
                got.push(p);
                true
            })
            .is_err()
        {
            failed = true;
            break;
        }
    }
    assert_eq!(failed, bad, "the framer fails exactly at a bad length");
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(&g[..], *e);
    }
    for p in got {
        let _ = crate::sftp::protocol::parse_request(p);
    }
}

/// An SFTP packet body after the framer: the request parser and the INIT parser.
pub fn sftp_request(data: &[u8]) {
    let _ = crate::sftp::protocol::parse_init(data);
    if let Ok(req) = crate::sftp::protocol::parse_request(Bytes::copy_from_slice(data)) {
        // A request that parses has the id of its first four bytes after the type.
        let id = data
            .get(1..5)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        assert_eq!(Some(req.id()), id, "id of {data:?}");
    }
}

/// The model of [`normalize`]: `.` and empty parts skipped, `..` one up but never above the
/// root.
fn model(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            name => out.push(name),
        }
    }
    out
}

/// A client path (the first byte picks the organisation kind): when it normalises, it is the
/// model's path, no component can climb out of the tree, normalising its display form gives it
/// back, and classification never panics.
pub fn tree_path(data: &[u8]) {
    let Some((&pick, raw)) = data.split_first() else {
        return;
    };
    let kind = OrgKind::ALL[pick as usize % OrgKind::ALL.len()];
    let Ok(segs) = normalize(raw) else {
        return;
    };
    let text = std::str::from_utf8(raw).expect("only UTF-8 normalises");
    assert_eq!(segs, model(text), "model of {text:?}");
    for s in &segs {
        assert!(
            !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0', '\\']),
            "component {s:?} of {text:?}"
        );
    }
    assert_eq!(
        normalize(display_path(&segs).as_bytes()).ok().as_ref(),
        Some(&segs)
    );
    let _ = classify(kind, &segs);
}

/// An ingest file (the first byte picks the kind and the sender): the parser gives a result
/// per row or a short reason, never a panic.
pub fn ingest_file(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let kind = IngestKind::ALL[pick as usize % IngestKind::ALL.len()];
    let sender = OrgKind::ALL[(pick as usize / IngestKind::ALL.len()) % OrgKind::ALL.len()];
    let name = if pick & 0x80 == 0 {
        "file.csv"
    } else {
        "form.yaml"
    };
    let received = NaiveDate::from_ymd_opt(2026, 3, 2).expect("a date");
    let batch = parse_file(kind, sender, name, bytes, received, &Calendar::default());
    if let Batch::Unreadable(reason) = batch {
        assert!(
            reason.chars().count() <= table::MAX_REASON_CHARS + 1,
            "reason of {} characters",
            reason.chars().count()
        );
    }
}

/// The identity the `age_open` corpus is encrypted to (a key for fuzzing only, protecting
/// nothing).
pub const FUZZ_IDENTITY: &str =
    "AGE-SECRET-KEY-12LGTL9ECV0HAFDEVSUC09PWLTHN6W2N367NUHK5RKUGQ0PPRYEZSRL5RYQ";

/// A stored file, possibly corrupt: opening and reading it ends in bytes or an error, never a
/// panic, and every byte returned was authenticated (reading twice gives the same).
pub fn age_open(data: &[u8]) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let Ok(identity) = FUZZ_IDENTITY.parse::<age::x25519::Identity>() else {
        panic!("the fuzz identity parses");
    };
    let Ok(mut file) = tempfile::tempfile() else {
        return;
    };
    if file
        .write_all(data)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .is_err()
    {
        return;
    }
    let Ok(mut reader) = crate::vault::stream::open(file, std::slice::from_ref(&identity)) else {
        return;
    };
    let mut first = Vec::new();
    if reader.read_to_end(&mut first).is_err() {
        return;
    }
    let mut again = Vec::new();
    if reader.seek(SeekFrom::Start(0)).is_ok() && reader.read_to_end(&mut again).is_ok() {
        assert_eq!(first, again, "the same plaintext twice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_keeps_to_the_root() {
        assert_eq!(model("/../../etc/passwd"), vec!["etc", "passwd"]);
        assert_eq!(model("a/./b/../c//"), vec!["a", "c"]);
        tree_path(b"\x00/../../inbox/./x");
    }

    #[test]
    fn the_identity_is_an_age_identity() {
        assert!(FUZZ_IDENTITY.parse::<age::x25519::Identity>().is_ok());
    }
}
