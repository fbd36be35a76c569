//! Keeps peer requests off this machine's and its network's internal services.
//!
//! A peer URL is typed by an administrator, or handed to us by a peer: without this guard
//! it could aim our requests (and our key) at the cloud metadata service, a database on
//! loopback or anything else behind the firewall. The check is made on the addresses a
//! name resolves to, in the resolver reqwest connects with, so a name that resolves to
//! an internal address is refused as surely as the address typed out.

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An address the guard will not let a peer request reach.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the peer's address {addr} is {kind}; list it in VELOUR_PEER_ALLOWED_NETWORKS to allow it")]
pub struct InternalAddress {
    pub addr: IpAddr,
    pub kind: &'static str,
}

/// Which addresses peer requests may reach: every public one, and the internal ones in
/// `VELOUR_PEER_ALLOWED_NETWORKS`.
#[derive(Clone, Debug, Default)]
pub struct AddressGuard {
    allowed: Arc<[IpNet]>,
}

impl AddressGuard {
    pub fn new(allowed: &[IpNet]) -> Self {
        Self { allowed: allowed.into() }
    }

    /// Refuses an internal address unless an allowed network holds it.
    pub fn check(&self, addr: IpAddr) -> Result<(), InternalAddress> {
        // An IPv4 address written as IPv6 (::ffff:10.0.0.1) reaches the IPv4 host.
        let addr = addr.to_canonical();
        let Some(kind) = internal_kind(addr) else {
            return Ok(());
        };
        // An address that carries an IPv4 one is allowed where that address is.
        let carried = match addr {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allows =
            |net: &IpNet| net.contains(&addr) || carried.is_some_and(|v4| net.contains(&v4));
        if self.allowed.iter().any(allows) {
            return Ok(());
        }
        Err(InternalAddress { addr, kind })
    }

    /// The resolver peer clients connect with.
    pub(crate) fn resolver(&self) -> GuardedResolver {
        GuardedResolver { guard: self.clone() }
    }
}

/// What kind of internal address `addr` is, or `None` for a public one.
fn internal_kind(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(addr: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = addr.octets();
    if addr.is_loopback() {
        Some("on loopback")
    } else if addr.is_private() {
        Some("on a private network")
    } else if addr.is_link_local() {
        Some("link-local (where cloud metadata services answer)")
    } else if addr.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if addr.is_multicast() || addr.is_broadcast() {
        Some("multicast or broadcast")
    } else if a == 100 && (b & 0xc0) == 64 {
        // RFC 6598 shared address space: a carrier's or a cloud's internal network.
        Some("on a shared (carrier-grade NAT) network")
    } else if a == 198 && (b & 0xfe) == 18 {
        // RFC 2544 benchmarking networks, 198.18.0.0/15: used inside labs and clouds.
        Some("on a benchmarking network")
    } else if addr.octets()[..3] == [192, 0, 0] {
        // RFC 6890 IETF protocol assignments, 192.0.0.0/24 (NAT64 discovery, DS-Lite).
        Some("reserved for protocol use")
    } else if a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn internal_v6(addr: Ipv6Addr) -> Option<&'static str> {
    let first = addr.segments()[0];
    if addr.is_loopback() {
        Some("on loopback")
    } else if addr.is_unspecified() {
        Some("unspecified")
    } else if addr.is_multicast() {
        Some("multicast or broadcast")
    } else if (first & 0xfe00) == 0xfc00 {
        // RFC 4193 unique local addresses, fc00::/7: IPv6's private networks.
        Some("on a private network")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("link-local (where cloud metadata services answer)")
    } else if (first & 0xffc0) == 0xfec0 {
        // Site-local, fec0::/10: deprecated by RFC 3879 but still routed inside networks.
        Some("site-local (on a private network)")
    } else if addr.segments()[..2] == [0x2001, 0] {
        // Teredo, 2001::/32: the client's IPv4 address is hidden in the tunnel's, so what
        // it reaches cannot be told from here.
        Some("a Teredo tunnel")
    } else if addr.segments()[..3] == [0x64, 0xff9b, 0x0001] {
        // RFC 8215: NAT64 prefixes for local use only, translated inside one network.
        Some("on a private network (local-use NAT64)")
    } else {
        // A translator or relay turns these into the IPv4 address they carry, so they
        // are what that address is.
        embedded_v4(addr).and_then(internal_v4)
    }
}

/// The IPv4 address a NAT64 (RFC 6052 well-known prefix 64:ff9b::/96), 6to4 (RFC 3056,
/// 2002::/16) or IPv4-translated (::ffff:0:a.b.c.d) address carries, or an IPv4-compatible
/// one (::a.b.c.d, deprecated by RFC 4291 but still routed by some stacks).
fn embedded_v4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = addr.segments();
    let from = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match s {
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => Some(from(high, low)),
        // IPv4-translated (RFC 2765 SIIT), ::ffff:0:a.b.c.d.
        [0, 0, 0, 0, 0xffff, 0, high, low] => Some(from(high, low)),
        [0x2002, high, low, ..] => Some(from(high, low)),
        // `::` and `::1` are handled before; anything else this short is IPv4-compatible.
        [0, 0, 0, 0, 0, 0, high, low] => Some(from(high, low)),
        _ => None,
    }
}

/// Resolves peer host names, and keeps only the addresses the guard allows.
pub(crate) struct GuardedResolver {
    guard: AddressGuard,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match guard.check(addr.ip()) {
                    Ok(()) => true,
                    Err(err) => {
                        refused.get_or_insert(err);
                        false
                    }
                })
                .collect();
            match refused {
                Some(err) if allowed.is_empty() => Err(Box::new(err) as _),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(guard: &AddressGuard, addr: &str) -> bool {
        guard.check(addr.parse().unwrap()).is_err()
    }

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let guard = AddressGuard::default();
        let internal = [
            "127.0.0.1",
            "10.0.0.5",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            // NAT64 and 6to4 addresses carrying an internal IPv4 address, and local NAT64.
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:5::1",
            "2002:c0a8:101::",
            "::10.0.0.5",
            "64:ff9b:1::5db8:d822",
            // IPv4-translated, site-local, Teredo; protocol, benchmarking, reserved IPv4.
            "::ffff:0:a9fe:a9fe",
            "fec0::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "192.0.0.170",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
        ];
        for addr in internal {
            assert!(refused(&guard, addr), "{addr} should be refused");
        }
        let public = [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "172.32.0.1",
            "100.128.0.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "::ffff:0:5db8:d822",
            "198.20.0.1",
            "192.0.1.1",
            "2001:db9::1",
        ];
        for addr in public {
            assert!(!refused(&guard, addr), "{addr} should pass");
        }
    }

