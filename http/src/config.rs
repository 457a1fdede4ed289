//! Configuration: one TOML file, every key overridable by `WEFT_*` environment variables
//! (`WEFT_DATABASE__URL`: a double underscore nests). Unknown keys are errors naming the key.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

/// Where this server answers lk-jwt-service's endpoints (`/sfu/get`, `/get_token`).
pub const LIVEKIT_SERVICE_PATH: &str = "/livekit/jwt";

/// `config.example.toml`: every setting, commented, with its default.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config.example.toml");

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The domain in user IDs and room aliases (`@alice:server_name`).
    pub server_name: String,
    /// The URL clients reach this server at; served in `/.well-known/matrix/client`.
    pub public_baseurl: String,
    /// Where the server's ed25519 signing key lives; created on first start.
    pub signing_key_path: PathBuf,
    /// Largest accepted request body (bytes), media uploads excepted.
    pub max_request_size: usize,
    /// A PEM file of CA certificates that outbound HTTPS (federation, push gateways, URL previews) trusts
    /// besides the usual public roots, for private deployments; empty for none.
    pub extra_ca_file: String,
    /// Lifetime of access tokens issued together with a refresh token.
    #[serde(with = "humantime_serde")]
    pub access_token_lifetime: Duration,
    /// Application service registration files (YAML), checked together at start.
    pub appservice_config_files: Vec<PathBuf>,
    pub database: DatabaseConfig,
    pub listeners: Vec<ListenerConfig>,
    pub registration: RegistrationConfig,
    pub rate_limits: RateLimitConfig,
    pub media: MediaConfig,
    pub federation: FederationConfig,
    pub voip: VoipConfig,
    pub livekit: LivekitConfig,
    pub delayed_events: DelayedEventsConfig,
    pub server_notices: ServerNoticesConfig,
    pub admin: AdminConfig,
    pub turn: TurnConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    pub url: String,
    /// Pool size; unset, it follows the backend (see `Db::default_max_connections`).
    pub max_connections: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Client,
    Media,
    Admin,
    Federation,
    Keys,
    Metrics,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default = "default_apis")]
    pub apis: Vec<Api>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_apis() -> Vec<Api> {
    vec![Api::Client, Api::Media, Api::Admin]
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    pub enabled: bool,
    pub require_token: bool,
    /// Secret for Synapse-compatible `/_synapse/admin/v1/register`; empty disables it.
    pub shared_secret: String,
    pub allow_guests: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained requests per second to rate-limited endpoints, per user (or per IP when
    /// unauthenticated).
    pub per_second: f64,
    /// How many requests may come at once before the sustained rate applies.
    pub burst: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    pub path: PathBuf,
    /// Largest accepted upload in bytes, and largest media fetched from another server.
    pub max_upload_size: usize,
    /// Bytes of uploads each user may store in total; 0 is unlimited.
    pub max_user_storage: u64,
    /// Media uploaded while this is on is served only by the authenticated endpoints
    /// (`/_matrix/client/v1/media/*`); the legacy `/_matrix/media/v3/download` and `/thumbnail`
    /// answer 404 for it (Synapse's `enable_authenticated_media`).
    pub enable_authenticated_media: bool,
    /// How long a media ID from `/_matrix/media/v1/create` waits for its upload.
    #[serde(with = "humantime_serde")]
    pub unused_expiration_time: Duration,
    /// How many such media IDs one user may have waiting at once.
    pub max_pending_media_uploads: u32,
    /// Serve `/preview_url` (the server then fetches URLs on users' behalf).
    pub url_preview_enabled: bool,
    /// Address ranges (CIDR) never fetched for previews, on top of the built-in private ones.
    pub url_preview_ip_blocklist: Vec<String>,
    /// Address ranges (CIDR) fetched even though blocked (trusted internal sites, tests).
    pub url_preview_ip_allowlist: Vec<String>,
    /// Largest page or image fetched for a preview, in bytes.
    pub url_preview_max_size: u64,
    /// Time limit of one preview (page, redirects and image).
    #[serde(with = "humantime_serde")]
    pub url_preview_timeout: Duration,
}

impl MediaConfig {
    fn validate(&self) -> Result<(), String> {
        for (key, list) in [
            ("url_preview_ip_blocklist", &self.url_preview_ip_blocklist),
            ("url_preview_ip_allowlist", &self.url_preview_ip_allowlist),
        ] {
            for range in list {
                range
                    .parse::<weft_core::media::preview::IpRange>()
                    .map_err(|e| format!("media.{key}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// TURN servers handed to clients for calls (`/voip/turnServer`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoipConfig {
    /// `turn:` / `turns:` URIs; empty means no TURN server is offered.
    pub turn_uris: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`): credentials are
    /// made per user and expire.
    pub turn_shared_secret: String,
    /// Fixed credentials, for a TURN server without a shared secret.
    pub turn_username: String,
    pub turn_password: String,
    /// How long credentials made with the shared secret stay valid.
    #[serde(with = "humantime_serde")]
    pub turn_user_lifetime: Duration,
    /// Whether guests get TURN credentials too.
    pub turn_allow_guests: bool,
    /// Where Element Call gets LiveKit tokens (an lk-jwt-service, MSC4195), advertised as the
    /// MatrixRTC transport in `/.well-known/matrix/client`; empty advertises none.
    pub livekit_service_url: String,
}

/// A LiveKit SFU for which this server issues access tokens itself (MatrixRTC, MSC4195), so
/// that Element Call needs no separate lk-jwt-service. Off while `url` is empty.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivekitConfig {
    /// The SFU's WebSocket URL (`wss://livekit.example.org`), handed to clients.
    pub url: String,
    /// The API key and secret the SFU is configured with (its `keys:` map); tokens are signed
    /// with the secret.
    pub api_key: String,
    pub api_secret: String,
    /// How long an issued token lets its holder join.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
}

impl LivekitConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The SFU this server issues tokens for, when one is configured.
    pub fn sfu(&self) -> Option<weft_core::rtc::livekit::Sfu> {
        self.enabled().then(|| weft_core::rtc::livekit::Sfu {
            url: self.url.clone(),
            api_key: self.api_key.clone(),
            api_secret: self.api_secret.clone(),
            token_lifetime: self.token_lifetime,
        })
    }
}

/// Delayed events (MSC4140): events a client schedules, which this server sends when their
/// delay runs out unless restarted or cancelled first (Element Call's "hang up if I vanish").
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelayedEventsConfig {
    pub enabled: bool,
    /// The longest delay a client may ask for; longer ones answer MSC4140's max-delay error
    /// (`ORG.MATRIX.MSC4140_MAX_DELAY_EXCEEDED` while the proposal is unstable).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// How many delayed events one user may have scheduled at once.
    pub max_per_user: u32,
}

/// Server notices (`/_synapse/admin/v1/send_server_notice`): messages from the server to a
/// user, in a room the notices user creates for each user and tags `m.server_notice`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerNoticesConfig {
    /// The notices user's localpart; empty turns server notices off.
    pub system_mxid_localpart: String,
    /// The notices user's display name and avatar (an `mxc://` URI); empty for none.
    pub system_mxid_display_name: String,
    pub system_mxid_avatar_url: String,
    /// The name of each user's notices room.
    pub room_name: String,
}

impl ServerNoticesConfig {
    /// Who sends notices, when they are on.
    pub fn sender(&self) -> Option<weft_core::admin::notices::Sender<'_>> {
        fn non_empty(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        (!self.system_mxid_localpart.is_empty()).then(|| weft_core::admin::notices::Sender {
            localpart: &self.system_mxid_localpart,
            display_name: non_empty(&self.system_mxid_display_name),
            avatar_url: non_empty(&self.system_mxid_avatar_url),
            room_name: &self.room_name,
        })
    }
}

impl Default for ServerNoticesConfig {
    fn default() -> Self {
        ServerNoticesConfig {
            system_mxid_localpart: String::new(),
            system_mxid_display_name: "Server Notices".into(),
            system_mxid_avatar_url: String::new(),
            room_name: "Server Notices".into(),
        }
    }
}

/// The admin API's riskier powers, off by default.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Lets admins obtain an access token for another user
    /// (`/_synapse/admin/v1/users/{userId}/login`); each use is logged at warn.
    pub allow_login_as_user: bool,
}

/// The built-in STUN/TURN relay (off by default), so that a small deployment needs no coturn.
/// It checks the credentials `/voip/turnServer` makes from `voip.turn_shared_secret`, and its
/// URIs are advertised there besides `voip.turn_uris`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub enabled: bool,
    /// Addresses (`ip:port`) the relay listens on for UDP.
    pub udp_listeners: Vec<String>,
    /// Addresses (`ip:port`) the relay listens on for TCP (TURN over TCP; the relayed traffic
    /// to peers is UDP either way).
    pub tcp_listeners: Vec<String>,
    /// The realm of the long-term credentials; empty is the server name.
    pub realm: String,
    /// The address relayed ports are opened on.
    pub relay_ip: IpAddr,
    /// The address peers and clients reach relayed ports at, when it differs from `relay_ip`
    /// (behind NAT, or `relay_ip` unspecified); also the host of the advertised URIs. Empty:
    /// `relay_ip`.
    pub external_ip: String,
    /// The range relayed ports are taken from (inclusive).
    pub min_port: u16,
    pub max_port: u16,
    /// Allocations one user may hold at once (a call takes one or two).
    pub user_quota: u32,
    /// Bytes per second relayed for one allocation, each way; what goes over is dropped, as
    /// UDP would. 0 is unlimited.
    pub max_bytes_per_second: u64,
    /// Lets clients relay to loopback peers (127.0.0.0/8, ::1). Tests only: a relay that
    /// reaches its own host's services is an open door to them.
    pub allow_loopback_peers: bool,
    /// Address ranges (CIDR) relayed to even though private, link-local or otherwise
    /// refused by default (e.g. a LAN whose clients call each other through the relay).
    pub allowed_peer_ranges: Vec<String>,
    /// URIs advertised in `/voip/turnServer` for this relay; empty: made from the listeners
    /// (`turn:HOST:PORT?transport=udp|tcp`, HOST being `external_ip`, else the listener's
    /// address, else the host of `server_name`).
    pub uris: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Whether this server talks to other servers at all; off, rooms stay local and requests
    /// to the Server-Server API are refused.
    pub enabled: bool,
    /// Servers asked for another server's keys when that server cannot be reached
    /// (`/_matrix/key/v2/query`), e.g. `["matrix.org"]`.
    pub trusted_key_servers: Vec<String>,
    /// Skips certificate checks on outbound federation. Test setups only.
    pub tls_insecure_skip_verify: bool,
    /// A PEM file of CA certificates that outbound federation alone trusts besides
    /// `extra_ca_file`'s (a private federation, a test suite's fake servers); empty for none.
    pub ca_file: String,
    /// Kept so that configurations written for it still load: outbound federation does not
    /// filter destinations by address yet, so loopback and private ones are always reached.
    pub allow_loopback: bool,
    /// Served as `m.server` at `/.well-known/matrix/server` when set (`host[:port]`), to
    /// delegate federation to another host; empty serves nothing there.
    pub well_known_server: String,
    /// The largest answer read from another server, in bytes: `send_join`'s state and auth
    /// chain for a room of 10 000 members is about 10-20 MiB, and grows with the room.
    pub max_response_size: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter: `info`, `weft=debug,sqlx=warn`, ...
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "localhost:8008".into(),
            public_baseurl: "http://localhost:8008/".into(),
            signing_key_path: "data/signing.key".into(),
            extra_ca_file: String::new(),
            max_request_size: 1024 * 1024,
            access_token_lifetime: Duration::from_secs(5 * 60),
            appservice_config_files: Vec::new(),
            database: DatabaseConfig::default(),
            listeners: vec![ListenerConfig {
                address: [127, 0, 0, 1].into(),
                port: 8008,
                apis: default_apis(),
                tls_cert: None,
                tls_key: None,
            }],
            registration: RegistrationConfig::default(),
            rate_limits: RateLimitConfig::default(),
            media: MediaConfig::default(),
            federation: FederationConfig::default(),
            voip: VoipConfig::default(),
            livekit: LivekitConfig::default(),
            delayed_events: DelayedEventsConfig::default(),
            server_notices: ServerNoticesConfig::default(),
            admin: AdminConfig::default(),
            turn: TurnConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/weft.db".into(),
            max_connections: None,
        }
    }
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            enabled: false,
            require_token: false,
            shared_secret: String::new(),
            allow_guests: false,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            per_second: 10.0,
            burst: 50,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            path: "data/media".into(),
            max_upload_size: 50 * 1024 * 1024,
            max_user_storage: 0,
            enable_authenticated_media: true,
            unused_expiration_time: Duration::from_secs(24 * 60 * 60),
            max_pending_media_uploads: 5,
            url_preview_enabled: false,
            url_preview_ip_blocklist: Vec::new(),
            url_preview_ip_allowlist: Vec::new(),
            url_preview_max_size: 10 * 1024 * 1024,
            url_preview_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            enabled: true,
            trusted_key_servers: Vec::new(),
            tls_insecure_skip_verify: false,
            ca_file: String::new(),
            allow_loopback: false,
            well_known_server: String::new(),
            max_response_size: 256 * 1024 * 1024,
        }
    }
}

