//! Ephemeral room data: typing notifications (in memory, they expire) and receipts (stored).

pub mod receipts;
pub mod typing;
