//! The asset store: small files made from videos (thumbnails), kept in a directory or a
//! bucket that the worker writes and the stream service reads.
//!
//! Assets are a few hundred kilobytes at most, so they are read and written whole. Keys
//! are made by Velour itself (`thumbnails/<video>/<sha256>.jpg`): content-addressed, so a
//! new image never overwrites one that a reader may be sending.

use crate::s3::{S3ConfigError, S3Error, S3Settings};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use velour_core::settings::AssetSettings;

/// The largest asset read back. Thumbnails are far smaller; a file this large in the store
/// is not one of ours and is not loaded into memory.
pub const MAX_ASSET_BYTES: u64 = 16 * 1024 * 1024;

/// Where assets live.
#[derive(Clone, Debug)]
pub enum AssetStore {
    Directory(PathBuf),
    Bucket { client: aws_sdk_s3::Client, settings: S3Settings },
}

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("VELOUR_ASSET_STORE: {0}")]
    Config(String),
    #[error("asset key {0:?} is not one Velour makes")]
    BadKey(String),
    #[error("asset store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("asset {key:?} is {size} bytes, over the {MAX_ASSET_BYTES}-byte limit")]
    TooLarge { key: String, size: u64 },
    #[error("asset bucket: {0}")]
    Bucket(#[from] S3Error),
}

impl AssetStore {
    /// The store the settings name. Nothing is contacted yet.
    pub fn from_settings(settings: &AssetSettings) -> Result<Self, AssetError> {
        let raw = settings.asset_store.trim();
        let Some(rest) = raw.strip_prefix("s3://") else {
            if raw.is_empty() {
                return Err(AssetError::Config("must name a directory or s3://BUCKET".into()));
            }
            return Ok(Self::Directory(PathBuf::from(raw)));
        };

        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut config = Map::new();
        let mut set = |field: &str, value: Option<&str>| {
            if let Some(value) = value {
                config.insert(field.to_owned(), Value::String(value.to_owned()));
            }
        };
        set("bucket", Some(bucket));
        set("prefix", Some(prefix));
        set("endpoint", settings.s3_endpoint.as_ref().map(url::Url::as_str));
        set("region", settings.s3_region.as_deref());
        set("access_key_id", settings.s3_access_key_id.as_deref());
        set("secret_access_key", settings.s3_secret_access_key.as_ref().map(|s| s.expose_secret()));
        let settings = S3Settings::from_request(&config).map_err(|e| asset_config_error(&e))?;
        Ok(Self::Bucket { client: settings.client(), settings })
    }

    /// Stores `bytes` under `key`, replacing any asset of that key. A reader never sees a
    /// half-written file: a directory store writes a temporary file and renames it.
    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), AssetError> {
        check_key(key)?;
        match self {
            Self::Directory(root) => {
                let path = root.join(key);
                let io = |source| AssetError::Io { path: path.clone(), source };
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(io)?;
                }
                let partial = path.with_extension(format!("partial-{}", rand::random::<u64>()));
                let written = tokio::fs::write(&partial, &bytes).await;
                let renamed = match written {
                    Ok(()) => tokio::fs::rename(&partial, &path).await,
                    Err(e) => Err(e),
                };
                if let Err(source) = renamed {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(io(source));
                }
                Ok(())
            }
            Self::Bucket { client, settings } => {
                client
                    .put_object()
                    .bucket(&settings.bucket)
                    .key(format!("{}{key}", settings.prefix))
                    .content_type(content_type)
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                    .map_err(|e| S3Error::from_sdk(&e))?;
                Ok(())
            }
        }
    }

    /// The asset under `key`, or `None` when the store has no such asset.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, AssetError> {
        check_key(key)?;
        match self {
            Self::Directory(root) => read_file(&root.join(key), key).await,
            Self::Bucket { client, settings } => {
                let object = client
                    .get_object()
                    .bucket(&settings.bucket)
                    .key(format!("{}{key}", settings.prefix))
                    .send()
                    .await
                    .map_err(|e| S3Error::from_sdk(&e));
                let object = match object {
                    Ok(object) => object,
                    Err(S3Error::NotFound(_)) => return Ok(None),
                    Err(err) => return Err(err.into()),
                };
                let size = object.content_length().and_then(|n| u64::try_from(n).ok());
                if let Some(size) = size.filter(|&n| n > MAX_ASSET_BYTES) {
                    return Err(AssetError::TooLarge { key: key.to_owned(), size });
                }
                let body = object
                    .body
                    .collect()
                    .await
                    .map_err(|e| AssetError::Bucket(S3Error::Unreachable(e.to_string())))?;
                Ok(Some(body.into_bytes()))
            }
        }
    }

    /// Removes the asset under `key`; one that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), AssetError> {
        check_key(key)?;
        match self {
            Self::Directory(root) => {
                let path = root.join(key);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(AssetError::Io { path, source }),
                }
                // The folders the key named go too, once empty (`remove_dir` leaves a
                // folder that still holds anything), up to the store's root.
                let mut folder = path.parent();
                while let Some(dir) = folder.filter(|dir| *dir != root.as_path()) {
                    if tokio::fs::remove_dir(dir).await.is_err() {
                        break;
                    }
                    folder = dir.parent();
                }
                Ok(())
            }
            Self::Bucket { client, settings } => {
                client
                    .delete_object()
                    .bucket(&settings.bucket)
                    .key(format!("{}{key}", settings.prefix))
                    .send()
                    .await
                    .map_err(|e| S3Error::from_sdk(&e))?;
                Ok(())
            }
        }
    }
}

