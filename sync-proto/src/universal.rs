//! The universal format: a flat YAML or JSON object with `type`, `mesh`
//! (absent for global types), `name`, optional `labels`, then the spec fields
//! inline, exactly as the incumbent's users write it.
//!
//! Spec fields follow the proto3 JSON mapping (pbjson): both `status_code` and
//! `statusCode` are accepted, enums by name, durations as `5s`. Unknown fields
//! are refused with their path rather than silently dropped.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::{
    model::{Meta, Resource, ResourceType, Spec, with_type},
    validate::Violation,
};

/// Fields of the universal object that are metadata, not spec.
const META_FIELDS: &[&str] = &["type", "mesh", "name", "labels", "creationTime", "modificationTime"];

/// A document that is not a well-formed resource: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct InvalidResource {
    /// The `type` as written (may be empty or unknown).
    pub type_name: String,
    pub mesh: String,
    pub name: String,
    pub violations: Vec<Violation>,
}

impl InvalidResource {
    fn new(type_name: &str, mesh: &str, name: &str, violations: Vec<Violation>) -> InvalidResource {
        InvalidResource { type_name: type_name.to_string(), mesh: mesh.to_string(), name: name.to_string(), violations }
    }

    fn describe(&self) -> String {
        let what = match (self.type_name.is_empty(), self.name.is_empty()) {
            (true, true) => "resource".to_string(),
            (false, true) => self.type_name.clone(),
            (true, false) => self.name.clone(),
            (false, false) => format!("{} {}", self.type_name, self.name),
        };
        let reasons: Vec<String> = self.violations.iter().map(|v| format!("{}: {}", v.field, v.message)).collect();
        format!("{what}: {}", reasons.join("; "))
    }
}

/// A YAML stream that cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid YAML: {0}")]
pub struct SyntaxError(pub String);

/// Splits a (possibly multi-document, `---`-separated) YAML or JSON text into
/// document values. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, SyntaxError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| SyntaxError(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Reads every resource of a YAML/JSON text; one result per document.
pub fn parse_resources(text: &str) -> Result<Vec<Result<Resource, InvalidResource>>, SyntaxError> {
    Ok(parse_documents(text)?.into_iter().map(from_value).collect())
}

/// Reads one resource from its universal JSON value (structure only:
/// [`crate::validate`] checks the spec's semantics).
pub fn from_value(value: Value) -> Result<Resource, InvalidResource> {
    let Value::Object(mut obj) = value else {
        return Err(InvalidResource::new(
            "",
            "",
            "",
            vec![Violation::new("", "must be an object with type, name and the resource's fields")],
        ));
    };
    let type_name = take_string(&mut obj, "type");
    let mesh = take_string(&mut obj, "mesh");
    let name = take_string(&mut obj, "name");
    let (type_name, mesh, name) = match (type_name, mesh, name) {
        (Ok(t), Ok(m), Ok(n)) => (t, m, n),
        (t, m, n) => {
            let violations = [t.err(), m.err(), n.err()].into_iter().flatten().collect();
            return Err(InvalidResource::new("", "", "", violations));
        }
    };
    let type_name = type_name.unwrap_or_default();
    let mesh = mesh.unwrap_or_default();
    let name = name.unwrap_or_default();
    let fail = |violations| InvalidResource::new(&type_name, &mesh, &name, violations);

    let Some(ty) = ResourceType::from_name(&type_name) else {
        let message = if type_name.is_empty() {
            "cannot be empty".to_string()
        } else {
            let known: Vec<&str> = ResourceType::ALL.iter().map(|t| t.name()).collect();
            format!("unknown type {type_name:?}; known types: {}", known.join(", "))
        };
        return Err(fail(vec![Violation::new("type", message)]));
    };

    let mut violations = meta_violations(ty, &mesh, &name);
    let labels = match obj.remove("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => match serde_json::from_value::<BTreeMap<String, String>>(v) {
            Ok(l) => l,
            Err(e) => {
                violations.push(Violation::new("labels", format!("must be a map of strings: {e}")));
                BTreeMap::new()
            }
        },
    };
    for (k, v) in &labels {
        violations.extend(label_violations(k, v));
    }
    for f in META_FIELDS {
        obj.remove(*f);
    }
    let spec = match spec_from_json(ty, Value::Object(obj)) {
        Ok(s) => Some(s),
        Err(v) => {
            violations.push(v);
            None
        }
    };
    match spec {
        Some(spec) if violations.is_empty() => {
            Ok(Resource { meta: Meta { mesh, name, labels, ..Meta::default() }, spec })
        }
        _ => Err(fail(violations)),
    }
}

