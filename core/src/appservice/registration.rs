//! Registration files: the YAML an application service (a bridge, a bot) comes with, listed in
//! the server's `appservice_config_files`, parsed and checked together at start so that a bad
//! one stops the server with a message naming the file and the problem.

use std::{collections::HashMap, path::Path, sync::Arc};

use regex::Regex;
use serde::Deserialize;

use crate::{Error, Result};

/// A registration file as written (the spec's fields, plus the MSC2409/MSC3202 flags bridges
/// set). Unknown keys are accepted: bridges add their own.
#[derive(Debug, Deserialize)]
struct RegistrationFile {
    id: String,
    /// `null` for an appservice that only uses the Client-Server API and receives nothing.
    url: Option<String>,
    as_token: String,
    hs_token: String,
    sender_localpart: String,
    #[serde(default)]
    namespaces: NamespacesFile,
    #[serde(default)]
    rate_limited: Option<bool>,
    #[serde(default)]
    protocols: Option<Vec<String>>,
    #[serde(default)]
    receive_ephemeral: Option<bool>,
    /// MSC2409's name of `receive_ephemeral`, which older bridges write.
    #[serde(default, rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral_msc2409: Option<bool>,
    /// MSC3202: device list changes and one-time key counts of the appservice's users.
    #[serde(default, rename = "org.matrix.msc3202")]
    msc3202: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct NamespacesFile {
    #[serde(default)]
    users: Option<Vec<NamespaceFile>>,
    #[serde(default)]
    aliases: Option<Vec<NamespaceFile>>,
    #[serde(default)]
    rooms: Option<Vec<NamespaceFile>>,
}

#[derive(Debug, Deserialize)]
struct NamespaceFile {
    #[serde(default)]
    exclusive: bool,
    regex: String,
}

/// One namespace: a regex that must match from the start of an ID (as Synapse matches them),
/// and whether the appservice claims what it matches for itself alone.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub exclusive: bool,
    /// As written in the file.
    pub pattern: String,
    regex: Regex,
}

impl Namespace {
    fn new(exclusive: bool, pattern: &str) -> std::result::Result<Namespace, regex::Error> {
        Ok(Namespace {
            exclusive,
            pattern: pattern.to_owned(),
            regex: Regex::new(&format!("^(?:{pattern})"))?,
        })
    }

    pub fn is_match(&self, id: &str) -> bool {
        self.regex.is_match(id)
    }
}

/// A checked registration.
#[derive(Debug)]
pub struct AppService {
    pub id: String,
    /// Where transactions and queries go (without a trailing slash); `None`: nowhere.
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    /// The appservice's own user, `@sender_localpart:server_name`.
    pub sender: String,
    pub users: Vec<Namespace>,
    pub aliases: Vec<Namespace>,
    pub rooms: Vec<Namespace>,
    /// Whether its users' requests are rate limited (off unless the file asks).
    pub rate_limited: bool,
    pub protocols: Vec<String>,
    /// Ephemeral events (typing, receipts) and to-device messages in transactions (MSC2409).
    pub receive_ephemeral: bool,
    /// Device list changes and one-time key counts in transactions (MSC3202).
    pub msc3202: bool,
    /// The outbox destination its transactions are queued under.
    pub destination: String,
}

impl AppService {
    /// Whether `user_id` is the appservice's own user or in its user namespaces.
    pub fn is_user_in_namespace(&self, user_id: &str) -> bool {
        user_id == self.sender || self.users.iter().any(|n| n.is_match(user_id))
    }

    pub fn is_exclusive_user(&self, user_id: &str) -> bool {
        user_id == self.sender || self.users.iter().any(|n| n.exclusive && n.is_match(user_id))
    }

    pub fn is_alias_in_namespace(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.is_match(alias))
    }

    pub fn is_exclusive_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.exclusive && n.is_match(alias))
    }

    pub fn is_room_in_namespace(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|n| n.is_match(room_id))
    }
}

/// The prefix of appservice destinations in the outbox: a `/` is never part of a server name,
/// so these never mix with federation's.
pub const DESTINATION_PREFIX: &str = "as/";

/// Every configured appservice, looked up by token and ID.
#[derive(Debug, Default)]
pub struct Registry {
    services: Vec<Arc<AppService>>,
    by_as_token: HashMap<String, usize>,
}

