//! husk's API document against Firecracker's contract.
//!
//! `tests/data/firecracker-1.17-api.txt` lists every operation of
//! Firecracker v1.17's API and every field of the schemas they take and
//! answer. `docs/api/vmm.yaml` (OpenAPI 3) must have each of them, with
//! the same types, the same required fields and at least the same
//! allowed values. What husk adds is marked:
//!
//! - `x-husk-extension: true` on an operation or a field Firecracker
//!   does not have;
//! - `x-husk-extension-values: [..]` for allowed values it adds;
//! - `x-husk-unsupported: {value: reason}` for a value Firecracker
//!   allows that husk refuses (each with the reason);
//! - `x-husk-required: reason` on a field husk requires and Firecracker's
//!   document does not, where Firecracker's server requires it all the
//!   same (the reason says so).
//!
//! A second test sends every operation in the document to a real
//! `husk vmm`, so the document cannot name a route the server lacks.

mod common;

use std::collections::BTreeMap;

use common::{kvm_available, Vmm};
use serde_json::Value;

const CONTRACT: &str = include_str!("data/firecracker-1.17-api.txt");
const DOC: &str = include_str!("../docs/api/vmm.yaml");

/// Differences from Firecracker's API still to be closed (each the start
/// of the checker's message).
const NOT_YET: &[&str] = &[];

#[derive(Clone, Debug, PartialEq)]
enum Ty {
    Str,
    Int,
    Bool,
    Obj,
    Named(String),
    Array(Box<Ty>),
}

impl Ty {
    fn parse(s: &str) -> Ty {
        match s {
            "string" => Ty::Str,
            "integer" => Ty::Int,
            "boolean" => Ty::Bool,
            "object" => Ty::Obj,
            _ => match s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                Some(inner) => Ty::Array(Box::new(Ty::parse(inner))),
                None => Ty::Named(s.to_string()),
            },
        }
    }
}

#[derive(Debug)]
struct Field {
    ty: Ty,
    required: bool,
    values: Vec<String>,
}

#[derive(Debug)]
struct Body {
    schema: String,
    optional: bool,
    partial: bool,
}

#[derive(Debug)]
struct Op {
    method: String,
    path: String,
    body: Option<Body>,
    answer: Option<String>,
}

type Schema = BTreeMap<String, Field>;

#[derive(Debug, Default)]
struct Contract {
    ops: Vec<Op>,
    schemas: BTreeMap<String, Schema>,
}

fn parse_contract(text: &str) -> Contract {
    let mut c = Contract::default();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(field_line) = line.strip_prefix("  ") {
            let schema = current
                .as_ref()
                .unwrap_or_else(|| panic!("line {n}: a field outside a schema"));
            let (name, rest) = field_line
                .split_once(' ')
                .unwrap_or_else(|| panic!("line {n}: no type"));
            let (ty, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let required = rest.starts_with("required");
            let values = rest
                .split_once("enum ")
                .map(|(_, v)| v.split('|').map(str::to_string).collect())
                .unwrap_or_default();
            let field = Field {
                ty: Ty::parse(ty),
                required,
                values,
            };
            c.schemas
                .get_mut(schema)
                .unwrap()
                .insert(name.to_string(), field);
            continue;
        }
        match words[0] {
            "op" => {
                let mut op = Op {
                    method: words[1].to_string(),
                    path: words[2].to_string(),
                    body: None,
                    answer: None,
                };
                let mut i = 3;
                while i < words.len() {
                    match words[i] {
                        "body" => {
                            op.body = Some(Body {
                                schema: words[i + 1].to_string(),
                                optional: words[i + 2..].contains(&"optional"),
                                partial: words[i + 2..].contains(&"partial"),
                            });
                            i += 2;
                        }
                        "answer" => {
                            op.answer = Some(words[i + 1].to_string());
                            i += 2;
                        }
                        "optional" | "partial" => i += 1,
                        w => panic!("line {n}: unknown word {w:?}"),
                    }
                }
                c.ops.push(op);
            }
            "schema" => {
                current = Some(words[1].to_string());
                c.schemas.insert(words[1].to_string(), Schema::new());
            }
            w => panic!("line {n}: unknown line kind {w:?}"),
        }
    }
    c
}

/// The document, read as JSON.
fn doc() -> Value {
    serde_norway::from_str(DOC).expect("docs/api/vmm.yaml is YAML")
}

/// Follows `$ref`s to the schema they name.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        v = &doc["components"]["schemas"][name];
        assert!(!v.is_null(), "$ref {r} names no schema");
    }
    v
}

struct Checker<'a> {
    doc: &'a Value,
    contract: &'a Contract,
    errors: Vec<String>,
}

