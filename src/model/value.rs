//! Trait types, typed values, coercion of JSON input, and the order-preserving
//! `u64` keys that number and timestamp range indexes are built on.

use std::fmt;
use std::str::FromStr;

use super::{parse_rfc3339_ms, ModelError};

/// The type of a trait or event property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum TraitType {
    /// A string with few distinct values: dictionary-coded, one bitmap per value.
    Keyword,
    /// A string stored and returned, equality only, not bitmap-indexed (emails, names).
    Text,
    /// A 64-bit float, range-indexed.
    Number,
    /// `true` or `false`: two bitmaps.
    Bool,
    /// Milliseconds since the epoch, range-indexed. Declared only.
    Timestamp,
    /// A set of strings: one bitmap per element.
    List,
}

impl TraitType {
    /// Every type, in declaration order.
    pub const ALL: [TraitType; 6] = [
        TraitType::Keyword,
        TraitType::Text,
        TraitType::Number,
        TraitType::Bool,
        TraitType::Timestamp,
        TraitType::List,
    ];

    /// The type's name as written in schemas.
    pub fn name(self) -> &'static str {
        match self {
            TraitType::Keyword => "keyword",
            TraitType::Text => "text",
            TraitType::Number => "number",
            TraitType::Bool => "bool",
            TraitType::Timestamp => "timestamp",
            TraitType::List => "list",
        }
    }

    /// The type named `name` in a schema.
    pub fn parse(name: &str) -> Option<TraitType> {
        TraitType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The type's tag in snapshot files.
    pub fn tag(self) -> u8 {
        match self {
            TraitType::Keyword => 1,
            TraitType::Text => 2,
            TraitType::Number => 3,
            TraitType::Bool => 4,
            TraitType::Timestamp => 5,
            TraitType::List => 6,
        }
    }

    /// The type of a snapshot tag, if it is one.
    pub fn from_tag(tag: u8) -> Option<TraitType> {
        TraitType::ALL.into_iter().find(|t| t.tag() == tag)
    }

    /// The type a first value implies when no type was declared
    /// (INGEST.md: string → keyword, number → number, bool → bool, array of
    /// strings → list). `None` for null and for values no inferred type holds.
    pub fn infer(json: &serde_json::Value) -> Option<TraitType> {
        match json {
            serde_json::Value::String(_) => Some(TraitType::Keyword),
            serde_json::Value::Number(_) => Some(TraitType::Number),
            serde_json::Value::Bool(_) => Some(TraitType::Bool),
            serde_json::Value::Array(items) if items.iter().all(|v| v.is_string()) => Some(TraitType::List),
            _ => None,
        }
    }
}

impl fmt::Display for TraitType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TraitType {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraitType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ModelError::UnknownType(s.to_string()))
    }
}

/// A typed value of a trait or property.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    /// A keyword.
    Keyword(String),
    /// A text.
    Text(String),
    /// A number; never NaN, and `-0.0` is stored as `0.0`.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    /// A set of strings, sorted and without duplicates.
    List(Vec<String>),
}

impl Value {
    /// The value's type.
    pub fn trait_type(&self) -> TraitType {
        match self {
            Value::Keyword(_) => TraitType::Keyword,
            Value::Text(_) => TraitType::Text,
            Value::Number(_) => TraitType::Number,
            Value::Bool(_) => TraitType::Bool,
            Value::Timestamp(_) => TraitType::Timestamp,
            Value::List(_) => TraitType::List,
        }
    }

    /// A number value, normalised (`-0.0` becomes `0.0`). `None` for NaN.
    pub fn number(x: f64) -> Option<Value> {
        if x.is_nan() {
            None
        } else {
            Some(Value::Number(if x == 0.0 { 0.0 } else { x }))
        }
    }

    /// A list value, normalised to a sorted set.
    pub fn list<I: IntoIterator<Item = String>>(items: I) -> Value {
        let mut v: Vec<String> = items.into_iter().collect();
        v.sort();
        v.dedup();
        Value::List(v)
    }

    /// Coerces a JSON value into a value of type `ty`. `Ok(None)` means
    /// `null`, which unsets the trait. `name` is only used in errors.
    pub fn from_json(
        name: &str,
        ty: TraitType,
        json: &serde_json::Value,
    ) -> Result<Option<Value>, ModelError> {
        use serde_json::Value as J;
        let wrong = || ModelError::WrongType {
            name: name.to_string(),
            expected: ty.name().to_string(),
            found: describe_json(json),
        };
        if json.is_null() {
            return Ok(None);
        }
        let value = match (ty, json) {
            (TraitType::Keyword, J::String(s)) => Value::Keyword(s.clone()),
            (TraitType::Text, J::String(s)) => Value::Text(s.clone()),
            (TraitType::Number, J::Number(n)) => {
                Value::number(n.as_f64().ok_or_else(wrong)?).ok_or_else(wrong)?
            }
            (TraitType::Bool, J::Bool(b)) => Value::Bool(*b),
            (TraitType::Timestamp, J::String(s)) => {
                Value::Timestamp(parse_rfc3339_ms(s).ok_or_else(|| ModelError::WrongType {
                    name: name.to_string(),
                    expected: format!("timestamp (RFC 3339 or epoch milliseconds, {})", super::TIME_RANGE),
                    found: format!("the string {s:?}"),
                })?)
            }
            (TraitType::Timestamp, J::Number(n)) => match n.as_i64() {
                Some(ms) if super::time_in_range(ms) => Value::Timestamp(ms),
                Some(ms) => {
                    return Err(ModelError::WrongType {
                        name: name.to_string(),
                        expected: format!("timestamp ({})", super::TIME_RANGE),
                        found: format!("{ms} ms since the epoch"),
                    })
                }
                None => return Err(wrong()),
            },
            (TraitType::List, J::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        J::String(s) => out.push(s.clone()),
                        _ => {
                            return Err(ModelError::Unsupported {
                                name: name.to_string(),
                                reason: "a list holds strings only".to_string(),
                            })
                        }
                    }
                }
                Value::list(out)
            }
            _ => return Err(wrong()),
        };
        Ok(Some(value))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Keyword(s) | Value::Text(s) => write!(f, "{s:?}"),
            Value::Number(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Timestamp(ms) => f.write_str(&super::format_rfc3339_ms(*ms)),
            Value::List(items) => write!(f, "{items:?}"),
        }
    }
}

