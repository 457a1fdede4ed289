//! Integration tests: real servers on loopback, on SQLite and PostgreSQL.

mod harness;

mod foundation;
mod js_sdk;
mod rooms;
mod read_endpoints;
mod aliases_directory;
mod relations_upgrade_spaces;
mod search_directory_reports;
mod sync;
mod push;
mod js_sdk_rooms;
mod e2ee;
mod js_sdk_e2ee;
mod media;
mod js_sdk_media;
mod durability;
mod sliding_sync;