impl Default for LivekitConfig {
    fn default() -> Self {
        LivekitConfig {
            url: String::new(),
            api_key: String::new(),
            api_secret: String::new(),
            token_lifetime: Duration::from_secs(60 * 60),
        }
    }
}

impl Default for DelayedEventsConfig {
    fn default() -> Self {
        DelayedEventsConfig {
            enabled: true,
            max_delay: Duration::from_secs(24 * 60 * 60),
            max_per_user: 100,
        }
    }
}

impl Default for VoipConfig {
    fn default() -> Self {
        VoipConfig {
            turn_uris: Vec::new(),
            turn_shared_secret: String::new(),
            turn_username: String::new(),
            turn_password: String::new(),
            turn_user_lifetime: Duration::from_secs(60 * 60),
            turn_allow_guests: true,
            livekit_service_url: String::new(),
        }
    }
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: false,
            udp_listeners: vec!["0.0.0.0:3478".into()],
            tcp_listeners: vec!["0.0.0.0:3478".into()],
            realm: String::new(),
            relay_ip: [0, 0, 0, 0].into(),
            external_ip: String::new(),
            min_port: 49152,
            max_port: 65535,
            user_quota: 10,
            max_bytes_per_second: 1_000_000,
            allow_loopback_peers: false,
            allowed_peer_ranges: Vec::new(),
            uris: Vec::new(),
        }
    }
}