/// Describes a JSON value in words for error messages.
fn describe_json(json: &serde_json::Value) -> String {
    match json {
        serde_json::Value::Null => "null".to_string(),
        serde_json::Value::Bool(b) => format!("the bool {b}"),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) => format!("the string {s:?}"),
        serde_json::Value::Array(_) => "an array".to_string(),
        serde_json::Value::Object(_) => "an object".to_string(),
    }
}

/// The order-preserving key of a number: `a < b` if and only if
/// `num_key(a) < num_key(b)`, for every non-NaN float. Adjacent keys are
/// adjacent floats, so an exclusive bound becomes inclusive by adding one.
pub fn num_key(x: f64) -> u64 {
    let x = if x == 0.0 { 0.0 } else { x };
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// The number whose key is `key` (inverse of [`num_key`]).
pub fn key_to_num(key: u64) -> f64 {
    let bits = if key >> 63 == 1 { key & !(1 << 63) } else { !key };
    f64::from_bits(bits)
}

/// The order-preserving key of a timestamp in milliseconds.
pub fn time_key(ms: i64) -> u64 {
    (ms as u64) ^ (1 << 63)
}

/// The timestamp whose key is `key` (inverse of [`time_key`]).
pub fn key_to_time(key: u64) -> i64 {
    (key ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn number_keys_preserve_order() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1.0,
            -f64::MIN_POSITIVE,
            0.0,
            f64::MIN_POSITIVE,
            1.0,
            2.5,
            1e300,
            f64::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(num_key(w[0]) < num_key(w[1]), "{} < {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(key_to_num(num_key(x)), x);
        }
        assert_eq!(num_key(-0.0), num_key(0.0));
        assert_eq!(key_to_num(num_key(1.0) + 1), 1.0f64.next_up());
    }

    #[test]
    fn time_keys_preserve_order() {
        let ts = [i64::MIN, -5, -1, 0, 1, 5, i64::MAX];
        for w in ts.windows(2) {
            assert!(time_key(w[0]) < time_key(w[1]));
        }
        for t in ts {
            assert_eq!(key_to_time(time_key(t)), t);
        }
    }

    #[test]
    fn inference_follows_ingest_rules() {
        assert_eq!(TraitType::infer(&json!("x")), Some(TraitType::Keyword));
        assert_eq!(TraitType::infer(&json!(1.5)), Some(TraitType::Number));
        assert_eq!(TraitType::infer(&json!(true)), Some(TraitType::Bool));
        assert_eq!(TraitType::infer(&json!(["a", "b"])), Some(TraitType::List));
        assert_eq!(TraitType::infer(&json!([1, 2])), None);
        assert_eq!(TraitType::infer(&json!(null)), None);
    }

    #[test]
    fn coercion_names_trait_expected_and_found() {
        let err = Value::from_json("age", TraitType::Number, &json!("forty")).unwrap_err();
        assert_eq!(err.to_string(), "`age` is number, but the value is the string \"forty\"");
        assert_eq!(
            Value::from_json("t", TraitType::Timestamp, &json!("1970-01-01T00:00:01Z")).unwrap(),
            Some(Value::Timestamp(1000))
        );
        assert_eq!(
            Value::from_json("t", TraitType::Timestamp, &json!(1234)).unwrap(),
            Some(Value::Timestamp(1234))
        );
        assert_eq!(Value::from_json("x", TraitType::Keyword, &json!(null)).unwrap(), None);
        assert_eq!(
            Value::from_json("tags", TraitType::List, &json!(["b", "a", "b"])).unwrap(),
            Some(Value::List(vec!["a".into(), "b".into()]))
        );
        assert!(Value::from_json("tags", TraitType::List, &json!([1])).is_err());
    }

    #[test]
    fn timestamp_traits_follow_the_one_range_of_times() {
        for bad in [
            json!(super::super::MAX_TIME_MS + 1),
            json!(super::super::MIN_TIME_MS - 1),
            json!("10000-01-01T00:00:00Z"),
        ] {
            let err = Value::from_json("t", TraitType::Timestamp, &bad).unwrap_err().to_string();
            assert!(err.contains("9999-12-31T23:59:59.999Z"), "{bad}: {err}");
        }
        assert_eq!(
            Value::from_json("t", TraitType::Timestamp, &json!(super::super::MAX_TIME_MS)).unwrap(),
            Some(Value::Timestamp(super::super::MAX_TIME_MS))
        );
    }
}
