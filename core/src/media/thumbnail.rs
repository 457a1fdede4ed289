//! Thumbnails of JPEG, PNG, WebP and GIF (first frame) images, by "scale" or "crop".
//!
//! Each (media, width, height, method, animated) is generated once, stored like any other
//! content (by hash) with a `media_thumbnails` row, and served from there afterwards. A
//! thumbnail of another server's media is first asked of that server (federation's
//! `remote_thumbnail`) and kept as it answered (`remote_media_fetched_thumbnails`); only when it
//! gives none is the original fetched and thumbnailed here.
//!
//! `animated=true` on a GIF or WebP of at most [`ANIMATED_ORIGINAL_MAX`] bytes answers with the
//! original file, which keeps its animation (as Synapse does when it cannot make an animated
//! thumbnail); larger ones get a still thumbnail of their first frame.

use std::io::Cursor;

use image::{codecs::jpeg::JpegEncoder, imageops::FilterType, DynamicImage, ImageFormat, ImageReader, Limits};

use super::{
    store::{self, MediaRecord, ThumbnailKey, ThumbnailRecord},
    MediaError, MediaResult, Repo,
};

/// Animated originals up to this size are served as their own thumbnail.
pub const ANIMATED_ORIGINAL_MAX: i64 = 2 * 1024 * 1024;
/// Images with more pixels are not decoded (Synapse's `max_image_pixels` default).
const MAX_PIXELS: u64 = 32 * 1024 * 1024;
/// Requested dimensions above this are treated as this (thumbnails are never upscaled anyway).
const MAX_DIMENSION: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Scale,
    Crop,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Scale => "scale",
            Method::Crop => "crop",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub width: u32,
    pub height: u32,
    pub method: Method,
    pub animated: bool,
}

impl Spec {
    /// A thumbnail request's parameters as the client and federation APIs carry them
    /// (`method` defaults to scale).
    pub fn from_request(
        width: u64,
        height: u64,
        method: Option<&ruma::media::Method>,
        animated: Option<bool>,
    ) -> MediaResult<Spec> {
        let method = match method {
            None | Some(ruma::media::Method::Scale) => Method::Scale,
            Some(ruma::media::Method::Crop) => Method::Crop,
            Some(other) => {
                return Err(MediaError::InvalidParam(format!(
                    "Unknown thumbnail method {:?}",
                    other.as_str()
                )))
            }
        };
        let dim = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Spec {
            width: dim(width),
            height: dim(height),
            method,
            animated: animated.unwrap_or(false),
        })
    }
}

/// What to send for a thumbnail request.
pub enum Thumbnail {
    /// A generated thumbnail, stored.
    Stored(ThumbnailRecord),
    /// The original file itself (an animated image asked for with `animated=true`).
    Original,
}

impl Spec {
    /// The spec as thumbnails are made and kept: dimensions positive, and capped.
    fn checked(self) -> MediaResult<Spec> {
        if self.width == 0 || self.height == 0 {
            return Err(MediaError::InvalidParam("width and height must be positive".into()));
        }
        Ok(Spec {
            width: self.width.min(MAX_DIMENSION),
            height: self.height.min(MAX_DIMENSION),
            ..self
        })
    }

    fn key<'a>(&self, origin: Option<&'a str>, media_id: &'a str) -> ThumbnailKey<'a> {
        ThumbnailKey {
            origin,
            media_id,
            width: self.width,
            height: self.height,
            method: self.method.as_str(),
            animated: self.animated,
        }
    }
}

impl Repo {
    /// A thumbnail of another server's media that was fetched from that server before.
    pub async fn fetched_thumbnail(
        &self,
        origin: &str,
        media_id: &str,
        spec: Spec,
    ) -> MediaResult<Option<ThumbnailRecord>> {
        let spec = spec.checked()?;
        Ok(store::get_fetched_thumbnail(&self.db, &spec.key(Some(origin), media_id)).await?)
    }

