//! Application services at start: their registration files read and checked (a bad one stops
//! the server with a message naming the file and the problem), and their own users created.

use std::path::PathBuf;

use weft_core::{appservice::Registry, Core};

pub async fn load(core: &Core, files: &[PathBuf]) -> anyhow::Result<Registry> {
    let registry = Registry::load(files, core.server_name.as_str()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if registry.is_empty() {
        // An appservice configured later is sent what happens from then on.
        weft_core::appservice::skip_to_now(core).await?;
        return Ok(registry);
    }
    for service in registry.all() {
        // The appservice acts as its own user from the start (it may also register it, which
        // then answers M_USER_IN_USE, as bridges expect).
        let account = weft_core::accounts::NewAccount {
            user_id: &service.sender,
            ..Default::default()
        };
        match weft_core::accounts::register(&core.db, account).await {
            Ok(_) | Err(weft_core::Error::UserInUse) => {}
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "appservice {}: creating {}: {e}",
                    service.id,
                    service.sender
                ))
            }
        }
        tracing::info!(id = %service.id, url = ?service.url, sender = %service.sender, "application service registered");
    }
    Ok(registry)
}
