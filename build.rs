//! Without the `cuda` feature nothing is built here. With it, the kernels in cuda/*.cu are
//! compiled by nvcc (from the system, or from NVIDIA's `nvidia-cuda-nvcc` wheel via `NVCC`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::compile();
}

#[cfg(feature = "cuda")]
mod cuda {
    pub fn compile() {
        println!("cargo:rerun-if-changed=cuda");
        println!("cargo:rerun-if-env-changed=NVCC");
        // No kernels yet: the CUDA backend is still to be written (the feature is declared so
        // that its build wiring exists); nothing to compile then.
        let Ok(dir) = std::fs::read_dir("cuda") else { return };
        let kernels: Vec<_> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        if kernels.is_empty() {
            return;
        }
        let mut build = cc::Build::new();
        build.cuda(true).cudart("static");
        // SASS for Ampere and Hopper: a 13.0 driver cannot JIT PTX from a newer toolkit.
        build.flag("-gencode").flag("arch=compute_80,code=sm_80").flag("-gencode").flag("arch=compute_90,code=sm_90");
        build.files(&kernels).compile("autolr_kernels");
        if let Ok(nvcc) = std::env::var("NVCC") {
            if let Some(root) = std::path::Path::new(&nvcc).parent().and_then(|b| b.parent()) {
                println!("cargo:rustc-link-search=native={}", root.join("lib").display());
                println!("cargo:rustc-link-search=native={}", root.join("lib64").display());
            }
        }
    }
}
