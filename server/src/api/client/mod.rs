//! The Client-Server API.

pub mod account;
pub mod account_data;
pub mod alias;
pub mod appservice;
pub mod backup;
pub mod capabilities;
pub mod context;
pub mod dehydrated_device;
pub mod delayed_events;
pub mod devices;
pub mod directory;
pub mod discovery;
pub mod event;
pub mod filter;
pub mod keys;
pub mod legacy;
pub mod members;
pub mod membership;
pub mod message;
pub mod openid;
pub mod presence;
pub mod profile;
pub mod push;
pub mod receipt;
pub mod register;
pub mod relations;
pub mod report;
pub mod room;
pub mod rtc;
pub mod search;
pub mod session;
pub mod sliding_sync;
pub mod space;
pub mod state;
pub mod sync;
pub mod to_device;
pub mod typing;
pub mod upgrade;
pub mod user_directory;
pub mod voip;

use axum::Router;

use crate::{
    ruma_wrapper::{RumaJsonRoute, RumaRoute},
    state::AppState,
};

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    // Areas that mount their own routes.
    for routes in [
        alias::routes,
        appservice::routes,
        backup::routes,
        context::routes,
        dehydrated_device::routes,
        delayed_events::routes,
        keys::routes,
        legacy::routes,
        to_device::routes,
        directory::routes,
        event::routes,
        members::routes,
        push::routes,
        relations::routes,
        report::routes,
        rtc::routes,
        search::routes,
        space::routes,
        upgrade::routes,
        user_directory::routes,
    ] {
        router = routes(router);
    }
    router
        .ruma(discovery::versions)
        .ruma_json(discovery::client_well_known)
        .ruma(discovery::server_well_known)
        .ruma_json(capabilities::get_capabilities)
        .ruma_json(register::register)
        .ruma(register::available)
        .ruma(session::login_types)
        .ruma(session::login)
        .ruma(session::logout)
        .ruma(session::logout_all)
        .ruma(session::refresh)
        .ruma(account::whoami)
        .ruma(account::change_password)
        .ruma(account::deactivate)
        .ruma_json(devices::list)
        .ruma_json(devices::get)
        .ruma(devices::update)
        .ruma(devices::delete)
        .ruma(devices::delete_many)
        .ruma(profile::get_profile)
        .ruma(profile::get_displayname)
        .ruma(profile::set_displayname)
        .ruma(profile::get_avatar_url)
        .ruma(profile::set_avatar_url)
        .ruma(filter::create)
        .ruma(filter::get)
        .ruma(account_data::get_global)
        .ruma(account_data::set_global)
        .ruma(account_data::get_room)
        .ruma(account_data::set_room)
        .ruma_json(account_data::get_tags)
        .ruma(account_data::put_tag)
        .ruma(account_data::delete_tag)
        .ruma_json(voip::turn_server)
        .ruma(openid::request_token)
        .ruma(room::create_room)
        .ruma(room::joined_rooms)
        .ruma(membership::join_by_id)
        .ruma(membership::join_by_id_or_alias)
        .ruma(membership::invite)
        .ruma(membership::leave)
        .ruma(membership::kick)
        .ruma(membership::ban)
        .ruma(membership::unban)
        .ruma(membership::forget)
        .ruma(membership::knock)
        .ruma_json(message::send)
        .ruma(message::redact)
        .ruma(message::messages)
        .ruma(state::get_all)
        .ruma(state::get_one)
        .ruma_json(state::put)
        .ruma_json(sync::sync_v3)
        .ruma_json(sliding_sync::sync_v5)
        .ruma(typing::set_typing)
        .ruma(presence::set)
        .ruma(presence::get)
        .ruma(receipt::create)
        .ruma(receipt::read_markers)
}