    /// Keeps a thumbnail fetched from the media's server, as long as it is an image of a
    /// format this server reads (another server's bytes are checked before they are served as
    /// a picture); `None` when it is not.
    pub async fn keep_fetched_thumbnail(
        &self,
        origin: &str,
        media_id: &str,
        spec: Spec,
        bytes: &[u8],
    ) -> MediaResult<Option<ThumbnailRecord>> {
        let spec = spec.checked()?;
        let content_type = match image::guess_format(bytes) {
            Ok(ImageFormat::Jpeg) => "image/jpeg",
            Ok(ImageFormat::Png) => "image/png",
            Ok(ImageFormat::WebP) => "image/webp",
            Ok(ImageFormat::Gif) => "image/gif",
            _ => return Ok(None),
        };
        let blob = self.blobs.put(bytes).await?;
        let key = spec.key(Some(origin), media_id);
        store::insert_fetched_thumbnail(&self.db, &key, &blob, content_type).await?;
        let stored = store::get_fetched_thumbnail(&self.db, &key).await?;
        Ok(Some(stored.unwrap_or(ThumbnailRecord {
            sha256: blob.sha256,
            content_type: content_type.to_owned(),
            size: blob.size as i64,
        })))
    }

    /// Finds or generates the thumbnail `spec` of uploaded media.
    pub async fn thumbnail(&self, record: &MediaRecord, spec: Spec) -> MediaResult<Thumbnail> {
        let spec = spec.checked()?;
        let sha256 = record.sha256.as_deref().ok_or(MediaError::NotYetUploaded)?;
        let key = spec.key(record.origin.as_deref(), &record.media_id);
        if let Some(found) = store::get_thumbnail(&self.db, &key).await? {
            return Ok(Thumbnail::Stored(found));
        }
        if spec.animated && self.is_small_animatable(record, sha256).await? {
            return Ok(Thumbnail::Original);
        }
        if !record
            .content_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("image/"))
        {
            return Err(MediaError::CannotThumbnail("Only images can be thumbnailed".into()));
        }
        let original = self
            .blobs
            .read(sha256)
            .await?
            .ok_or_else(|| MediaError::NotFound("Media content is missing".into()))?;
        let (bytes, content_type) = tokio::task::spawn_blocking(move || render(&original, spec))
            .await
            .map_err(|e| crate::Error::internal(format!("thumbnail task: {e}")))??;
        let blob = self.blobs.put(&bytes).await?;
        store::insert_thumbnail(&self.db, &key, &blob, content_type).await?;
        // Whichever of two concurrent requests recorded its thumbnail first is the one kept.
        let stored = store::get_thumbnail(&self.db, &key).await?;
        Ok(Thumbnail::Stored(stored.unwrap_or(ThumbnailRecord {
            sha256: blob.sha256,
            content_type: content_type.to_owned(),
            size: blob.size as i64,
        })))
    }

    /// A GIF or WebP (by its bytes, not only its claimed type) small enough to send as is.
    async fn is_small_animatable(&self, record: &MediaRecord, sha256: &str) -> MediaResult<bool> {
        let claimed = record.content_type.as_deref().unwrap_or_default().to_ascii_lowercase();
        if !matches!(claimed.as_str(), "image/gif" | "image/webp") || record.size > ANIMATED_ORIGINAL_MAX {
            return Ok(false);
        }
        let prefix = self.blobs.read_prefix(sha256, 16).await?;
        Ok(matches!(
            image::guess_format(&prefix),
            Ok(ImageFormat::Gif | ImageFormat::WebP)
        ))
    }
}

/// Decodes, resizes and encodes one thumbnail: JPEG stays JPEG, everything else becomes PNG
/// (keeping transparency).
fn render(original: &[u8], spec: Spec) -> MediaResult<(Vec<u8>, &'static str)> {
    let reader = ImageReader::new(Cursor::new(original))
        .with_guessed_format()
        .map_err(|e| MediaError::CannotThumbnail(format!("Cannot read image: {e}")))?;
    let Some(format) = reader.format().filter(|f| SUPPORTED.contains(f)) else {
        return Err(MediaError::CannotThumbnail(
            "Not an image format this server can thumbnail".into(),
        ));
    };
    let (w, h) = ImageReader::with_format(Cursor::new(original), format)
        .into_dimensions()
        .map_err(|e| MediaError::CannotThumbnail(format!("Cannot read image: {e}")))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(MediaError::TooLarge(format!(
            "Image of {w}x{h} pixels is too large to thumbnail"
        )));
    }
    let mut reader = ImageReader::with_format(Cursor::new(original), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    // GIF (and animated WebP) decode to their first frame.
    let image = reader
        .decode()
        .map_err(|e| MediaError::CannotThumbnail(format!("Cannot decode image: {e}")))?;
    let thumb = resize(&image, spec);
    encode(thumb, format == ImageFormat::Jpeg)
}