impl Checker<'_> {
    fn err(&mut self, at: &str, msg: impl std::fmt::Display) {
        self.errors.push(format!("{at}: {msg}"));
    }

    /// husk's `schema` against Firecracker's schema `name`.
    fn schema(&mut self, at: &str, name: &str, schema: &Value, partial: bool) {
        let doc = self.doc;
        let contract = self.contract;
        let s = resolve(doc, schema);
        let Some(fc) = contract.schemas.get(name) else {
            panic!("the contract has no schema {name}");
        };
        if s.get("type").and_then(Value::as_str) != Some("object") {
            self.err(at, format!("{name} must be an object"));
            return;
        }
        let props = s.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (field, f) in fc {
            let at = format!("{at}.{field}");
            let Some(p) = props.and_then(|p| p.get(field)) else {
                self.err(&at, "missing (Firecracker has it)");
                continue;
            };
            let wanted = f.required && !partial;
            match (wanted, required.contains(&field.as_str())) {
                (true, false) => self.err(&at, "Firecracker requires it; husk does not"),
                (false, true) if p.get("x-husk-required").and_then(Value::as_str).is_none() => {
                    self.err(&at, "husk requires it; Firecracker does not")
                }
                _ => {}
            }
            self.ty(&at, &f.ty, p);
            if !f.values.is_empty() {
                self.values(&at, &f.values, resolve(doc, p));
            }
        }
        for (field, p) in props.into_iter().flatten() {
            if !fc.contains_key(field) && p.get("x-husk-extension") != Some(&Value::Bool(true)) {
                self.err(
                    &format!("{at}.{field}"),
                    "not Firecracker's: mark it x-husk-extension",
                );
            }
        }
        for r in required {
            if !fc.contains_key(r) {
                self.err(
                    &format!("{at}.{r}"),
                    "husk requires a field Firecracker does not have",
                );
            }
        }
    }

    fn ty(&mut self, at: &str, ty: &Ty, p: &Value) {
        let p = resolve(self.doc, p);
        let have = p.get("type").and_then(Value::as_str);
        let want = match ty {
            Ty::Str => "string",
            Ty::Int => "integer",
            Ty::Bool => "boolean",
            Ty::Obj => "object",
            Ty::Named(n) => return self.schema(at, n, p, false),
            Ty::Array(inner) => {
                if have != Some("array") {
                    return self.err(at, format!("type {have:?}, Firecracker's is an array"));
                }
                return self.ty(&format!("{at}[]"), inner, &p["items"]);
            }
        };
        if have != Some(want) {
            self.err(at, format!("type {have:?}, Firecracker's is {want}"));
        }
    }

    fn values(&mut self, at: &str, fc: &[String], p: &Value) {
        let have: Vec<&str> = p
            .get("enum")
            .and_then(Value::as_array)
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let unsupported = p.get("x-husk-unsupported").and_then(Value::as_object);
        let added: Vec<&str> = p
            .get("x-husk-extension-values")
            .and_then(Value::as_array)
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for v in fc {
            let listed = unsupported.is_some_and(|u| u.contains_key(v));
            match (have.contains(&v.as_str()), listed) {
                (false, false) => self.err(at, format!("value {v:?} is Firecracker's; allow it or list it in x-husk-unsupported with the reason")),
                (true, true) => self.err(at, format!("value {v:?} is both allowed and listed as unsupported")),
                _ => {}
            }
        }
        for v in have {
            if !fc.iter().any(|f| f == v) && !added.contains(&v) {
                self.err(
                    at,
                    format!("value {v:?} is not Firecracker's: list it in x-husk-extension-values"),
                );
            }
        }
    }

    fn op(&mut self, op: &Op) {
        let doc = self.doc;
        let at = format!("{} {}", op.method, op.path);
        let o = &doc["paths"][op.path.as_str()][op.method.to_lowercase().as_str()];
        if o.is_null() {
            return self.err(&at, "missing (Firecracker serves it)");
        }
        let body = &o["requestBody"];
        match &op.body {
            Some(b) => {
                let schema = &body["content"]["application/json"]["schema"];
                if schema.is_null() {
                    return self.err(&at, format!("takes no {} body", b.schema));
                }
                let required = body["required"] == Value::Bool(true);
                if required == b.optional {
                    self.err(
                        &at,
                        format!(
                            "the body's required is {required}; Firecracker's is {}",
                            !b.optional
                        ),
                    );
                }
                self.schema(&format!("{at} body"), &b.schema, schema, b.partial);
            }
            None if !body.is_null() => self.err(&at, "takes a body Firecracker's does not"),
            None => {}
        }
        if let Some(a) = &op.answer {
            let schema = &o["responses"]["200"]["content"]["application/json"]["schema"];
            if schema.is_null() {
                return self.err(&at, format!("answers no {a}"));
            }
            self.schema(&format!("{at} answer"), a, schema, false);
        }
    }
}