    #[test]
    fn allowed_networks_let_internal_addresses_through() {
        let allowed = ["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let guard = AddressGuard::new(&allowed);
        assert!(!refused(&guard, "127.0.0.1"));
        assert!(!refused(&guard, "::ffff:127.0.0.2"));
        assert!(!refused(&guard, "fd12::1"));
        assert!(refused(&guard, "10.0.0.5"));
        assert!(refused(&guard, "::1"));
        // Addresses carrying an allowed IPv4 address are allowed with it.
        assert!(!refused(&guard, "64:ff9b::7f00:1"));
        assert!(!refused(&guard, "2002:7f00:1::"));
        assert!(refused(&guard, "64:ff9b::a00:5"));
    }

    #[test]
    fn the_message_names_the_address_and_the_setting() {
        let err = AddressGuard::default().check("10.0.0.5".parse().unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the peer's address 10.0.0.5 is on a private network; \
             list it in VELOUR_PEER_ALLOWED_NETWORKS to allow it"
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let resolver = AddressGuard::default().resolver();
        let resolved = resolver.resolve("localhost".parse().unwrap()).await;
        let err = resolved.err().expect("localhost must be refused");
        let internal = err.downcast_ref::<InternalAddress>().expect("an InternalAddress");
        assert_eq!(internal.kind, "on loopback");

        let allowed = ["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let resolver = AddressGuard::new(&allowed).resolver();
        let addrs: Vec<_> = resolver.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty());
    }
}
