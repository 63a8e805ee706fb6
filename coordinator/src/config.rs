//! The coordinator's TOML config, validated into [`CoordinatorConfig`].
//! A leaf module: it depends on nothing else in the crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use sharenet_p2p::{Identity, Multiaddr, parse_multiaddrs};

/// Environment variable with comma-separated API keys; overrides the file.
pub const API_KEYS_ENV: &str = "SHARENET_API_KEYS";
/// Environment variables that override `coordinator.toml`:
/// `SHARENET_COORDINATOR_<KEY>`.
pub const ENV_PREFIX: &str = "SHARENET_COORDINATOR_";

/// The effective `coordinator.toml` (file plus environment) as TOML, the
/// API keys and operator key redacted, for `sharenet-coordinator
/// config-check`.
pub fn effective(path: &Path) -> anyhow::Result<String> {
    Ok(sharenet_daemon::config::effective(
        path,
        ENV_PREFIX,
        &["api_keys", "operator_key", "database_url"],
    )?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    identity_file: PathBuf,
    data_dir: PathBuf,
    http_listen: String,
    p2p_listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default = "default_attempts")]
    max_attempts: usize,
    #[serde(default)]
    timeouts: TimeoutsFile,
    #[serde(default)]
    network_fee_bps: u32,
    operator_key: Option<String>,
    #[serde(default)]
    bootstrap_balance_nano_usd: u64,
    /// Settlement periods: calendar months (default) or fixed lengths.
    settlement_period_secs: Option<u64>,
    /// Relay connections for nodes behind NAT (circuit relay v2).
    #[serde(default = "default_relay")]
    relay: bool,
    /// Share of text jobs re-run as spot checks, 0 to 1.
    #[serde(default = "default_spot_check_rate")]
    spot_check_rate: f64,
    /// What the `spot-checks` app starts with (nano-USD), once.
    #[serde(default)]
    spot_check_funding_nano_usd: u64,
    /// The network's price ceiling (nano-USD per token): offers above it
    /// are not routable.
    #[serde(default = "default_price_ceiling")]
    max_price_in_nano_usd: u64,
    #[serde(default = "default_price_ceiling")]
    max_price_out_nano_usd: u64,
    /// When every node is full, jobs may wait in the nodes' queues up to
    /// this many times their slots (1: refuse at once with 503).
    #[serde(default = "default_spill")]
    spill_queue_factor: u32,
    /// Other names builders may use for a model: alias → the model's
    /// name on the network (a node's id or a canonical name).
    #[serde(default)]
    aliases: std::collections::BTreeMap<String, String>,
    /// PostgreSQL: the books shared by every replica of a deployment
    /// (absent: the embedded books in `data_dir`).
    database_url: Option<String>,
    /// Replicas in the deployment (each enforces its share of every rate
    /// limit).
    #[serde(default = "default_replicas")]
    replicas: u32,
    /// How long a job's hold counts if its replica dies mid-job (a live
    /// job's hold is renewed every fifth of it; a commit whose hold lapsed
    /// is refused).
    #[serde(default = "default_hold_ttl")]
    hold_ttl_secs: u64,
    /// Connections to the database per replica.
    #[serde(default = "default_pool")]
    database_pool_size: usize,
    // Private metrics and builder reads (issue 26, items 7 and 9).
    /// The private metrics listener (per-app series); "" turns it off.
    #[serde(default = "default_metrics_listen")]
    metrics_listen: String,
    /// Reads of a builder's books per minute per API key (0: no limit).
    #[serde(default = "default_builder_reads")]
    builder_reads_per_minute: u32,
    /// The model catalog (absent: `catalog.json` in `data_dir`).
    catalog_file: Option<PathBuf>,
    /// Adverts for models outside the catalog are routable (their usage
    /// is then the node's word, marked `counted_by: node`).
    #[serde(default)]
    allow_uncatalogued: bool,
}

