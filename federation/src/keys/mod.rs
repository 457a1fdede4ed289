//! Other servers' signing keys: read from the database, fetched from the server itself
//! (`/_matrix/key/v2/server`) or, failing that, from the configured notaries
//! (`/_matrix/key/v2/query`), believed only when self-signed, and kept with their validity.

pub mod verify;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    api::federation::discovery::{get_remote_server_keys_batch, get_server_keys},
    canonical_json::{CanonicalJsonObject, CanonicalJsonValue},
    room_version_rules::RoomVersionRules,
    serde::{Base64, Raw},
    signatures::{PublicKeyMap, PublicKeySet},
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedServerSigningKeyId, ServerName,
};
use weft_core::{storage::server_keys, util::now_ms, Core};

use crate::client::Client;

/// A server asked again for keys it did not have waits this long: an unknown key ID in every
/// request of a misbehaving server must not become a fetch per request.
const REFETCH_AFTER: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    notaries: Vec<OwnedServerName>,
    /// When each server's keys were last fetched by this process.
    fetched: Mutex<HashMap<OwnedServerName, Instant>>,
}

impl KeyRing {
    pub fn new(client: Client, notaries: Vec<OwnedServerName>) -> KeyRing {
        KeyRing {
            inner: Arc::new(Inner {
                client,
                notaries,
                fetched: Mutex::default(),
            }),
        }
    }

    fn core(&self) -> &Core {
        self.inner.client.core()
    }

    /// The keys among `key_ids` that `server` signed with and that verify what it signed at
    /// `ts`, fetched when not known or not known to be valid then.
    pub async fn keys_valid_at(&self, server: &ServerName, key_ids: &[String], ts: i64) -> PublicKeySet {
        let found = self.stored_valid_at(server, key_ids, ts).await;
        if found.len() == key_ids.len() || server == self.core().server_name || !self.may_fetch(server) {
            return found;
        }
        let minimum_valid_until = ts.max(now_ms());
        if let Err(e) = self.fetch_direct(server).await {
            tracing::info!(%server, error = %e, "cannot fetch the server's keys from it");
        }
        let found = self.stored_valid_at(server, key_ids, ts).await;
        if found.len() == key_ids.len() {
            return found;
        }
        for notary in &self.inner.notaries {
            match self
                .fetch_from_notary(notary, server, key_ids, minimum_valid_until)
                .await
            {
                Ok(()) => {
                    let found = self.stored_valid_at(server, key_ids, ts).await;
                    if found.len() == key_ids.len() {
                        return found;
                    }
                }
                Err(e) => tracing::info!(%server, %notary, error = %e, "cannot fetch keys through a notary"),
            }
        }
        self.stored_valid_at(server, key_ids, ts).await
    }

    /// The keys to verify a PDU with: those of every server whose signature it needs, valid
    /// when it was sent (rooms before v5 do not enforce validity).
    pub async fn keys_for_pdu(&self, pdu: &CanonicalJsonObject, rules: &RoomVersionRules) -> PublicKeyMap {
        let mut map = PublicKeyMap::new();
        let Ok(servers) = ruma::signatures::required_server_signatures_to_verify_event(pdu, &rules.signatures) else {
            return map;
        };
        let ts = pdu_ts(pdu, rules);
        for server in servers {
            let key_ids = signing_key_ids(pdu, server.as_str());
            let keys = self.keys_valid_at(&server, &key_ids, ts).await;
            if !keys.is_empty() {
                map.insert(server.to_string(), keys);
            }
        }
        map
    }