/// Deserialises the inline spec fields of a `ty` resource, reporting the
/// path of the first structural problem (`conf.listeners[0].protocol: ...`).
pub fn spec_from_json(ty: ResourceType, fields: Value) -> Result<Spec, Violation> {
    with_type!(ty, T, wrap => {
        serde_path_to_error::deserialize::<_, T>(fields)
            .map(wrap)
            .map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                Violation::new(path, readable(e.into_inner().to_string()))
            })
    })
}

/// pbjson reads a protobuf number as `untagged enum Content` (a number or
/// a string of digits); a value that is neither in range (`port: -80`,
/// `80.5`, `4294967297`) fails with serde's "data did not match any variant
/// of untagged enum Content", which names no reason. Said plainly instead.
fn readable(message: String) -> String {
    if message.contains("untagged enum Content") {
        "must be a number within the range of the field's type (no sign for unsigned fields, no fraction for \
         integers), as a number or a string of digits"
            .to_string()
    } else {
        message
    }
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, Violation> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Violation::new(key, format!("must be a string, got {other}"))),
    }
}

/// Checks the identity fields of a resource of type `ty`.
pub fn meta_violations(ty: ResourceType, mesh: &str, name: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Err(m) = check_name(name) {
        out.push(Violation::new("name", m));
    }
    if ty.is_mesh_scoped() {
        if mesh.is_empty() {
            out.push(Violation::new("mesh", "cannot be empty"));
        } else if let Err(m) = check_mesh_name(mesh) {
            out.push(Violation::new("mesh", m));
        }
    } else {
        if !mesh.is_empty() {
            out.push(Violation::new("mesh", format!("must not be set: {ty} is not inside a mesh")));
        }
        if ty == ResourceType::Mesh
            && let Err(m) = check_mesh_name(name)
        {
            out.push(Violation::new("name", m));
        }
    }
    out
}

/// Resource names: 1-253 characters of letters, digits, `.`, `-`, `_`,
/// starting and ending with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("cannot be empty".into());
    }
    if name.len() > 253 {
        return Err("must be at most 253 characters".into());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let first_last_ok =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name.chars().all(ok_char) || !first_last_ok {
        return Err(format!(
            "invalid name {name:?}: use letters, digits, '.', '-' and '_', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Mesh names also appear after the last dot of a KDS resource name, so
/// they are DNS labels: 1-63 lower-case letters, digits and `-`.
pub fn check_mesh_name(mesh: &str) -> Result<(), String> {
    let ok = !mesh.is_empty()
        && mesh.len() <= 63
        && mesh.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !mesh.starts_with('-')
        && !mesh.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid mesh name {mesh:?}: use 1-63 lower-case letters, digits and '-', not starting or ending with '-'"
        ))
    }
}

fn label_violations(key: &str, value: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    let field = format!("labels[{key:?}]");
    let key_ok = !key.is_empty()
        && key.len() <= 253
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if !key_ok {
        out.push(Violation::new(
            field.clone(),
            "label key must be non-empty and consist of letters, digits, '.', '-', '_' and '/'",
        ));
    }
    if value.len() > 1024 {
        out.push(Violation::new(field, "label value must be at most 1024 characters"));
    }
    out
}

/// The universal JSON object of a resource: `type`, `mesh`, `name`,
/// `labels`, times (when stored), then the spec fields.
pub fn to_value(r: &Resource) -> Value {
    let ty = r.resource_type();
    let mut obj = Map::new();
    obj.insert("type".into(), Value::String(ty.name().into()));
    if ty.is_mesh_scoped() {
        obj.insert("mesh".into(), Value::String(r.meta.mesh.clone()));
    }
    obj.insert("name".into(), Value::String(r.meta.name.clone()));
    if !r.meta.labels.is_empty() {
        let labels = r.meta.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        obj.insert("labels".into(), Value::Object(labels));
    }
    if r.meta.creation_time > 0 {
        obj.insert("creationTime".into(), Value::String(rfc3339_millis(r.meta.creation_time)));
    }
    if r.meta.modification_time > 0 {
        obj.insert("modificationTime".into(), Value::String(rfc3339_millis(r.meta.modification_time)));
    }
    if let Value::Object(spec) = spec_to_json(&r.spec) {
        obj.extend(spec);
    }
    Value::Object(obj)
}

/// The spec as universal JSON. Proto3 JSON omits enum fields at their zero
/// value; where that zero carries meaning a reader must see (a Dataplane's
/// gateway type, a match type), it is written out.
pub fn spec_to_json(spec: &Spec) -> Value {
    let mut v = spec.to_json();
    if let Spec::Dataplane(_) = spec
        && let Some(gw) = v.pointer_mut("/networking/gateway").and_then(Value::as_object_mut)
    {
        gw.entry("type").or_insert_with(|| Value::String("DELEGATED".into()));
    }
    if let Spec::MeshGatewayRoute(_) = spec
        && let Some(rules) = v.pointer_mut("/conf/http/rules").and_then(Value::as_array_mut)
    {
        for m in rules.iter_mut().filter_map(|r| r.get_mut("matches")).filter_map(Value::as_array_mut) {
            for m in m.iter_mut() {
                if let Some(p) = m.get_mut("path").and_then(Value::as_object_mut) {
                    p.entry("match").or_insert_with(|| Value::String("EXACT".into()));
                }
                for list in ["headers", "queryParameters"] {
                    for h in m.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                        if let Some(h) = h.as_object_mut() {
                            h.entry("match").or_insert_with(|| Value::String("EXACT".into()));
                        }
                    }
                }
            }
        }
    }
    v
}

