//! Without the `cuda` feature nothing is built here. With it, the kernels in cuda/*.cu are
//! compiled by nvcc (`NVCC`, else `nvcc` on PATH; NVIDIA's `nvidia-cuda-nvcc` wheel provides
//! one) into one cubin per architecture, which src/backend/cuda.rs embeds and loads by name.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::compile();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// SASS for Ampere and Hopper: a 13.0 driver cannot JIT PTX from a newer toolkit.
    const ARCHITECTURES: [&str; 2] = ["80", "90"];

    pub fn compile() {
        println!("cargo:rerun-if-changed=cuda");
        println!("cargo:rerun-if-env-changed=NVCC");
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let dir = Path::new("cuda").canonicalize().expect("cuda/ holds the kernels");
        let mut kernels: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("cuda/ is readable")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        kernels.sort();
        // One translation unit: the kernels share cuda/device.cuh, and one cubin holds them all.
        let unit = out.join("autolr_kernels.cu");
        let includes: String = kernels.iter().map(|k| format!("#include \"{}\"\n", k.display())).collect();
        std::fs::write(&unit, includes).expect("OUT_DIR is writable");
        let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
        for arch in ARCHITECTURES {
            let cubin = out.join(format!("autolr_sm{arch}.cubin"));
            let output = Command::new(&nvcc)
                .args(["-cubin", "-std=c++17", &format!("-arch=sm_{arch}")])
                // No fused multiply-add contraction, IEEE division and square root: the kernels
                // then round exactly as the CPU's do (CPU/GPU parity to the bit for elementwise rules).
                .args(["--fmad=false", "-prec-div=true", "-prec-sqrt=true", "-I"])
                .arg(&dir)
                .arg("-o")
                .arg(&cubin)
                .arg(&unit)
                .output()
                .unwrap_or_else(|e| panic!("cannot run nvcc ({nvcc}): {e}; set NVCC to its path"));
            if !output.status.success() {
                panic!("nvcc failed on the kernels for sm_{arch}:\n{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            }
        }
    }
}
