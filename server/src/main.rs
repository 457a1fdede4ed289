use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = weft::cli::Cli::parse();
    if let Err(err) = weft::cli::run(cli).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
