//! Reading the CSV files people send: UTF-8 with or without a BOM, RFC 4180 quoting, headers
//! matched without regard to case or order (and, for MIS rosters, to spaces and punctuation).

use csv::StringRecord;

/// A file that cannot be read as a whole: nothing in it is applied, and the upload is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

/// The longest reason an unreadable file is refused with (it goes into the client's CLOSE
/// status and the receipt): whatever a file holds, the answer stays this short (SPEC §8).
pub const MAX_REASON_CHARS: usize = 600;

/// At most `max` characters of `text`, with `…` where it was cut.
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// What a row became: the value, or the reason it was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct RowResult<T> {
    /// The row as a spreadsheet numbers it (the header is row 1).
    pub row: usize,
    pub result: Result<T, String>,
}

/// The text of an uploaded file: UTF-8, a leading BOM removed.
pub fn decode_text(bytes: &[u8]) -> Result<&str, Unreadable> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        Unreadable(format!(
            "the file is not UTF-8 text (first bad byte at position {}); save it as \"CSV UTF-8\" and send it again",
            e.valid_up_to()
        ))
    })
}

/// Longest `reason` of a withdrawal, and of any note (SPEC §4.1): notes are for the training
/// record, not a channel for documents.
pub const MAX_NOTE_CHARS: usize = 2000;

/// Checks the length of a free-text field against [`MAX_NOTE_CHARS`].
pub fn check_note_length(field: &str, text: &str) -> Result<(), String> {
    let n = text.chars().count();
    if n > MAX_NOTE_CHARS {
        return Err(format!(
            "{field} is {n} characters long; at most {MAX_NOTE_CHARS} are allowed (send documents as files to /outbox/)"
        ));
    }
    Ok(())
}

/// The columns a kind of CSV has.
pub struct ColumnSpec {
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
    /// Other names for a column: (alias, column).
    pub aliases: &'static [(&'static str, &'static str)],
    /// Match headers ignoring case, spaces, underscores and punctuation (MIS exports).
    pub loose: bool,
}

fn normalize(h: &str, loose: bool) -> String {
    let h = h.trim().to_lowercase();
    if loose {
        h.chars().filter(|c| c.is_alphanumeric()).collect()
    } else {
        h
    }
}

/// A CSV file whose header has been checked.
pub struct Sheet<'a> {
    text: &'a str,
    /// Each wanted column and its index in a record (a dozen at most: searched in order).
    columns: Vec<(&'static str, usize)>,
    reader: csv::Reader<&'a [u8]>,
}

/// Counts lines up to byte offsets that only grow (the csv crate skips blank lines without
/// counting them, so its own line numbers drift from what a spreadsheet shows).
struct LineCounter<'a> {
    text: &'a [u8],
    at: usize,
    line: usize,
}

impl LineCounter<'_> {
    /// The line of the record at `byte` (which may point at blank lines before the record).
    fn line_at(&mut self, byte: usize) -> usize {
        let mut end = byte.min(self.text.len());
        while end < self.text.len() && matches!(self.text[end], b'\n' | b'\r') {
            end += 1;
        }
        if end > self.at {
            self.line += self.text[self.at..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.at = end;
        }
        self.line
    }
}

