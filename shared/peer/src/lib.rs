//! Federation: the JSON that Velour instances speak to each other, and the client that
//! reads a peer's catalog and streams.
//!
//! The wire types keep the field names of the original design so that any peer speaking
//! that format interoperates. Parsing is lenient where the format is loose (missing
//! optional fields, unknown extra fields) and strict where we depend on a value (ids).

mod client;
mod guard;
mod relay;
mod wire;

pub use client::{PeerClient, PeerError, http_client};
pub use guard::{AddressGuard, InternalAddress};
pub use relay::{RELAY_PIECE, in_small_pieces};
pub use wire::*;
