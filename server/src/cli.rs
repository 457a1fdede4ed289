//! The `weft` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use weft_core::{accounts, storage::users};

use crate::{config::Config, server};

#[derive(Parser)]
#[command(name = "weft", version, about = "Weft, a Matrix homeserver")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ConfigArg),
    /// Print a commented configuration file with every setting and its default.
    GenerateConfig,
    /// Apply database migrations and exit.
    Migrate(ConfigArg),
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage the server's signing key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Replace the signing key with a new one; the old one's public half stays published as
    /// an old verify key. Restart the server to sign with the new key.
    Rotate(ConfigArg),
}

#[derive(clap::Args)]
pub struct ConfigArg {
    /// Configuration file (TOML). Without one, weft runs on defaults: SQLite under ./data,
    /// server name localhost:8008, listening on 127.0.0.1:8008.
    #[arg(short, long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        /// The localpart (`alice` for `@alice:server_name`).
        name: String,
        /// The password; a random one is generated and printed when omitted.
        #[arg(long)]
        password: Option<String>,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub use crate::config::EXAMPLE_CONFIG;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::GenerateConfig => {
            print!("{EXAMPLE_CONFIG}");
            Ok(())
        }
        Command::Serve(arg) => serve(load(&arg)?, arg.config).await,
        Command::Key {
            command: KeyCommand::Rotate(arg),
        } => {
            let config = load(&arg)?;
            let key = weft_core::signing_key::rotate(&config.signing_key_path)?;
            println!(
                "new signing key {} in {}; restart the server to use it",
                key.key_id,
                config.signing_key_path.display()
            );
            Ok(())
        }
        Command::Migrate(arg) => {
            let config = load(&arg)?;
            init_logging(&config);
            server::open_db(&config).await?.close().await;
            println!("database is up to date: {}", config.database.url);
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Create {
                    name,
                    password,
                    admin,
                    config,
                },
        } => {
            let config = load(&config)?;
            let db = server::open_db(&config).await?;
            let user_id = accounts::user_id_for(&name, &config.server_name)?;
            let (password, generated) = match password {
                Some(p) => (p, false),
                None => (weft_core::util::random_string(20), true),
            };
            let account = accounts::NewAccount {
                user_id: &user_id,
                password: Some(&password),
                is_admin: admin,
                displayname: Some(&name),
                ..Default::default()
            };
            accounts::register(&db, account).await?;
            db.close().await;
            println!("created {user_id}{}", if admin { " (admin)" } else { "" });
            if generated {
                println!("password: {password}");
            }
            Ok(())
        }
    }
}

fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Config::load(arg.config.as_deref()).map_err(|e| anyhow::anyhow!(e))
}

async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    init_logging(&config);
    let running = server::start(config.clone()).await?;
    if users::count(&running.state.db).await? == 0 {
        let config_hint = std::env::args()
            .skip_while(|a| a != "--config" && a != "-c")
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "\nWeft is running as {} at {}\nNo users yet. Create the first one (an admin) with:\n    weft user create alice --admin {config_hint}\n",
            config.server_name,
            config.base_url()
        );
    }
    let stop = running.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections; requests in flight finish");
        let _ = stop.send(true);
    });
    #[cfg(unix)]
    tokio::spawn(reload_on_hangup(config_path));
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// On SIGHUP, reads the configuration file again and applies its `log.level` (the one setting
/// that changes without a restart).
#[cfg(unix)]
async fn reload_on_hangup(config_path: Option<PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; the log level changes only through the admin API");
        return;
    };
    while hangup.recv().await.is_some() {
        match Config::load(config_path.as_deref()) {
            Ok(config) => {
                if let Err(e) = crate::logging::set_level(&config.log.level) {
                    tracing::warn!("SIGHUP: log.level: {e}");
                }
            }
            Err(e) => tracing::warn!("SIGHUP: cannot read the configuration again, nothing changed: {e}"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub fn init_logging(config: &Config) {
    crate::logging::init(&config.log);
}