impl Registry {
    /// Reads and checks the registration files; an error names the file and the problem.
    pub fn load(files: &[impl AsRef<Path>], server_name: &str) -> Result<Registry> {
        let mut parsed = Vec::new();
        for file in files {
            let file = file.as_ref();
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::Config(format!("appservice registration {}: {e}", file.display())))?;
            let service = parse(&text, server_name)
                .map_err(|e| Error::Config(format!("appservice registration {}: {e}", file.display())))?;
            parsed.push((file.display().to_string(), service));
        }
        Self::check(parsed)
    }

    /// Builds a registry from YAML texts (name, text), for tests and callers without files.
    pub fn from_yaml(texts: &[(&str, &str)], server_name: &str) -> Result<Registry> {
        let mut parsed = Vec::new();
        for (name, text) in texts {
            let service =
                parse(text, server_name).map_err(|e| Error::Config(format!("appservice registration {name}: {e}")))?;
            parsed.push((name.to_string(), service));
        }
        Self::check(parsed)
    }

    /// The checks between files: unique IDs and tokens, no exclusive namespace claimed twice.
    fn check(parsed: Vec<(String, AppService)>) -> Result<Registry> {
        let mut registry = Registry::default();
        for (i, (name, service)) in parsed.iter().enumerate() {
            for (other_name, other) in &parsed[..i] {
                let clash = |what: &str| {
                    Error::Config(format!(
                        "appservice registration {name}: {what} is also used by {other_name} (id {:?})",
                        other.id
                    ))
                };
                if service.id == other.id {
                    return Err(clash(&format!("id {:?}", service.id)));
                }
                for token in [&service.as_token, &service.hs_token] {
                    if token == &other.as_token || token == &other.hs_token {
                        return Err(clash("a token (as_token or hs_token)"));
                    }
                }
                if let Some(what) = exclusive_overlap(service, other) {
                    return Err(clash(&what));
                }
            }
            registry.by_as_token.insert(service.as_token.clone(), i);
        }
        registry.services = parsed.into_iter().map(|(_, s)| Arc::new(s)).collect();
        Ok(registry)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn all(&self) -> &[Arc<AppService>] {
        &self.services
    }

    pub fn by_as_token(&self, token: &str) -> Option<&Arc<AppService>> {
        self.by_as_token.get(token).map(|&i| &self.services[i])
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<AppService>> {
        self.services.iter().find(|s| s.id == id)
    }

    pub fn by_destination(&self, destination: &str) -> Option<&Arc<AppService>> {
        self.services.iter().find(|s| s.destination == destination)
    }

    /// The appservice that claims `user_id` exclusively, if any.
    pub fn exclusive_user_owner(&self, user_id: &str) -> Option<&Arc<AppService>> {
        self.services.iter().find(|s| s.is_exclusive_user(user_id))
    }

    /// The appservice that claims `alias` exclusively, if any.
    pub fn exclusive_alias_owner(&self, alias: &str) -> Option<&Arc<AppService>> {
        self.services.iter().find(|s| s.is_exclusive_alias(alias))
    }
}

/// Two appservices' exclusive namespaces that would claim the same IDs: the same regex, or
/// one's own user inside the other's exclusive users. (Whether two different regexes can match
/// a common ID is not decided in general; these are the clashes a copied file makes.)
fn exclusive_overlap(a: &AppService, b: &AppService) -> Option<String> {
    for (kind, ours, theirs) in [
        ("users", &a.users, &b.users),
        ("aliases", &a.aliases, &b.aliases),
        ("rooms", &a.rooms, &b.rooms),
    ] {
        for n in ours.iter().filter(|n| n.exclusive) {
            if theirs.iter().any(|m| m.exclusive && m.pattern == n.pattern) {
                return Some(format!("the exclusive {kind} namespace {:?}", n.pattern));
            }
        }
    }
    if b.users.iter().any(|n| n.exclusive && n.is_match(&a.sender)) {
        return Some(format!("its sender {} (inside an exclusive users namespace)", a.sender));
    }
    if a.users.iter().any(|n| n.exclusive && n.is_match(&b.sender)) {
        return Some(format!(
            "its exclusive users namespace, matching the sender {}",
            b.sender
        ));
    }
    None
}

/// Parses and checks one file's text.
fn parse(text: &str, server_name: &str) -> std::result::Result<AppService, String> {
    let file: RegistrationFile = serde_yaml_ng::from_str(text).map_err(|e| format!("not a registration: {e}"))?;
    if file.id.is_empty() {
        return Err("id must not be empty".into());
    }
    if file.as_token.is_empty() || file.hs_token.is_empty() {
        return Err("as_token and hs_token must not be empty".into());
    }
    if file.as_token == file.hs_token {
        return Err("as_token and hs_token must differ".into());
    }
    let url = match file.url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url.trim_end_matches('/').to_owned())
        }
        Some(url) => return Err(format!("url {url:?} is not an http(s) URL")),
    };
    let sender = crate::accounts::user_id_for(&file.sender_localpart, server_name)
        .map_err(|e| format!("sender_localpart {:?}: {e}", file.sender_localpart))?;
    let namespaces = |kind: &str, list: Option<Vec<NamespaceFile>>| {
        list.unwrap_or_default()
            .iter()
            .map(|n| {
                Namespace::new(n.exclusive, &n.regex)
                    .map_err(|e| format!("namespaces.{kind}: bad regex {:?}: {e}", n.regex))
            })
            .collect::<std::result::Result<Vec<_>, String>>()
    };
    let users = namespaces("users", file.namespaces.users)?;
    let aliases = namespaces("aliases", file.namespaces.aliases)?;
    let rooms = namespaces("rooms", file.namespaces.rooms)?;
    Ok(AppService {
        destination: format!("{DESTINATION_PREFIX}{}", file.id),
        id: file.id,
        url,
        as_token: file.as_token,
        hs_token: file.hs_token,
        sender,
        users,
        aliases,
        rooms,
        rate_limited: file.rate_limited.unwrap_or(false),
        protocols: file.protocols.unwrap_or_default(),
        receive_ephemeral: file.receive_ephemeral.or(file.push_ephemeral_msc2409).unwrap_or(false),
        msc3202: file.msc3202.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"
id: whatsapp
url: http://localhost:29318/
as_token: as-secret
hs_token: hs-secret
sender_localpart: whatsappbot
namespaces:
  users:
    - exclusive: true
      regex: '@whatsapp_.*:example\.org'
  aliases:
    - exclusive: true
      regex: '#whatsapp_.*:example\.org'
rate_limited: false
de.sorunome.msc2409.push_ephemeral: true
"#;

    fn load(files: &[(&str, &str)]) -> std::result::Result<Registry, String> {
        Registry::from_yaml(files, "example.org").map_err(|e| e.to_string())
    }

    #[test]
    fn a_bridge_file_parses() {
        let registry = load(&[("wa.yaml", BRIDGE)]).unwrap();
        let wa = registry.by_as_token("as-secret").unwrap();
        assert_eq!(wa.url.as_deref(), Some("http://localhost:29318"));
        assert_eq!(wa.sender, "@whatsappbot:example.org");
        assert!(wa.receive_ephemeral);
        assert!(wa.is_exclusive_user("@whatsapp_123:example.org"));
        assert!(!wa.is_user_in_namespace("@alice:example.org"));
        assert!(wa.is_exclusive_alias("#whatsapp_group:example.org"));
        assert_eq!(
            registry.exclusive_user_owner("@whatsappbot:example.org").unwrap().id,
            "whatsapp"
        );
    }

    #[test]
    fn bad_files_name_their_problem() {
        let bad_regex = BRIDGE.replace(r"'@whatsapp_.*:example\.org'", "'@whatsapp_(:example'");
        let err = load(&[("wa.yaml", &bad_regex)]).unwrap_err();
        assert!(err.contains("wa.yaml") && err.contains("bad regex"), "{err}");

        let other = BRIDGE
            .replace("id: whatsapp", "id: other")
            .replace("whatsappbot", "otherbot");
        let err = load(&[("wa.yaml", BRIDGE), ("other.yaml", &other)]).unwrap_err();
        assert!(err.contains("other.yaml") && err.contains("token"), "{err}");

        let overlapping = other.replace("as-secret", "as-2").replace("hs-secret", "hs-2");
        let err = load(&[("wa.yaml", BRIDGE), ("other.yaml", &overlapping)]).unwrap_err();
        assert!(err.contains("exclusive users namespace"), "{err}");

        let distinct = overlapping.replace("whatsapp_", "telegram_");
        assert!(load(&[("wa.yaml", BRIDGE), ("other.yaml", &distinct)]).is_ok());

        let err = load(&[("x.yaml", "id: x\n")]).unwrap_err();
        assert!(err.contains("x.yaml") && err.contains("missing field"), "{err}");
    }
}
