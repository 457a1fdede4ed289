//! Another server's traffic made by hand, for tests of what a server refuses: requests signed
//! with the X-Matrix header as some server (with its real key, another key, or for another
//! destination), and PDUs built and signed as that server on a room as a member sees it.
//!
//! The "attacker" is a real federated test server whose signing key the test reads from its
//! key file, so its keys are the ones the target fetches and trusts; what it sends is crafted
//! here, not by the server.

use std::collections::HashMap;

use reqwest::Method;
use ruma::{
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    canonical_json::CanonicalJsonObject,
    room_version_rules::{EventsReferenceFormatVersion, RoomVersionRules},
    signatures::Ed25519KeyPair,
    OwnedServerName,
};
use serde_json::{json, Value};

use crate::{
    harness::Client,
    harness_federation::{FederatedServer, TestCa},
};

/// Sends requests as `origin`, signed with `key`.
pub struct Forger {
    pub origin: String,
    pub key: Ed25519KeyPair,
    /// `ed25519:<version>`.
    pub key_id: String,
    http: reqwest::Client,
}

impl Forger {
    /// Speaks as `server`, with its own signing key (read from its key file).
    pub fn as_server(ca: &TestCa, server: &FederatedServer) -> Forger {
        let key = weft_core::signing_key::load_or_create(&server.config.signing_key_path).expect("the server's key");
        Forger {
            origin: server.server_name().to_owned(),
            key: key.keypair,
            key_id: key.key_id,
            http: ca.client(),
        }
    }

    /// A key of the same ID as this forger's, but another key: what it signs does not verify.
    pub fn other_key(&self) -> Ed25519KeyPair {
        let version = self.key_id.trim_start_matches("ed25519:");
        let der = Ed25519KeyPair::generate();
        Ed25519KeyPair::from_der(&der[..], version.to_owned()).expect("a key pair")
    }