fn asset_config_error(err: &S3ConfigError) -> AssetError {
    let variable = match err.field {
        "endpoint" => "VELOUR_ASSET_S3_ENDPOINT",
        "region" => "VELOUR_ASSET_S3_REGION",
        "access_key_id" => "VELOUR_ASSET_S3_ACCESS_KEY_ID",
        "secret_access_key" => "VELOUR_ASSET_S3_SECRET_ACCESS_KEY",
        _ => "VELOUR_ASSET_STORE",
    };
    AssetError::Config(format!("{variable}: {}", err.problem))
}

/// Keys are relative paths of plain names made by Velour; anything else would let a bad
/// row in the catalog reach outside the store.
fn check_key(key: &str) -> Result<(), AssetError> {
    let plain = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if key.len() > 512 || !key.split('/').all(plain) {
        return Err(AssetError::BadKey(key.to_owned()));
    }
    Ok(())
}

async fn read_file(path: &Path, key: &str) -> Result<Option<Bytes>, AssetError> {
    let io = |source| AssetError::Io { path: path.to_owned(), source };
    let metadata = match tokio::fs::metadata(path).await {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(source)),
    };
    if metadata.len() > MAX_ASSET_BYTES {
        return Err(AssetError::TooLarge { key: key.to_owned(), size: metadata.len() });
    }
    tokio::fs::read(path).await.map(|bytes| Some(Bytes::from(bytes))).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_relative_paths() {
        for key in ["thumbnails/7/ab01.jpg", "a", "a-b_c.d/e"] {
            assert!(check_key(key).is_ok(), "{key}");
        }
        for key in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a/", "a b", "é", "a\\b"] {
            assert!(check_key(key).is_err(), "{key:?}");
        }
    }

    #[tokio::test]
    async fn a_directory_store_puts_gets_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = AssetStore::from_settings(&AssetSettings::directory(dir.path())).unwrap();
        let key = "thumbnails/1/abc.jpg";
        assert_eq!(store.get(key).await.unwrap(), None);

        store.put(key, Bytes::from_static(b"first"), "image/jpeg").await.unwrap();
        store.put(key, Bytes::from_static(b"second"), "image/jpeg").await.unwrap();
        assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"second"[..]));
        // No temporary file is left beside the asset.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("thumbnails/1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["abc.jpg"]);

        store.delete(key).await.unwrap();
        store.delete(key).await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), None);
    }

    #[test]
    fn a_bucket_store_names_the_setting_that_is_wrong() {
        let mut settings = AssetSettings::directory(Path::new("unused"));
        settings.asset_store = "s3://films/thumbs".to_owned();
        let err = AssetStore::from_settings(&settings).unwrap_err().to_string();
        assert!(err.contains("VELOUR_ASSET_S3_ACCESS_KEY_ID"), "{err}");

        settings.s3_access_key_id = Some("AKID".to_owned());
        settings.s3_secret_access_key = Some("s3cret".to_owned().into());
        settings.asset_store = "s3://Not A Bucket".to_owned();
        let err = AssetStore::from_settings(&settings).unwrap_err().to_string();
        assert!(err.contains("VELOUR_ASSET_STORE"), "{err}");

        settings.asset_store = "s3://films/thumbs".to_owned();
        assert!(matches!(AssetStore::from_settings(&settings), Ok(AssetStore::Bucket { .. })));
    }
}