impl TurnConfig {
    fn validate(&self, voip: &VoipConfig) -> Result<(), String> {
        for range in &self.allowed_peer_ranges {
            range
                .parse::<weft_core::media::preview::IpRange>()
                .map_err(|e| format!("turn.allowed_peer_ranges: {e}"))?;
        }
        if !self.enabled {
            return Ok(());
        }
        if voip.turn_shared_secret.is_empty() {
            return Err("turn.enabled needs voip.turn_shared_secret: the relay checks credentials made with it".into());
        }
        if self.udp_listeners.is_empty() && self.tcp_listeners.is_empty() {
            return Err("turn.enabled needs at least one of turn.udp_listeners and turn.tcp_listeners".into());
        }
        for (key, list) in [
            ("udp_listeners", &self.udp_listeners),
            ("tcp_listeners", &self.tcp_listeners),
        ] {
            for addr in list {
                addr.parse::<std::net::SocketAddr>()
                    .map_err(|_| format!("turn.{key}: {addr:?} is not an ip:port address"))?;
            }
        }
        if !self.external_ip.is_empty() && self.external_ip.parse::<IpAddr>().is_err() {
            return Err(format!("turn.external_ip: {:?} is not an IP address", self.external_ip));
        }
        if self.relay_ip.is_unspecified() && self.external_ip.is_empty() {
            return Err("turn.external_ip: needed when turn.relay_ip is unspecified (0.0.0.0 or ::), to tell clients where their relayed ports are".into());
        }
        if self.min_port == 0 || self.min_port > self.max_port {
            return Err("turn.min_port and turn.max_port: a range of ports, 0 excluded".into());
        }
        if self.user_quota == 0 {
            return Err("turn.user_quota: at least 1".into());
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then `WEFT_*` environment variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(format!("config file {} does not exist", file.display()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // `WEFT_TEST_*` variables belong to the test suite, not to the server.
        let env = Env::prefixed("WEFT_")
            .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
            .split("__");
        figment = figment.merge(env);
        let config: Config = figment.extract().map_err(|e| describe(&e))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if ruma::ServerName::parse(&self.server_name).is_err() {
            return Err(format!(
                "server_name: {:?} is not a valid server name",
                self.server_name
            ));
        }
        if !(self.public_baseurl.starts_with("http://") || self.public_baseurl.starts_with("https://")) {
            return Err(format!(
                "public_baseurl: {:?} must be an http(s) URL",
                self.public_baseurl
            ));
        }
        if self.listeners.is_empty() {
            return Err("listeners: at least one listener is needed".into());
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.tls_cert.is_some() != l.tls_key.is_some() {
                return Err(format!("listeners[{i}]: tls_cert and tls_key go together"));
            }
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(format!(
                "log.format: {:?} is neither \"text\" nor \"json\"",
                self.log.format
            ));
        }
        if self.rate_limits.per_second <= 0.0 {
            return Err("rate_limits.per_second must be positive".into());
        }
        let delegated = &self.federation.well_known_server;
        if !delegated.is_empty() && ruma::ServerName::parse(delegated).is_err() {
            return Err(format!(
                "federation.well_known_server: {delegated:?} is not a server name (host[:port])"
            ));
        }
        let livekit = &self.livekit;
        if livekit.enabled() {
            if !(livekit.url.starts_with("ws://") || livekit.url.starts_with("wss://")) {
                return Err(format!("livekit.url: {:?} must be a ws(s) URL", livekit.url));
            }
            if livekit.api_key.is_empty() || livekit.api_secret.is_empty() {
                return Err("livekit: url needs api_key and api_secret".into());
            }
        }
        self.media.validate()?;
        self.turn.validate(&self.voip)?;
        self.federation_roots()?;
        Ok(())
    }

    /// The certificates of `extra_ca_file`, for outbound HTTPS clients to trust.
    pub fn extra_roots(&self) -> Result<Vec<reqwest::Certificate>, String> {
        read_roots("extra_ca_file", &self.extra_ca_file)
    }

    /// What outbound federation trusts besides the public roots: `extra_ca_file`'s CAs and
    /// `federation.ca_file`'s.
    pub fn federation_roots(&self) -> Result<Vec<reqwest::Certificate>, String> {
        let mut roots = self.extra_roots()?;
        roots.extend(read_roots("federation.ca_file", &self.federation.ca_file)?);
        Ok(roots)
    }

    /// The public base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.public_baseurl.trim_end_matches('/')
    }

    /// Where Element Call gets LiveKit tokens: the configured lk-jwt-service, else this
    /// server's own compatible endpoints when it issues tokens itself; empty for neither.
    pub fn livekit_service_url(&self) -> String {
        if !self.voip.livekit_service_url.is_empty() {
            self.voip.livekit_service_url.clone()
        } else if self.livekit.enabled() {
            format!("{}{LIVEKIT_SERVICE_PATH}", self.base_url())
        } else {
            String::new()
        }
    }
}

/// The CA certificates of a PEM file named by the setting `key` (none for an empty path).
fn read_roots(key: &str, path: &str) -> Result<Vec<reqwest::Certificate>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let pem = std::fs::read(path).map_err(|e| format!("{key}: {path}: {e}"))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{key}: {path}: {e}"))?;
    if roots.is_empty() {
        return Err(format!("{key}: {path} holds no certificate"));
    }
    Ok(roots)
}

/// Turns figment's errors into one line per problem, each naming the key.
fn describe(err: &figment::Error) -> String {
    err.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            if key.is_empty() {
                format!("config: {}", e.kind)
            } else {
                format!("config key `{key}`: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!("weft-config-{}", weft_core::util::random_string(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("weft.toml");
        std::fs::write(&path, toml).unwrap();
        let result = Config::load(Some(&path));
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn example_config_is_the_default() {
        let from_example = load_str(EXAMPLE_CONFIG).expect("example config loads");
        let default = Config::default();
        assert_eq!(
            toml::to_string(&from_example).unwrap(),
            toml::to_string(&default).unwrap()
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("server_name = \"a.b\"\n[database]\nurll = \"x\"\n").unwrap_err();
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn an_unreadable_extra_ca_file_is_named() {
        let err = load_str("extra_ca_file = \"/nonexistent/ca.pem\"\n").unwrap_err();
        assert!(
            err.contains("extra_ca_file") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let not_pem = std::env::temp_dir().join(format!("weft-not-a-ca-{}", std::process::id()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let err = load_str(&format!("extra_ca_file = {:?}\n", not_pem.display().to_string())).unwrap_err();
        assert!(err.contains("extra_ca_file"), "{err}");
        let _ = std::fs::remove_file(not_pem);
    }

    #[test]
    fn invalid_value_is_named() {
        let err = load_str("[[listeners]]\naddress = \"127.0.0.1\"\nport = \"eighty\"\n").unwrap_err();
        assert!(err.contains("listeners") && err.contains("port"), "{err}");
        let err = load_str("server_name = \"not a name!\"\n").unwrap_err();
        assert!(err.contains("server_name"), "{err}");
        let err = load_str("[federation]\nwell_known_server = \"https://matrix.example.org\"\n").unwrap_err();
        assert!(err.contains("federation.well_known_server"), "{err}");
        load_str("[federation]\nwell_known_server = \"matrix.example.org:443\"\n").expect("a server name");
    }

    #[test]
    fn an_enabled_turn_relay_needs_the_shared_secret_and_valid_addresses() {
        let err = load_str("[turn]\nenabled = true\nexternal_ip = \"203.0.113.7\"\n").unwrap_err();
        assert!(err.contains("voip.turn_shared_secret"), "{err}");
        let with_secret = "[voip]\nturn_shared_secret = \"s\"\n[turn]\nenabled = true\n";
        let err = load_str(with_secret).unwrap_err();
        assert!(
            err.contains("turn.external_ip"),
            "0.0.0.0 needs an external address: {err}"
        );
        let err = load_str(&format!(
            "{with_secret}external_ip = \"203.0.113.7\"\nudp_listeners = [\"3478\"]\n"
        ))
        .unwrap_err();
        assert!(err.contains("turn.udp_listeners"), "{err}");
        let err = load_str("[turn]\nallowed_peer_ranges = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(err.contains("turn.allowed_peer_ranges"), "{err}");
        load_str(&format!("{with_secret}external_ip = \"203.0.113.7\"\n")).expect("a complete relay");
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(Config::load(Some(std::path::Path::new("/nonexistent/weft.toml"))).is_err());
    }
}
