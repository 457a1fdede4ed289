//! Several weft servers federating on loopback, as the design's federation tests need: each
//! serves the client APIs over plain HTTP (its `addr`, so `TestServer`'s helpers work) and the
//! federation and key APIs over TLS on a port known before it starts, which its server name
//! (`127.0.0.1:<port>`) names. A test CA signs every server's certificate, and every server
//! trusts that CA for its outbound HTTPS (`extra_ca_file`), so certificates are verified as in
//! production.

use std::{
    net::{SocketAddr, TcpListener},
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
};

use weft::{
    config::{Api, Config, ListenerConfig},
    server,
};

use crate::harness::{test_config, Backend, Client, TestDb, TestServer};

/// A certificate authority made for one test, its certificate written as PEM.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weft test CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let dir = std::env::temp_dir().join(format!("weft-test-ca-{}", weft_core::util::random_string(12)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
        TestCa { issuer, dir }
    }

    /// The CA's certificate (PEM), for `extra_ca_file`.
    pub fn pem_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes a certificate for `names` (an IP address becomes an IP SAN) and its key, as PEM
    /// files in `dir`; answers their paths.
    pub fn issue(&self, names: &[&str], dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("certificate parameters")
            .signed_by(&key, &self.issuer)
            .expect("certificate");
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// An HTTPS client that trusts this CA and nothing else.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.issuer.pem().as_bytes()).unwrap())
            .build()
            .unwrap()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A weft server reachable by other servers: `TestServer` (client listener at `addr`) plus a
/// TLS federation listener at `federation_addr`.
pub struct FederatedServer {
    pub server: TestServer,
    pub federation_addr: SocketAddr,
}

impl Deref for FederatedServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

impl DerefMut for FederatedServer {
    fn deref_mut(&mut self) -> &mut TestServer {
        &mut self.server
    }
}

impl FederatedServer {
    pub async fn start(backend: Backend, ca: &TestCa) -> Option<FederatedServer> {
        Self::start_with(backend, ca, |_| {}).await
    }

    /// Starts a server whose configuration `tweak` may change last. `None` when the backend
    /// is not available (see `TestDb::new`).
    pub async fn start_with(backend: Backend, ca: &TestCa, tweak: impl Fn(&mut Config)) -> Option<FederatedServer> {
        let db = TestDb::new(backend).await?;
        let (cert, key) = ca.issue(&["127.0.0.1"], &db.dir);
        // The server name must carry the federation port, so the port is chosen first; another
        // process may take it in between, hence a few tries.
        for attempt in 1..=5 {
            let port = free_port();
            let mut config = federated_config(&db, port, ca, &cert, &key);
            tweak(&mut config);
            match server::start(config.clone()).await {
                Ok(running) => {
                    let addr = running.addrs[0];
                    // Restarts keep both ports.
                    config.listeners[0].port = addr.port();
                    return Some(FederatedServer {
                        federation_addr: running.addrs[1],
                        server: TestServer {
                            db,
                            config,
                            running: Some(running),
                            addr,
                        },
                    });
                }
                Err(e) if attempt < 5 && e.to_string().contains("cannot listen") => continue,
                Err(e) => panic!("federated server starts: {e:#}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The server name other servers know it by: `127.0.0.1:<federation port>`.
    pub fn server_name(&self) -> &str {
        &self.server.config.server_name
    }

    /// `https://127.0.0.1:<federation port>`.
    pub fn federation_url(&self) -> String {
        format!("https://{}", self.federation_addr)
    }

    /// Stops the server and starts it again on the same ports and database.
    pub async fn restart(&mut self) {
        self.halt().await;
        self.resume().await;
    }

    /// Stops the server, keeping its ports and database for `resume`: meanwhile other servers
    /// cannot reach it.
    pub async fn halt(&mut self) {
        if let Some(running) = self.server.running.take() {
            running.shutdown().await;
        }
    }

    /// Starts a halted server again on its ports and database.
    pub async fn resume(&mut self) {
        let running = server::start(self.server.config.clone())
            .await
            .expect("federated server restarts on its ports");
        assert_eq!(
            (running.addrs[0], running.addrs[1]),
            (self.server.addr, self.federation_addr)
        );
        self.server.running = Some(running);
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// `n` federated servers sharing one test CA (each trusts the others' certificates), or `None`
/// when the backend is not available.
pub async fn start_federation(backend: Backend, n: usize) -> Option<(TestCa, Vec<FederatedServer>)> {
    let ca = TestCa::new();
    let mut servers = Vec::with_capacity(n);
    for _ in 0..n {
        servers.push(FederatedServer::start(backend, &ca).await?);
    }
    Some((ca, servers))
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

fn federated_config(db: &TestDb, port: u16, ca: &TestCa, cert: &Path, key: &Path) -> Config {
    let mut config = test_config(db);
    config.server_name = format!("127.0.0.1:{port}");
    // The plain client listener stays first: `addrs[0]` is what `TestServer` talks to.
    config.listeners.push(ListenerConfig {
        address: [127, 0, 0, 1].into(),
        port,
        apis: vec![Api::Federation, Api::Keys],
        tls_cert: Some(cert.to_owned()),
        tls_key: Some(key.to_owned()),
    });
    config.extra_ca_file = ca.pem_path().display().to_string();
    config
}

/// A federated weft run as a child process (the `weft` binary with a config file written from
/// the same configuration `FederatedServer` uses), so that a test can stop it with SIGKILL, as
/// a crash or a power cut would, and start it again on the same database and ports. Its log
/// (level `warn`) goes to `weft.log` in its directory, printed when a start fails.
pub struct FederatedProcess {
    pub db: TestDb,
    config_path: PathBuf,
    server_name: String,
    child: Option<std::process::Child>,
    /// The plain client listener.
    pub addr: SocketAddr,
    pub federation_addr: SocketAddr,
    /// Trusts the test CA, for readiness checks on the federation listener.
    https: reqwest::Client,
}

impl FederatedProcess {
    /// Starts one, or `None` when the backend is not available.
    pub async fn spawn(backend: Backend, ca: &TestCa) -> Option<FederatedProcess> {
        let db = TestDb::new(backend).await?;
        let (cert, key) = ca.issue(&["127.0.0.1"], &db.dir);
        let mut process = FederatedProcess {
            config_path: db.dir.join("weft.toml"),
            server_name: String::new(),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            federation_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            https: ca.client(),
            db,
        };
        // Both ports are chosen before the child binds them; another process may take one in
        // between, hence a few tries.
        for attempt in 1..=5 {
            let (client_port, federation_port) = (free_port(), free_port());
            let mut config = federated_config(&process.db, federation_port, ca, &cert, &key);
            config.listeners[0].port = client_port;
            let toml = toml::to_string(&config).expect("the configuration as TOML");
            std::fs::write(&process.config_path, toml).unwrap();
            process.server_name = config.server_name;
            process.addr.set_port(client_port);
            process.federation_addr.set_port(federation_port);
            match process.try_start().await {
                Ok(()) => return Some(process),
                Err(log) if attempt < 5 && log.contains("cannot listen") => continue,
                Err(log) => panic!("weft (child process) did not start:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts the child and waits until both listeners answer; on failure, kills it and
    /// answers its log.
    async fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log_path = self.db.dir.join("weft.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run the weft binary");
        self.child = Some(child);
        let versions = format!("{}/_matrix/client/versions", self.url());
        let federation = format!("https://{}/_matrix/federation/v1/version", self.federation_addr);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap().is_some();
            if !exited && tokio::time::Instant::now() < deadline {
                let client_up = reqwest::get(&versions).await.is_ok_and(|r| r.status().is_success());
                let federation_up = client_up
                    && self
                        .https
                        .get(&federation)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                if federation_up {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            self.kill();
            return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
        }
    }

    /// Starts it again after `kill`, on the same database and ports.
    pub async fn start(&mut self) {
        if let Err(log) = self.try_start().await {
            panic!("weft (child process) did not restart:\n{log}");
        }
    }

    /// SIGKILL: the process ends at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server name other servers know it by: `127.0.0.1:<federation port>`.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The plain client listener's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client {
            base: self.url(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    pub async fn register(&self, localpart: &str, password: &str) -> Client {
        self.client().register(localpart, password).await
    }

    /// Kills it and drops its database.
    pub async fn stop(mut self) {
        self.kill();
        self.db.drop_db().await;
    }
}

impl Drop for FederatedProcess {
    /// A failed test still ends its child (the database stays, as with `TestServer`).
    fn drop(&mut self) {
        self.kill();
    }
}
