//! Byte counts on the command line: sizes, offsets and lengths, and the fill byte of
//! `write --pattern`.
//!
//! Rules: a decimal number with an optional binary suffix — `K`, `M`, `G`, `T` (×1024ⁿ, any
//! case, optionally followed by `iB` or `B`: `16M`, `16MiB`, `16mb`), or `B` for bytes — or a
//! hexadecimal number `0x…` without suffix. No sign, no fractions, no overflow: every error
//! names the value it could not read, so clap can report it against the flag.

/// The multiplier of a suffix (case-insensitive), or `None` if it is not one.
fn multiplier(suffix: &str) -> Option<u64> {
    let s = suffix.to_ascii_lowercase();
    let unit = s.strip_suffix("ib").or_else(|| s.strip_suffix('b')).unwrap_or(&s);
    match unit {
        "" => Some(1),
        "k" => Some(1 << 10),
        "m" => Some(1 << 20),
        "g" => Some(1 << 30),
        "t" => Some(1 << 40),
        _ => None,
    }
}

/// Parses a byte count: `4096`, `0x1000`, `16K`, `32M`, `1G`, `2TiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty size (expected a number such as 4096, 0x1000, 16M or 1G)".into());
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| {
            format!("{text:?} is not a hexadecimal number (hex sizes take no suffix)")
        });
    }
    if s.starts_with('-') {
        return Err(format!("{text:?}: sizes cannot be negative"));
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size (expected a number such as 4096, 16M or 1G)"));
    }
    if suffix.starts_with(['.', ',']) {
        return Err(format!("{text:?}: fractions are not supported (write 1536K, not 1.5M)"));
    }
    let mult = multiplier(suffix).ok_or_else(|| {
        format!("{text:?}: unknown suffix {suffix:?} (use K, M, G or T, powers of 1024)")
    })?;
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is too large"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{text:?} is too large (more than 2^64 - 1 bytes)"))
}

/// Parses a fill byte: `0`…`255` or `0x00`…`0xff`.
pub fn parse_byte(text: &str) -> Result<u8, String> {
    let s = text.trim();
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse::<u64>().ok(),
    };
    v.and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| format!("{text:?} is not a byte (expected 0 to 255, or 0x00 to 0xff)"))
}

/// A byte count for people: `65536 (64 KiB)` style, exact when it divides.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] =
        [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, unit) in UNITS {
        if bytes >= unit {
            return if bytes.is_multiple_of(unit) {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_parse_table() {
        let t: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("0x1000", 4096),
            ("0X1f", 31),
            ("16K", 16 << 10),
            ("16k", 16 << 10),
            ("16KiB", 16 << 10),
            ("16kb", 16 << 10),
            ("32M", 32 << 20),
            ("1G", 1 << 30),
            ("2T", 2 << 40),
            ("7B", 7),
            (" 8M ", 8 << 20),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, want) in t {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn size_parse_errors_name_the_value() {
        for bad in [
            "",
            "M",
            "12Q",
            "1.5M",
            "-1",
            "0x",
            "0x10M",
            "99999999999999999999",
            "16777216T",
            "1 2",
        ] {
            let e = parse_size(bad).expect_err(bad);
            if !bad.trim().is_empty() {
                assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn byte_parse_table() {
        assert_eq!(parse_byte("0"), Ok(0));
        assert_eq!(parse_byte("255"), Ok(255));
        assert_eq!(parse_byte("0xab"), Ok(0xab));
        for bad in ["256", "-1", "x", "0x100", ""] {
            assert!(parse_byte(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(4095), "4.0 KiB");
        assert_eq!(human(65536), "64 KiB");
        assert_eq!(human(32 << 20), "32 MiB");
        assert_eq!(human(1536 << 10), "1.5 MiB");
    }
}
