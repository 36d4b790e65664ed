//! Build-time check of the C toolchain, so a fresh machine fails with one clear line
//! instead of a page of CMake-crate output halfway through the dependency build.
//!
//! Pingora compresses with zlib-ng (`libz-ng-sys`), which is built from source with `cmake`
//! (and a C compiler, which Rust itself needs as its linker: without one this script cannot
//! even be linked, and rustc says so in one line). This script only looks for `cmake`
//! (`$CMAKE` first, as the `cmake` crate does, then `PATH`); it runs once per target
//! directory (`rerun-if-changed=build.rs`), so it costs nothing afterwards and never
//! recompiles the gateway on its own.

use std::path::Path;

fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let candidate = dir.join(program);
        candidate.is_file()
            && std::fs::metadata(&candidate)
                .map(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                })
                .unwrap_or(false)
    })
}

fn named_by(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| {
        let p = Path::new(&v);
        p.is_file() || on_path(&p.to_string_lossy())
    })
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if !named_by("CMAKE") && !on_path("cmake") {
        eprintln!(
            "switchyard needs cmake to build Pingora's zlib-ng: install it first (Debian/Ubuntu: apt-get install -y cmake), see README \"Before you start\""
        );
        std::process::exit(1);
    }
}
