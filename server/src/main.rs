use clap::Parser;

// mimalloc returns freed memory to the system far better than glibc's per-thread arenas,
// which kept hundreds of MiB after bursts of password hashing.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Before the runtime's threads exist, so every thread's heap gets the same settings.
    weft::memory::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cli = weft::cli::Cli::parse();
    if let Err(err) = runtime.block_on(weft::cli::run(cli)) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
