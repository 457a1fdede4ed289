//! Event filters (`RoomEventFilter`): types and senders with `*` wildcards, rooms, URLs.

use ruma::api::client::filter::{RoomEventFilter, UrlFilter};

use crate::storage::events::StoredEvent;

/// Matches an event type against a filter pattern where `*` matches any run of characters.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == event_type,
        Some((prefix, rest)) => {
            event_type.starts_with(prefix)
                && (rest.is_empty()
                    || (0..=event_type.len() - prefix.len())
                        .any(|i| type_matches(rest, &event_type[prefix.len() + i..])))
        }
    }
}

pub fn event_matches(filter: &RoomEventFilter, event: &StoredEvent) -> bool {
    if filter.not_types.iter().any(|p| type_matches(p, &event.event_type)) {
        return false;
    }
    if let Some(types) = &filter.types {
        if !types.iter().any(|p| type_matches(p, &event.event_type)) {
            return false;
        }
    }
    if filter.not_senders.iter().any(|s| s.as_str() == event.sender) {
        return false;
    }
    if let Some(senders) = &filter.senders {
        if !senders.iter().any(|s| s.as_str() == event.sender) {
            return false;
        }
    }
    if filter.not_rooms.iter().any(|r| r.as_str() == event.room_id) {
        return false;
    }
    if let Some(rooms) = &filter.rooms {
        if !rooms.iter().any(|r| r.as_str() == event.room_id) {
            return false;
        }
    }
    if let Some(url_filter) = &filter.url_filter {
        let has_url = serde_json::from_str::<serde_json::Value>(&event.json)
            .ok()
            .is_some_and(|j| j["content"]["url"].is_string());
        match url_filter {
            UrlFilter::EventsWithUrl if !has_url => return false,
            UrlFilter::EventsWithoutUrl if has_url => return false,
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::type_matches;

    #[test]
    fn wildcards() {
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(type_matches("*", "anything"));
        assert!(type_matches("m.*.message", "m.room.message"));
        assert!(!type_matches("m.room.*", "m.call.invite"));
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(!type_matches("m.room.message", "m.room.messages"));
    }
}
