//! include/autolr.h must be exactly what cbindgen generates from src/ffi, and its version
//! macros must match Cargo.toml and the library constants.

use std::path::Path;

fn generate() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(Path::new(root).join("cbindgen.toml")).expect("cbindgen.toml parses");
    let mut out = Vec::new();
    cbindgen::Builder::new().with_crate(root).with_config(config).generate().expect("cbindgen generates the header").write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}

#[test]
fn header_is_fresh() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/autolr.h");
    let generated = generate();
    if std::env::var_os("AUTOLR_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/autolr.h");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "include/autolr.h is stale: regenerate it with `AUTOLR_BLESS=1 cargo test --test header` and commit it");
}

#[test]
fn versions_agree() {
    let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/autolr.h")).unwrap();
    assert_eq!(autolr::ALR_VERSION, env!("CARGO_PKG_VERSION"), "src/lib.rs ALR_VERSION differs from Cargo.toml");
    assert!(header.contains(&format!("#define ALR_VERSION \"{}\"", env!("CARGO_PKG_VERSION"))), "header version differs from Cargo.toml");
    assert!(header.contains(&format!("#define ALR_ABI_VERSION {}", autolr::ALR_ABI_VERSION)), "header ABI version differs");
    let v = unsafe { std::ffi::CStr::from_ptr(autolr::ffi::alr_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert_eq!(autolr::ffi::alr_abi_version(), autolr::ALR_ABI_VERSION);
}
