//! The media repository: files on disk by content hash, metadata in the database, thumbnails.
