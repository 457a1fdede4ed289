//! Starting and stopping a server: database, migrations, the notifier's relay (PostgreSQL),
//! listeners, the built-in TURN relay (when enabled), the pusher.
//!
//! Stopping is graceful: listeners stop accepting, requests in flight get `SHUTDOWN_GRACE` to
//! finish (long-polls answer at once: the notifier closes), background work ends at a point
//! where nothing is lost (the federation sender's pinned batch is resent after a restart with
//! the same transaction ID, the pusher finishes the sends it claimed), then the database
//! closes. A client told that a write succeeded was told after its commit, so a stop loses
//! nothing acknowledged.

use std::{net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use weft_core::{notifier::relay, Backend, Db};

use crate::{config::Config, router, state::AppState};

/// How long requests in flight may take to finish once the server stops accepting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A running server; dropping it does not stop it, `shutdown` does.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    /// The built-in TURN relay's listeners, when it is enabled.
    pub turn: Option<crate::turn::Relay>,
    pub state: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, closes the database pool.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.wait().await;
    }

    /// Resolves when every listener and background task has stopped (after `stopper()` was
    /// told to stop), and the database is closed.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.state.db.close().await;
    }

    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Opens the database and runs its migrations.
pub async fn open_db(config: &Config) -> anyhow::Result<Db> {
    let url = &config.database.url;
    let max_connections = config
        .database
        .max_connections
        .unwrap_or_else(|| Db::default_max_connections(url));
    let db = Db::connect(url, max_connections).await?;
    db.migrate().await?;
    Ok(db)
}

pub async fn start(mut config: Config) -> anyhow::Result<Running> {
    let db = open_db(&config).await?;
    let key = weft_core::signing_key::load_or_create(&config.signing_key_path)?;
    let server_name = ruma::ServerName::parse(&config.server_name)?;
    let mut core = weft_core::Core::new(db, server_name, key);
    core.appservices = std::sync::Arc::new(crate::appservices::load(&core, &config.appservice_config_files).await?);
    if core.db.backend() == Backend::Sqlite {
        // One process per SQLite database: a room deletion still active was the previous
        // run's, which stopped before finishing it.
        let failed = weft_core::admin::room_delete::fail_interrupted(&core).await?;
        if failed > 0 {
            tracing::warn!(failed, "room deletions interrupted by the last stop are marked failed");
        }
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    if config
        .listeners
        .iter()
        .any(|l| l.apis.contains(&crate::config::Api::Metrics))
    {
        tasks.push(crate::metrics::install(stop_rx.clone()));
    }
    {
        // Long-polls answer at once when stopping, so that in-flight requests end quickly.
        let notifier = core.notifier.clone();
        let mut stop_rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            notifier.close();
        }));
    }
    if core.db.backend() == Backend::Postgres {
        // Before serving: other processes on this database must be heard from the start.
        tasks.push(relay::start(&core, &config.database.url, stop_rx.clone()).await?);
    }
    let federation = if config.federation.enabled {
        if core.db.backend() == Backend::Sqlite {
            // SQLite is one process: leases left in it are this server's previous run's, which
            // was killed. Without this, outbound federation would wait for them to expire.
            let cleared = weft_core::outbox::lease::clear_all(&core).await?;
            if cleared > 0 {
                tracing::info!(cleared, "dropped the leases a previous run left behind");
            }
        }
        let extra_roots = config.federation_roots().map_err(|e| anyhow::anyhow!(e))?;
        let federation =
            weft_federation::Federation::new(core.clone(), &config, &extra_roots).map_err(|e| anyhow::anyhow!(e))?;
        // Paging back past the start of a room joined over federation fetches its history.
        weft_federation::backfill::install(&federation);
        let sender = weft_federation::sender::SenderConfig {
            holder: lease_holder(&config),
            ..Default::default()
        };
        tasks.push(weft_federation::sender::spawn_with(
            core.clone(),
            std::sync::Arc::new(federation.client.clone()),
            stop_rx.clone(),
            sender,
        ));
        Some(federation as std::sync::Arc<dyn weft_http::state::ServerAuth>)
    } else {
        None
    };
    let turn = crate::turn::start(&config, stop_rx.clone(), &mut tasks).await?;
    if let Some(relay) = &turn {
        // `/voip/turnServer` offers the relay with credentials it accepts.
        config.voip.turn_uris.extend(relay.uris.iter().cloned());
    }
    let state = AppState::with_server_auth(config.clone(), core, federation);
    for listener in &config.listeners {
        let app = router::build(state.clone(), &listener.apis);
        let socket = TcpListener::bind((listener.address, listener.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", listener.address, listener.port))?;
        let addr = socket.local_addr()?;
        addrs.push(addr);
        let mut stop_rx = stop_rx.clone();
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let tls = match (&listener.tls_cert, &listener.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            _ => None,
        };
        tasks.push(tokio::spawn(async move {
            let result = match tls {
                None => {
                    let mut grace_rx = stop_rx.clone();
                    let shutdown = async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    };
                    let serve = axum::serve(socket, service).with_graceful_shutdown(shutdown);
                    // Graceful shutdown waits for every connection; past the grace, the rest
                    // are dropped.
                    let grace = async move {
                        let _ = grace_rx.wait_for(|stop| *stop).await;
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                    };
                    tokio::select! {
                        result = serve => result,
                        _ = grace => {
                            tracing::warn!(%addr, "requests still in flight after the shutdown grace were dropped");
                            Ok(())
                        }
                    }
                }
                Some(tls) => {
                    let handle = axum_server::Handle::new();
                    let stopper = handle.clone();
                    tokio::spawn(async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                        stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
                    });
                    match socket.into_std() {
                        Ok(std_socket) => {
                            axum_server::from_tcp_rustls(
                                std_socket,
                                axum_server::tls_rustls::RustlsConfig::from_config(tls),
                            )
                            .handle(handle)
                            .serve(service)
                            .await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, %addr, "listener failed");
            }
        }));
        tracing::info!(%addr, apis = ?listener.apis, "listening");
    }
    tasks.push(crate::pusher::spawn(state.clone(), stop_rx.clone()));
    if !state.core.appservices.is_empty() {
        tasks.push(weft_core::appservice::sender::spawn(
            state.core.clone(),
            lease_holder(&config),
            stop_rx.clone(),
        ));
    }
    if state.config.delayed_events.enabled {
        tasks.push(crate::delayed_timer::spawn(state.clone(), stop_rx.clone()));
    }
    if let Some(sfu) = state.config.livekit.sfu() {
        // Delegated leave events outlive a restart: watch them again.
        match weft_core::rtc::delegation::resume(&state.core, &sfu).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(delegations = n, "watching delegated leave events again"),
            Err(e) => tracing::warn!(error = %e, "cannot resume delegated leave events"),
        }
    }
    Ok(Running {
        addrs,
        turn,
        state,
        stop,
        tasks,
    })
}

/// This process's name to the outbox's leases: its host and listeners, which a restart keeps
/// and which no other live process on the same database shares (two processes cannot listen
/// on one host's same ports). A restarted process thus takes back its killed run's leases at
/// once instead of waiting for them to expire. `None` (a random name) when a listener takes
/// any free port, which another process may share.
fn lease_holder(config: &Config) -> Option<String> {
    if config.listeners.iter().any(|l| l.port == 0) {
        return None;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .map(|l| format!("{}:{}", l.address, l.port))
        .collect();
    Some(format!("{host}/{}", listeners.join(",")))
}
