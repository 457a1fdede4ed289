//! Integration tests: real servers on loopback, on SQLite and PostgreSQL.

mod harness;

mod foundation;
mod js_sdk;
mod rooms;
