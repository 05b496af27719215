//! JSON parsing that refuses duplicate object keys.
//!
//! `serde_json` keeps the last of two equal keys. Two readers of one signed entry could then
//! disagree about what it says (one implementation takes the first, another the last), so
//! every record and entry payload is parsed here, and a duplicate key is an error naming it.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let v = map.next_value_seed(StrictValue)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A JSON value read with duplicate keys refused; usable wherever serde wants a
/// `Deserialize` type (e.g. serde_json's stream deserializer for NDJSON).
#[derive(Debug, Clone, PartialEq)]
pub struct StrictJson(pub Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrictJson, D::Error> {
        StrictValue.deserialize(d).map(StrictJson)
    }
}

/// Parses one JSON value, refusing duplicate keys at any depth.
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<StrictJson>(text).map(|v| v.0)
}

/// Parses one JSON value from bytes, refusing duplicate keys at any depth.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<StrictJson>(bytes).map(|v| v.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(from_str(r#"{"a":1,"b":{"c":2}}"#).is_ok());
        let e = from_str(r#"{"a":1,"a":2}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key \"a\""), "{e}");
        assert!(from_str(r#"{"a":[{"b":1,"b":1}]}"#).is_err());
        assert!(from_str(r#"{"a":1} x"#).is_err());
        assert_eq!(from_str("1.5").unwrap(), serde_json::json!(1.5));
    }
}
