//! The seed documents' examples apply verbatim and survive
//! YAML -> model -> protobuf -> model -> YAML unchanged.

use meridian_sync_proto::{Spec, universal, validate};

const SEEDS: &str = include_str!("../testdata/seeds.yaml");

#[test]
fn seeds_parse_validate_and_round_trip() {
    let docs = universal::parse_documents(SEEDS).expect("seeds are valid YAML");
    assert_eq!(docs.len(), 7);
    for doc in docs {
        let resource = universal::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = validate::resource(&resource) {
            panic!("{} {}: {e}", resource.resource_type(), resource.meta.name);
        }
        // protobuf and back
        let bytes = resource.spec.encode();
        let decoded = Spec::decode(resource.resource_type(), &bytes).expect("decodes");
        assert_eq!(decoded, resource.spec);
        let mut again = resource.clone();
        again.spec = decoded;
        assert_eq!(again.version(), resource.version());
        // back to YAML: the same document, field for field
        let yaml = universal::to_yaml(&again);
        let reread = universal::parse_documents(&yaml).expect("own output is YAML").remove(0);
        assert_eq!(reread, doc, "round trip changed the document:\n{yaml}");
        assert_eq!(universal::from_value(reread).expect("own output parses"), resource);
    }
}
