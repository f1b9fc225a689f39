//! File-name rules: temporary upload names, duplicate suffixes, what a name may contain.

/// Suffixes that clients (WinSCP, FileZilla, scripts) use while a file is still being written.
const TEMP_SUFFIXES: [&str; 4] = [".filepart", ".partial", ".part", ".tmp"];

/// Longest single path component accepted, in bytes (the common filesystem limit).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Longest path accepted from a client, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Deepest folder nesting accepted inside an outbox.
pub const MAX_DEPTH: usize = 8;

/// True when `name` ends with a temporary-upload suffix: such a file is committed only when renamed.
pub fn is_temp_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    TEMP_SUFFIXES
        .iter()
        .any(|s| lower.len() > s.len() && lower.ends_with(s))
}

/// Checks one path component a client asked for.
pub fn validate_component(c: &str) -> Result<(), String> {
    if c.is_empty() || c == "." || c == ".." {
        return Err("empty, `.` or `..` is not a file name".into());
    }
    if c.len() > MAX_COMPONENT_BYTES {
        return Err(format!(
            "a file name may be at most {MAX_COMPONENT_BYTES} bytes"
        ));
    }
    if let Some(ch) = c.chars().find(|ch| ch.is_control() || *ch == '\\') {
        return Err(format!("file names may not contain the character {:?}", ch));
    }
    Ok(())
}

/// "report.pdf" with n = 2 gives "report (2).pdf"; only the last component of `a/b.pdf` changes.
pub fn with_copy_number(name: &str, n: u32) -> String {
    if n <= 1 {
        return name.to_string();
    }
    let (dir, file) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    format!("{dir}{stem} ({n}){ext}")
}

/// The first of `name`, `name (2)`, `name (3)`, … for which `taken` is false.
pub fn first_free_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    (1u32..)
        .map(|n| with_copy_number(name, n))
        .find(|candidate| !taken(candidate))
        .unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        for t in ["a.filepart", "a.pdf.part", "A.PARTIAL", "x.tmp"] {
            assert!(is_temp_name(t), "{t}");
        }
        for f in ["a.pdf", ".tmp", "part", "a.parts", "tmp"] {
            assert!(!is_temp_name(f), "{f}");
        }
    }

    #[test]
    fn copy_numbers() {
        assert_eq!(with_copy_number("report.pdf", 1), "report.pdf");
        assert_eq!(with_copy_number("report.pdf", 2), "report (2).pdf");
        assert_eq!(with_copy_number("noext", 3), "noext (3)");
        assert_eq!(with_copy_number(".hidden", 2), ".hidden (2)");
        assert_eq!(with_copy_number("d.x/f", 2), "d.x/f (2)");
        assert_eq!(with_copy_number("d/a.tar.gz", 2), "d/a.tar (2).gz");
        let taken = ["a.csv", "a (2).csv"];
        assert_eq!(
            first_free_name("a.csv", |n| taken.contains(&n)),
            "a (3).csv"
        );
        assert_eq!(first_free_name("b.csv", |n| taken.contains(&n)), "b.csv");
    }

    #[test]
    fn components() {
        assert!(validate_component("Plan – Sam T.pdf").is_ok());
        for bad in ["", ".", "..", "a\0b", "a\nb", "a\\b", &"x".repeat(256)] {
            assert!(validate_component(bad).is_err(), "{bad:?}");
        }
    }
}
