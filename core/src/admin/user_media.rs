//! A user's uploads as admins see them (`/_synapse/admin/v1/users/{userId}/media`): listed
//! with Synapse's fields and orders, and deleted with their thumbnails and files.

use serde_json::{json, Value};

use super::SqlPage;
use crate::{media::store::BlobStore, Db, Error, Result};

fn order_column(order_by: &str) -> Result<&'static str> {
    Ok(match order_by {
        "media_id" => "media_id",
        "upload_name" => "filename",
        "created_ts" => "created_ts",
        "last_access_ts" => "created_ts",
        "media_length" => "size",
        "media_type" => "content_type",
        // Quarantine and protection are not kept: every media sorts the same.
        "quarantined_by" | "safe_from_quarantine" => "media_id",
        other => return Err(Error::InvalidParam(format!("Unknown value for order_by: {other}"))),
    })
}

/// The page of `user_id`'s media (URL preview fetches are not theirs), and their count.
pub async fn list(db: &Db, user_id: &str, order_by: &str, page: SqlPage) -> Result<(Vec<Value>, i64)> {
    let order = order_column(order_by)?;
    let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM media WHERE uploader = $1 AND url_preview = 0")
        .bind(user_id)
        .fetch_one(db.pool())
        .await?;
    let dir = page.dir();
    let text = format!(
        "SELECT media_id, content_type, size, filename, created_ts FROM media
         WHERE uploader = $1 AND url_preview = 0 ORDER BY {order} {dir}, media_id {dir} LIMIT $2 OFFSET $3"
    );
    type Row = (String, Option<String>, i64, Option<String>, i64);
    let rows: Vec<Row> = sqlx::query_as(&text)
        .bind(user_id)
        .bind(page.limit)
        .bind(page.from)
        .fetch_all(db.pool())
        .await?;
    let media = rows
        .into_iter()
        .map(|(media_id, content_type, size, filename, created_ts)| {
            json!({
                "media_id": media_id,
                "media_type": content_type,
                "media_length": size,
                "upload_name": filename,
                "created_ts": created_ts,
                "last_access_ts": created_ts,
                "quarantined_by": null,
                "safe_from_quarantine": false,
            })
        })
        .collect();
    Ok((media, total))
}

/// Deletes the page of `user_id`'s media that `list` would show; answers the deleted IDs.
pub async fn delete_page(
    db: &Db,
    blobs: &BlobStore,
    user_id: &str,
    order_by: &str,
    page: SqlPage,
) -> Result<Vec<String>> {
    let (media, _) = list(db, user_id, order_by, page).await?;
    let ids: Vec<String> = media
        .iter()
        .filter_map(|m| m["media_id"].as_str().map(str::to_owned))
        .collect();
    for id in &ids {
        delete(db, blobs, id).await?;
    }
    Ok(ids)
}

/// Deletes one local media with its thumbnails; a file no other media or thumbnail shares is
/// removed from disk after the rows are gone.
pub async fn delete(db: &Db, blobs: &BlobStore, media_id: &str) -> Result<bool> {
    let mut tx = db.write().await?;
    let mut hashes: Vec<(String,)> = sqlx::query_as("SELECT sha256 FROM media_thumbnails WHERE media_id = $1")
        .bind(media_id)
        .fetch_all(&mut *tx)
        .await?;
    let own: Option<(Option<String>,)> = sqlx::query_as("SELECT sha256 FROM media WHERE media_id = $1")
        .bind(media_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some((own,)) = own else {
        return Ok(false);
    };
    hashes.extend(own.map(|h| (h,)));
    sqlx::query("DELETE FROM media_thumbnails WHERE media_id = $1")
        .bind(media_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM media WHERE media_id = $1")
        .bind(media_id)
        .execute(&mut *tx)
        .await?;
    let mut unused = Vec::new();
    for (hash,) in hashes {
        let (users,): (i64,) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM media WHERE sha256 = $1) + (SELECT COUNT(*) FROM media_thumbnails WHERE sha256 = $1)
                  + (SELECT COUNT(*) FROM remote_media WHERE sha256 = $1) + (SELECT COUNT(*) FROM remote_media_thumbnails WHERE sha256 = $1)",
        )
        .bind(&hash)
        .fetch_one(&mut *tx)
        .await?;
        if users == 0 {
            unused.push(hash);
        }
    }
    tx.commit().await?;
    for hash in unused {
        if let Ok(path) = blobs.path_of(&hash) {
            // A file already gone is as good as removed.
            let _ = tokio::fs::remove_file(path).await;
        }
    }
    Ok(true)
}
