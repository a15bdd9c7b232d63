//! Bounded interning of the texts spans repeat on every request: peer and local addresses,
//! Host header names, and the routes and templated paths of the route cache.
//!
//! A keep-alive connection, and a node's handful of services, repeat the same few addresses
//! and hosts on every span. Building them afresh cost an allocation and a format per
//! attribute per span. An interned text is leaked once and handed out as `&'static str`,
//! which an attribute (`Cow<'static, str>`) borrows for free.
//!
//! The leak is bounded: each table stops growing at its cap, and a value not already in a
//! full table is built as before (an owned string), so a flood of distinct hosts or
//! addresses costs what it cost without the table, never unbounded memory. Worst case:
//! `ADDRESS_CAP` × 39 bytes plus `HOST_CAP` × `HOST_MAX_LEN` bytes plus `TEXT_CAP` ×
//! `TEXT_MAX_LEN` bytes, about 1.4 MiB, per thread that builds spans (in the daemon, one:
//! the capture thread).
use std::{borrow::Cow, cell::RefCell, net::IpAddr};

use hashbrown::{HashMap, HashSet};

/// Distinct addresses kept per thread.
pub const ADDRESS_CAP: usize = 4096;
/// Distinct host names kept per thread.
pub const HOST_CAP: usize = 1024;
/// Longer host names are never interned (a Host header is attacker-chosen).
pub const HOST_MAX_LEN: usize = 255;
/// Distinct routes and `url.path` values kept per thread.
pub const TEXT_CAP: usize = 4096;
/// Longer routes and paths are never interned.
pub const TEXT_MAX_LEN: usize = 255;

/// The two tables; one per thread so lookups take no lock. Keys are chosen by remote peers,
/// so they hash with hashbrown's default foldhash, seeded at random per process.
#[derive(Default)]
struct Tables {
    addresses: HashMap<IpAddr, &'static str>,
    hosts: HashSet<&'static str>,
    texts: HashSet<&'static str>,
}

thread_local! {
    static TABLES: RefCell<Tables> = RefCell::new(Tables::default());
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// `ip` as text (as `Display` writes it), borrowed from the table when it is, or fits, there.
pub fn address(ip: IpAddr) -> Cow<'static, str> {
    TABLES.with_borrow_mut(|t| {
        if let Some(text) = t.addresses.get(&ip) {
            return Cow::Borrowed(*text);
        }
        let text = super::span::ip_text(ip);
        if t.addresses.len() >= ADDRESS_CAP {
            return Cow::Owned(text);
        }
        let text = leak(text);
        t.addresses.insert(ip, text);
        Cow::Borrowed(text)
    })
}

/// `host` as an attribute value, borrowed from the table when it is, or fits, there.
pub fn host(host: &str) -> Cow<'static, str> {
    if host.len() > HOST_MAX_LEN {
        return Cow::Owned(host.to_owned());
    }
    TABLES.with_borrow_mut(|t| {
        if let Some(text) = t.hosts.get(host) {
            return Cow::Borrowed(*text);
        }
        if t.hosts.len() >= HOST_CAP {
            return Cow::Owned(host.to_owned());
        }
        let text = leak(host.to_owned());
        t.hosts.insert(text);
        Cow::Borrowed(text)
    })
}

/// A route or templated path, borrowed from the table when it is, or fits, there; else
/// `text` itself.
pub fn text(text: String) -> Cow<'static, str> {
    if text.len() > TEXT_MAX_LEN {
        return Cow::Owned(text);
    }
    TABLES.with_borrow_mut(|t| {
        if let Some(known) = t.texts.get(text.as_str()) {
            return Cow::Borrowed(*known);
        }
        if t.texts.len() >= TEXT_CAP {
            return Cow::Owned(text);
        }
        let known = leak(text);
        t.texts.insert(known);
        Cow::Borrowed(known)
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn a_repeated_address_is_borrowed_and_reads_as_display() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(address(ip), "10.1.2.3");
        assert!(matches!(address(ip), Cow::Borrowed("10.1.2.3")));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(address(v6), "::1");
    }

    #[test]
    fn a_full_table_still_answers_every_value_correctly() {
        // A fresh thread has empty tables whatever other tests put in theirs.
        std::thread::spawn(|| {
            for i in 0..ADDRESS_CAP as u32 + 10 {
                let ip = IpAddr::V4(Ipv4Addr::from(i));
                assert_eq!(address(ip), ip.to_string());
            }
            let late = IpAddr::V4(Ipv4Addr::from(ADDRESS_CAP as u32 + 5));
            assert!(matches!(address(late), Cow::Owned(_)));
            let early = IpAddr::V4(Ipv4Addr::from(7));
            assert!(matches!(address(early), Cow::Borrowed(_)));

            for i in 0..HOST_CAP + 10 {
                let name = format!("h{i}.example");
                assert_eq!(host(&name), name);
            }
            assert!(matches!(host("late.example"), Cow::Owned(_)));
            assert!(matches!(host("h3.example"), Cow::Borrowed(_)));

            for i in 0..TEXT_CAP + 10 {
                let route = format!("/r{i}/{{id}}");
                assert_eq!(text(route.clone()), route);
            }
            assert!(matches!(text("/late".into()), Cow::Owned(_)));
            assert!(matches!(text("/r3/{id}".into()), Cow::Borrowed("/r3/{id}")));
            TABLES.with_borrow(|t| {
                assert_eq!(t.addresses.len(), ADDRESS_CAP);
                assert_eq!(t.hosts.len(), HOST_CAP);
                assert_eq!(t.texts.len(), TEXT_CAP);
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_long_host_is_never_kept() {
        std::thread::spawn(|| {
            let long = "a".repeat(HOST_MAX_LEN + 1);
            assert!(matches!(host(&long), Cow::Owned(ref s) if *s == long));
            assert!(matches!(text(long.clone()), Cow::Owned(ref s) if *s == long));
            TABLES.with_borrow(|t| assert!(t.hosts.is_empty() && t.texts.is_empty()));
        })
        .join()
        .unwrap();
    }
}
