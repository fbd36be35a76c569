//! Domain vocabulary shared by every Velour service: storage kinds, scan states, key
//! permissions and the settings each service reads at start.

pub mod federation;
pub mod settings;
pub mod signing;

pub use federation::ConnectionStatus;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The version every service reports, and peers see in `/api/v1/instance`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a storage location's videos live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// A folder on a disk the worker and stream services can both read.
    Local,
    /// An S3 bucket (or an S3-compatible store).
    S3,
    /// Another Velour instance that shares its catalog with us.
    Velour,
}

impl StorageType {
    /// The name stored in the database and spoken on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::S3 => "s3",
            Self::Velour => "velour",
        }
    }
}

impl fmt::Display for StorageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A storage type name that Velour does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown storage type {0:?}: expected local, s3 or velour")]
pub struct UnknownStorageType(pub String);

impl FromStr for StorageType {
    type Err = UnknownStorageType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::Local),
            "s3" => Ok(Self::S3),
            "velour" => Ok(Self::Velour),
            other => Err(UnknownStorageType(other.to_owned())),
        }
    }
}

/// The life of one scan of one storage location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl ScanState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Whether the scan has ended, one way or the other.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

impl FromStr for ScanState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(Self::Queued),
            "running" => Ok(Self::Running),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            other => Err(format!("unknown scan state {other:?}")),
        }
    }
}

/// What an API key may do. Admin rights come from the key's user, not from here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Catalog reads: instance, works, videos, search.
    pub can_read: bool,
    /// Video bytes and thumbnails.
    pub can_stream: bool,
    /// Fingerprints and technical metadata in catalog answers.
    pub can_metadata: bool,
}

/// Normalizes text that people search by (titles) to Unicode NFC, so that a title typed
/// on one system matches the same title stored from a file name written on another.
pub fn normalize_title(raw: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    raw.nfc().collect::<String>().trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_type_round_trips_through_its_name() {
        for t in [StorageType::Local, StorageType::S3, StorageType::Velour] {
            assert_eq!(t.as_str().parse::<StorageType>().ok(), Some(t));
        }
        assert!("jellyfin".parse::<StorageType>().is_err());
    }

    #[test]
    fn decomposed_and_composed_titles_normalize_alike() {
        let composed = "Am\u{e9}lie";
        let decomposed = "Ame\u{301}lie";
        assert_ne!(composed, decomposed);
        assert_eq!(normalize_title(composed), normalize_title(decomposed));
    }
}