/// The private metrics listener by default: loopback only, so per-app
/// series never leave the host unless the operator says where they may
/// go (9464: the port OpenTelemetry's Prometheus exporters use).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

fn default_metrics_listen() -> String {
    DEFAULT_METRICS_LISTEN.into()
}

/// Builder reads per minute per key by default: a dashboard refreshing
/// every few seconds and a script paging through receipts stay far below
/// it; a loop hammering the books does not.
pub const DEFAULT_BUILDER_READS_PER_MINUTE: u32 = 300;

fn default_builder_reads() -> u32 {
    DEFAULT_BUILDER_READS_PER_MINUTE
}

fn default_replicas() -> u32 {
    1
}

fn default_hold_ttl() -> u64 {
    600
}

fn default_pool() -> usize {
    16
}

/// Environment variable with the database URL; overrides the file.
pub const DATABASE_URL_ENV: &str = "SHARENET_DATABASE_URL";

/// Shared books in PostgreSQL (see `sharenet_ledger::pg`).
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub replicas: u32,
    pub hold_ttl: Duration,
    pub pool_size: usize,
}

fn default_spill() -> u32 {
    sharenet_router::RouteParams::default().spill_queue_factor
}

/// The default price ceiling: 1,000,000 nano-USD per token ($1,000 per
/// million tokens), far above any real model, far below what would make
/// every hold absurd.
pub const DEFAULT_PRICE_CEILING: u64 = 1_000_000;

fn default_price_ceiling() -> u64 {
    DEFAULT_PRICE_CEILING
}

fn default_relay() -> bool {
    true
}

fn default_spot_check_rate() -> f64 {
    0.02
}

/// Environment variable with the operator key; overrides the file.
pub const OPERATOR_KEY_ENV: &str = "SHARENET_OPERATOR_KEY";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeoutsFile {
    connect_ms: Option<u64>,
    first_token_ms: Option<u64>,
    idle_ms: Option<u64>,
}

fn default_attempts() -> usize {
    3
}

/// Per-phase time limits for a job.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Opening the stream to the node.
    pub connect: Duration,
    /// From sending the request to the first event.
    pub first_token: Duration,
    /// Longest gap between two events after the first.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_token: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        }
    }
}

/// A validated coordinator configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub identity: Identity,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub p2p_listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub api_keys: Vec<String>,
    pub max_attempts: usize,
    pub timeouts: Timeouts,
    /// The operator's fee on provider cost, in basis points (100 = 1%).
    pub network_fee_bps: u32,
    /// Bearer key for `/operator/*` (none: the operator API is off).
    pub operator_key: Option<String>,
    /// The balance the app of `api_keys` starts with (nano-USD), once.
    pub bootstrap_balance: u64,
    /// How time is cut into settlement periods.
    pub period_rule: sharenet_market::PeriodRule,
    /// Share of text jobs re-run as spot checks (0 to 1; 0 is off).
    pub spot_check_rate: f64,
    /// Serve as a circuit relay for nodes behind NAT.
    pub relay_server: bool,
    /// The balance the operator's `spot-checks` app starts with (nano-USD).
    pub spot_check_funding: u64,
    /// Offers priced above this are not routable (nano-USD per token).
    pub price_ceiling: PriceCeiling,
    /// When every node is full (as many of our jobs as slots), jobs may
    /// wait in the nodes' own queues up to this many times their slots;
    /// 1 refuses at once (503 with `Retry-After`).
    pub spill_queue_factor: u32,
    /// Model aliases: the name a builder sends → the name routed.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// Shared books (replicas); None: the embedded books in `data_dir`.
    pub database: Option<DatabaseConfig>,
    // Private metrics and builder reads (issue 26, items 7 and 9).
    /// Where the private metrics page (per-app series) is served; None:
    /// nowhere but `/operator/metrics`. The API port's `/metrics` is
    /// aggregated and carries no app id either way.
    pub metrics_listen: Option<SocketAddr>,
    /// Reads of a builder's books (receipts, proofs, statements, usage,
    /// generations, the dashboard) per minute per API key; 0: no limit.
    pub builder_reads_per_minute: u32,
    /// The model catalog (`core::catalog`).
    pub catalog: CatalogConfig,
}