    /// The keys to verify many PDUs of a room with (a room's state and auth chain): each
    /// server's keys fetched at most once for the whole batch, then looked up per PDU in
    /// memory, as `keys_for_pdu` would answer them.
    pub async fn keys_for_pdus<'a>(
        &self,
        pdus: impl Iterator<Item = &'a CanonicalJsonObject>,
        rules: &RoomVersionRules,
    ) -> BatchKeys {
        // Per server, the key IDs it signed with and the latest time it signed at.
        let mut wanted: HashMap<OwnedServerName, (Vec<String>, i64)> = HashMap::new();
        for pdu in pdus {
            let Ok(servers) = ruma::signatures::required_server_signatures_to_verify_event(pdu, &rules.signatures)
            else {
                continue;
            };
            let ts = pdu_ts(pdu, rules);
            for server in servers {
                let entry = wanted.entry(server.clone()).or_insert_with(|| (Vec::new(), i64::MIN));
                for id in signing_key_ids(pdu, server.as_str()) {
                    if !entry.0.contains(&id) {
                        entry.0.push(id);
                    }
                }
                entry.1 = entry.1.max(ts);
            }
        }
        let mut by_server = HashMap::new();
        for (server, (key_ids, ts)) in wanted {
            // Fetches what is not stored, or not valid as late as the latest PDU needs.
            self.keys_valid_at(&server, &key_ids, ts).await;
            let keys = if server == self.core().server_name {
                own_keys(self.core())
            } else {
                server_keys::of_server(&self.core().db, server.as_str())
                    .await
                    .unwrap_or_default()
            };
            let keys = keys
                .into_iter()
                .filter(|k| key_ids.contains(&k.key_id))
                .filter_map(|k| Some((k.key_id.clone(), Base64::parse(&k.public_key).ok()?, k)))
                .map(|(id, key, stored)| BatchKey { id, key, stored })
                .collect();
            by_server.insert(server.to_string(), keys);
        }
        BatchKeys {
            by_server,
            enforce_validity: rules.enforce_key_validity,
        }
    }

    fn may_fetch(&self, server: &ServerName) -> bool {
        let mut fetched = self.inner.fetched.lock().unwrap_or_else(|e| e.into_inner());
        match fetched.get(server) {
            Some(at) if at.elapsed() < REFETCH_AFTER => false,
            _ => {
                fetched.insert(server.to_owned(), Instant::now());
                true
            }
        }
    }

    async fn stored_valid_at(&self, server: &ServerName, key_ids: &[String], ts: i64) -> PublicKeySet {
        let stored = if server == self.core().server_name {
            own_keys(self.core())
        } else {
            match server_keys::of_server(&self.core().db, server.as_str()).await {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::warn!(%server, error = %e, "cannot read stored server keys");
                    Vec::new()
                }
            }
        };
        stored
            .into_iter()
            .filter(|k| key_ids.contains(&k.key_id) && (ts == i64::MIN || k.valid_at(ts)))
            .filter_map(|k| Some((k.key_id, Base64::parse(&k.public_key).ok()?)))
            .collect::<BTreeMap<_, _>>()
    }

    /// Asks `server` for its own keys.
    pub async fn fetch_direct(&self, server: &ServerName) -> Result<(), String> {
        let response = self
            .inner
            .client
            .send_with_timeout(server, get_server_keys::v2::Request::new(), Duration::from_secs(20))
            .await
            .map_err(|e| e.to_string())?;
        self.store_answers(server, std::iter::once(response.server_key)).await
    }

    /// Asks `notary` for `server`'s keys valid until at least `minimum_valid_until`. The answer
    /// must still be signed by `server` itself.
    async fn fetch_from_notary(
        &self,
        notary: &ServerName,
        server: &ServerName,
        key_ids: &[String],
        minimum_valid_until: i64,
    ) -> Result<(), String> {
        let mut criteria = get_remote_server_keys_batch::v2::QueryCriteria::new();
        criteria.minimum_valid_until_ts = Some(MilliSecondsSinceUnixEpoch(
            ruma::UInt::try_from(minimum_valid_until.max(0)).unwrap_or_default(),
        ));
        let wanted: BTreeMap<OwnedServerSigningKeyId, _> = key_ids
            .iter()
            .filter_map(|id| Some((OwnedServerSigningKeyId::try_from(id.as_str()).ok()?, criteria.clone())))
            .collect();
        let query: BTreeMap<OwnedServerName, _> = [(server.to_owned(), wanted)].into();
        let response = self
            .inner
            .client
            .send_with_timeout(
                notary,
                get_remote_server_keys_batch::v2::Request::new(query),
                Duration::from_secs(20),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.store_answers(server, response.server_keys.into_iter()).await
    }

    async fn store_answers(
        &self,
        server: &ServerName,
        answers: impl Iterator<Item = Raw<ruma::api::federation::discovery::ServerSigningKeys>>,
    ) -> Result<(), String> {
        let now = now_ms();
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for answer in answers {
            let object: CanonicalJsonObject = match serde_json::from_str(answer.json().get()) {
                Ok(object) => object,
                Err(e) => {
                    errors.push(format!("not a JSON object: {e}"));
                    continue;
                }
            };
            // A notary may answer about other servers too; only the one asked about counts.
            match verify::self_signed_keys(server.as_str(), &object, now) {
                Ok(found) => keys.extend(found),
                Err(e) => errors.push(e),
            }
        }
        if keys.is_empty() {
            return Err(if errors.is_empty() {
                "no keys in the answer".into()
            } else {
                errors.join("; ")
            });
        }
        server_keys::upsert(&self.core().db, &keys)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The time a PDU's signing keys must have been valid at: when it was sent, in rooms that
/// enforce validity (v5 on); any time (`i64::MIN`) before.
fn pdu_ts(pdu: &CanonicalJsonObject, rules: &RoomVersionRules) -> i64 {
    match pdu.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) if rules.enforce_key_validity => i64::from(*ts),
        _ => i64::MIN,
    }
}

