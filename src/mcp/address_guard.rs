//! The SSRF guard of MCP discovery: which addresses a user's MCP server may
//! have, checked on the address we actually connect to.
//!
//! Names are checked by [`GuardedResolver`], the DNS resolver installed on
//! the discovery client: it drops refused addresses from every answer, so
//! reqwest never connects to one and a DNS answer that changes between a
//! check and the connection (rebinding) cannot get through. reqwest does not
//! resolve IP literals, so [`check_url`] checks those before each request.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Why an address is not public; `None` from [`classify`] means it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    SharedCgnat,
    Multicast,
    Broadcast,
    Documentation,
    Reserved,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::SharedCgnat => "shared carrier-grade NAT",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Reserved => "reserved",
        })
    }
}

/// The kind of non-public address `ip` is, or `None` when it is public.
pub fn classify(ip: IpAddr) -> Option<AddressKind> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressKind> {
    let [a, b, c, _] = ip.octets();
    let kind = match (a, b, c) {
        // 0.0.0.0/8: "this network"; connecting to 0.0.0.0 reaches the host itself.
        (0, _, _) => AddressKind::Unspecified,
        (127, _, _) => AddressKind::Loopback,
        (10, _, _) => AddressKind::Private,
        (172, 16..=31, _) => AddressKind::Private,
        (192, 168, _) => AddressKind::Private,
        // Includes 169.254.169.254, the cloud metadata service.
        (169, 254, _) => AddressKind::LinkLocal,
        (100, 64..=127, _) => AddressKind::SharedCgnat,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressKind::Documentation,
        // IETF protocol assignments, benchmarking, the old 6to4 relay anycast.
        (192, 0, 0) | (198, 18..=19, _) | (192, 88, 99) => AddressKind::Reserved,
        (224..=239, _, _) => AddressKind::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => AddressKind::Broadcast,
        (240..=255, _, _) => AddressKind::Reserved,
        _ => return None,
    };
    Some(kind)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressKind> {
    // Addresses that carry an IPv4 address reach (or are translated to) it:
    // IPv4-mapped ::ffff:a.b.c.d, the old IPv4-compatible ::a.b.c.d, NAT64
    // 64:ff9b::a.b.c.d and 6to4 2002:aabb:ccdd::.
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_unspecified() {
        return Some(AddressKind::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressKind::Loopback);
    }
    match segments {
        [0, 0, 0, 0, 0, 0xffff, high, low] | [0, 0, 0, 0, 0, 0, high, low] => {
            return classify_v4(embedded(high, low));
        }
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => return classify_v4(embedded(high, low)),
        [0x2002, high, low, ..] => return classify_v4(embedded(high, low)),
        _ => {}
    }
    let first = segments[0];
    let kind = if first & 0xfe00 == 0xfc00 {
        AddressKind::Private // fc00::/7, unique local
    } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
        AddressKind::LinkLocal // fe80::/10, and the deprecated site-local fec0::/10
    } else if first & 0xff00 == 0xff00 {
        AddressKind::Multicast
    } else if (first == 0x2001 && segments[1] == 0x0db8) || first & 0xfff0 == 0x3ff0 {
        AddressKind::Documentation // 2001:db8::/32 and 3fff::/20
    } else if (first == 0x2001 && segments[1] == 0)
        || (first == 0x64 && segments[1] == 0xff9b && segments[2] == 1)
        || (first == 0x100 && segments[1..4] == [0, 0, 0])
    {
        // Teredo (embeds an obfuscated IPv4 address), local-use NAT64
        // 64:ff9b:1::/48, discard-only 100::/64.
        AddressKind::Reserved
    } else {
        return None;
    };
    Some(kind)
}

/// An address the guard refused, named in the error the user sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedAddress {
    /// The host as written in the URL (a name, or the address itself).
    pub host: String,
    pub address: IpAddr,
    pub kind: AddressKind,
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = self.address;
        let kind = self.kind;
        let allow = "set CHRONICLE_MCP_ALLOW_PRIVATE=true to allow it";
        if self.host.trim_matches(['[', ']']) == address.to_string() {
            write!(f, "address {address} is not public ({kind}); {allow}")
        } else {
            let host = &self.host;
            write!(
                f,
                "{host} resolves to {address}, which is not public ({kind}); {allow}"
            )
        }
    }
}

