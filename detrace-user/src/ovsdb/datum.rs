//! OVSDB values as they travel in JSON (RFC 7047 section 5.1): atoms, `["set", [...]]`,
//! `["map", [[k, v], ...]]`, `["uuid", "..."]`.

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value;

use crate::uuid::Uuid;

#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    Str(String),
    Int(i64),
    Real(f64),
    Bool(bool),
    Uuid(Uuid),
    Set(Vec<Datum>),
    Map(Vec<(Datum, Datum)>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed OVSDB value: {json}")]
pub struct DatumError {
    pub json: String,
}

fn bad(v: &Value) -> DatumError {
    let mut json = v.to_string();
    json.truncate(200);
    DatumError { json }
}

impl Datum {
    pub fn from_json(v: &Value) -> Result<Self, DatumError> {
        match v {
            Value::String(s) => Ok(Self::Str(s.clone())),
            Value::Bool(b) => Ok(Self::Bool(*b)),
            Value::Number(n) => n
                .as_i64()
                .map(Self::Int)
                .or_else(|| n.as_f64().map(Self::Real))
                .ok_or_else(|| bad(v)),
            Value::Array(a) => match (a.first().and_then(Value::as_str), a.get(1), a.len()) {
                (Some("uuid" | "named-uuid"), Some(Value::String(u)), 2) => {
                    u.parse().map(Self::Uuid).map_err(|_| bad(v))
                }
                (Some("set"), Some(Value::Array(items)), 2) => items
                    .iter()
                    .map(Self::from_json)
                    .collect::<Result<_, _>>()
                    .map(Self::Set),
                (Some("map"), Some(Value::Array(pairs)), 2) => pairs
                    .iter()
                    .map(|p| match p.as_array().map(Vec::as_slice) {
                        Some([k, val]) => Ok((Self::from_json(k)?, Self::from_json(val)?)),
                        _ => Err(bad(p)),
                    })
                    .collect::<Result<_, _>>()
                    .map(Self::Map),
                _ => Err(bad(v)),
            },
            _ => Err(bad(v)),
        }
    }

    /// The elements of a set; a lone atom is a set of one (RFC 7047 5.1).
    pub fn elems(&self) -> &[Datum] {
        match self {
            Self::Set(v) => v,
            other => std::slice::from_ref(other),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            Self::Set(v) if v.len() == 1 => v[0].as_str(),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Set(v) if v.len() == 1 => v[0].as_int(),
            _ => None,
        }
    }

    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Self::Uuid(u) => Some(*u),
            Self::Set(v) if v.len() == 1 => v[0].as_uuid(),
            _ => None,
        }
    }

    pub fn uuids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.elems().iter().filter_map(Datum::as_uuid)
    }

    /// Looks up a string key of a map column (external_ids, options...).
    pub fn get(&self, key: &str) -> Option<&Datum> {
        match self {
            Self::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Datum::as_str)
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Set(v) if v.is_empty()) || matches!(self, Self::Map(v) if v.is_empty())
    }
}

impl std::fmt::Display for Datum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Real(r) => write!(f, "{r}"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Uuid(u) => write!(f, "{u}"),
            Self::Set(v) if v.len() == 1 => write!(f, "{}", v[0]),
            Self::Set(v) => {
                write!(f, "[")?;
                for (i, d) in v.iter().enumerate() {
                    write!(f, "{}{d}", if i > 0 { ", " } else { "" })?;
                }
                write!(f, "]")
            }
            Self::Map(v) => {
                write!(f, "{{")?;
                for (i, (k, d)) in v.iter().enumerate() {
                    write!(f, "{}{k}={d}", if i > 0 { ", " } else { "" })?;
                }
                write!(f, "}}")
            }
        }
    }
}

impl Serialize for Datum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Str(v) => s.serialize_str(v),
            Self::Int(v) => s.serialize_i64(*v),
            Self::Real(v) => s.serialize_f64(*v),
            Self::Bool(v) => s.serialize_bool(*v),
            Self::Uuid(v) => v.serialize(s),
            Self::Set(v) => v.serialize(s),
            Self::Map(v) => {
                let mut m = s.serialize_map(Some(v.len()))?;
                for (k, d) in v {
                    match k {
                        Self::Str(k) => m.serialize_entry(k, d)?,
                        other => m.serialize_entry(&other.to_string(), d)?,
                    }
                }
                m.end()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn atoms_sets_maps() {
        let d = Datum::from_json(&json!([
            "map",
            [["stage-hint", "fffcc8f2"], ["stage-name", "ls_out_acl"]]
        ]))
        .unwrap();
        assert_eq!(d.get_str("stage-hint"), Some("fffcc8f2"));
        let u = Datum::from_json(&json!(["uuid", "278e00d4-841d-4ddf-a806-7ce7a0174f39"])).unwrap();
        assert_eq!(u.as_uuid().map(|u| u.prefix32()), Some(0x278e00d4));
        let empty = Datum::from_json(&json!(["set", []])).unwrap();
        assert!(empty.is_empty() && empty.as_uuid().is_none());
        assert_eq!(
            Datum::from_json(&json!(["set", ["tcp"]])).unwrap().as_str(),
            Some("tcp")
        );
        assert_eq!(
            serde_json::to_string(
                &Datum::from_json(&json!(["map", [["10.0.0.100:80", "10.0.0.12:8080"]]])).unwrap()
            )
            .unwrap(),
            r#"{"10.0.0.100:80":"10.0.0.12:8080"}"#
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        for v in [
            json!(["uuid", "nope"]),
            json!(["map", [["k"]]]),
            json!({"a": 1}),
            json!(null),
            json!(["set"]),
        ] {
            assert!(Datum::from_json(&v).is_err(), "{v}");
        }
    }
}
