use clap::Parser;

// mimalloc returns freed memory to the system far better than glibc's per-thread arenas,
// which kept hundreds of MiB after bursts of password hashing.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = weft::cli::Cli::parse();
    if let Err(err) = weft::cli::run(cli).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
