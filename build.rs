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
        let mut kernels: Vec<_> = std::fs::read_dir("cuda")
            .expect("cuda/ holds the kernels")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        kernels.sort();
        let mut build = cc::Build::new();
        build.cuda(true).cudart("static");
        // SASS for Ampere and Hopper: a 13.0 driver cannot JIT PTX from a newer toolkit.
        build.flag("-gencode").flag("arch=compute_80,code=sm_80").flag("-gencode").flag("arch=compute_90,code=sm_90");
        // No fused multiply-add contraction, IEEE division and square root: the kernels then
        // round exactly as the CPU kernels do (CPU/GPU parity to the bit for elementwise rules).
        build.flag("--fmad=false").flag("-prec-div=true").flag("-prec-sqrt=true");
        build.files(&kernels).compile("autolr_kernels");
        if let Ok(nvcc) = std::env::var("NVCC") {
            if let Some(root) = std::path::Path::new(&nvcc).parent().and_then(|b| b.parent()) {
                println!("cargo:rustc-link-search=native={}", root.join("lib").display());
                println!("cargo:rustc-link-search=native={}", root.join("lib64").display());
            }
        }
    }
}
