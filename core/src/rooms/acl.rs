//! Server ACLs (`m.room.server_acl`): which servers may take part in a room. Applied to other
//! servers' requests about the room; the room's current state decides, as the spec says ACLs
//! act "when they make requests", not at some point of the room's history.

use serde_json::Value;
use sqlx::AnyConnection;
use wildmatch::WildMatch;

use crate::{
    storage::{events, rooms},
    Result,
};

/// A room's server ACL, parsed from its event's content.
#[derive(Debug)]
pub struct Acl {
    allow_ip_literals: bool,
    allow: Vec<WildMatch>,
    deny: Vec<WildMatch>,
}

impl Acl {
    /// Reads an ACL event's content as the spec defines its defaults: `allow_ip_literals` is
    /// true when missing or not a boolean; a missing `allow` is an empty list, which allows
    /// nobody; a missing `deny` is empty. Entries that are not strings (and lists that are not
    /// lists) are ignored rather than failing the whole ACL, so that one malformed entry does
    /// not change what the rest say.
    pub fn from_content(content: &Value) -> Acl {
        let globs = |key: &str| -> Vec<WildMatch> {
            content[key]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(Value::as_str)
                        // Host names are case-insensitive (RFC 4343), and so is the matching.
                        .map(WildMatch::new_case_insensitive)
                        .collect()
                })
                .unwrap_or_default()
        };
        Acl {
            allow_ip_literals: content["allow_ip_literals"].as_bool().unwrap_or(true),
            allow: globs("allow"),
            deny: globs("deny"),
        }
    }

    /// Whether the ACL lets `server` (a server name, with or without its port) take part, in
    /// the spec's order: IP literals when they are not allowed, then `deny`, then `allow`,
    /// otherwise denied. The port is never considered: `evil.com:1234` is `evil.com`.
    pub fn allows(&self, server: &str) -> bool {
        let Ok(name) = <&ruma::ServerName>::try_from(server) else {
            return false;
        };
        if name.is_ip_literal() && !self.allow_ip_literals {
            return false;
        }
        let host = name.host();
        if self.deny.iter().any(|glob| glob.matches(host)) {
            return false;
        }
        self.allow.iter().any(|glob| glob.matches(host))
    }
}

/// Whether the room's current server ACL lets `server` take part; with no ACL, every server
/// may.
pub async fn server_allowed(conn: &mut AnyConnection, room_id: &str, server: &str) -> Result<bool> {
    let Some(event_id) = rooms::current_state_event(conn, room_id, "m.room.server_acl", "").await? else {
        return Ok(true);
    };
    let Some(stored) = events::get(conn, &event_id).await? else {
        return Ok(true);
    };
    // Redaction keeps none of an ACL's content in any room version: a redacted ACL is `{}`,
    // which allows nobody. Every server must read it the same way for the room to agree on
    // who takes part, so it is read as the spec says, harsh as that is.
    let content = if stored.redacted_by.is_some() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str::<Value>(&stored.json).map_or(Value::Null, |json| json["content"].clone())
    };
    Ok(Acl::from_content(&content).allows(server))
}

#[cfg(test)]
mod tests {
    use ruma::user_id;
    use serde_json::json;

    use super::{server_allowed, Acl};
    use crate::{events::builder::EventTemplate, rooms, testing::on_each_backend};

    #[test]
    fn acl_matching_follows_the_spec() {
        let everyone = json!({"allow": ["*"]});
        let no_evil = json!({"allow": ["*"], "deny": ["evil.com", "*.bad.org"]});
        let no_ips = json!({"allow": ["*"], "allow_ip_literals": false});
        #[rustfmt::skip]
        let cases: &[(&str, &serde_json::Value, &str, bool)] = &[
            ("an empty ACL allows nobody", &json!({}), "example.org", false),
            ("allow is not a list", &json!({"allow": "*"}), "example.org", false),
            ("a wildcard allows anyone", &everyone, "example.org", true),
            ("the port is not considered", &everyone, "example.org:8448", true),
            ("denied by name", &no_evil, "evil.com", false),
            ("denied whatever the port", &no_evil, "evil.com:1234", false),
            ("a name that only ends like a denied one", &no_evil, "notevil.com", true),
            ("a subdomain of a denied name", &no_evil, "sub.evil.com", true),
            ("denied by a wildcard", &no_evil, "a.b.bad.org", false),
            ("the wildcard needs its dot", &no_evil, "bad.org", true),
            ("deny wins over allow", &json!({"allow": ["evil.com"], "deny": ["evil.com"]}), "evil.com", false),
            ("? is one character", &json!({"allow": ["?.org"]}), "a.org", true),
            ("? is not two", &json!({"allow": ["?.org"]}), "ab.org", false),
            ("? is not none", &json!({"allow": ["?.org"]}), ".org", false),
            ("names match whatever their case", &json!({"allow": ["Example.ORG"]}), "example.org", true),
            ("non-string entries are skipped", &json!({"allow": [1, null, "ok.org"]}), "ok.org", true),
            ("only listed names", &json!({"allow": ["ok.org"]}), "other.org", false),
            ("IPv4 literals by default", &everyone, "1.2.3.4", true),
            ("IPv6 literals by default", &everyone, "[::1]:8448", true),
            ("IPv4 literal refused", &no_ips, "1.2.3.4", false),
            ("IPv4 literal with port refused", &no_ips, "1.2.3.4:8448", false),
            ("IPv6 literal refused", &no_ips, "[::1]", false),
            ("IPv6 literal with port refused", &no_ips, "[2001:db8::1]:8448", false),
            ("names still allowed", &no_ips, "example.org", true),
            ("a non-boolean means true", &json!({"allow": ["*"], "allow_ip_literals": "false"}), "1.2.3.4", true),
            ("an IP literal against globs", &json!({"allow": ["1.2.3.*"]}), "1.2.3.4:80", true),
            ("an IPv6 literal is matched with its brackets", &json!({"allow": ["[::1]"]}), "[::1]:8448", true),
            ("not a server name", &everyone, "not a server", false),
            ("an empty name", &everyone, "", false),
        ];
        for (what, content, server, allowed) in cases {
            assert_eq!(
                Acl::from_content(content).allows(server),
                *allowed,
                "{what}: {server} against {content}"
            );
        }
    }

    /// The room's current ACL decides: none lets everyone in, a new one shuts a server out, and
    /// a redacted one (content `{}`) allows nobody.
    #[tokio::test]
    async fn a_rooms_acl_state_event_decides() {
        on_each_backend(async |s| {
            let alice = user_id!("@alice:local.test");
            let allowed = async |server: &str| {
                let mut conn = s.local.db.conn().await.unwrap();
                server_allowed(&mut conn, &s.room_id, server).await.unwrap()
            };
            assert!(allowed("remote.test").await, "no ACL: everyone");
            let acl = EventTemplate::state(
                "m.room.server_acl",
                "",
                json!({"allow": ["*"], "deny": ["remote.test"], "allow_ip_literals": false}),
            );
            let sent = rooms::send(&s.local, &s.room_id, alice, acl, None).await.unwrap();
            assert!(!allowed("remote.test").await);
            assert!(!allowed("remote.test:8448").await);
            assert!(!allowed("127.0.0.1").await);
            assert!(allowed("elsewhere.test").await);

            let redaction = EventTemplate {
                redacts: Some(sent.event_id),
                ..EventTemplate::message("m.room.redaction", json!({}))
            };
            rooms::send(&s.local, &s.room_id, alice, redaction, None).await.unwrap();
            assert!(!allowed("elsewhere.test").await, "a redacted ACL allows nobody");
        })
        .await;
    }
}