const SUPPORTED: [ImageFormat; 4] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif];

fn resize(image: &DynamicImage, spec: Spec) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    match spec.method {
        Method::Scale => {
            let (tw, th) = scale_dimensions(w, h, spec.width, spec.height);
            if (tw, th) == (w, h) {
                image.clone()
            } else {
                image.resize_exact(tw, th, FilterType::Triangle)
            }
        }
        Method::Crop => {
            let (tw, th) = crop_dimensions(w, h, spec.width, spec.height);
            image.resize_to_fill(tw, th, FilterType::Triangle)
        }
    }
}

/// "scale": the largest size within `max_w`×`max_h` with the original's aspect ratio, never
/// larger than the original.
pub fn scale_dimensions(w: u32, h: u32, max_w: u32, max_h: u32) -> (u32, u32) {
    if w <= max_w && h <= max_h {
        return (w, h);
    }
    let (w64, h64, mw, mh) = (w as u64, h as u64, max_w as u64, max_h as u64);
    if mw * h64 <= mh * w64 {
        // Width is the tighter bound.
        (max_w, ((mw * h64 + w64 / 2) / w64).max(1) as u32)
    } else {
        (((mh * w64 + h64 / 2) / h64).max(1) as u32, max_h)
    }
}

/// "crop": exactly the requested aspect ratio; the requested size, shrunk (keeping that
/// ratio) when the original is smaller, since thumbnails are never upscaled.
pub fn crop_dimensions(w: u32, h: u32, want_w: u32, want_h: u32) -> (u32, u32) {
    if want_w <= w && want_h <= h {
        return (want_w, want_h);
    }
    let factor = (w as f64 / want_w as f64).min(h as f64 / want_h as f64);
    (
        ((want_w as f64 * factor) as u32).max(1),
        ((want_h as f64 * factor) as u32).max(1),
    )
}

fn encode(image: DynamicImage, as_jpeg: bool) -> MediaResult<(Vec<u8>, &'static str)> {
    let mut out = Vec::new();
    let failed = |e: image::ImageError| MediaError::CannotThumbnail(format!("Cannot encode thumbnail: {e}"));
    if as_jpeg {
        let rgb = DynamicImage::ImageRgb8(image.to_rgb8());
        JpegEncoder::new_with_quality(&mut out, 80)
            .encode_image(&rgb)
            .map_err(failed)?;
        Ok((out, "image/jpeg"))
    } else {
        let image = if image.color().has_alpha() {
            DynamicImage::ImageRgba8(image.to_rgba8())
        } else {
            DynamicImage::ImageRgb8(image.to_rgb8())
        };
        image
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .map_err(failed)?;
        Ok((out, "image/png"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_fits_within_and_keeps_aspect() {
        assert_eq!(scale_dimensions(400, 200, 100, 100), (100, 50));
        assert_eq!(scale_dimensions(200, 400, 100, 100), (50, 100));
        assert_eq!(scale_dimensions(50, 40, 100, 100), (50, 40));
        assert_eq!(scale_dimensions(1000, 1, 10, 10), (10, 1));
    }

    #[test]
    fn crop_is_exact_or_shrunk_to_fit() {
        assert_eq!(crop_dimensions(400, 200, 100, 100), (100, 100));
        assert_eq!(crop_dimensions(50, 40, 100, 100), (40, 40));
        assert_eq!(crop_dimensions(50, 40, 100, 50), (50, 25));
    }
}
