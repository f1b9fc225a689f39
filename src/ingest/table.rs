//! Reading the CSV files people send: UTF-8 with or without a BOM, RFC 4180 quoting, headers
//! matched without regard to case or order (and, for MIS rosters, to spaces and punctuation).

use csv::StringRecord;

/// A file that cannot be read as a whole: nothing in it is applied, and the upload is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

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
                header.iter().collect::<Vec<_>>().join(", ")
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

    /// The rows with their spreadsheet row numbers. A row that cannot be parsed at all is
    /// reported as an error for that row; blank rows are skipped.
    pub fn rows(&mut self) -> impl Iterator<Item = (usize, Result<Row<'_>, String>)> + '_ {
        let columns = &self.columns;
        records(self.text, &mut self.reader)
            .map(move |(row, r)| (row, r.map(|record| Row { columns, record })))
    }
}

/// The records of `reader` (reading `text`) with their spreadsheet row numbers, blank ones
/// skipped.
fn records<'r>(
    text: &'r str,
    reader: &'r mut csv::Reader<&[u8]>,
) -> impl Iterator<Item = (usize, Result<StringRecord, String>)> + 'r {
    let mut lines = LineCounter {
        text: text.as_bytes(),
        at: 0,
        line: 1,
    };
    reader.records().filter_map(move |r| match r {
        Ok(record) => {
            let row = lines.line_at(record.position().map_or(0, |p| p.byte() as usize));
            if record.iter().all(|f| f.trim().is_empty()) {
                return None;
            }
            Some((row, Ok(record)))
        }
        Err(e) => {
            let row = lines.line_at(e.position().map_or(0, |p| p.byte() as usize));
            Some((row, Err(format!("the row cannot be read: {e}"))))
        }
    })
}

/// Files at least this large are parsed on several threads.
const PARALLEL_FROM_BYTES: usize = 1 << 20;
/// Rows handed to a parsing thread at a time.
const ROWS_PER_BATCH: usize = 4096;

/// Reads a CSV of `spec` and turns each row into a `T` (or the reason it is rejected). One
/// thread reads the records (the csv reader decides where each row ends); large files have
/// their rows turned into `T`s by a few threads at once, and the results keep the file's order.
pub fn parse_rows<T: Send>(
    text: &str,
    spec: &ColumnSpec,
    parse_row: impl Fn(&Row<'_>) -> Result<T, String> + Sync,
) -> Result<Vec<RowResult<T>>, Unreadable> {
    let mut sheet = Sheet::open(text, spec)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || text.len() < PARALLEL_FROM_BYTES {
        return Ok(sheet
            .rows()
            .map(|(row, r)| RowResult {
                row,
                result: r.and_then(|r| parse_row(&r)),
            })
            .collect());
    }
    type Batch = (usize, Vec<(usize, Result<StringRecord, String>)>);
    let columns = sheet.columns.clone();
    let (to_workers, batches) = std::sync::mpsc::sync_channel::<Batch>(threads * 2);
    let batches = std::sync::Mutex::new(batches);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    // The lock is held only while taking a batch.
                    let next = batches.lock().map(|rx| rx.recv());
                    let Ok(Ok((index, records))) = next else {
                        return;
                    };
                    let out: Vec<RowResult<T>> = records
                        .into_iter()
                        .map(|(row, record)| RowResult {
                            row,
                            result: record.and_then(|record| {
                                parse_row(&Row {
                                    columns: &columns,
                                    record,
                                })
                            }),
                        })
                        .collect();
                    if let Ok(mut done) = done.lock() {
                        done.push((index, out));
                    }
                }
            });
        }
        let mut batch = Vec::with_capacity(ROWS_PER_BATCH);
        let mut index = 0;
        for (row, r) in records(sheet.text, &mut sheet.reader) {
            batch.push((row, r));
            if batch.len() == ROWS_PER_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(ROWS_PER_BATCH));
                if to_workers.send((index, full)).is_err() {
                    break;
                }
                index += 1;
            }
        }
        if !batch.is_empty() {
            let _ = to_workers.send((index, batch));
        }
        drop(to_workers);
    });
    let mut done = done
        .into_inner()
        .map_err(|_| Unreadable("the file could not be parsed (a parsing thread failed)".into()))?;
    done.sort_unstable_by_key(|(index, _)| *index);
    Ok(done.into_iter().flat_map(|(_, rows)| rows).collect())
}

/// One data row.
pub struct Row<'s> {
    columns: &'s [(&'static str, usize)],
    record: StringRecord,
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
        let mut s = Sheet::open(text, &SPEC).unwrap();
        let rows: Vec<(usize, String, Option<String>)> = s
            .rows()
            .map(|(n, r)| {
                let r = r.unwrap();
                (
                    n,
                    r.need("surname").unwrap().to_string(),
                    r.get("note").map(String::from),
                )
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
        let mut s = Sheet::open("Date Of Birth,NCYearActual\n2011-03-14,9\n", &LOOSE).unwrap();
        let (_, row) = s.rows().next().unwrap();
        assert_eq!(row.unwrap().get("year_group"), Some("9"));
    }

    #[test]
    fn a_large_file_parsed_on_several_threads_matches_one_thread() {
        // Quoted cells with commas and line breaks, blank lines, short rows and bad rows, in a
        // file large enough to be parsed in parallel.
        let mut text = String::from("upn,surname,note\n");
        let mut i = 0;
        while text.len() < 3 * PARALLEL_FROM_BYTES {
            match i % 7 {
                0 => text.push_str(&format!("U{i},Smith,\"line one\nline two, {i}\"\n")),
                1 => text.push_str("\n\n"),
                2 => text.push_str(&format!("U{i},,no surname\n")),
                3 => text.push_str(&format!("U{i}\n")),
                _ => text.push_str(&format!("U{i},\"Jones, \"\"J\"\"\",{i}\n")),
            }
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
        let mut sheet = Sheet::open(&text, &SPEC).unwrap();
        let one_thread: Vec<_> = sheet
            .rows()
            .map(|(row, r)| RowResult {
                row,
                result: r.and_then(|r| parse(&r)),
            })
            .collect();
        assert!(
            one_thread.len() > 2 * ROWS_PER_BATCH,
            "{}",
            one_thread.len()
        );
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
