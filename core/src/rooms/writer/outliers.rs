//! Many events of a room from another server stored as outliers at once (a room's state and
//! auth chain when joining it): checked together with no lock held (`pipeline::prepare_outliers`),
//! then written in chunks, one write transaction and one write batch per chunk, in the order
//! of their auth edges. Outliers take no room lock: they change neither the room's head nor
//! its state.

use ruma::OwnedEventId;

use crate::{
    events::{
        pipeline::{self, KeysFor},
        rules_for, Pdu,
    },
    Core, Result,
};

/// Events written per write transaction: big enough that a 10 000-member room's state takes a
/// few dozen transactions, small enough that one does not hold SQLite's writer for long.
const CHUNK: usize = 256;

/// What became of a batch of outliers.
#[derive(Default)]
pub struct OutliersStored {
    /// Stored now (rejected ones among them, as rejected).
    pub stored: usize,
    /// Stored before.
    pub known: usize,
    /// Refused and left out (bad format, signatures that do not verify), with why.
    pub refused: Vec<(OwnedEventId, String)>,
    /// Not stored: their auth events (listed) are neither stored nor in the batch.
    pub missing: Vec<(Pdu, Vec<OwnedEventId>)>,
}

/// Checks events received from another server for a room of `version`, each verified with
/// the keys `keys` gives, and stores those that pass as outliers (rejected or not), each after
/// its auth events.
pub async fn store_outliers_batch(core: &Core, version: &str, pdus: Vec<Pdu>, keys: KeysFor) -> Result<OutliersStored> {
    let rules = std::sync::Arc::new(rules_for(version)?);
    let prepared = {
        let mut conn = core.db.conn().await?;
        pipeline::prepare_outliers(core, &mut conn, &rules, pdus, keys).await?
    };
    let outcome = OutliersStored {
        stored: prepared.checked.len(),
        known: prepared.known,
        refused: prepared.refused,
        missing: prepared.missing,
    };
    let mut checked = prepared.checked;
    // Written front to back, each chunk dropped once written.
    checked.reverse();
    while !checked.is_empty() {
        let chunk: Vec<_> = (0..CHUNK).map_while(|_| checked.pop()).collect();
        let mut tx = core.db.write().await?;
        pipeline::store_outliers(core, &mut tx, &chunk).await?;
        tx.commit().await?;
    }
    Ok(outcome)
}
