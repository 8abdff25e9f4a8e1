//! A step's `cache` setting: `true`, `false`, or `{ failures: true }`.
//! Without one, a step is cached when it is hermetic (see `docs/cache.md`).

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Serialize};

/// Whether a step's result may be reused by later runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheSetting {
    /// Never: the step always runs (`cache: false`).
    Off,
    /// Yes, even where the default says no (an allow-list, an `always()`
    /// step); failures too when `failures` is set.
    On { failures: bool },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheMap {
    failures: bool,
}

impl<'de> Deserialize<'de> for CacheSetting {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CacheSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`true`, `false` or `{ failures: true }`")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<CacheSetting, E> {
                Ok(if b {
                    CacheSetting::On { failures: false }
                } else {
                    CacheSetting::Off
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<CacheSetting, A::Error> {
                let m = CacheMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(CacheSetting::On {
                    failures: m.failures,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for CacheSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            CacheSetting::Off => s.serialize_bool(false),
            CacheSetting::On { failures: false } => s.serialize_bool(true),
            CacheSetting::On { failures: true } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("failures", &true)?;
                m.end()
            }
        }
    }
}

impl JsonSchema for CacheSetting {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cache".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Reuse the step's result when nothing it depends on changed. Default: cached when hermetic (`egress: none`, not an `always()`/`failure()` step) and passed. `false` always runs it; `true` also caches a step with an allow-list or an `if:`; `{ failures: true }` also keeps failed results.",
            "oneOf": [
                { "type": "boolean" },
                {
                    "type": "object",
                    "properties": { "failures": { "type": "boolean" } },
                    "required": ["failures"],
                    "additionalProperties": false,
                },
            ],
        })
    }
}
