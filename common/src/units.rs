//! Human-readable quantities for consoles and reports.

/// `268435456` -> `256.0 MiB`. Binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Six bytes as `52:54:00:12:34:56`.
/// A size such as `500G`, `2T`, `800M`, `1.5T`, `4096` (bytes) or with
/// `iB`/`B` suffixes; powers of 1024. None if it is not one, or overflows.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix("iB").or_else(|| s.strip_suffix('B')).unwrap_or(s);
    let (num, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        (i, 'T' | 't') => (&s[..i], 40),
        (i, 'P' | 'p') => (&s[..i], 50),
        _ => (s, 0),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let whole: u64 = whole.parse().ok()?;
    let mut bytes = whole.checked_mul(1u64 << shift)?;
    if !frac.is_empty() {
        let digits = frac.len().min(6) as u32;
        let f: u64 = frac[..digits as usize].parse().ok()?;
        bytes = bytes.checked_add(((f as u128 * (1u128 << shift)) / 10u128.pow(digits)) as u64)?;
    }
    Some(bytes)
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `52:54:00:12:34:56` (case-insensitive, `-` also accepted).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for b in &mut out {
        let p = parts.next()?;
        // Two hex digits: from_str_radix alone would also take `+f`.
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`; the inverse of [`civil`]'s date).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// UTC `(year, month, day, seconds into the day)` from Unix seconds
/// (civil-from-days, H. Hinnant).
pub fn civil(t: i64) -> (i64, i64, i64, i64) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs)
}

/// `2026-11-25` (UTC) from Unix seconds.
pub fn utc_date(t: i64) -> String {
    let (y, m, d, _) = civil(t);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-11-25 09:49` (UTC) from Unix seconds.
pub fn utc_datetime(t: i64) -> String {
    let (_, _, _, secs) = civil(t);
    format!("{} {:02}:{:02}", utc_date(t), secs / 3600, (secs % 3600) / 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        use super::parse_size;
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("500G"), Some(500 << 30));
        assert_eq!(parse_size("2TiB"), Some(2 << 40));
        assert_eq!(parse_size("1.5T"), Some(3 << 39));
        assert_eq!(parse_size("800MB"), Some(800 << 20));
        for bad in ["", "G", "1..5G", "-1G", "12X", "99999999999P"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn bytes() {
        for (n, s) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (268_435_456, "256.0 MiB"),
            (1_610_612_736, "1.5 GiB"),
            (u64::MAX, "16.0 EiB"),
        ] {
            assert_eq!(human_bytes(n), s);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(utc_datetime(0), "1970-01-01 00:00");
        assert_eq!(utc_datetime(1_795_546_469), "2026-11-24 18:54");
        assert_eq!(utc_datetime(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_date(-1), "1969-12-31");
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("52:54:00:AB:cd:0f"), Some([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]));
        assert_eq!(mac_string([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]), "52:54:00:ab:cd:0f");
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:00", "5:54:00:ab:cd:0f", "zz:54:00:ab:cd:0f"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    /// Found by fuzzing (fuzz/fuzz_targets/mac.rs): `u8::from_str_radix`
    /// takes a sign, so `+d` passed as a group and one MAC had two spellings.
    #[test]
    fn mac_groups_are_two_hex_digits_without_a_sign() {
        assert_eq!(parse_mac("Ed-+d-Ed-Ed-Ed-dd"), None);
        assert_eq!(parse_mac("+2:54:00:ab:cd:0f"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:-f"), None);
        assert_eq!(parse_mac("Ed-0d-Ed-Ed-Ed-dd"), Some([0xed, 0x0d, 0xed, 0xed, 0xed, 0xdd]));
    }
}