impl<'a> Sheet<'a> {
    pub fn open(text: &'a str, spec: &ColumnSpec) -> Result<Sheet<'a>, Unreadable> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(text.as_bytes());
        let header = reader
            .headers()
            .map_err(|e| Unreadable(format!("the header row cannot be read: {e}")))?
            .clone();
        if header.iter().all(|h| h.trim().is_empty()) {
            return Err(Unreadable(format!(
                "the file has no header row; the first row must name the columns: {}",
                spec.required.join(", ")
            )));
        }
        let wanted = |name: &str| -> Option<&'static str> {
            let n = normalize(name, spec.loose);
            spec.required
                .iter()
                .chain(spec.optional)
                .copied()
                .find(|c| normalize(c, spec.loose) == n)
                .or_else(|| {
                    spec.aliases
                        .iter()
                        .find(|(a, _)| normalize(a, spec.loose) == n)
                        .map(|(_, c)| *c)
                })
        };
        let mut columns: Vec<(&'static str, usize)> = Vec::new();
        for (i, h) in header.iter().enumerate() {
            if let Some(c) = wanted(h)
                && !columns.iter().any(|(name, _)| *name == c)
            {
                columns.push((c, i));
            }
        }
        let missing: Vec<&str> = spec
            .required
            .iter()
            .copied()
            .filter(|c| !columns.iter().any(|(name, _)| name == c))
            .collect();
        if !missing.is_empty() {
            return Err(Unreadable(format!(
                "required column{} missing: {} (the header row has: {})",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                excerpt(
                    &header
                        .iter()
                        .take(40)
                        .map(|h| excerpt(h, 40))
                        .collect::<Vec<_>>()
                        .join(", "),
                    300
                )
            )));
        }
        Ok(Sheet {
            text,
            columns,
            reader,
        })
    }

    pub fn has(&self, column: &str) -> bool {
        self.columns.iter().any(|(name, _)| *name == column)
    }

