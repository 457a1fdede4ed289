//! The delayed-event timer: sends each delayed event (MSC4140, `weft_core::delayed_events`)
//! when it falls due.
//!
//! One task per process sleeps until the next due time it read from the database, or until a
//! schedule or restart in this process wakes it, or at most `POLL`: events scheduled through
//! another process sharing the database are that one's to fire, but if it is gone they are
//! still fired within `POLL` of being due. Every process may try a due event; the claim in the
//! database lets exactly one send it.

use std::time::Duration;

use tokio::{sync::watch, task::JoinHandle};
use weft_core::{delayed_events, util::now_ms};

use crate::{error::MatrixError, state::AppState};

/// The longest the timer sleeps without looking at the database.
const POLL: Duration = Duration::from_secs(10);
/// How often finalised events past the listing's week are deleted.
const CLEANUP: Duration = Duration::from_secs(60 * 60);
/// How long it waits after a failed pass (the database away).
const RETRY: Duration = Duration::from_secs(2);

/// Starts the timer; it ends when `stop` turns true.
pub fn spawn(state: AppState, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(run(state, stop))
}

async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let core = state.core.clone();
    let describe = |e: weft_core::Error| {
        let e = MatrixError::from(e);
        (e.errcode.into_owned(), e.message)
    };
    let mut last_cleanup: Option<std::time::Instant> = None;
    loop {
        if last_cleanup.is_none_or(|at| at.elapsed() >= CLEANUP) {
            match delayed_events::forget_finalised(&core).await {
                Ok(n) if n > 0 => tracing::debug!(forgotten = n, "forgot old finalised delayed events"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot forget old finalised delayed events"),
            }
            last_cleanup = Some(std::time::Instant::now());
        }
        let sleep = match delayed_events::fire_due(&core, describe).await {
            Ok(Some(next)) => Duration::from_millis((next - now_ms()).max(0) as u64).min(POLL),
            Ok(None) => POLL,
            Err(e) => {
                tracing::warn!(error = %e, "the delayed-event timer failed a pass");
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = core.delayed_wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
