//! The broker URL: which Redis, single or cluster, plain or TLS.
//!
//! - `redis://[:password@]host:port[/db]` and `rediss://...` (TLS): one Redis (or Valkey).
//! - `redis+cluster://[:password@]host:port,host:port,...` and `rediss+cluster://...`: a Redis
//!   Cluster (7+), given by some of its nodes; pub/sub then goes through sharded pub/sub
//!   (`SSUBSCRIBE`/`SPUBLISH`).

use crate::error::Error;

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// One Redis server: the URL the client library takes.
    Single {
        /// `redis://...` or `rediss://...`.
        url: String,
    },
    /// A Redis Cluster, by seed nodes (each a `redis://` or `rediss://` URL).
    Cluster {
        /// The seed nodes.
        nodes: Vec<String>,
    },
}

impl BrokerUrl {
    /// Parses a broker URL.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] saying which forms are accepted.
    pub fn parse(url: &str) -> Result<BrokerUrl, Error> {
        let bad = |why: &str| {
            Error::Config(format!(
                "broker {:?}: {why} (expected redis://host:port[/db], rediss://..., or \
                 redis+cluster://host:port,host:port,... for a Redis Cluster)",
                without_credentials(url)
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (single_scheme, cluster) = match scheme {
            "redis" | "rediss" => (scheme, false),
            "redis+cluster" => ("redis", true),
            "rediss+cluster" => ("rediss", true),
            _ => return Err(bad("unknown scheme")),
        };
        if rest.is_empty() {
            return Err(bad("no host"));
        }
        if !cluster {
            return Ok(BrokerUrl::Single { url: url.to_owned() });
        }
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.trim_end_matches('/');
        if hosts.contains('/') {
            return Err(bad("a cluster has no database number"));
        }
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| format!("{single_scheme}://{auth}{host}"))
            .collect();
        if nodes.is_empty() {
            return Err(bad("no host"));
        }
        Ok(BrokerUrl::Cluster { nodes })
    }

    /// The URL without its password, for logs.
    #[must_use]
    pub fn redacted(&self) -> String {
        match self {
            BrokerUrl::Single { url } => without_credentials(url),
            BrokerUrl::Cluster { nodes } => {
                format!("cluster {}", nodes.iter().map(|n| without_credentials(n)).collect::<Vec<_>>().join(","))
            }
        }
    }
}

/// `url` with whatever comes before its last `@` (a user and password) replaced by `***`; a URL
/// without `://` (not one we can read) is hidden whole if it has an `@`.
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        (None, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_cluster_forms() {
        assert_eq!(
            BrokerUrl::parse("redis://127.0.0.1:6379/2").expect("valid"),
            BrokerUrl::Single { url: "redis://127.0.0.1:6379/2".into() }
        );
        assert_eq!(
            BrokerUrl::parse("rediss+cluster://:secret@a:7000,b:7001/").expect("valid"),
            BrokerUrl::Cluster { nodes: vec!["rediss://:secret@a:7000".into(), "rediss://:secret@b:7001".into()] }
        );
        for bad in ["localhost:6379", "http://x", "redis://", "redis+cluster://a:1/0", "redis+cluster://,"] {
            let err = BrokerUrl::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("expected redis://"), "{err}");
        }
    }

    #[test]
    fn passwords_stay_out_of_errors() {
        for url in ["redis+cluster://:pw-secret@a:1/0", "memcached://:pw-secret@a:1", ":pw-secret@a:1"] {
            let err = BrokerUrl::parse(url).expect_err("refused").to_string();
            assert!(!err.contains("pw-secret"), "{err}");
            assert!(err.contains("***@a:1"), "{err}");
        }
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        let url = BrokerUrl::parse("redis://:hunter2@db:6379/0").expect("valid");
        assert_eq!(url.redacted(), "redis://***@db:6379/0");
        let cluster = BrokerUrl::parse("redis+cluster://user:pw@a:1,b:2").expect("valid");
        assert!(!cluster.redacted().contains("pw"));
    }
}
