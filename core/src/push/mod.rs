//! Push rules, their evaluation for every new event and member, and notification counts.
