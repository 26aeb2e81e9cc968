//! Config values shared by the roles and the binary: the configuration error (every one
//! names the file or the key at fault, and the value), the duration syntax (`250ms`,
//! `1.5s`, `10m`, `48h`, `2d`) both ways, and a serde adapter for duration fields of a
//! role's `[roles.NAME]` section.
//!
//! Not here: the merging of sources or the node's own sections (the binary's
//! `pylon/src/config.rs`), nor any role's keys (each role's `Config`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A configuration mistake, naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("config key `{key}` has invalid value {value:?}: {message}")]
    Value {
        key: String,
        value: String,
        message: String,
    },
}

/// `key` has the invalid `value`, for `message`'s reason.
pub fn bad(key: &str, value: &str, message: &str) -> Error {
    Error::Value {
        key: key.into(),
        value: value.into(),
        message: message.into(),
    }
}

/// The longest duration a key takes (100 years): anything longer is a typo, and would
/// overflow `Instant` arithmetic further down.
pub const MAX_DURATION: Duration = Duration::from_secs(36_525 * 86_400);

/// Parses `250ms`, `10s`, `1.5s`, `0.5m`, `1h`, `2d`: a decimal number (at most nine
/// fraction digits) and a unit. Zero, and more than [`MAX_DURATION`], are refused; the
/// error names `key` and the value.
pub fn duration(key: &str, s: &str) -> Result<Duration, Error> {
    parse_duration(s).map_err(|m| bad(key, s, &m))
}

/// [`duration`] without a key: the reason a value is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const NOT_A_NUMBER: &str = "expected a number with a unit, e.g. 10s or 1.5s";
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_ns: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        _ if num.is_empty() => return Err(NOT_A_NUMBER.into()),
        _ => return Err("unit must be one of ms, s, m, h, d".into()),
    };
    let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (num.contains('.') && !digits(fraction)) {
        return Err(NOT_A_NUMBER.into());
    }
    if fraction.len() > 9 {
        return Err("at most 9 digits after the decimal point".into());
    }
    let too_long = || "longer than 100 years".to_string();
    // At most 39 digits fit a u128; longer is far past the bound anyway.
    let whole: u128 = whole.parse().map_err(|_| too_long())?;
    let fraction_ns = if fraction.is_empty() {
        0
    } else {
        let f: u128 = fraction.parse().map_err(|_| too_long())?;
        f * unit_ns / 10u128.pow(fraction.len() as u32)
    };
    let ns = whole
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(fraction_ns))
        .ok_or_else(too_long)?;
    if ns > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    let d = Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32);
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Writes a duration the way the docs do, in the largest of `h`, `m`, `s`, `ms` that
/// divides it (`48h`, `10m`, `30s`, `250ms`), else in seconds with a fraction; what
/// [`parse_duration`] reads back exactly.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, unit_ns) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
    ] {
        if ns > 0 && ns.is_multiple_of(unit_ns) {
            return format!("{}{unit}", ns / unit_ns);
        }
    }
    let fraction = format!("{:09}", d.subsec_nanos());
    format!("{}.{}s", d.as_secs(), fraction.trim_end_matches('0'))
}

/// `#[serde(with = "pylon_roles::config::serde_duration")]` on a `Duration` field: read
/// with [`parse_duration`] (the error quotes the value; the caller adds the key), written
/// with [`format_duration`].
pub mod serde_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map_err(|m| serde::de::Error::custom(format!("invalid value {s:?}: {m}")))
    }
}

/// `#[serde(deserialize_with = "pylon_roles::config::string_list")]` on a `Vec<String>`
/// field: a TOML array, or one string of comma-separated items (what a `PYLON_A__B=x,y`
/// environment variable gives for a key the embedded default does not write, so its type
/// is unknown there). Items are trimmed; empty ones dropped.
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_list_is_an_array_or_a_comma_separated_string() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "string_list")]
            l: Vec<String>,
        }
        let t: T = toml::from_str("l = [\"a\", \"b\"]").unwrap();
        assert_eq!(t.l, ["a", "b"]);
        let t: T = toml::from_str("l = \" a, b ,,\"").unwrap();
        assert_eq!(t.l, ["a", "b"]);
        assert!(toml::from_str::<T>("l = 3").is_err());
    }

    #[test]
    fn formatted_durations_read_back_exactly() {
        for (d, text) in [
            (Duration::from_secs(48 * 3600), "48h"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(500), "0.0005s"),
            (Duration::from_nanos(1_000_000_001), "1.000000001s"),
            (MAX_DURATION, "876600h"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn errors_name_the_key_and_quote_the_value() {
        let e = duration("roles.x.wait", "soon").unwrap_err().to_string();
        assert!(e.contains("roles.x.wait") && e.contains("\"soon\""), "{e}");
    }
}
