//! A user's push rules: the server defaults merged with their changes, stored as one ruleset
//! document in `push_rules` and mirrored into the `m.push_rules` account data that `/sync`
//! delivers.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::{Arc, LazyLock},
};

use ruma::{
    power_levels::NotificationPowerLevelsKey,
    push::{
        Action, AnyPushRule, ConditionalPushRule, ConditionalPushRuleInit, EventMatchConditionData,
        HighlightTweakValue, InsertPushRuleError, NewPushRule, PatternedPushRule, PatternedPushRuleInit, PushCondition,
        RemovePushRuleError, RuleKind, Ruleset, SenderNotificationPermissionConditionData, SoundTweakValue, Tweak,
    },
    UserId,
};
use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::{storage::account_data, Db, Error, Result};

/// The server-default ruleset: ruma's (the spec's current predefined rules, including
/// `.m.rule.is_user_mention`, `.m.rule.is_room_mention` and `.m.rule.reaction`) plus the legacy
/// body-matching mention rules. Those are deprecated (MSC4210) but clients that do not send
/// `m.mentions` still rely on them; ruma's evaluation disables them for events that do carry
/// `m.mentions`, so intentional mentions are unaffected.
pub fn server_default(user_id: &UserId) -> Ruleset {
    let mut ruleset = Ruleset::server_default(user_id);
    let overrides = std::mem::take(&mut ruleset.override_);
    for rule in overrides {
        let id = rule.rule_id.clone();
        ruleset.override_.insert(rule);
        match id.as_str() {
            ".m.rule.is_user_mention" => {
                ruleset.override_.insert(contains_display_name());
            }
            ".m.rule.is_room_mention" => {
                ruleset.override_.insert(roomnotif());
            }
            _ => {}
        }
    }
    ruleset.content.insert(contains_user_name(user_id));
    ruleset
}

fn mention_actions() -> Vec<Action> {
    vec![
        Action::Notify,
        Action::SetTweak(Tweak::Sound(SoundTweakValue::Default)),
        Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
    ]
}

#[allow(deprecated)]
fn contains_display_name() -> ConditionalPushRule {
    ConditionalPushRuleInit {
        actions: mention_actions(),
        default: true,
        enabled: true,
        rule_id: ".m.rule.contains_display_name".into(),
        conditions: vec![PushCondition::ContainsDisplayName],
    }
    .into()
}

fn roomnotif() -> ConditionalPushRule {
    ConditionalPushRuleInit {
        actions: vec![
            Action::Notify,
            Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
        ],
        default: true,
        enabled: true,
        rule_id: ".m.rule.roomnotif".into(),
        conditions: vec![
            PushCondition::EventMatch(EventMatchConditionData::new("content.body".into(), "@room".into())),
            PushCondition::SenderNotificationPermission(SenderNotificationPermissionConditionData::new(
                NotificationPowerLevelsKey::Room,
            )),
        ],
    }
    .into()
}

fn contains_user_name(user_id: &UserId) -> PatternedPushRule {
    PatternedPushRuleInit {
        actions: mention_actions(),
        default: true,
        enabled: true,
        rule_id: ".m.rule.contains_user_name".into(),
        pattern: user_id.localpart().to_owned(),
    }
    .into()
}

/// Parses a stored ruleset and refreshes its server-default rules (keeping the user's
/// enabled flags and actions for them), so new defaults reach existing users.
fn from_stored(user_id: &UserId, stored: Option<&str>) -> Ruleset {
    let Some(text) = stored else {
        return server_default(user_id);
    };
    match serde_json::from_str::<Ruleset>(text) {
        Ok(mut ruleset) => {
            ruleset.update_with_server_default(server_default(user_id));
            ruleset
        }
        Err(e) => {
            tracing::warn!(%user_id, error = %e, "unreadable stored push rules; using the defaults");
            server_default(user_id)
        }
    }
}

/// Parsed rulesets by user, tagged with a hash of the stored text they came from: evaluation
/// needs every member's rules for every event, and parsing them each time would dominate.
/// Keyed by content, so a change made by any process is picked up on the next read.
static PARSED: LazyLock<quick_cache::sync::Cache<String, (u64, Arc<Ruleset>)>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(10_000));

fn text_hash(stored: Option<&str>) -> u64 {
    let mut h = DefaultHasher::new();
    stored.hash(&mut h);
    h.finish()
}

/// The user's ruleset from its stored text (`None` when they never changed anything).
pub fn parsed(user_id: &UserId, stored: Option<&str>) -> Arc<Ruleset> {
    let hash = text_hash(stored);
    if let Some((h, ruleset)) = PARSED.get(user_id.as_str()) {
        if h == hash {
            return ruleset;
        }
    }
    let ruleset = Arc::new(from_stored(user_id, stored));
    PARSED.insert(user_id.as_str().to_owned(), (hash, ruleset.clone()));
    ruleset
}

async fn stored_text(conn: &mut AnyConnection, user_id: &UserId) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT ruleset FROM push_rules WHERE user_id = $1")
        .bind(user_id.as_str())
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.0))
}