    /// Where the rows begin (after the header): byte offset and line number.
    fn body(&self) -> (usize, usize) {
        let start = (self.reader.position().byte() as usize).min(self.text.len());
        let line = 1 + count_lines(&self.text.as_bytes()[..start]);
        (start, line)
    }
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// Reads the rows in `text[span]`, whose first line is `line`, turning each into a `T` (or the
/// reason it is rejected) with its spreadsheet row number. Blank rows are skipped.
fn parse_span<T>(
    text: &str,
    span: std::ops::Range<usize>,
    line: usize,
    columns: &[(&'static str, usize)],
    parse_row: &impl Fn(&Row<'_>) -> Result<T, String>,
    out: &mut Vec<RowResult<T>>,
) {
    let bytes = &text.as_bytes()[span];
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(bytes);
    let mut lines = LineCounter {
        text: bytes,
        at: 0,
        line,
    };
    let mut record = StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return,
            Ok(true) => {
                let row = lines.line_at(record.position().map_or(0, |p| p.byte() as usize));
                if record.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                out.push(RowResult {
                    row,
                    result: parse_row(&Row {
                        columns,
                        record: &record,
                    }),
                });
            }
            Err(e) => {
                let row = lines.line_at(e.position().map_or(0, |p| p.byte() as usize));
                out.push(RowResult {
                    row,
                    result: Err(format!("the row cannot be read: {e}")),
                });
            }
        }
    }
}

/// Files at least this large are parsed on several threads.
const PARALLEL_FROM_BYTES: usize = 1 << 20;
/// Rows in one span handed to a parsing thread.
const ROWS_PER_SPAN: usize = 8192;

/// Cuts `text[start..]` (whose first line is `line`) into spans of `ROWS_PER_SPAN` records,
/// where the csv reader ends a record: (span, first line). `None` when a record cannot be read
/// (the file is then read on one thread, which reports it).
fn spans(text: &str, start: usize, line: usize) -> Option<Vec<(std::ops::Range<usize>, usize)>> {
    let bytes = &text.as_bytes()[start..];
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let (mut spans, mut from, mut line, mut rows) = (Vec::new(), 0, line, 0);
    while reader.read_byte_record(&mut record).ok()? {
        rows += 1;
        if rows == ROWS_PER_SPAN {
            let to = (reader.position().byte() as usize).min(bytes.len());
            spans.push((start + from..start + to, line));
            line += count_lines(&bytes[from..to]);
            (from, rows) = (to, 0);
        }
    }
    if from < bytes.len() {
        spans.push((start + from..text.len(), line));
    }
    Some(spans)
}

/// Reads a CSV of `spec` and turns each row into a `T` (or the reason it is rejected), in the
/// file's order. A large file is first cut where the csv reader ends records, then its spans
/// are parsed by a few threads at once.
pub fn parse_rows<T: Send>(
    text: &str,
    spec: &ColumnSpec,
    parse_row: impl Fn(&Row<'_>) -> Result<T, String> + Sync,
) -> Result<Vec<RowResult<T>>, Unreadable> {
    let sheet = Sheet::open(text, spec)?;
    let (start, line) = sheet.body();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let spans = (threads > 1 && text.len() >= PARALLEL_FROM_BYTES)
        .then(|| spans(text, start, line))
        .flatten()
        .filter(|spans| spans.len() > 1);
    let Some(spans) = spans else {
        let mut rows = Vec::new();
        parse_span(
            text,
            start..text.len(),
            line,
            &sheet.columns,
            &parse_row,
            &mut rows,
        );
        return Ok(rows);
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parsed: Vec<(usize, Vec<RowResult<T>>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((span, line)) = spans.get(i) else {
                            return mine;
                        };
                        let mut rows = Vec::with_capacity(ROWS_PER_SPAN);
                        parse_span(
                            text,
                            span.clone(),
                            *line,
                            &sheet.columns,
                            &parse_row,
                            &mut rows,
                        );
                        mine.push((i, rows));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    parsed.sort_unstable_by_key(|(i, _)| *i);
    let mut rows = Vec::with_capacity(parsed.iter().map(|(_, rows)| rows.len()).sum());
    for (_, span) in parsed {
        rows.extend(span);
    }
    Ok(rows)
}

/// One data row.
pub struct Row<'s> {
    columns: &'s [(&'static str, usize)],
    record: &'s StringRecord,
}

impl Row<'_> {
    /// The trimmed value of a column; `None` when the column is absent or the cell is empty.
    pub fn get(&self, column: &str) -> Option<&str> {
        let (_, i) = self.columns.iter().find(|(name, _)| *name == column)?;
        let v = self.record.get(*i)?.trim();
        (!v.is_empty()).then_some(v)
    }

    /// A required cell: its value, or the reason the row is rejected.
    pub fn need(&self, column: &str) -> Result<&str, String> {
        self.get(column).ok_or_else(|| format!("{column} is empty"))
    }

    /// An optional free-text cell, at most [`MAX_NOTE_CHARS`] long.
    pub fn note(&self, column: &str) -> Result<Option<String>, String> {
        let note = self.get(column);
        if let Some(n) = note {
            check_note_length(column, n)?;
        }
        Ok(note.map(String::from))
    }
}

/// `HH:MM` from `H:MM`, `HH:MM` or `HH:MM:SS`.
pub fn parse_time(s: &str) -> Result<String, String> {
    let t = s.trim();
    if let [
        h1 @ b'0'..=b'2',
        h2 @ b'0'..=b'9',
        b':',
        b'0'..=b'5',
        b'0'..=b'9',
    ] = t.as_bytes()
        && (*h1, *h2) < (b'2', b'4')
    {
        return Ok(t.to_string());
    }
    let mut parts = t.split(':');
    let (h, m) = (parts.next(), parts.next());
    let sec_ok = parts
        .next()
        .is_none_or(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()));
    match (h.and_then(|h| h.parse::<u32>().ok()), m) {
        (Some(h), Some(m))
            if h < 24 && m.len() == 2 && m.parse::<u32>().is_ok_and(|m| m < 60) && sec_ok =>
        {
            Ok(format!("{h:02}:{m}"))
        }
        _ => Err(format!("`{t}` is not a time: write HH:MM, e.g. 09:30")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: ColumnSpec = ColumnSpec {
        required: &["upn", "surname"],
        optional: &["note"],
        aliases: &[("last name", "surname")],
        loose: false,
    };

    #[test]
    fn bom_and_encoding() {
        assert_eq!(decode_text(b"\xEF\xBB\xBFa,b").unwrap(), "a,b");
        assert!(
            decode_text(b"upn\n\xff\xfe")
                .unwrap_err()
                .0
                .contains("not UTF-8")
        );
    }

    #[test]
    fn headers_any_case_and_order_with_quoting() {
        let text =
            "Note,SURNAME,upn\n\"a, \"\"quoted\"\" note\",Taylor,B801200005001\n\n,Jones,X\n";
        let rows: Vec<(usize, String, Option<String>)> = parse_rows(text, &SPEC, |r| {
            Ok((
                r.need("surname").unwrap().to_string(),
                r.get("note").map(String::from),
            ))
        })
        .unwrap()
        .into_iter()
        .map(|r| {
            let (surname, note) = r.result.unwrap();
            (r.row, surname, note)
        })
        .collect();
        assert_eq!(
            rows[0],
            (2, "Taylor".into(), Some("a, \"quoted\" note".into()))
        );
        assert_eq!(
            rows[1],
            (4, "Jones".into(), None),
            "blank rows are skipped, numbering kept"
        );
    }

    #[test]
    fn missing_columns_and_no_header() {
        let e = Sheet::open("upn,forename\n", &SPEC).err().unwrap();
        assert!(e.0.contains("missing: surname"), "{}", e.0);
        assert!(Sheet::open("upn,last name\n", &SPEC).is_ok(), "alias");
        let e = Sheet::open("", &SPEC).err().unwrap();
        assert!(e.0.contains("no header"), "{}", e.0);
    }

    #[test]
    fn loose_matching() {
        const LOOSE: ColumnSpec = ColumnSpec {
            required: &["date_of_birth", "year_group"],
            optional: &[],
            aliases: &[("NC Year Actual", "year_group")],
            loose: true,
        };
        let rows = parse_rows("Date Of Birth,NCYearActual\n2011-03-14,9\n", &LOOSE, |r| {
            Ok(r.get("year_group").map(String::from))
        })
        .unwrap();
        assert_eq!(rows[0].result, Ok(Some("9".to_string())));
    }

    #[test]
    fn a_large_file_parsed_on_several_threads_matches_one_thread() {
        // Quoted cells with commas and line breaks, blank lines, short rows and bad rows, in a
        // file large enough to be parsed in parallel.
        let mut text = String::from("upn,surname,note\n");
        let mut lines = std::collections::HashMap::new();
        let mut line = 2;
        let mut i = 0;
        while text.len() < 3 * PARALLEL_FROM_BYTES {
            let upn = format!("U{i}");
            let row = match i % 7 {
                0 => format!("{upn},Smith,\"line one\nline two, {i}\"\n"),
                1 => "\n\n".to_string(),
                2 => format!("{upn},,no surname\n"),
                3 => format!("{upn}\n"),
                5 => format!("{upn},Brown,\"crlf\r\nin a cell\"\r\n\r\n"),
                _ => format!("{upn},\"Jones, \"\"J\"\"\",{i}\n"),
            };
            if i % 7 != 1 {
                lines.insert(upn, line);
            }
            line += row.matches('\n').count();
            text.push_str(&row);
            i += 1;
        }
        let parse = |r: &Row<'_>| -> Result<(String, String, Option<String>), String> {
            Ok((
                r.need("upn")?.to_string(),
                r.need("surname")?.to_string(),
                r.get("note").map(String::from),
            ))
        };
        let parallel = parse_rows(&text, &SPEC, parse).unwrap();
        let sheet = Sheet::open(&text, &SPEC).unwrap();
        let (start, line) = sheet.body();
        assert!(spans(&text, start, line).unwrap().len() > 2);
        let mut one_thread = Vec::new();
        parse_span(
            &text,
            start..text.len(),
            line,
            &sheet.columns,
            &parse,
            &mut one_thread,
        );
        assert!(one_thread.len() > 2 * ROWS_PER_SPAN, "{}", one_thread.len());
        // Row numbers are the lines a spreadsheet shows, counted independently here.
        for r in &parallel {
            if let Ok((upn, _, _)) = &r.result {
                assert_eq!(Some(&r.row), lines.get(upn.as_str()), "{upn}");
            }
        }
        assert!(one_thread.iter().any(|r| r.result.is_err()));
        assert_eq!(parallel, one_thread);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("9:30").unwrap(), "09:30");
        assert_eq!(parse_time("13:05:00").unwrap(), "13:05");
        assert!(parse_time("25:00").is_err());
        assert!(parse_time("9.30").is_err());
    }
}
