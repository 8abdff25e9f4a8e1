//! Durations (`30s`, `10m`, `1h30m`) and sizes (`512MiB`, `1G`), parsed
//! strictly: a unit is always required, so `timeout: 30` is an error rather
//! than a guess between seconds and minutes.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};

/// A length of time, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a duration or size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Empty text.
    #[error("empty value")]
    Empty,
    /// A number without a unit.
    #[error("`{0}` has no unit")]
    NoUnit(String),
    /// A unit we do not know.
    #[error("unknown unit `{unit}` in `{text}`")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole value.
        text: String,
    },
    /// Something that is not a number where one was expected.
    #[error("`{0}` is not a number followed by a unit")]
    Malformed(String),
    /// Units out of order or repeated (`30s1m`, `1m1m`).
    #[error("units in `{0}` must go from largest to smallest, each at most once")]
    Order(String),
    /// Too large to represent.
    #[error("`{0}` is too large")]
    Overflow(String),
}

pub(super) const DURATION_UNITS: &[(&str, u64)] = &[
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

const KI: u64 = 1024;
pub(super) const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("K", KI),
    ("Ki", KI),
    ("KiB", KI),
    ("KB", 1000),
    ("M", KI * KI),
    ("Mi", KI * KI),
    ("MiB", KI * KI),
    ("MB", 1000 * 1000),
    ("G", KI * KI * KI),
    ("Gi", KI * KI * KI),
    ("GiB", KI * KI * KI),
    ("GB", 1000 * 1000 * 1000),
    ("T", KI * KI * KI * KI),
    ("Ti", KI * KI * KI * KI),
    ("TiB", KI * KI * KI * KI),
    ("TB", 1000 * 1000 * 1000 * 1000),
];

/// Splits `12ab34cd` into `[(12, "ab"), (34, "cd")]`.
fn components(text: &str) -> Result<Vec<(u64, &str)>, UnitError> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(UnitError::Malformed(text.to_owned()));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| UnitError::Overflow(text.to_owned()))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        if unit_len == 0 {
            return Err(if rest.is_empty() {
                UnitError::NoUnit(text.to_owned())
            } else {
                UnitError::Malformed(text.to_owned())
            });
        }
        out.push((n, &rest[..unit_len]));
        rest = &rest[unit_len..];
    }
    Ok(out)
}

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(UnitError::Empty);
        }
        let mut total: u64 = 0;
        let mut last_rank = None;
        for (n, unit) in components(text)? {
            let Some(rank) = DURATION_UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(UnitError::UnknownUnit {
                    unit: unit.to_owned(),
                    text: text.to_owned(),
                });
            };
            if last_rank.is_some_and(|r| rank <= r) {
                return Err(UnitError::Order(text.to_owned()));
            }
            last_rank = Some(rank);
            let ms = n
                .checked_mul(DURATION_UNITS[rank].1)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| UnitError::Overflow(text.to_owned()))?;
            total = ms;
        }
        Ok(Duration(std::time::Duration::from_millis(total)))
    }
}

impl fmt::Display for Duration {
    /// The canonical form: largest units first, zero parts left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in DURATION_UNITS {
            if ms >= *size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(UnitError::Empty);
        }
        match components(text)?.as_slice() {
            [(n, unit)] => {
                let Some((_, mult)) = SIZE_UNITS.iter().find(|(u, _)| u == unit) else {
                    return Err(UnitError::UnknownUnit {
                        unit: (*unit).to_owned(),
                        text: text.to_owned(),
                    });
                };
                n.checked_mul(*mult)
                    .map(ByteSize)
                    .ok_or_else(|| UnitError::Overflow(text.to_owned()))
            }
            _ => Err(UnitError::Malformed(text.to_owned())),
        }
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [
            ("TiB", KI.pow(4)),
            ("GiB", KI.pow(3)),
            ("MiB", KI.pow(2)),
            ("KiB", KI),
        ] {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A hint for how to write a value with a unit.
fn unit_help(kind: &str) -> &'static str {
    if kind == "duration" {
        "write a number with a unit: `500ms`, `30s`, `10m`, `1h30m`, `2d`"
    } else {
        "write a number with a unit: `512MiB`, `1G` (binary: K, M, G, T, KiB, MiB, GiB, TiB; decimal: KB, MB, GB, TB)"
    }
}

