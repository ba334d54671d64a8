//! Helpers for the tests of several nodes sharing a broker: a real `redis-server` (Debian's
//! package) started on a free loopback port in a temporary directory and stopped with the test,
//! and servers configured to use it.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use snorky::server::ServerConfig;

/// A `redis-server` of the test's own.
pub struct Redis {
    /// The port it listens on (127.0.0.1 only).
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Options added to the command line (cluster mode).
    extra: Vec<String>,
    /// Set for [`Redis::start_secured`].
    secured: Option<Secured>,
}

/// A Redis that wants a password and speaks only TLS.
pub struct Secured {
    /// The password (`requirepass`).
    pub password: String,
    /// The PEM file of the certificate authority that signed the server's certificate.
    pub ca_file: PathBuf,
}

impl Redis {
    /// Starts a Redis on a free port and waits until it answers.
    pub fn start() -> Redis {
        let mut redis = Redis::prepare(Vec::new());
        redis.run();
        redis
    }

    /// Starts a Redis that accepts only TLS connections (with a certificate for 127.0.0.1 signed
    /// by a throwaway authority, see [`Secured::ca_file`]) and wants `password`.
    pub fn start_secured(password: &str) -> Redis {
        let mut redis = Redis::prepare(Vec::new());
        let (ca, cert, key) = throwaway_certificates();
        let file = |name: &str, pem: &str| {
            let path = redis.dir.join(name);
            std::fs::write(&path, pem).expect("a certificate file");
            path.to_string_lossy().into_owned()
        };
        let ca_file = file("ca.pem", &ca);
        let (cert_file, key_file) = (file("server.pem", &cert), file("server.key", &key));
        redis.extra = vec![
            "--tls-port".into(),
            redis.port.to_string(),
            "--tls-cert-file".into(),
            cert_file,
            "--tls-key-file".into(),
            key_file,
            "--tls-ca-cert-file".into(),
            ca_file.clone(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            password.into(),
        ];
        redis.secured = Some(Secured { password: password.into(), ca_file: ca_file.into() });
        redis.run();
        redis
    }

    fn prepare(extra: Vec<String>) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = std::env::temp_dir().join(format!("snorky-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Redis { port, dir, child: None, extra, secured: None }
    }

    fn run(&mut self) {
        // With TLS, the plain port is turned off (0) and the TLS port takes its place.
        let plain_port = if self.secured.is_some() { 0 } else { self.port };
        let child = Command::new("redis-server")
            .args(["--port", &plain_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup installs Debian's redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!("redis-server did not answer on port {} within 10 s; its log:\n{log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers `PING`.
    pub fn answers(&self) -> bool {
        if self.secured.is_some() {
            return self.cli(&["PING"]) == "PONG";
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:<port>/0`, or `rediss://:<password>@127.0.0.1:<port>/0` when secured.
    pub fn url(&self) -> String {
        match &self.secured {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(secured) => format!("rediss://:{}@127.0.0.1:{}/0", secured.password, self.port),
        }
    }

    /// The password and authority of a secured Redis.
    pub fn secured(&self) -> Option<&Secured> {
        self.secured.as_ref()
    }

    /// Kills it (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): Redis stops answering with every connection left
    /// open, then goes on with its data and what it was sent meanwhile.
    pub fn freeze(&self, frozen: bool) {
        let Some(child) = &self.child else { panic!("Redis is not running") };
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts it again on the same port (empty: it keeps no data).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Runs a command with `redis-cli` and returns its output (for checks on Redis's side).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(secured) = &self.secured {
            command.arg("--tls").arg("--cacert").arg(&secured.ca_file).args([
                "--no-auth-warning",
                "-a",
                &secured.password,
            ]);
        }
        let output = command.args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The full name in Redis of the node started as `name` (names get a random suffix).
pub fn node_id(redis: &Redis, name: &str) -> String {
    let nodes = redis.cli(&["SMEMBERS", "{snorky}:nodes"]);
    let prefix = format!("{name}-");
    nodes.lines().find(|id| id.starts_with(&prefix)).unwrap_or_else(|| panic!("node {name} in {nodes:?}")).to_owned()
}

/// `config` joined to the broker at `redis`, with a short node timeout so that crashes are
/// noticed within the test.
pub fn on_broker(config: ServerConfig, redis: &Redis, node_name: &str) -> ServerConfig {
    let mut config = on_broker_url(config, &redis.url(), node_name);
    config.broker_ca_file = redis.secured().map(|secured| secured.ca_file.to_string_lossy().into_owned());
    config
}

/// `config` joined to the broker at `url` (a Redis Cluster's, say), as [`on_broker`] does.
pub fn on_broker_url(mut config: ServerConfig, url: &str, node_name: &str) -> ServerConfig {
    config.broker = Some(url.to_owned());
    config.node_name = Some(node_name.into());
    config.node_timeout = 3.0;
    config
}

/// A throwaway certificate authority and a server certificate it signed for 127.0.0.1, as PEM:
/// `(authority, certificate, private key)`.
fn throwaway_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
    // Distinct names: a certificate whose issuer is its own subject counts as self-signed.
    let named = |name: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn
    };
    let ca_key = KeyPair::generate().expect("a key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    ca_params.distinguished_name = named("Snorky test authority");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("an authority");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("a key");
    let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("parameters");
    server_params.distinguished_name = named("127.0.0.1");
    let server = server_params.signed_by(&server_key, &issuer).expect("a certificate");
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

/// A Redis Cluster of three masters (no replicas), each a [`Redis`] in cluster mode, its slots
/// assigned by `redis-cli --cluster create`.
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts three masters and waits until the cluster reports `cluster_state:ok` on each.
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let mut redis = Redis::prepare(Vec::new());
                redis.extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                    .into_iter()
                    .map(String::from)
                    .collect();
                redis.run();
                redis
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the Redis Cluster did not become ready within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://127.0.0.1:<a>,127.0.0.1:<b>,127.0.0.1:<c>`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// A TCP proxy on a free loopback port in front of a Redis: a node connected through it can be
/// cut off (a network partition: its connections are dropped and new ones refused) and let back.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to the Redis on `target` (127.0.0.1).
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().expect("a bound address").port();
        let open = std::sync::Arc::new(tokio::sync::watch::Sender::new(true));
        let gate = std::sync::Arc::clone(&open);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*gate.borrow() {
                    continue;
                }
                let mut closed = gate.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = closed.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Proxy { port, open, accept }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Drops every connection through it and refuses new ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
