// Rebuild the probes when bpf-linker changes: the object is only as good as the linker that made it.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