#[test]
fn the_document_has_all_of_firecrackers_api_and_marks_the_rest() {
    let contract = parse_contract(CONTRACT);
    assert_eq!(
        contract.ops.len(),
        38,
        "Firecracker v1.17 has 38 operations"
    );
    let doc = doc();
    let mut c = Checker {
        doc: &doc,
        contract: &contract,
        errors: Vec::new(),
    };
    for op in &contract.ops {
        c.op(op);
    }
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, o) in item.as_object().into_iter().flatten() {
            if !["get", "put", "patch", "post", "delete"].contains(&method.as_str()) {
                continue;
            }
            let known = contract
                .ops
                .iter()
                .any(|op| op.path == *path && op.method.to_lowercase() == *method);
            if !known && o.get("x-husk-extension") != Some(&Value::Bool(true)) {
                c.err(
                    &format!("{} {path}", method.to_uppercase()),
                    "not Firecracker's: mark it x-husk-extension",
                );
            }
        }
    }
    // Every gap still open is listed in NOT_YET; one that closes must
    // leave the list too.
    let (known, errors): (Vec<String>, Vec<String>) = c
        .errors
        .into_iter()
        .partition(|e| NOT_YET.iter().any(|p| e.starts_with(p)));
    let closed: Vec<&&str> = NOT_YET
        .iter()
        .filter(|p| !known.iter().any(|e| e.starts_with(**p)))
        .collect();
    assert!(
        closed.is_empty(),
        "no longer differs; remove from NOT_YET: {closed:?}"
    );
    assert!(
        errors.is_empty(),
        "docs/api/vmm.yaml differs from Firecracker v1.17's API in {} places:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn the_contract_reader_catches_a_drift() {
    // The checker itself must be able to fail: a schema missing a field,
    // a changed type and an unmarked extra field are each reported.
    let contract =
        parse_contract("op PUT /x body X\nschema X\n  a integer required\n  b string enum P|Q\n");
    let doc: Value = serde_norway::from_str(
        r#"
paths:
  /x:
    put:
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              properties:
                b: { type: string, enum: [P] }
                c: { type: string }
"#,
    )
    .unwrap();
    let mut c = Checker {
        doc: &doc,
        contract: &contract,
        errors: Vec::new(),
    };
    c.op(&contract.ops[0]);
    let all = c.errors.join("\n");
    assert!(all.contains("PUT /x body.a: missing"), "{all}");
    assert!(all.contains("value \"Q\" is Firecracker's"), "{all}");
    assert!(all.contains("PUT /x body.c: not Firecracker's"), "{all}");
    assert_eq!(c.errors.len(), 3, "{all}");
}

#[test]
fn every_documented_operation_is_served() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let doc = doc();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        // Path parameters get a value that names nothing.
        let concrete: String = path
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "conformance0"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            let body = match method.as_str() {
                "get" => None,
                "put" | "patch" => Some("{}"),
                _ => continue,
            };
            let method = method.to_uppercase();
            let r = vmm.request(&method, &concrete, body);
            let routed = !(r.status == 400
                && r.body.contains("Invalid request method and/or path"))
                && r.status != 404
                && r.status != 405;
            if !routed {
                missing.push(format!("{method} {path}: {} {}", r.status, r.body));
            }
            // A segment past the resource's name is ignored, as in
            // Firecracker, except where the next segment names a
            // sub-resource (then an unknown one is refused).
            let longer = vmm.request(&method, &format!("{concrete}/conformance-extra"), body);
            let refused =
                longer.status == 400 && longer.body.contains("Invalid request method and/or path");
            let strict = matches!(
                (method.as_str(), path.as_str()),
                ("GET", "/") | ("GET", "/balloon") | ("PUT", "/mmds")
            );
            if refused != strict {
                missing.push(format!(
                    "{method} {path}/conformance-extra: {} {} (Firecracker {} it)",
                    longer.status,
                    longer.body,
                    if strict { "refuses" } else { "routes" }
                ));
            }
            // An answer has the fields its schema says it always has.
            let schema = &item[method.to_lowercase().as_str()]["responses"]["200"]["content"]
                ["application/json"]["schema"];
            if r.status == 200 && !schema.is_null() {
                let answer = r.json();
                for f in resolve(&doc, schema)["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let f = f.as_str().unwrap();
                    if answer.get(f).is_none() {
                        missing.push(format!("{method} {path}: the answer lacks {f}: {answer}"));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not served:\n{}",
        missing.join("\n")
    );
}
