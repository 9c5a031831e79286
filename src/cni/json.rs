//! Walking a parsed `serde_json::Value` key by key, so that every error can name the key as
//! written in the file. Keys the model does not know are simply never looked at, which is how
//! the Go plugins treat them. JSON `null` counts as absent, as Go's decoder leaves the field at
//! its zero value.

use serde_json::{Map, Value};

use super::CniError;

/// Longest rendering of a wrong value in an error, so a huge array does not flood the answer.
const MAX_RENDER: usize = 60;

/// `v` as compact JSON, shortened for error messages.
pub(crate) fn render(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= MAX_RENDER {
        return s;
    }
    let cut: String = s.chars().take(MAX_RENDER).collect();
    format!("{cut}…")
}

/// One JSON object and the key path that leads to it (`"plugins[0].ipam."`).
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub file: &'a str,
    pub prefix: &'a str,
    pub map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    /// The full key path of `key` inside this object.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub fn wrong_type(&self, key: &str, expected: &'static str, got: &Value) -> CniError {
        wrong_type(self.file, self.key(key), expected, got)
    }

    pub fn invalid(&self, key: &str, value: &Value, reason: impl Into<String>) -> CniError {
        CniError::Invalid {
            file: self.file.to_string(),
            key: self.key(key),
            value: render(value),
            reason: reason.into(),
        }
    }

    pub fn missing(&self, key: &str, hint: &str) -> CniError {
        CniError::Missing {
            file: self.file.to_string(),
            key: self.key(key),
            hint: hint.to_string(),
        }
    }

    /// The value of `key`; `null` is treated as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    pub fn boolean(&self, key: &str) -> Result<Option<bool>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "true or false", v)),
        }
    }

    /// A JSON integer (Go decodes `1500.0` into an int field as an error, and so do we).
    pub fn integer(&self, key: &str) -> Result<Option<i128>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => integer(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "an integer", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, "an array", v)),
        }
    }

    pub fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.wrong_type(key, "an object", v)),
        }
    }

    /// An array of strings (`dns.search`, …).
    pub fn strings(&self, key: &str) -> Result<Vec<String>, CniError> {
        let Some(items) = self.array(key)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(self.wrong_type(&format!("{key}[{i}]"), "a string", v)),
            })
            .collect()
    }
}

/// A JSON number that is an integer, widened so that neither i64 nor u64 values are lost.
pub(crate) fn integer(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        _ => None,
    }
}

pub(crate) fn wrong_type(file: &str, key: String, expected: &'static str, got: &Value) -> CniError {
    CniError::WrongType {
        file: file.to_string(),
        key,
        expected,
        got: render(got),
    }
}
