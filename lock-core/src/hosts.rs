//! URLs that name several hosts, libpq's way:
//! `scheme://[user[:password]@]h1[:p1],h2[:p2],…[/path][?query]`, and libpq's
//! `target_session_attrs`, which says which of them a session may use. The PostgreSQL
//! backends (advisory locks, the ShedLock table) share this; clients that take one host per
//! URL get one URL per host from [`split_hosts`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// One URL per host of `url`, in the order given, each with `url`'s user, path and query; a
/// URL with one host (or no `://`) comes back as it is. Commas inside `[…]` (IPv6) or in the
/// path and query are not separators.
pub fn split_hosts(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_string()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in hosts.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&hosts[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&hosts[start..]);
    if out.len() == 1 {
        return vec![url.to_string()];
    }
    out.into_iter()
        .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
        .collect()
}

/// libpq's `target_session_attrs`: which of the hosts a session may settle on. The hosts are
/// tried in the order given; the first that connects and qualifies is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// `any` (libpq's default): the first host that accepts the connection, whatever its
    /// role — after a failover, possibly a standby that cannot take locks.
    #[default]
    Any,
    /// `read-write`: a host whose sessions accept writes (libpq checks
    /// `transaction_read_only`; so does this): a primary.
    ReadWrite,
    /// `primary`: a host that is not in recovery (`pg_is_in_recovery()` is false).
    Primary,
}

impl TargetSessionAttrs {
    /// Whether a host has to be asked about its role before it is used.
    pub fn checks_role(self) -> bool {
        self != TargetSessionAttrs::Any
    }

    /// The query whose single boolean says the host qualifies (`None`: any host does).
    pub fn check_sql(self) -> Option<&'static str> {
        match self {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite => {
                Some("SELECT current_setting('transaction_read_only') = 'off'")
            }
            TargetSessionAttrs::Primary => Some("SELECT NOT pg_is_in_recovery()"),
        }
    }
}

/// A `target_session_attrs` value this library does not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTargetSessionAttrs(pub String);

impl fmt::Display for BadTargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_str() {
            "read-only" | "standby" | "prefer-standby" => write!(
                f,
                "target_session_attrs={:?}: a lock must live on the primary (a standby's \
                 locks are not the primary's); use read-write, primary or any",
                self.0
            ),
            v => write!(
                f,
                "target_session_attrs={v:?}: expected any, read-write or primary"
            ),
        }
    }
}

impl std::error::Error for BadTargetSessionAttrs {}

impl FromStr for TargetSessionAttrs {
    type Err = BadTargetSessionAttrs;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(TargetSessionAttrs::Any),
            "read-write" => Ok(TargetSessionAttrs::ReadWrite),
            "primary" => Ok(TargetSessionAttrs::Primary),
            other => Err(BadTargetSessionAttrs(other.to_string())),
        }
    }
}

/// Why one host of a several-host URL was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostRefusal {
    /// It could not be reached: refused, reset, or no answer in time (the client's message).
    Unreachable(String),
    /// It answered, but its sessions do not take writes (a standby, or a read-only server),
    /// which `target_session_attrs=read-write` or `primary` rules out.
    NotWritable,
    /// Asking it for its role failed (the client's message).
    RoleUnknown(String),
}

/// No host of the URL qualified: each host, in the URL's order, with why. The source of the
/// `Connection` error a PostgreSQL backend returns then, so callers can tell a URL that names
/// only standbys (or a failover nobody has promoted yet: [`NoUsableHost::only_standbys`])
/// from servers that are down, without reading the message.
#[derive(Debug, Clone)]
pub struct NoUsableHost {
    /// `host:port` and why it was not used.
    pub hosts: Vec<(String, HostRefusal)>,
    /// The client library's last error, when there was one: this error's `source`.
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl NoUsableHost {
    /// True when every host answered and none takes writes: there is no primary among them.
    pub fn only_standbys(&self) -> bool {
        !self.hosts.is_empty()
            && self
                .hosts
                .iter()
                .all(|(_, why)| *why == HostRefusal::NotWritable)
    }
}

impl fmt::Display for NoUsableHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.only_standbys() {
            f.write_str("no host takes writes (only standbys or read-only servers); ")?;
        }
        for (i, (host, why)) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match why {
                HostRefusal::Unreachable(e) => write!(f, "{host}: {e}")?,
                HostRefusal::NotWritable => {
                    write!(f, "{host}: does not take writes (a standby, or read-only)")?
                }
                HostRefusal::RoleUnknown(e) => write!(f, "{host}: asking its role failed: {e}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for NoUsableHost {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_per_host() {
        assert_eq!(
            split_hosts("postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write&a=1,2"),
            [
                "postgres://u:p@h1:5432/db?target_session_attrs=read-write&a=1,2",
                "postgres://u:p@h2:5433/db?target_session_attrs=read-write&a=1,2"
            ]
        );
        assert_eq!(
            split_hosts("postgres://h1,h2"),
            ["postgres://h1", "postgres://h2"]
        );
        assert_eq!(
            split_hosts("postgres://[::1]:5432,[::2]/db"),
            ["postgres://[::1]:5432/db", "postgres://[::2]/db"]
        );
        for one in [
            "postgres://u@h/db?x=a,b",
            "postgres://h",
            "no-scheme,at,all",
        ] {
            assert_eq!(split_hosts(one), [one]);
        }
    }

    #[test]
    fn no_usable_host_says_whether_only_standbys_answered() {
        let standby = |h: &str| (h.to_string(), HostRefusal::NotWritable);
        let e = NoUsableHost {
            hosts: vec![standby("h1:5432"), standby("h2:5432")],
            cause: None,
        };
        assert!(e.only_standbys());
        assert_eq!(
            e.to_string(),
            "no host takes writes (only standbys or read-only servers); h1:5432: does not take \
             writes (a standby, or read-only); h2:5432: does not take writes (a standby, or \
             read-only)"
        );
        let e = NoUsableHost {
            hosts: vec![
                ("h1:5432".into(), HostRefusal::Unreachable("refused".into())),
                standby("h2:5432"),
            ],
            cause: None,
        };
        assert!(!e.only_standbys());
        assert!(
            !NoUsableHost {
                hosts: vec![],
                cause: None
            }
            .only_standbys()
        );
    }

    #[test]
    fn target_session_attrs_values() {
        assert_eq!("any".parse(), Ok(TargetSessionAttrs::Any));
        assert_eq!("read-write".parse(), Ok(TargetSessionAttrs::ReadWrite));
        assert_eq!("primary".parse(), Ok(TargetSessionAttrs::Primary));
        assert!(!TargetSessionAttrs::Any.checks_role());
        for bad in ["standby", "read-only", "prefer-standby", "rw", ""] {
            let e = bad.parse::<TargetSessionAttrs>().unwrap_err();
            assert!(e.to_string().contains("target_session_attrs"), "{e}");
        }
    }
}
