//! Integration tests: real servers on loopback, on SQLite and PostgreSQL.

mod harness;
mod harness_federation;
mod harness_forge;
mod harness_synapse;

mod aliases_directory;
mod durability;
mod e2ee;
mod federation;
mod federation_e2ee;
mod federation_forged;
mod federation_outage;
mod federation_rooms;
mod federation_synapse;
mod foundation;
mod fuzz;
mod js_sdk;
mod js_sdk_e2ee;
mod js_sdk_federation;
mod js_sdk_media;
mod js_sdk_rooms;
mod legacy;
mod logs;
mod media;
mod migrations;
mod multi_process;
mod openid;
mod push;
mod read_endpoints;
mod relations_upgrade_spaces;
mod rooms;
mod search_directory_reports;
mod sliding_sync;
mod storage_batch;
mod sync;
mod voip;
