//! Reading video bytes from where they are stored: byte ranges (RFC 9110 §14), the
//! validators of conditional requests (§13), and the local-folder backend.

pub mod assets;
pub mod local;
pub mod multipart;
pub mod range;
pub mod s3;
pub mod validators;

pub use assets::{AssetError, AssetStore};
pub use local::{LocalError, LocalFile, content_type_for, content_type_for_video};
pub use multipart::Multipart;
pub use range::{
    ByteRange, ContentRange, RangePlan, RangeSet, ResolvedRange, Unsatisfiable,
    unsatisfied_content_range,
};
pub use validators::Validators;