/// Where the model catalog is kept, and what happens to adverts for
/// models outside it.
#[derive(Debug, Clone, Default)]
pub struct CatalogConfig {
    /// The catalog file (None: `catalog.json` in `data_dir`). Each replica
    /// loads its own: with shared books, give every replica the same file.
    pub file: Option<PathBuf>,
    /// Adverts for models the catalog does not know are routable (off:
    /// they are counted in `sharenet_uncatalogued_adverts_total` and not
    /// routed). Their usage is the node's word, marked `counted_by: node`.
    pub allow_uncatalogued: bool,
}

impl CoordinatorConfig {
    /// The catalog file this coordinator loads and writes.
    pub fn catalog_path(&self) -> PathBuf {
        self.catalog
            .file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(CATALOG_FILE))
    }
}

/// The catalog file and `allow_uncatalogued` of the config at `path`
/// (file plus environment), read without loading anything else: what
/// `sharenet-coordinator catalog` works on.
pub fn catalog_of(path: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let file: CoordinatorFile = sharenet_daemon::config::layered(path, ENV_PREFIX)
        .with_context(|| format!("read coordinator config {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let catalog = file.catalog_file.map_or_else(
        || base.join(&file.data_dir).join(CATALOG_FILE),
        |f| base.join(f),
    );
    Ok((catalog, file.allow_uncatalogued))
}

/// The catalog's file name in `data_dir` when `catalog_file` is not set.
pub const CATALOG_FILE: &str = "catalog.json";

/// The network-wide price ceiling, nano-USD per token. One absurd price
/// among the candidates would otherwise make every request's worst-case
/// hold absurd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceCeiling {
    pub price_in: u64,
    pub price_out: u64,
}

impl Default for PriceCeiling {
    fn default() -> Self {
        Self {
            price_in: DEFAULT_PRICE_CEILING,
            price_out: DEFAULT_PRICE_CEILING,
        }
    }
}