macro_rules! unit_serde {
    ($ty:ident, $kind:literal, $pattern:literal, $grammar:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", $kind, " such as `", $pattern, "`"))
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$ty, E> {
                        s.parse().map_err(|e: UnitError| {
                            E::custom(format_args!(
                                concat!("invalid ", $kind, ": {}; {}"),
                                e,
                                unit_help($kind)
                            ))
                        })
                    }
                    fn visit_i64<E: de::Error>(self, n: i64) -> Result<$ty, E> {
                        Err(E::custom(format_args!(
                            concat!("invalid ", $kind, ": `{}` has no unit; {}"),
                            n,
                            unit_help($kind)
                        )))
                    }
                    fn visit_u64<E: de::Error>(self, n: u64) -> Result<$ty, E> {
                        self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": unit_help($kind),
                    "examples": [$pattern],
                    "pattern": $grammar,
                })
            }
        }
    };
}

unit_serde!(
    Duration,
    "duration",
    "30s",
    super::schema::duration_pattern(DURATION_UNITS)
);
unit_serde!(
    ByteSize,
    "size",
    "512MiB",
    super::schema::size_pattern(SIZE_UNITS)
);

impl Duration {
    /// A duration of whole seconds.
    pub const fn secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }

    /// A duration of whole milliseconds.
    pub const fn millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<u128, UnitError> {
        s.parse::<Duration>().map(|d| d.0.as_millis())
    }

    #[test]
    fn durations_combine_units_largest_first() {
        assert_eq!(d("30s"), Ok(30_000));
        assert_eq!(d("10m"), Ok(600_000));
        assert_eq!(d("1h30m"), Ok(5_400_000));
        assert_eq!(d("1d2h3m4s5ms"), Ok(93_784_005));
        assert_eq!(d("250ms"), Ok(250));
    }

    #[test]
    fn durations_without_unit_or_out_of_order_are_rejected() {
        assert_eq!(d("30"), Err(UnitError::NoUnit("30".into())));
        assert!(matches!(d("30x"), Err(UnitError::UnknownUnit { .. })));
        assert_eq!(d("30s1m"), Err(UnitError::Order("30s1m".into())));
        assert_eq!(d("1m1m"), Err(UnitError::Order("1m1m".into())));
        assert_eq!(d("1.5h"), Err(UnitError::Malformed("1.5h".into())));
        assert_eq!(d("-1s"), Err(UnitError::Malformed("-1s".into())));
        assert_eq!(d(""), Err(UnitError::Empty));
        assert!(matches!(
            d("99999999999999999999d"),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn durations_display_canonically() {
        assert_eq!("90m".parse::<Duration>().unwrap().to_string(), "1h30m");
        assert_eq!("0s".parse::<Duration>().unwrap().to_string(), "0s");
        assert_eq!("1500ms".parse::<Duration>().unwrap().to_string(), "1s500ms");
    }

    #[test]
    fn sizes_know_binary_and_decimal_units() {
        assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("1G".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("1GB".parse::<ByteSize>(), Ok(ByteSize(1_000_000_000)));
        assert_eq!("10B".parse::<ByteSize>(), Ok(ByteSize(10)));
        assert_eq!("2Ki".parse::<ByteSize>(), Ok(ByteSize(2048)));
    }

    #[test]
    fn sizes_reject_bare_numbers_bad_units_and_overflow() {
        assert_eq!(
            "512".parse::<ByteSize>(),
            Err(UnitError::NoUnit("512".into()))
        );
        assert!(matches!(
            "5mb".parse::<ByteSize>(),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "1G1M".parse::<ByteSize>(),
            Err(UnitError::Malformed(_))
        ));
        assert!(matches!(
            "99999999TiB".parse::<ByteSize>(),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize(1_000_000_000).to_string(), "1000000000B");
        assert_eq!(ByteSize(3 << 40).to_string(), "3TiB");
    }
}
