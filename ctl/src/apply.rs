//! `apply` (create or update through the API) and `validate` (offline).

use meridian_sync_proto::{ResourceType, universal};
use serde_json::Value;

use crate::{
    cli::{ApplyArgs, ValidateArgs},
    client::Client,
    documents::{self, Checked, Doc},
    error::{CtlError, EXIT_INVALID, EXIT_OK, worst},
    out, status,
};

/// What applying one resource did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// `validate -f FILE`: prints `OK ...` per valid document (stdout) and one
/// line per problem (stderr); exit code 1 if anything is invalid.
pub fn validate(args: &ValidateArgs) -> Result<u8, CtlError> {
    let checked = documents::check_all(&documents::read_files(&args.files)?)?;
    let mut code = EXIT_OK;
    for c in &checked {
        match c {
            Checked::Valid(doc) => out::line(&documents::ok_line(doc)),
            Checked::Invalid(lines) => {
                code = EXIT_INVALID;
                for l in lines {
                    out::err(l);
                }
            }
        }
    }
    Ok(code)
}

/// `apply -f FILE`: checks every document locally, then creates or updates
/// them in dependency order (Meshes first), reporting each.
pub async fn apply(client: &Client, args: &ApplyArgs) -> Result<u8, CtlError> {
    let checked = documents::check_all(&documents::read_files(&args.files)?)?;
    let mut docs = Vec::new();
    let mut invalid = false;
    for c in checked {
        match c {
            Checked::Valid(d) => docs.push(*d),
            Checked::Invalid(lines) => {
                invalid = true;
                for l in lines {
                    out::err(&format!("invalid: {l}"));
                }
            }
        }
    }
    if invalid {
        out::err("error: nothing was applied: fix the resources above (meridianctl validate -f FILE checks offline)");
        return Ok(EXIT_INVALID);
    }
    docs.sort_by_key(|d| apply_order(d.resource_type()));

    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let mut code = EXIT_OK;
    let mut applied = Vec::new();
    for doc in &docs {
        let what = format!("{} {}", doc.resource_type(), doc.id());
        match apply_one(client, doc, args.dry_run).await {
            Ok(outcome) => {
                out::line(&format!("{} {what}{suffix}", outcome.word()));
                let r = &doc.resource;
                applied.push(status::Applied {
                    ty: doc.resource_type(),
                    mesh: r.meta.mesh.clone(),
                    name: r.meta.name.clone(),
                });
            }
            Err(e) => {
                out::err(&e.report(Some(&what)));
                code = worst(code, e.exit_code());
                if matches!(e, CtlError::Unreachable { .. }) {
                    break; // every other request would fail the same way
                }
            }
        }
    }
    if let Some(timeout) = args.wait
        && code == EXIT_OK
    {
        return status::wait(client, &applied, timeout).await;
    }
    if args.diff && code == EXIT_OK {
        return diff(client, &docs).await;
    }
    Ok(code)
}

/// `apply --dry-run --diff`: asks the global's `POST /_diff` what the
/// documents the generator reads (Mesh, MeshGateway, MeshGatewayRoute,
/// Secret) would change in each zone's Envoy configuration, and prints it.
async fn diff(client: &Client, docs: &[Doc]) -> Result<u8, CtlError> {
    let reads = |t: ResourceType| {
        matches!(
            t,
            ResourceType::Mesh | ResourceType::MeshGateway | ResourceType::MeshGatewayRoute | ResourceType::Secret
        )
    };
    let body: Vec<Value> = docs.iter().filter(|d| reads(d.resource_type())).map(|d| d.value.clone()).collect();
    if body.is_empty() {
        out::line("no Envoy configuration would change (no Mesh, MeshGateway, MeshGatewayRoute or Secret given)");
        return Ok(EXIT_OK);
    }
    let reply = client.post(&["_diff"], &Value::Array(body)).await?;
    let report: meridian_sync_proto::propagation::DiffReport = serde_json::from_value(reply.body)
        .map_err(|e| CtlError::input(format!("unexpected _diff body from the server (is it the global?): {e}")))?;
    out::text(&meridian_sync_proto::propagation::render_diff(&report));
    Ok(EXIT_OK)
}

/// Meshes before what lives in them, Secrets before what refers to them.
fn apply_order(ty: ResourceType) -> usize {
    ResourceType::ALL.iter().position(|t| *t == ty).unwrap_or(usize::MAX)
}

async fn apply_one(client: &Client, doc: &Doc, dry_run: bool) -> Result<Outcome, CtlError> {
    let segments = doc.segments();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let before = client.get_opt(&segments).await?;
    let reply = client.put(&segments, &doc.value, dry_run).await?;
    if reply.status == 201 {
        return Ok(Outcome::Created);
    }
    let Some(before) = before else {
        return Ok(Outcome::Updated);
    };
    let unchanged = if dry_run {
        // Nothing was written: compare what is stored with what would be.
        without_times(before.body) == without_times(universal::to_value(&doc.resource))
    } else {
        // The store writes identical content as a no-op: same revision.
        before.etag.is_some() && before.etag == reply.etag
    };
    Ok(if unchanged { Outcome::Unchanged } else { Outcome::Updated })
}

/// A universal value without the times the store sets.
pub fn without_times(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("creationTime");
        o.remove("modificationTime");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshes_come_first() {
        assert!(apply_order(ResourceType::Mesh) < apply_order(ResourceType::MeshGateway));
        assert!(apply_order(ResourceType::Secret) < apply_order(ResourceType::MeshGateway));
        assert!(apply_order(ResourceType::MeshGateway) < apply_order(ResourceType::MeshGatewayRoute));
    }
}