/// Servers' keys read once for a batch of PDUs (`KeyRing::keys_for_pdus`).
pub struct BatchKeys {
    by_server: HashMap<String, Vec<BatchKey>>,
    enforce_validity: bool,
}

struct BatchKey {
    id: String,
    key: Base64,
    stored: server_keys::StoredKey,
}

impl BatchKeys {
    /// The keys to verify `pdu` with: those of the servers whose signatures it needs, with the
    /// key IDs it was signed with, valid when it was sent where the room enforces validity.
    pub fn for_pdu(&self, pdu: &CanonicalJsonObject, rules: &RoomVersionRules) -> PublicKeyMap {
        let mut map = PublicKeyMap::new();
        let Ok(servers) = ruma::signatures::required_server_signatures_to_verify_event(pdu, &rules.signatures) else {
            return map;
        };
        let ts = if self.enforce_validity {
            pdu_ts(pdu, rules)
        } else {
            i64::MIN
        };
        for server in servers {
            let key_ids = signing_key_ids(pdu, server.as_str());
            let keys: PublicKeySet = self
                .by_server
                .get(server.as_str())
                .into_iter()
                .flatten()
                .filter(|k| key_ids.contains(&k.id) && (ts == i64::MIN || k.stored.valid_at(ts)))
                .map(|k| (k.id.clone(), k.key.clone()))
                .collect();
            if !keys.is_empty() {
                map.insert(server.to_string(), keys);
            }
        }
        map
    }
}

/// The key IDs a server signed `object` with.
pub fn signing_key_ids(object: &CanonicalJsonObject, server: &str) -> Vec<String> {
    match object.get("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => match signatures.get(server) {
            Some(CanonicalJsonValue::Object(by_key)) => {
                by_key.keys().filter(|k| k.starts_with("ed25519:")).cloned().collect()
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// This server's own keys, current and former, as stored keys (its events and requests are
/// verified like anyone's when they come back).
fn own_keys(core: &Core) -> Vec<server_keys::StoredKey> {
    let mut keys = vec![server_keys::StoredKey {
        server_name: core.server_name.to_string(),
        key_id: core.key.key_id.clone(),
        public_key: core.key.public_key_base64(),
        valid_until_ts: i64::MAX,
        expired_ts: None,
        fetched_ts: 0,
        key_json: String::new(),
    }];
    keys.extend(core.key.old_keys.iter().map(|old| server_keys::StoredKey {
        server_name: core.server_name.to_string(),
        key_id: old.key_id.clone(),
        public_key: old.public_key.clone(),
        valid_until_ts: old.expired_ts,
        expired_ts: Some(old.expired_ts),
        fetched_ts: 0,
        key_json: String::new(),
    }));
    keys
}