/// The universal YAML of a resource.
pub fn to_yaml(r: &Resource) -> String {
    value_to_yaml(&to_value(r))
}

/// Any JSON value as YAML.
pub fn value_to_yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

/// Formats unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", sod / 3600, (sod % 3600) / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn unknown_type_and_field_are_reported_with_paths() {
        let docs = parse_resources("type: Nope\nname: x\n").unwrap_or_default();
        let err = docs[0].clone().expect_err("unknown type");
        assert_eq!(err.violations[0].field, "type");

        let docs = parse_resources(
            "type: MeshGateway\nmesh: default\nname: gw\nconf:\n  listeners:\n  - port: 80\n    protocol: HTTPX\n",
        )
        .unwrap_or_default();
        let err = docs[0].clone().expect_err("unknown enum value");
        assert_eq!(err.violations.len(), 1);
        assert_eq!(err.violations[0].field, "conf.listeners[0].protocol");
        assert!(err.violations[0].message.contains("HTTPX"), "{}", err.violations[0].message);
    }

    /// A port out of range was refused as "data did not match any variant
    /// of untagged enum Content" (the field right, no reason).
    #[test]
    fn numbers_out_of_range_say_why() {
        for port in ["-80", "80.5", "4294967297"] {
            let docs = parse_resources(&format!(
                "type: MeshGateway\nmesh: default\nname: gw\nconf:\n  listeners:\n  - port: {port}\n    protocol: HTTP\n"
            ))
            .unwrap_or_default();
            let err = docs[0].clone().expect_err("a port out of range");
            assert_eq!(err.violations[0].field, "conf.listeners[0].port");
            assert!(err.violations[0].message.starts_with("must be a number within the range"), "{port}: {err:?}");
        }
    }

    #[test]
    fn snake_and_camel_case_are_both_accepted() {
        let yaml = |field: &str| {
            format!(
                "type: MeshGatewayRoute\nmesh: default\nname: r\nselectors:\n- match:\n    kuma.io/service: gw\nconf:\n  http:\n    rules:\n    - matches:\n      - path:\n          match: PREFIX\n          value: /\n      filters:\n      - redirect:\n          {field}: 301\n"
            )
        };
        let a = parse_resources(&yaml("status_code")).unwrap_or_default().remove(0);
        let b = parse_resources(&yaml("statusCode")).unwrap_or_default().remove(0);
        assert!(a.is_ok(), "{a:?}");
        assert_eq!(a, b);
    }

    #[test]
    fn mesh_rules() {
        assert!(!meta_violations(ResourceType::MeshGateway, "", "gw").is_empty());
        assert!(!meta_violations(ResourceType::Mesh, "default", "m").is_empty());
        assert!(!meta_violations(ResourceType::Mesh, "", "Bad.Mesh").is_empty());
        assert!(meta_violations(ResourceType::Mesh, "", "default").is_empty());
        assert!(check_name("gateway-instance-1").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
    }
}