/// The user's current ruleset.
pub async fn load(conn: &mut AnyConnection, user_id: &UserId) -> Result<Ruleset> {
    let text = stored_text(conn, user_id).await?;
    Ok((*parsed(user_id, text.as_deref())).clone())
}

/// The `m.push_rules` account data content: `{"global": ruleset}` with every kind present,
/// as clients expect.
pub fn account_data_content(ruleset: &Ruleset) -> Value {
    let mut global = serde_json::to_value(ruleset).unwrap_or_else(|_| json!({}));
    for kind in ["override", "content", "room", "sender", "underride"] {
        if global.get(kind).is_none() {
            global[kind] = json!([]);
        }
    }
    json!({ "global": global })
}

/// Stores the ruleset and announces it as account data (last: it takes a stream position).
async fn save(conn: &mut AnyConnection, user_id: &UserId, ruleset: &Ruleset) -> Result<()> {
    let text = serde_json::to_string(ruleset).map_err(Error::internal)?;
    sqlx::query(
        "INSERT INTO push_rules (user_id, ruleset) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET ruleset = excluded.ruleset",
    )
    .bind(user_id.as_str())
    .bind(&text)
    .execute(&mut *conn)
    .await?;
    let content = account_data_content(ruleset).to_string();
    account_data::put(conn, user_id.as_str(), "", "m.push_rules", &content).await?;
    Ok(())
}

/// Applies `change` to the user's ruleset in one write transaction; nothing is stored when
/// it fails.
async fn update(db: &Db, user_id: &UserId, change: impl FnOnce(&mut Ruleset) -> Result<()>) -> Result<()> {
    let mut tx = db.write().await?;
    let mut ruleset = load(&mut tx, user_id).await?;
    change(&mut ruleset)?;
    save(&mut tx, user_id, &ruleset).await?;
    tx.commit().await
}

fn not_found() -> Error {
    Error::NotFound("Push rule not found".into())
}

/// The kinds a client may address; anything else names no rule.
fn check_kind(kind: &RuleKind) -> Result<()> {
    match kind {
        RuleKind::Override | RuleKind::Underride | RuleKind::Sender | RuleKind::Room | RuleKind::Content => Ok(()),
        _ => Err(Error::InvalidParam(format!("Unknown push rule kind {kind}"))),
    }
}

/// One rule, or 404.
pub async fn get_rule(db: &Db, user_id: &UserId, kind: &RuleKind, rule_id: &str) -> Result<AnyPushRule> {
    check_kind(kind)?;
    let mut conn = db.conn().await?;
    let ruleset = load(&mut conn, user_id).await?;
    ruleset
        .get(kind.clone(), rule_id)
        .map(|r| r.to_owned())
        .ok_or_else(not_found)
}

/// Creates or replaces a user-defined rule, optionally placed relative to another one.
pub async fn set_rule(
    db: &Db,
    user_id: &UserId,
    rule: NewPushRule,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<()> {
    if rule.rule_id().is_empty() {
        return Err(Error::InvalidParam("Push rule IDs must not be empty".into()));
    }
    update(db, user_id, |ruleset| {
        ruleset.insert(rule, after, before).map_err(|e| match e {
            InsertPushRuleError::ServerDefaultRuleId => {
                Error::InvalidParam("Rule IDs starting with '.' are reserved for server-default rules".into())
            }
            InsertPushRuleError::InvalidRuleId => Error::InvalidParam("Invalid push rule ID".into()),
            InsertPushRuleError::RelativeToServerDefaultRule => {
                Error::InvalidParam("Rules cannot be placed relative to server-default rules".into())
            }
            InsertPushRuleError::UnknownRuleId => {
                Error::InvalidParam("The 'before' or 'after' rule does not exist".into())
            }
            InsertPushRuleError::BeforeHigherThanAfter => {
                Error::InvalidParam("'before' has a higher priority than 'after'".into())
            }
            other => Error::InvalidParam(other.to_string()),
        })
    })
    .await
}

/// Deletes a user-defined rule; server-default rules stay.
pub async fn delete_rule(db: &Db, user_id: &UserId, kind: &RuleKind, rule_id: &str) -> Result<()> {
    check_kind(kind)?;
    update(db, user_id, |ruleset| {
        ruleset.remove(kind.clone(), rule_id).map_err(|e| match e {
            RemovePushRuleError::ServerDefault => {
                Error::InvalidParam("Server-default push rules cannot be deleted".into())
            }
            _ => not_found(),
        })
    })
    .await
}

pub async fn set_enabled(db: &Db, user_id: &UserId, kind: &RuleKind, rule_id: &str, enabled: bool) -> Result<()> {
    check_kind(kind)?;
    update(db, user_id, |ruleset| {
        ruleset
            .set_enabled(kind.clone(), rule_id, enabled)
            .map_err(|_| not_found())
    })
    .await
}

pub async fn set_actions(
    db: &Db,
    user_id: &UserId,
    kind: &RuleKind,
    rule_id: &str,
    actions: Vec<Action>,
) -> Result<()> {
    check_kind(kind)?;
    update(db, user_id, |ruleset| {
        ruleset
            .set_actions(kind.clone(), rule_id, actions)
            .map_err(|_| not_found())
    })
    .await
}
