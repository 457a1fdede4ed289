//! Sync tokens: one position per stream,
//! `s<events>_<account_data>_<receipts>_<typing>_<to_device>_<device_lists>_<presence>`.
//! The first part is also a valid `/messages` token, so `next_batch` can be paginated from.

use crate::{Core, Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyncToken {
    pub events: i64,
    pub account_data: i64,
    pub receipts: i64,
    pub typing: i64,
    pub to_device: i64,
    pub device_lists: i64,
    pub presence: i64,
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s{}_{}_{}_{}_{}_{}_{}",
            self.events,
            self.account_data,
            self.receipts,
            self.typing,
            self.to_device,
            self.device_lists,
            self.presence
        )
    }
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<SyncToken> {
        let bad = || Error::InvalidParam(format!("invalid sync token {token:?}"));
        let body = token.strip_prefix('s').ok_or_else(bad)?;
        let mut parts = body.split('_').map(|p| p.parse::<i64>().map_err(|_| bad()));
        let mut next = || parts.next().transpose().map(Option::unwrap_or_default);
        Ok(SyncToken {
            events: next()?,
            account_data: next()?,
            receipts: next()?,
            typing: next()?,
            to_device: next()?,
            device_lists: next()?,
            presence: next()?,
        })
    }

    /// The positions everything has reached now. Each stream's counter only shows positions
    /// whose transactions committed in order (see streams.rs), so nothing below is missing.
    /// All counters are read in one statement (streams a later migration has not created yet
    /// read as 0).
    pub async fn current(core: &Core) -> Result<SyncToken> {
        let rows = core.positions.read().await?;
        let pos = |name: &str| rows.iter().find(|(s, _)| s == name).map_or(0, |(_, p)| *p);
        Ok(SyncToken {
            events: pos("events"),
            account_data: pos("account_data"),
            receipts: pos("receipts"),
            typing: core.typing.serial(),
            to_device: pos("to_device"),
            device_lists: pos("device_lists"),
            presence: pos("presence"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_tokens() {
        let t = SyncToken {
            events: 5,
            account_data: 2,
            receipts: 9,
            typing: 1700000000000,
            to_device: 3,
            device_lists: 4,
            presence: 7,
        };
        assert_eq!(SyncToken::parse(&t.to_string()).unwrap(), t);
        // A bare timeline token is a valid sync token with zeroed other streams.
        assert_eq!(
            SyncToken::parse("s42").unwrap(),
            SyncToken {
                events: 42,
                ..Default::default()
            }
        );
        assert!(SyncToken::parse("garbage").is_err());
        assert!(SyncToken::parse("s1_x").is_err());
    }
}