impl std::error::Error for RefusedAddress {}

/// Refuses a URL whose host is a non-public IP literal (names are left to
/// [`GuardedResolver`]).
pub fn check_url(url: &Url) -> Result<(), RefusedAddress> {
    // The URL parser writes IP hosts in canonical form (`0x7f.1` becomes
    // `127.0.0.1`, IPv6 in brackets), so a name never parses as an address.
    let host = url.host_str().unwrap_or_default();
    let Ok(address) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return Ok(());
    };
    match classify(address) {
        None => Ok(()),
        Some(kind) => Err(RefusedAddress {
            host: address.to_string(),
            address,
            kind,
        }),
    }
}

/// A name that resolved to no address at all.
#[derive(Debug)]
pub struct Unresolved;

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the name could not be resolved")
    }
}

impl std::error::Error for Unresolved {}

/// The discovery client's resolver. When `guard` is on it only ever returns
/// public addresses: refused ones are dropped, and a name with nothing else
/// fails with [`RefusedAddress`]. Failures to resolve come out as
/// [`Unresolved`] either way, so errors can say so.
#[derive(Debug)]
pub struct GuardedResolver {
    pub guard: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let guard = self.guard;
        Box::pin(async move {
            type BoxError = Box<dyn std::error::Error + Send + Sync>;
            let resolved: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await
            {
                Ok(addrs) => addrs.collect(),
                Err(_) => return Err(Box::new(Unresolved) as BoxError),
            };
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|addr| !guard || classify(addr.ip()).is_none());
            if allowed.is_empty() {
                let Some(first) = refused.first() else {
                    return Err(Box::new(Unresolved) as BoxError);
                };
                let address = first.ip();
                let kind = classify(address).unwrap_or(AddressKind::Reserved);
                return Err(Box::new(RefusedAddress {
                    host,
                    address,
                    kind,
                }) as BoxError);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified_as_public_or_by_why_they_are_not() {
        use AddressKind::*;
        let table: &[(&str, Option<AddressKind>)] = &[
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("192.0.3.1", None),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("169.254.169.254", Some(LinkLocal)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("192.0.0.8", Some(Reserved)),
            ("198.18.0.1", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:82b::200e", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fc00::1", Some(Private)),
            ("fd12:3456:789a::1", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(LinkLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001::1", Some(Reserved)),
            ("64:ff9b:1::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("64:ff9b::808:808", None),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:c0a8:101::1", Some(Private)),
            ("2002:808:808::1", None),
        ];
        for (text, expected) in table {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *expected, "{text}");
        }
    }

    #[test]
    fn urls_with_non_public_ip_literals_are_refused_and_names_left_to_the_resolver() {
        let refused = [
            "http://127.0.0.1:8080/mcp",
            "http://[::1]/mcp",
            "http://[::ffff:7f00:1]/mcp",
            "https://169.254.169.254/latest/meta-data",
            "http://0x7f.1/mcp",
            "http://2130706433/mcp",
            "http://10.1.2.3/",
        ];
        for text in refused {
            let url = Url::parse(text).unwrap();
            let err = check_url(&url).expect_err(text);
            assert!(err.to_string().contains("CHRONICLE_MCP_ALLOW_PRIVATE"));
        }
        for text in [
            "https://mcp.example.com/mcp",
            "http://8.8.8.8/",
            "http://localhost/",
        ] {
            assert!(check_url(&Url::parse(text).unwrap()).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_refusal_names_the_host_and_the_address() {
        let literal = RefusedAddress {
            host: "127.0.0.1".into(),
            address: "127.0.0.1".parse().unwrap(),
            kind: AddressKind::Loopback,
        };
        assert_eq!(
            literal.to_string(),
            "address 127.0.0.1 is not public (loopback); set CHRONICLE_MCP_ALLOW_PRIVATE=true to allow it"
        );
        let named = RefusedAddress {
            host: "localhost".into(),
            ..literal
        };
        assert!(named
            .to_string()
            .starts_with("localhost resolves to 127.0.0.1, which is not public (loopback)"));
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_only_to_loopback() {
        let name: Name = "localhost".parse().unwrap();
        let err = match (GuardedResolver { guard: true }).resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        let refused = err.downcast_ref::<RefusedAddress>().expect("a refusal");
        assert_eq!(refused.kind, AddressKind::Loopback);
    }
}