    /// The `Authorization` header for a request from `origin` to `destination`, signed with
    /// `key` over `body` (JSON, or empty).
    pub fn authorization(
        origin: &str,
        destination: &str,
        key: &Ed25519KeyPair,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> String {
        let request = http::Request::builder()
            .method(method.as_str())
            .uri(path)
            .body(body.to_vec())
            .expect("a request");
        let input = XMatrixSigningInput::new(
            OwnedServerName::try_from(origin).expect("an origin"),
            OwnedServerName::try_from(destination).expect("a destination"),
            key,
        );
        let header = XMatrix::sign_http_request(&request, input).expect("signed");
        http::HeaderValue::from(&header).to_str().expect("ASCII").to_owned()
    }

    /// The `Authorization` header for a request whose JSON body need not be canonical JSON (a
    /// float, say), which ruma will not sign: signed over the body as sent, keys sorted, as
    /// other implementations sign it.
    pub fn authorization_of_json(&self, destination: &str, method: &Method, path: &str, body: &Value) -> String {
        use ruma::signatures::KeyPair;
        // `serde_json` keeps object keys sorted (no `preserve_order`), so this is the
        // canonical form of `body` as far as it has one.
        let signed = json!({
            "method": method.as_str(),
            "uri": path,
            "origin": self.origin,
            "destination": destination,
            "content": body,
        });
        let signature = self.key.sign(serde_json::to_string(&signed).unwrap().as_bytes());
        format!(
            "X-Matrix origin=\"{}\",destination=\"{destination}\",key=\"{}\",sig=\"{}\"",
            self.origin,
            self.key_id,
            signature.base64()
        )
    }

    /// Sends `body` to `to`'s federation listener with `authorization` (or none); the status
    /// and the JSON answer.
    pub async fn send_raw(
        &self,
        to: &FederatedServer,
        method: Method,
        path: &str,
        authorization: Option<String>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", to.federation_url()));
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        if !body.is_empty() {
            request = request.header("Content-Type", "application/json").body(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A request to `to`, signed properly as this forger.
    pub async fn request(
        &self,
        to: &FederatedServer,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
        let authorization = Forger::authorization(&self.origin, to.server_name(), &self.key, &method, path, &body);
        self.send_raw(to, method, path, Some(authorization), body).await
    }

    /// `PUT /send/{txn_id}` to `to` with these PDUs, signed properly.
    pub async fn transaction(&self, to: &FederatedServer, txn_id: &str, pdus: Vec<Value>) -> (u16, Value) {
        let body = self.transaction_body(pdus, Vec::new());
        self.request(
            to,
            Method::PUT,
            &format!("/_matrix/federation/v1/send/{txn_id}"),
            Some(&body),
        )
        .await
    }

    pub fn transaction_body(&self, pdus: Vec<Value>, edus: Vec<Value>) -> Value {
        json!({
            "origin": self.origin,
            "origin_server_ts": weft_core::util::now_ms(),
            "pdus": pdus,
            "edus": edus,
        })
    }
}

/// A room as a member server sees it, enough to build events that extend it: its version's
/// rules, its current state's event IDs, and one of its latest events with that event's depth.
pub struct RoomView {
    pub room_id: String,
    pub version: String,
    pub rules: RoomVersionRules,
    pub state: HashMap<(String, String), String>,
    pub prev: String,
    pub depth: i64,
}

impl RoomView {
    /// Reads the room through `member` (a client of `host` joined to it) and `forger` (a
    /// server in the room, for the latest event's depth, which clients are not shown).
    pub async fn read(forger: &Forger, host: &FederatedServer, member: &Client, room_id: &str) -> RoomView {
        let room = enc(room_id);
        let (status, create) = member
            .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.create"))
            .await;
        assert_eq!(status, 200, "{create}");
        let version = create["room_version"].as_str().unwrap_or("1");
        let rules = weft_core::events::rules_for(version).expect("a known version");
        assert!(
            !matches!(rules.events_reference_format, EventsReferenceFormatVersion::V1),
            "events reference others by ID alone from v3 on: room version {version} is not supported here"
        );
        let (status, events) = member.get(&format!("/_matrix/client/v3/rooms/{room}/state")).await;
        assert_eq!(status, 200, "{events}");
        let state = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    (
                        e["type"].as_str().unwrap().to_owned(),
                        e["state_key"].as_str().unwrap().to_owned(),
                    ),
                    e["event_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let (status, page) = member
            .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"))
            .await;
        assert_eq!(status, 200, "{page}");
        let prev = page["chunk"][0]["event_id"]
            .as_str()
            .expect("a latest event")
            .to_owned();
        let (status, served) = forger
            .request(
                host,
                Method::GET,
                &format!("/_matrix/federation/v1/event/{}", enc(&prev)),
                None,
            )
            .await;
        assert_eq!(status, 200, "{served}");
        let depth = served["pdus"][0]["depth"].as_i64().expect("a depth");
        RoomView {
            room_id: room_id.to_owned(),
            version: version.to_owned(),
            rules,
            state,
            prev,
            depth,
        }
    }

    /// The auth events an event of `kind` by `sender` names, from the current state: the
    /// create event (not from v12, where the room ID stands for it), power levels, the
    /// sender's membership, and for a membership its target's and the join rules.
    pub fn auth_events(&self, sender: &str, kind: &str, state_key: Option<&str>) -> Vec<String> {
        let mut wanted = vec![
            ("m.room.power_levels".to_owned(), String::new()),
            ("m.room.member".to_owned(), sender.to_owned()),
        ];
        if !self.rules.authorization.room_create_event_id_as_room_id {
            wanted.push(("m.room.create".to_owned(), String::new()));
        }
        if kind == "m.room.member" {
            wanted.push(("m.room.join_rules".to_owned(), String::new()));
            if let Some(target) = state_key {
                wanted.push(("m.room.member".to_owned(), target.to_owned()));
            }
        }
        let mut ids: Vec<String> = wanted.iter().filter_map(|k| self.state.get(k).cloned()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// An unsigned event of `sender` on the room's latest event, with the auth events it
    /// needs; `ts` keeps events of the same content apart.
    pub fn event(&self, sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> CanonicalJsonObject {
        let mut event = json!({
            "room_id": self.room_id,
            "sender": sender,
            "type": kind,
            "content": content,
            "depth": self.depth + 1,
            "origin_server_ts": weft_core::util::now_ms(),
            "prev_events": [self.prev],
            "auth_events": self.auth_events(sender, kind, state_key),
        });
        if let Some(key) = state_key {
            event["state_key"] = json!(key);
        }
        serde_json::from_value(event).expect("canonical JSON")
    }

    /// Hashes and signs `event` as `server` with `key`.
    pub fn sign(&self, event: &mut CanonicalJsonObject, server: &str, key: &Ed25519KeyPair) {
        ruma::signatures::hash_and_sign_event(server, key, event, &self.rules.redaction).expect("signed");
    }

    /// The ID the room's version gives `event` (a reference hash: content the redaction
    /// algorithm drops does not change it).
    pub fn event_id(&self, event: &CanonicalJsonObject) -> String {
        weft_core::events::Pdu::compute_event_id(event, &self.rules)
            .expect("an event ID")
            .to_string()
    }
}

pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
