//! Learner identifiers: the UPN (unique pupil number) and ULN (unique learner number) checks
//! published by the DfE.

/// Check letters by value: 0 → A … 22 → Z, without I, O and S.
const CHECK_LETTERS: &[u8; 23] = b"ABCDEFGHJKLMNPQRTUVWXYZ";

fn letter_value(c: u8) -> Option<u32> {
    CHECK_LETTERS.iter().position(|&l| l == c).map(|p| p as u32)
}

/// Validates a UPN: 13 characters, a check letter first, eleven digits, then a digit or (for a
/// temporary UPN) a letter. Returns a reason a school administrator can act on.
pub fn check_upn(upn: &str) -> Result<(), String> {
    let b = upn.as_bytes();
    if b.len() != 13 {
        return Err(format!(
            "UPN `{upn}` must have 13 characters, not {}",
            upn.chars().count()
        ));
    }
    let Some(check) = letter_value(b[0]) else {
        return Err(format!(
            "UPN `{upn}` must start with a capital check letter"
        ));
    };
    if !b[1..12].iter().all(u8::is_ascii_digit) {
        return Err(format!("UPN `{upn}`: characters 2 to 12 must be digits"));
    }
    let last = if b[12].is_ascii_digit() {
        u32::from(b[12] - b'0')
    } else {
        letter_value(b[12]).ok_or_else(|| {
            format!("UPN `{upn}`: the last character must be a digit or a capital letter")
        })?
    };
    let sum: u32 = b[1..12]
        .iter()
        .enumerate()
        .map(|(i, d)| u32::from(d - b'0') * (i as u32 + 2))
        .sum::<u32>()
        + last * 13;
    if sum % 23 != check {
        return Err(format!(
            "UPN `{upn}` has a wrong check letter (a typing error?): it should start with {}",
            CHECK_LETTERS[(sum % 23) as usize] as char
        ));
    }
    Ok(())
}

/// Validates a ULN: 10 digits with a check digit; `9999999999` is the temporary ULN.
pub fn check_uln(uln: &str) -> Result<(), String> {
    let b = uln.as_bytes();
    if b.len() != 10 || !b.iter().all(u8::is_ascii_digit) {
        return Err(format!("ULN `{uln}` must be 10 digits"));
    }
    if uln == "9999999999" {
        return Ok(());
    }
    let d: Vec<u32> = b.iter().map(|c| u32::from(c - b'0')).collect();
    let s: u32 = (0..9).map(|i| d[i] * (10 - i as u32)).sum();
    let r = s % 11;
    if r == 0 || d[9] != 10 - r {
        return Err(format!("ULN `{uln}` has a wrong check digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upn_worked_examples() {
        assert!(check_upn("B801200005001").is_ok());
        let e = check_upn("A801200005001").unwrap_err();
        assert!(e.contains("should start with B"), "{e}");
        assert!(check_upn("B80120000500").is_err());
        assert!(check_upn("b801200005001").is_err());
        assert!(check_upn("B80120000X001").is_err());
        assert!(
            check_upn("I801200005001").is_err(),
            "I is not a check letter"
        );
    }

    #[test]
    fn temporary_upn_with_a_letter_last() {
        // Find the check letter for a temporary UPN ending in A and confirm it validates.
        let body = "80120000500A";
        let ok = CHECK_LETTERS
            .iter()
            .map(|c| format!("{}{body}", *c as char))
            .filter(|u| check_upn(u).is_ok())
            .count();
        assert_eq!(ok, 1, "exactly one check letter fits");
    }

    #[test]
    fn uln_worked_examples() {
        assert!(check_uln("1000000043").is_ok());
        assert!(check_uln("1000000063").is_err());
        assert!(check_uln("9999999999").is_ok());
        assert!(check_uln("12345").is_err());
    }
}
