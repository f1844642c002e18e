//! A duration that operators write the way they think of it (`500ms`, `15m`, `6h`) and
//! that is stored and shown the same way.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a human string (`"500ms"`, `"5s"`, `"15m"`, `"6h"`).
///
/// A bare JSON number is accepted too and read as milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub fn as_millis(&self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
    /// Parses `"500ms"`, `"3s"`, `"15m"`, `"1h 30m"`; the error says what was wrong.
    pub fn parse(text: &str) -> Result<Dur, String> {
        humantime::parse_duration(text.trim()).map(Dur).map_err(|e| {
            format!("{text:?} is not a duration ({e}); write it like \"500ms\", \"5s\", \"15m\" or \"6h\"")
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Millis(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => Dur::parse(&t).map_err(serde::de::Error::custom),
            Raw::Millis(ms) => Ok(Dur::from_millis(ms)),
        }
    }
}

impl utoipa::PartialSchema for Dur {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A duration such as \"500ms\", \"5s\", \"15m\" or \"6h\"; a number is read as milliseconds",
            ))
            .examples(["15m"])
            .into()
    }
}

impl utoipa::ToSchema for Dur {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_human_text() {
        for text in ["500ms", "5s", "15m", "6h", "1h 30m"] {
            let d = Dur::parse(text).unwrap();
            let json = serde_json::to_string(&d).unwrap();
            let back: Dur = serde_json::from_str(&json).unwrap();
            assert_eq!(d, back, "{text}");
        }
        assert_eq!(serde_json::from_str::<Dur>("1500").unwrap().as_millis(), 1500);
    }

    #[test]
    fn bad_text_names_the_value() {
        let err = serde_json::from_str::<Dur>("\"soon\"").unwrap_err().to_string();
        assert!(err.contains("\"soon\" is not a duration"), "{err}");
    }
}
