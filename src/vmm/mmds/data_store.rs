//! The metadata itself: one JSON document, replaced by `PUT /mmds`,
//! merged into by `PATCH /mmds` (JSON Merge Patch, RFC 7396), and read by
//! guests through JSON pointers (RFC 6901), as JSON or in EC2 IMDS's
//! plain-text form.
//!
//! The document's serialized size is held under a limit
//! (`--mmds-size-limit`); an update that would go over it changes
//! nothing.

use serde_json::{Map, Value};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataStoreError {
    #[error("the MMDS data store would be {size} bytes, over its limit of {limit} bytes (--mmds-size-limit)")]
    TooLarge { size: usize, limit: usize },
    #[error("the MMDS data store is not initialized: PUT /mmds first")]
    NotInitialized,
    #[error("the MMDS resource does not exist")]
    NotFound,
    #[error("cannot retrieve value: the value has an unsupported type for the IMDS format (only strings and objects)")]
    UnsupportedValueType,
}

/// How a value is rendered for a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    /// EC2 IMDS: an object lists its keys one per line (objects with a
    /// trailing `/`), a string is its own text; nothing else renders.
    Imds,
}

#[derive(Debug)]
pub struct DataStore {
    value: Value,
    /// Set by the first PUT; PATCH needs it.
    initialized: bool,
    limit: usize,
}

/// Counts serialized bytes without keeping them.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `v` as compact JSON.
pub fn json_size(v: &Value) -> usize {
    let mut c = Count(0);
    // Writing a Value cannot fail: its keys are strings and Count never
    // refuses bytes.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Merges `patch` into `target`, as RFC 7396 says: an object patch merges
/// key by key (a `null` removes the key), anything else replaces.
pub fn json_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(doc) = target {
        for (key, value) in patch {
            if value.is_null() {
                doc.remove(key);
            } else {
                json_patch(doc.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

impl DataStore {
    pub fn new(limit: usize) -> Self {
        DataStore {
            value: Value::Null,
            initialized: false,
            limit,
        }
    }

    fn check_size(&self, v: &Value) -> Result<(), DataStoreError> {
        let size = json_size(v);
        if size > self.limit {
            return Err(DataStoreError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// `PUT /mmds`: replaces the whole document.
    pub fn put(&mut self, v: Value) -> Result<(), DataStoreError> {
        self.check_size(&v)?;
        self.value = v;
        self.initialized = true;
        Ok(())
    }

    /// `PATCH /mmds`: merges `patch` in, or changes nothing if the result
    /// would be over the limit.
    pub fn patch(&mut self, patch: &Value) -> Result<(), DataStoreError> {
        if !self.initialized {
            return Err(DataStoreError::NotInitialized);
        }
        let mut merged = self.value.clone();
        json_patch(&mut merged, patch);
        self.check_size(&merged)?;
        self.value = merged;
        Ok(())
    }

    /// The whole document (`null` before the first PUT).
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The value at `path`, a JSON pointer whose trailing `/` (if any) is
    /// ignored, rendered as `format` says.
    pub fn get(&self, path: &str, format: OutputFormat) -> Result<String, DataStoreError> {
        let pointer = path.strip_suffix('/').unwrap_or(path);
        let v = self
            .value
            .pointer(pointer)
            .ok_or(DataStoreError::NotFound)?;
        match format {
            OutputFormat::Json => Ok(v.to_string()),
            OutputFormat::Imds => imds_text(v),
        }
    }
}

/// A value in IMDS form.
fn imds_text(v: &Value) -> Result<String, DataStoreError> {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect();
            Ok(keys.join("\n"))
        }
        Value::String(s) => Ok(s.clone()),
        _ => Err(DataStoreError::UnsupportedValueType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // The examples of RFC 7396, appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = target.clone();
            json_patch(&mut t, &patch);
            assert_eq!(t, want, "{target} + {patch}");
        }
    }

    #[test]
    fn put_patch_and_the_size_limit() {
        let mut s = DataStore::new(40);
        assert_eq!(
            s.patch(&json!({"a": 1})),
            Err(DataStoreError::NotInitialized)
        );
        assert_eq!(s.value(), &Value::Null);
        s.put(json!({"a": "b"})).unwrap();
        s.patch(&json!({"c": {"d": "e"}})).unwrap();
        assert_eq!(s.value(), &json!({"a": "b", "c": {"d": "e"}}));
        // 23 bytes now; a patch to 43 bytes is refused and changes nothing.
        let err = s.patch(&json!({"f": "0123456789abc"})).unwrap_err();
        assert_eq!(
            err,
            DataStoreError::TooLarge {
                size: 43,
                limit: 40
            }
        );
        assert_eq!(s.value(), &json!({"a": "b", "c": {"d": "e"}}));
        // Exactly at the limit is fine; one byte over is not.
        let at = json!({"k": "x".repeat(32)});
        assert_eq!(json_size(&at), 40);
        s.put(at.clone()).unwrap();
        let over = json!({"k": "x".repeat(33)});
        assert!(matches!(s.put(over), Err(DataStoreError::TooLarge { .. })));
        assert_eq!(s.value(), &at);
    }

    #[test]
    fn json_and_imds_rendering() {
        let mut s = DataStore::new(51200);
        s.put(json!({
            "latest": {"meta-data": {"ami-id": "ami-1", "net": {"mac": "m"}}},
            "age": 43, "list": ["x", "y"], "flag": false, "none": null
        }))
        .unwrap();
        let get = |p: &str, f| s.get(p, f);
        assert_eq!(
            get("/latest/meta-data", OutputFormat::Imds).unwrap(),
            "ami-id\nnet/"
        );
        assert_eq!(
            get("/latest/meta-data/", OutputFormat::Imds).unwrap(),
            "ami-id\nnet/"
        );
        assert_eq!(
            get("/latest/meta-data/ami-id", OutputFormat::Imds).unwrap(),
            "ami-1"
        );
        assert_eq!(
            get("/latest/meta-data/ami-id", OutputFormat::Json).unwrap(),
            "\"ami-1\""
        );
        assert_eq!(
            get("/latest", OutputFormat::Json).unwrap(),
            r#"{"meta-data":{"ami-id":"ami-1","net":{"mac":"m"}}}"#
        );
        assert_eq!(get("/list/1", OutputFormat::Imds).unwrap(), "y");
        assert_eq!(get("/age", OutputFormat::Json).unwrap(), "43");
        for p in ["/age", "/list", "/flag", "/none"] {
            assert_eq!(
                get(p, OutputFormat::Imds),
                Err(DataStoreError::UnsupportedValueType),
                "{p}"
            );
        }
        for p in ["/nope", "/latest/nope", "/list/7", "/age/x"] {
            assert_eq!(get(p, OutputFormat::Json), Err(DataStoreError::NotFound));
        }
        // The root: every top-level key.
        assert_eq!(
            get("/", OutputFormat::Imds).unwrap(),
            "age\nflag\nlatest/\nlist\nnone"
        );
    }
}
