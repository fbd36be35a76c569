//! Federation connections: the trust this instance extends to one peer, and how it may
//! change.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a federation connection stands. Only an active connection's key is accepted and
/// only its location is scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionStatus {
    /// Created, not yet approved by an administrator.
    Pending,
    Active,
    /// Paused by an administrator; may be reactivated.
    Suspended,
    /// Refused for good; delete the connection to start over.
    Rejected,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Rejected => "rejected",
        }
    }

    /// Whether an administrator may move a connection from `self` to `to`. Staying where
    /// it is always allowed (a repeated request changes nothing). A rejected connection is
    /// final: approving a peer that was turned down is a new decision, made by deleting the
    /// connection and creating it again.
    pub fn may_become(self, to: Self) -> bool {
        use ConnectionStatus::{Active, Pending, Rejected, Suspended};
        self == to
            || matches!(
                (self, to),
                (Pending, Active | Rejected) | (Active, Suspended) | (Suspended, Active | Rejected)
            )
    }
}

impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection status name that Velour does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown connection status {0:?}: expected pending, active, suspended or rejected")]
pub struct UnknownConnectionStatus(pub String);

impl FromStr for ConnectionStatus {
    type Err = UnknownConnectionStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            "rejected" => Ok(Self::Rejected),
            other => Err(UnknownConnectionStatus(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionStatus::{self, Active, Pending, Rejected, Suspended};

    #[test]
    fn status_round_trips_through_its_name() {
        for s in [Pending, Active, Suspended, Rejected] {
            assert_eq!(s.as_str().parse::<ConnectionStatus>().ok(), Some(s));
        }
        assert!("approved".parse::<ConnectionStatus>().is_err());
    }

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        let allowed = [
            (Pending, Active),
            (Pending, Rejected),
            (Active, Suspended),
            (Suspended, Active),
            (Suspended, Rejected),
        ];
        for from in [Pending, Active, Suspended, Rejected] {
            for to in [Pending, Active, Suspended, Rejected] {
                let expected = from == to || allowed.contains(&(from, to));
                assert_eq!(from.may_become(to), expected, "{from} -> {to}");
            }
        }
    }
}
