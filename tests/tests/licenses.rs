//! The license files at the top of the repository are the ones Cargo.toml's `license` names.

use std::path::Path;

#[test]
fn license_files_match_the_license_field() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let license = manifest
        .lines()
        .find_map(|l| l.strip_prefix("license = "))
        .expect("[workspace.package] license")
        .trim_matches('"');
    let files: &[(&str, &str)] = match license {
        "MIT OR Apache-2.0" => &[
            (
                "LICENSE-MIT",
                "Permission is hereby granted, free of charge",
            ),
            (
                "LICENSE-APACHE",
                "Apache License\n                           Version 2.0",
            ),
        ],
        other => panic!("license {other:?}: add its files and extend this test"),
    };
    for (file, text) in files {
        let body =
            std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(body.contains(text), "{file} is not the {license} text");
    }
}
