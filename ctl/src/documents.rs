//! Reading resource files and checking them offline, as `validate` prints
//! and `apply` requires before it sends anything.

use std::{io::Read, path::PathBuf};

use meridian_sync_proto::{Resource, ResourceType, universal, validate};
use serde_json::Value;

use crate::error::CtlError;

/// The mesh a mesh-scoped document without `mesh` goes to.
pub const DEFAULT_MESH: &str = "default";

/// One valid document: the value to send and the resource it reads as.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The document as written, with `mesh` filled in when it was missing.
    pub value: Value,
    pub resource: Resource,
}

impl Doc {
    pub fn resource_type(&self) -> ResourceType {
        self.resource.resource_type()
    }

    /// `default/edge-gateway`, or `edge-gateway` for global types.
    pub fn id(&self) -> String {
        id(self.resource_type(), &self.resource.meta.mesh, &self.resource.meta.name)
    }

    /// The API path of this resource.
    pub fn segments(&self) -> Vec<String> {
        segments(self.resource_type(), &self.resource.meta.mesh, &self.resource.meta.name)
    }
}

/// `mesh/name` for mesh-scoped types, `name` for global ones.
pub fn id(ty: ResourceType, mesh: &str, name: &str) -> String {
    if ty.is_mesh_scoped() { format!("{mesh}/{name}") } else { name.to_string() }
}

/// The API path segments of one resource.
pub fn segments(ty: ResourceType, mesh: &str, name: &str) -> Vec<String> {
    if ty == ResourceType::Mesh {
        vec!["meshes".into(), name.into()]
    } else if ty.is_mesh_scoped() {
        vec!["meshes".into(), mesh.into(), ty.plural().into(), name.into()]
    } else {
        vec![ty.plural().into(), name.into()]
    }
}

/// The outcome of checking one document.
#[derive(Debug, Clone)]
pub enum Checked {
    Valid(Box<Doc>),
    /// One line per problem: `<type> <name>: <field path>: <reason>`.
    Invalid(Vec<String>),
}

/// Reads every file (`-` is standard input) as `(label, text)`.
pub fn read_files(files: &[PathBuf]) -> Result<Vec<(String, String)>, CtlError> {
    let mut out = Vec::new();
    let mut stdin_read = false;
    for f in files {
        if f.as_os_str() == "-" {
            if stdin_read {
                return Err(CtlError::input("standard input (-f -) can be read only once"));
            }
            stdin_read = true;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CtlError::input(format!("cannot read standard input: {e}")))?;
            out.push(("standard input".to_string(), text));
        } else {
            let text =
                std::fs::read_to_string(f).map_err(|e| CtlError::input(format!("cannot read {}: {e}", f.display())))?;
            out.push((f.display().to_string(), text));
        }
    }
    Ok(out)
}

/// Checks every document of every input, in order. A text that is not YAML
/// at all is an error; a document that is not a valid resource is `Invalid`.
pub fn check_all(inputs: &[(String, String)]) -> Result<Vec<Checked>, CtlError> {
    let mut out = Vec::new();
    for (label, text) in inputs {
        let docs = universal::parse_documents(text).map_err(|e| CtlError::input(format!("{label}: {e}")))?;
        for (i, doc) in docs.into_iter().enumerate() {
            out.push(check(doc, &format!("{label}: document {}", i + 1)));
        }
    }
    if out.is_empty() {
        let names: Vec<&str> = inputs.iter().map(|(l, _)| l.as_str()).collect();
        return Err(CtlError::input(format!("no resources found in {}", names.join(", "))));
    }
    Ok(out)
}

/// Checks one document: structure, identity and every validation rule.
/// `where_` names the document when it has no type or name to show.
pub fn check(mut value: Value, where_: &str) -> Checked {
    default_mesh(&mut value);
    let resource = match universal::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => {
            let who = who(&e.type_name, &e.name, where_);
            return Checked::Invalid(e.violations.iter().map(|v| line(&who, &v.field, &v.message)).collect());
        }
    };
    if let Err(e) = validate::resource(&resource) {
        let who = who(resource.resource_type().name(), &resource.meta.name, where_);
        return Checked::Invalid(e.violations.iter().map(|v| line(&who, &v.field, &v.message)).collect());
    }
    Checked::Valid(Box::new(Doc { value, resource }))
}

/// Fills in `mesh: default` on a mesh-scoped document that has none.
fn default_mesh(value: &mut Value) {
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    let mesh_scoped = obj
        .get("type")
        .and_then(Value::as_str)
        .and_then(ResourceType::from_name)
        .is_some_and(ResourceType::is_mesh_scoped);
    if mesh_scoped && obj.get("mesh").is_none_or(Value::is_null) {
        obj.insert("mesh".into(), Value::String(DEFAULT_MESH.into()));
    }
}

fn who(type_name: &str, name: &str, where_: &str) -> String {
    match (type_name.is_empty(), name.is_empty()) {
        (false, false) => format!("{type_name} {name}"),
        (false, true) => format!("{type_name} ({where_})"),
        (true, false) => format!("{name} ({where_})"),
        (true, true) => where_.to_string(),
    }
}

fn line(who: &str, field: &str, reason: &str) -> String {
    if field.is_empty() { format!("{who}: {reason}") } else { format!("{who}: {field}: {reason}") }
}

/// The `OK` line of `validate` for a valid document.
pub fn ok_line(doc: &Doc) -> String {
    format!("OK {} {}", doc.resource_type(), doc.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Vec<Checked> {
        check_all(&[("t.yaml".into(), text.into())]).expect("parses")
    }

    #[test]
    fn valid_documents_and_default_mesh() {
        let out = check_text(
            "type: Mesh\nname: default\n---\ntype: MeshGateway\nname: gw\nselectors:\n- match:\n    kuma.io/service: gw\nconf:\n  listeners:\n  - port: 80\n    protocol: HTTP\n",
        );
        let lines: Vec<String> = out
            .iter()
            .map(|c| match c {
                Checked::Valid(d) => ok_line(d),
                Checked::Invalid(l) => l.join("|"),
            })
            .collect();
        assert_eq!(lines, ["OK Mesh default", "OK MeshGateway default/gw"]);
    }

    #[test]
    fn problems_name_type_resource_and_field() {
        let out = check_text(
            "type: MeshGateway\nmesh: default\nname: gw\nselectors:\n- match:\n    kuma.io/service: gw\nconf:\n  listeners:\n  - port: 0\n    protocol: HTTP\n---\ntype: Nope\nname: x\n---\n- 1\n",
        );
        let Checked::Invalid(l) = &out[0] else { panic!("expected invalid: {out:?}") };
        assert_eq!(l, &["MeshGateway gw: conf.listeners[0].port: port must be in the range [1, 65535]"]);
        let Checked::Invalid(l) = &out[1] else { panic!("expected invalid") };
        assert!(l[0].starts_with("Nope x: type: unknown type \"Nope\""), "{l:?}");
        let Checked::Invalid(l) = &out[2] else { panic!("expected invalid") };
        assert!(l[0].starts_with("t.yaml: document 3: must be an object"), "{l:?}");
    }

    #[test]
    fn empty_and_broken_inputs_are_errors() {
        assert!(check_all(&[("e.yaml".into(), "# nothing\n".into())]).is_err());
        assert!(check_all(&[("b.yaml".into(), "a: [\n".into())]).is_err());
    }
}
