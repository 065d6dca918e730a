use std::process::ExitCode;

/// mimalloc: a render builds and frees a few hundred thousand small values per 10,000 sites, and
/// glibc's allocator spent a fifth of the render freeing them (benches/render.rs, same run).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    smart_proxy::cli::main()
}
