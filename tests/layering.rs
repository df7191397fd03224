//! The tree's rules, checked on its sources (DESIGN.md: "a backend knows nothing about papers";
//! data flows binding → ffi → optimizer → adapt/base → backend):
//! - `backend/` imports nothing from `adapt/`, `base/`, `optimizer.rs` or `algorithm.rs`;
//! - `adapt/` and `base/` see no raw pointers and no `unsafe`;
//! - a device pointer enters the Rust API only through the `unsafe` constructors of
//!   `backend::Tensor`/`TensorMut` (`cuda`, `from_raw`), called by the backend and by `ffi/`;
//! - `cfg(feature = "cuda")` appears only in `backend/`, `registry.rs` (and build.rs).

use std::path::{Path, PathBuf};

fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).expect("readable source dir").map(|e| e.expect("dir entry").path()));
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).expect("readable source file");
            out.push((path, text));
        }
    }
    assert!(!out.is_empty(), "no sources under src/{dir}");
    out
}

/// The lines of `text` outside `//` comments, with their numbers.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, line)| (i + 1, line.split("//").next().unwrap_or(""))).filter(|(_, code)| !code.trim().is_empty())
}

fn violations(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in sources(dir) {
        for (n, code) in code_lines(&text) {
            for needle in forbidden {
                if code.contains(needle) {
                    found.push(format!("{}:{n}: `{needle}` in {}", path.display(), code.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn the_backend_knows_no_algorithm() {
    let found = violations("backend", &["crate::adapt", "crate::base", "crate::optimizer", "crate::algorithm", "crate::registry"]);
    assert!(found.is_empty(), "backend/ imports algorithm code:\n{}", found.join("\n"));
}

#[test]
fn algorithms_see_no_raw_pointers() {
    let forbidden = ["*const ", "*mut ", "unsafe", "as_ptr", "from_raw_parts", ".address()", "from_raw("];
    for dir in ["adapt", "base"] {
        let found = violations(dir, &forbidden);
        assert!(found.is_empty(), "{dir}/ handles raw pointers:\n{}", found.join("\n"));
    }
}

#[test]
fn device_pointers_enter_only_through_the_unsafe_constructors_at_the_boundary() {
    // Outside backend/ (which defines them) only ffi/ may call the constructors that take a raw
    // pointer.
    for dir in ["adapt", "base"] {
        let found = violations(dir, &["Tensor::cuda", "TensorMut::cuda", "Tensor::from_raw", "TensorMut::from_raw", "DeviceSpec::cuda"]);
        assert!(found.is_empty(), "{dir}/ makes tensors from raw pointers:\n{}", found.join("\n"));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in ["optimizer.rs", "algorithm.rs", "registry.rs", "checkpoint.rs", "options.rs", "lib.rs"] {
        let text = std::fs::read_to_string(root.join(file)).expect("readable source file");
        for (n, code) in code_lines(&text) {
            for needle in ["Tensor::cuda", "TensorMut::cuda", "::from_raw(", "DeviceSpec::cuda", "unsafe"] {
                assert!(!code.contains(needle), "src/{file}:{n}: `{needle}` outside the backend and the C boundary");
            }
        }
    }
    let ffi = sources("ffi");
    assert!(ffi.iter().any(|(_, t)| t.contains("Tensor::from_raw(")), "ffi/ should build its tensors with Tensor::from_raw");
}

#[test]
fn the_cuda_feature_is_named_only_in_the_backend_and_the_registry() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for dir in ["adapt", "base", "ffi"] {
        found.extend(violations(dir, &["feature = \"cuda\""]));
    }
    for file in ["optimizer.rs", "algorithm.rs", "checkpoint.rs", "options.rs", "lib.rs", "error.rs"] {
        let text = std::fs::read_to_string(root.join(file)).expect("readable source file");
        found.extend(code_lines(&text).filter(|(_, c)| c.contains("feature = \"cuda\"")).map(|(n, c)| format!("src/{file}:{n}: {}", c.trim())));
    }
    assert!(found.is_empty(), "cfg(feature = \"cuda\") outside backend/ and registry.rs:\n{}", found.join("\n"));
}
