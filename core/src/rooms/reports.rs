//! Reporting events and rooms to the server's administrators (`event_reports`).

use serde_json::Value;
use sqlx::AnyConnection;

use super::visibility;
use crate::{
    storage::{events, rooms},
    util::now_ms,
    Core, Error, Result,
};

/// The optional `score` of an event report: an integer from -100 (most offensive) to 0.
pub fn parse_score(score: Option<&Value>) -> Result<Option<i64>> {
    match score {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (-100..=0).contains(&n) => Ok(Some(n)),
            _ => Err(Error::InvalidParam(
                "score must be an integer between -100 and 0".into(),
            )),
        },
    }
}

async fn insert(
    conn: &mut AnyConnection,
    room_id: &str,
    event_id: Option<&str>,
    reporter: &str,
    reason: Option<&str>,
    score: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO event_reports (room_id, event_id, reporter, reason, score, created_ts) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(room_id)
    .bind(event_id)
    .bind(reporter)
    .bind(reason)
    .bind(score)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Reports an event. Events the reporter cannot see are "not found", so reporting does not
/// reveal whether an event exists.
pub async fn report_event(
    core: &Core,
    reporter: &str,
    room_id: &str,
    event_id: &str,
    reason: Option<&str>,
    score: Option<i64>,
) -> Result<()> {
    let not_found = || Error::NotFound("Event not found".into());
    let mut conn = core.db.conn().await?;
    let event = events::get(&mut conn, event_id).await?.ok_or_else(not_found)?;
    if event.room_id != room_id || event.stream_pos.is_none() {
        return Err(not_found());
    }
    if visibility::filter_visible(core, &mut conn, reporter, room_id, vec![event])
        .await?
        .is_empty()
    {
        return Err(not_found());
    }
    drop(conn);
    let mut tx = core.db.write().await?;
    insert(&mut tx, room_id, Some(event_id), reporter, reason, score).await?;
    tx.commit().await?;
    Ok(())
}

/// Reports a room the reporter knows: one they have a membership in, or can read.
pub async fn report_room(core: &Core, reporter: &str, room_id: &str, reason: Option<&str>) -> Result<()> {
    let not_found = || Error::NotFound("Room not found".into());
    let mut conn = core.db.conn().await?;
    rooms::version(&core.db, &mut conn, room_id)
        .await?
        .ok_or_else(not_found)?;
    let known = rooms::membership(&mut conn, room_id, reporter).await?.is_some()
        || visibility::can_read_room(&mut conn, reporter, room_id).await?;
    if !known {
        return Err(not_found());
    }
    drop(conn);
    let mut tx = core.db.write().await?;
    insert(&mut tx, room_id, None, reporter, reason, None).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::parse_score;

    #[test]
    fn score_range() {
        assert_eq!(parse_score(None).unwrap(), None);
        assert_eq!(parse_score(Some(&json!(null))).unwrap(), None);
        assert_eq!(parse_score(Some(&json!(-100))).unwrap(), Some(-100));
        assert_eq!(parse_score(Some(&json!(0))).unwrap(), Some(0));
        assert!(parse_score(Some(&json!(1))).is_err());
        assert!(parse_score(Some(&json!(-101))).is_err());
        assert!(parse_score(Some(&json!(-1.5))).is_err());
        assert!(parse_score(Some(&json!("-5"))).is_err());
    }
}