impl CoordinatorConfig {
    /// Reads a config file; relative paths are relative to its folder. The
    /// identity key is created on first start if it does not exist.
    /// Reads `path`, with any setting overridden from the environment
    /// (`SHARENET_COORDINATOR_<KEY>`, `__` for a nested table, e.g.
    /// `SHARENET_COORDINATOR_TIMEOUTS__IDLE_MS`; and, as before,
    /// `SHARENET_API_KEYS` and `SHARENET_OPERATOR_KEY`).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let file: CoordinatorFile = sharenet_daemon::config::layered(path, ENV_PREFIX)
            .with_context(|| format!("read coordinator config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let identity = Identity::load_or_create(&base.join(&file.identity_file))
            .context("load identity_file")?;
        let defaults = Timeouts::default();
        let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
        let mut api_keys = file.api_keys;
        if let Ok(env) = std::env::var(API_KEYS_ENV) {
            api_keys = env
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
        }
        // An empty variable (an unset secret in a container) means none.
        let operator_key = std::env::var(OPERATOR_KEY_ENV)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .or(file.operator_key);
        let database_url = std::env::var(DATABASE_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .or(file.database_url);
        let metrics_listen = match file.metrics_listen.trim() {
            "" => None,
            addr => Some(
                addr.parse()
                    .with_context(|| format!("parse metrics_listen = {addr:?}"))?,
            ),
        };
        let config = Self {
            metrics_listen,
            builder_reads_per_minute: file.builder_reads_per_minute,
            catalog: CatalogConfig {
                file: file.catalog_file.map(|f| base.join(f)),
                allow_uncatalogued: file.allow_uncatalogued,
            },
            database: database_url.map(|url| DatabaseConfig {
                url,
                replicas: file.replicas,
                hold_ttl: Duration::from_secs(file.hold_ttl_secs),
                pool_size: file.database_pool_size,
            }),
            network_fee_bps: file.network_fee_bps,
            spot_check_rate: file.spot_check_rate,
            relay_server: file.relay,
            spot_check_funding: file.spot_check_funding_nano_usd,
            price_ceiling: PriceCeiling {
                price_in: file.max_price_in_nano_usd,
                price_out: file.max_price_out_nano_usd,
            },
            operator_key,
            spill_queue_factor: file.spill_queue_factor,
            aliases: file.aliases,
            bootstrap_balance: file.bootstrap_balance_nano_usd,
            period_rule: match file.settlement_period_secs {
                None => sharenet_market::PeriodRule::CalendarMonth,
                Some(0) => bail!("settlement_period_secs: must be at least 1"),
                Some(secs) => sharenet_market::PeriodRule::Fixed {
                    length_ms: secs.saturating_mul(1000),
                    origin_ms: 0,
                },
            },
            identity,
            data_dir: base.join(file.data_dir),
            http_listen: file
                .http_listen
                .parse()
                .with_context(|| format!("parse http_listen = {:?}", file.http_listen))?,
            p2p_listen: parse_multiaddrs("p2p_listen", &file.p2p_listen)?,
            bootstrap: parse_multiaddrs("bootstrap", &file.bootstrap)?,
            api_keys,
            max_attempts: file.max_attempts,
            timeouts: Timeouts {
                connect: ms(file.timeouts.connect_ms, defaults.connect),
                first_token: ms(file.timeouts.first_token_ms, defaults.first_token),
                idle: ms(file.timeouts.idle_ms, defaults.idle),
            },
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.api_keys.is_empty() && self.operator_key.is_none() {
            bail!(
                "api_keys: at least one key is required (or set {API_KEYS_ENV}), unless an operator_key manages apps and keys"
            );
        }
        if self.operator_key.as_ref().is_some_and(|k| k.len() < 16) {
            bail!("operator_key: must be at least 16 characters");
        }
        if self.network_fee_bps > 10_000 {
            bail!("network_fee_bps: at most 10000 (100%)");
        }
        if self.api_keys.iter().any(|k| k.len() < 16) {
            bail!("api_keys: every key must be at least 16 characters");
        }
        if self.p2p_listen.is_empty() {
            bail!("p2p_listen: at least one address is required");
        }
        if self.max_attempts == 0 {
            bail!("max_attempts: must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.spot_check_rate) {
            bail!("spot_check_rate: must be between 0 and 1");
        }
        if let Some(db) = &self.database {
            if db.replicas == 0 {
                bail!("replicas: must be at least 1");
            }
            if db.hold_ttl < Duration::from_secs(10) {
                bail!("hold_ttl_secs: must be at least 10");
            }
            if db.pool_size < 2 {
                bail!("database_pool_size: must be at least 2");
            }
            // The error names the key (`database_url: sslmode=…`) and
            // never echoes the URL, whose password it may hold.
            if let Err(e) = sharenet_ledger::pg::DatabaseUrl::parse(&db.url) {
                bail!(
                    "{e} (a PostgreSQL URL: postgresql://user:password@host:port/database?sslmode=verify-full&sslrootcert=ca.pem)"
                );
            }
        }
        Ok(())
    }
}

/// The commented config `sharenet-coordinator init` writes.
pub fn template(api_key: &str) -> String {
    format!(
        r#"# sharenet-coordinator configuration. Relative paths are relative to this file.

# The coordinator's ed25519 key; created on first start (mode 0600). It
# countersigns receipts, and the coordinator's PeerId derives from it.
identity_file = "coordinator.key"

# The ledger of countersigned receipts (sled).
data_dir = "data"

# Several coordinators behind one load balancer share their books in
# PostgreSQL (SHARENET_DATABASE_URL overrides). Without it the books are
# the embedded store in data_dir, which needs no set-up.
# database_url = "postgresql://sharenet:PASSWORD@localhost:5432/sharenet"
# TLS as libpq: add ?sslmode=verify-full&sslrootcert=/path/ca.pem (the
# default, prefer, encrypts when the server offers TLS but checks nothing).
# replicas = 2          # each replica enforces 1/replicas of every rate limit
# hold_ttl_secs = 600   # a dead replica's holds stop counting after this
#                       # (a live job's hold is renewed every fifth of it)

# The OpenAI-compatible HTTP API. Its /metrics is public and aggregated:
# no app ids, no app's requests, tokens or spend.
http_listen = "127.0.0.1:8080"

# The private metrics page, with per-app series (requests, tokens and spend
# by app): point Prometheus here. Keep it off the public network (loopback,
# or a port only your Prometheus can reach; several coordinators on one
# host need a port each); "" turns it off (the operator key still reads the
# same page at /operator/metrics).
metrics_listen = "127.0.0.1:9464"

# Reads of a builder's own books (receipts, proofs, statements, usage, the
# dashboard) per minute per API key; over it: 429 with Retry-After. 0: no limit.
builder_reads_per_minute = 300

# libp2p: nodes bootstrap from these (QUIC first, TCP as fallback).
p2p_listen = ["/ip4/0.0.0.0/udp/4000/quic-v1", "/ip4/0.0.0.0/tcp/4000"]
bootstrap = []

# Bearer keys of the "default" app (the operator API below creates apps
# and keys of their own; keys are stored hashed). SHARENET_API_KEYS
# (comma-separated) overrides. The default app starts with this balance.
api_keys = ["{api_key}"]
bootstrap_balance_nano_usd = 1000000000   # $1

# The network's fee on provider cost, in basis points (500 = 5%).
network_fee_bps = 500

# Settlement periods: calendar months in UTC unless this is set.
# settlement_period_secs = 86400

# Bearer key for /operator/* (apps, keys, top-ups, settlement).
# SHARENET_OPERATOR_KEY overrides; without one the operator API is off.
# operator_key = "op-change-me-to-something-long"

# Nodes tried per request before answering 503.
max_attempts = 3

# Relay for nodes behind NAT (libp2p circuit relay v2): they reserve a slot
# here and are reached through it until hole punching (DCUtR) connects
# them directly. Other coordinators find them through Kademlia.
relay = true

# Spot checks: this share of text jobs is re-run, greedy, on the serving
# node and on another node with the same weights hash, and the tokens and
# logprobs compared; a node caught serving other weights gets no traffic.
# The checks are paid by the operator's "spot-checks" app (top it up with
# POST /operator/apps/spot-checks/topup); it starts with the funding below.
spot_check_rate = 0.02
spot_check_funding_nano_usd = 100000000   # $0.10

# The network's price ceiling, nano-USD per token: a node's offer above it
# is not routable (and counted in sharenet_adverts_over_price_ceiling_total),
# so one absurd price cannot inflate every request's worst-case hold.
max_price_in_nano_usd = 1000000    # $1,000 per million prompt tokens
max_price_out_nano_usd = 1000000

# A node is full when it has as many of this coordinator's jobs as slots;
# the next job goes to another node. When every node is full, jobs wait in
# the nodes' own queues up to this many times their slots; 1 refuses at
# once (503 with Retry-After), the better choice under sustained overload.
spill_queue_factor = 5

# The model catalog: the models this network serves, by canonical id
# (OpenRouter-style slugs), with their tokenizer, chat template, context
# length, license and accepted weight digests. Manage it with
# `sharenet-coordinator catalog add|list|remove` or /operator/catalog.
# An advert for a model outside it is not routable (counted in
# sharenet_uncatalogued_adverts_total) unless allow_uncatalogued is on;
# then that model's usage is the node's word (usage.counted_by = "node").
# With replicas, give each the same catalog file.
# catalog_file = "data/catalog.json"   # the default: catalog.json in data_dir
allow_uncatalogued = false

[timeouts]
connect_ms = 5000       # opening a stream to a node
first_token_ms = 30000  # request sent -> first token
idle_ms = 30000         # longest gap between tokens

# Other names builders may use for a model (OpenRouter-style slugs):
# alias = the model's name on the network (a node's id, or the canonical
# name nodes advertise, which makes every node with those weights one market).
[aliases]
# "llama-3.1-8b" = "meta-llama/llama-3.1-8b-instruct:q4_k_m"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_typos_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, template("sk-sharenet-0123456789abcdef")).unwrap();
        let cfg = CoordinatorConfig::from_file(&path).unwrap();
        assert_eq!(cfg.timeouts.first_token, Duration::from_secs(30));
        assert!(dir.path().join("coordinator.key").exists());
        // Per-app metrics on loopback, builder reads limited, by default.
        assert_eq!(
            cfg.metrics_listen,
            Some(DEFAULT_METRICS_LISTEN.parse().unwrap())
        );
        assert_eq!(
            cfg.builder_reads_per_minute,
            DEFAULT_BUILDER_READS_PER_MINUTE
        );

        std::fs::write(
            &path,
            template("sk-sharenet-0123456789abcdef").replace("idle_ms", "idel_ms"),
        )
        .unwrap();
        let err = format!("{:#}", CoordinatorConfig::from_file(&path).unwrap_err());
        assert!(err.contains("idel_ms"), "{err}");
    }

    #[test]
    fn the_metrics_listener_is_loopback_unless_moved_or_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let with = |line: &str| {
            let text = template("sk-sharenet-0123456789abcdef").replace(
                &format!("metrics_listen = \"{DEFAULT_METRICS_LISTEN}\""),
                line,
            );
            std::fs::write(&path, text).unwrap();
            CoordinatorConfig::from_file(&path)
        };
        // Absent from the file: loopback.
        let absent = with("").unwrap();
        assert!(absent.metrics_listen.unwrap().ip().is_loopback());
        assert_eq!(with("metrics_listen = \"\"").unwrap().metrics_listen, None);
        let moved = with("metrics_listen = \"0.0.0.0:9464\"").unwrap();
        assert_eq!(moved.metrics_listen, Some("0.0.0.0:9464".parse().unwrap()));
        let err = format!("{:#}", with("metrics_listen = \"nope\"").unwrap_err());
        assert!(err.contains("metrics_listen"), "{err}");
    }

    #[test]
    fn a_database_url_is_checked_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let with = |extra: &str| {
            std::fs::write(
                &path,
                // Top-level keys go first: the template ends in a table.
                format!("{extra}\n{}", template("sk-sharenet-0123456789abcdef")),
            )
            .unwrap();
            CoordinatorConfig::from_file(&path)
        };
        assert!(with("").unwrap().database.is_none(), "embedded by default");
        let cfg =
            with("database_url = \"postgresql://u:secret-password@db:5432/books\"\nreplicas = 3")
                .unwrap();
        let db = cfg.database.unwrap();
        assert_eq!((db.replicas, db.hold_ttl), (3, Duration::from_secs(600)));
        let shown = effective(&path).unwrap();
        assert!(!shown.contains("secret-password"), "{shown}");
        for (extra, named) in [
            ("database_url = \"mysql:://nope nope\"", "database_url"),
            (
                "database_url = \"postgresql://db/x\"\nreplicas = 0",
                "replicas",
            ),
            (
                "database_url = \"postgresql://db/x\"\nhold_ttl_secs = 1",
                "hold_ttl_secs",
            ),
        ] {
            let err = format!("{:#}", with(extra).unwrap_err());
            assert!(err.contains(named), "{extra}: {err}");
        }
    }
}
