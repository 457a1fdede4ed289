//! weft-federation: the Server-Server API, inbound and outbound.
//!
//! It depends on weft-core only: inbound PDUs go through core's one event pipeline, outbound
//! transactions tail core's event stream. Nothing here knows the Client-Server API.
