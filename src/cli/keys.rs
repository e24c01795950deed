//! `keygate keys ...`: key management against the store the config names, through the same key
//! service the admin API uses.

use std::io::Read;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use jiff::Timestamp;

use super::store::Create;
use super::{import, output};
use super::{Detailed, Failure};
use crate::control::keys::{KeyError, KeyPatch, KeyService, KeySpec, MAX_PAGE};
use crate::control::store::{Actor, KeyFilter};
use crate::core::clock::{system_clock, whole_second};
use crate::core::environment::Environment;
use crate::core::key::{KeyStatus, RateLimitSpec};
use crate::core::permission::Permission;
use crate::core::quota::{Period, QuotaRequest, MAX_QUOTA_LIMIT};
use crate::core::secret::Secret;
use crate::core::units::{parse_duration, parse_instant, Rate};
use crate::gateway::hasher_from_env;

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The gateway.toml whose store holds the keys.
    #[arg(long, short, global = true, env = "KEYGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Print exactly one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; its secret is printed this once.
    Create(CreateArgs),
    /// Import an existing secret (read from stdin) as a key.
    Import(CreateArgs),
    /// Import many existing secrets from a JSON Lines file, all or none: one object per line
    /// with key, name and environment, and optionally permissions, rate_limit, customer_id,
    /// allowed_ips, expires_at, metadata and quota (as in the admin API). Every bad line is
    /// reported.
    ImportFile {
        /// The JSON Lines file.
        file: PathBuf,
    },
    /// List keys, oldest first (deleted keys only with --status deleted).
    List {
        /// Only keys of this environment: production, staging or development (or prod, stg, dev).
        #[arg(long = "env", value_name = "ENV")]
        environment: Option<Environment>,
        /// Only keys in this status: active, revoked, expired, or deleted (listed only so).
        #[arg(long)]
        status: Option<KeyStatus>,
        /// Only keys limited to this customer.
        #[arg(long = "customer", value_name = "ID")]
        customer_id: Option<String>,
    },
    /// Show one key (a deleted one too).
    Show {
        /// The key's id (key_..., as keys list shows it).
        id: String,
    },
    /// Change a key's settings.
    Update(UpdateArgs),
    /// Give a key a new secret; the old one stops now, or after --grace.
    Regenerate {
        /// The key's id (key_..., as keys list shows it).
        id: String,
        /// How long the old secret keeps working, e.g. 10m (at most 30d).
        #[arg(long, value_parser = duration)]
        grace: Option<Duration>,
    },
    /// Disable a key (reversible with activate).
    Revoke {
        /// The key's id (key_..., as keys list shows it).
        id: String,
    },
    /// Re-enable a revoked key.
    Activate {
        /// The key's id (key_..., as keys list shows it).
        id: String,
    },
    /// Delete a key for good (its usage history stays).
    Delete {
        /// The key's id (key_..., as keys list shows it).
        id: String,
    },
    /// Request counts by day and last use.
    Usage {
        /// The key's id (key_..., as keys list shows it).
        id: String,
    },
    /// The key's audit trail: every change, who made it and when (kept after deletion).
    Events {
        /// The key's id (key_..., as keys list shows it).
        id: String,
    },
    /// Report a leaked secret (read from stdin) as a secret scanner would: leaks.action applies
    /// to its key (revoke by default), audited as leaked with the URL.
    ReportLeak(super::leaks::ReportLeakArgs),
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// What the key is for, shown in lists and logs, e.g. "Main Website".
    #[arg(long)]
    name: String,
    /// production, staging or development (or prod, stg, dev).
    #[arg(long = "env", value_name = "ENV")]
    environment: Environment,
    /// A permission the key holds, e.g. customer:read, license:* or *; repeatable.
    #[arg(long = "perm", value_name = "PERMISSION")]
    permissions: Vec<Permission>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    quota: QuotaArgs,
    /// Limit the key to this customer's resources.
    #[arg(long = "customer", value_name = "ID")]
    customer_id: Option<String>,
    /// Allow only clients in this CIDR (or IP); repeatable.
    #[arg(long = "allow-ip", value_name = "CIDR", value_parser = cidr)]
    allowed_ips: Vec<IpNet>,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Free JSON object stored with the key.
    #[arg(long, value_parser = metadata)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Args)]
struct LimitArgs {
    /// The key's own rate limit, e.g. 100/s or 6000/m (default: the gateway's).
    #[arg(long)]
    rate: Option<Rate>,
    /// Requests allowed at once (default: the rate's count).
    #[arg(long, requires = "rate")]
    burst: Option<NonZeroU32>,
}

impl LimitArgs {
    fn spec(&self) -> Option<RateLimitSpec> {
        self.rate.map(|rate| RateLimitSpec::from_rate(rate, self.burst))
    }
}

#[derive(Debug, Args)]
struct QuotaArgs {
    /// The key's quota: LIMIT/PERIOD, the period one of hour, day, week, month or none
    /// (credits an operator tops up), e.g. 100000/month.
    #[arg(long, value_name = "LIMIT/PERIOD", value_parser = quota)]
    quota: Option<(u64, Period)>,
    /// When the quota's periods start, an RFC 3339 instant (default: its creation; on update,
    /// the quota's current anchor).
    #[arg(long, value_parser = timestamp, requires = "quota")]
    quota_anchor: Option<Timestamp>,
}

impl QuotaArgs {
    fn request(&self) -> Option<QuotaRequest> {
        self.quota.map(|(limit, period)| QuotaRequest {
            limit,
            period,
            anchor: self.quota_anchor,
        })
    }
}

#[derive(Debug, Args)]
struct ExpiryArgs {
    /// When the key expires: an RFC 3339 instant, or a date (its midnight UTC).
    #[arg(long, value_parser = timestamp, conflicts_with = "expires_in")]
    expires_at: Option<Timestamp>,
    /// Expire the key this long from now, e.g. 30d.
    #[arg(long, value_parser = duration)]
    expires_in: Option<Duration>,
}

impl ExpiryArgs {
    fn instant(&self) -> Result<Option<Timestamp>, Failure> {
        match (self.expires_at, self.expires_in) {
            (Some(at), _) => Ok(Some(at)),
            (None, Some(duration)) => Timestamp::now()
                .checked_add(duration)
                .map(Some)
                .map_err(|_| Failure::Usage("--expires-in: too far in the future".into())),
            (None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The key's id (key_..., as keys list shows it).
    id: String,
    /// A new name for the key.
    #[arg(long)]
    name: Option<String>,
    /// Replaces the key's permissions; repeatable.
    #[arg(long = "perm", value_name = "PERMISSION")]
    permissions: Vec<Permission>,
    /// Remove every permission.
    #[arg(long, conflicts_with = "permissions")]
    no_perms: bool,
    #[command(flatten)]
    limits: LimitArgs,
    /// Go back to the gateway's default rate limit.
    #[arg(long, conflicts_with = "rate")]
    default_rate: bool,
    #[command(flatten)]
    quota: QuotaArgs,
    /// Remove the key's quota.
    #[arg(long, conflicts_with = "quota")]
    no_quota: bool,
    /// Limit the key to this customer's resources (replaces its customer).
    #[arg(long = "customer", value_name = "ID")]
    customer_id: Option<String>,
    /// Lift the customer scope.
    #[arg(long, conflicts_with = "customer_id")]
    no_customer: bool,
    /// Replaces the allowed CIDRs; repeatable.
    #[arg(long = "allow-ip", value_name = "CIDR", value_parser = cidr)]
    allowed_ips: Vec<IpNet>,
    /// Allow every client IP.
    #[arg(long, conflicts_with = "allowed_ips")]
    any_ip: bool,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Remove the expiry.
    #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
    no_expiry: bool,
    /// Replaces the key's metadata with this JSON object ('{}' clears it).
    #[arg(long, value_parser = metadata)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

pub(super) fn timestamp(text: &str) -> Result<Timestamp, String> {
    parse_instant(text).map_err(|e| e.to_string())
}

/// `LIMIT/PERIOD`, e.g. `100000/month`.
pub(super) fn quota(text: &str) -> Result<(u64, Period), String> {
    let (limit, period) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not LIMIT/PERIOD like 100000/month"))?;
    let limit = limit
        .parse::<u64>()
        .ok()
        .filter(|limit| (1..=MAX_QUOTA_LIMIT).contains(limit))
        .ok_or_else(|| format!("the limit {limit:?} is not a whole number from 1 to {MAX_QUOTA_LIMIT}"))?;
    Ok((limit, period.parse()?))
}

fn cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR like 10.0.0.0/8 or an IP address"))
}

pub(super) fn metadata(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    serde_json::from_str(text).map_err(|e| format!("metadata must be a JSON object: {e}"))
}

impl From<KeyError> for Failure {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Invalid { field, .. } => Failure::Detailed(Box::new(Detailed {
                usage: true,
                message: error.to_string(),
                notes: Vec::new(),
                detail: [("field".to_owned(), field.into())].into_iter().collect(),
            })),
            other => Failure::Runtime(other.to_string()),
        }
    }
}

impl KeysArgs {
    /// Whether the command is to print one JSON document, failed or not.
    pub fn json(&self) -> bool {
        self.json
    }
}

pub fn run(args: KeysArgs) -> Result<(), Failure> {
    let path = args
        .config
        .ok_or_else(|| Failure::Usage("--config FILE is required (or set KEYGATE_CONFIG)".into()))?;
    let config = super::load(&path)?;
    let hasher = hasher_from_env(&config)?;
    // The commands that add keys may make the store they add them to; the rest need one.
    let create = match args.command {
        KeysCommand::Create(_) | KeysCommand::Import(_) | KeysCommand::ImportFile { .. } => Create::IfMissing,
        _ => Create::Never,
    };
    let store = super::store::open(&config, &path, create)?;
    let service = KeyService::new(store.clone(), hasher, system_clock(), Actor::Cli);
    let json = args.json;
    match args.command {
        KeysCommand::Create(create) => {
            let created = service.create(spec(create)?)?;
            output::created(&created, json)
        }
        KeysCommand::Import(create) => {
            let secret = read_secret()?;
            let view = service.import(spec(create)?, secret)?;
            output::key(&view, json, "Imported")
        }
        KeysCommand::ImportFile { file } => {
            let imported = import::import_file(&service, &file)?;
            output::imported(imported, json)
        }
        KeysCommand::List {
            environment,
            status,
            customer_id,
        } => {
            let filter = KeyFilter {
                environment,
                status,
                customer_id,
            };
            output::list(&service.list(&filter)?, json)
        }
        KeysCommand::Show { id } => output::key(&service.get_any(&id)?, json, ""),
        KeysCommand::Update(update) => {
            let id = update.id.clone();
            output::key(&service.update(&id, patch(update)?)?, json, "Updated")
        }
        KeysCommand::Regenerate { id, grace } => output::created(&service.regenerate(&id, grace)?, json),
        KeysCommand::Revoke { id } => output::key(&service.revoke(&id)?, json, "Revoked"),
        KeysCommand::Activate { id } => output::key(&service.activate(&id)?, json, "Activated"),
        KeysCommand::Delete { id } => {
            service.delete(&id)?;
            output::deleted(&id, json)
        }
        KeysCommand::Usage { id } => output::usage(&service.usage(&id)?, json),
        KeysCommand::ReportLeak(report) => super::leaks::report_leak(report, &config, store, json),
        KeysCommand::Events { id } => {
            let mut events = Vec::new();
            let mut after = 0;
            loop {
                let (page, next) = service.events(&id, after, MAX_PAGE)?;
                events.extend(page);
                match next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            output::events(&events, json)
        }
    }
}

fn spec(args: CreateArgs) -> Result<KeySpec, Failure> {
    Ok(KeySpec {
        name: args.name,
        environment: args.environment,
        permissions: args.permissions,
        rate_limit: args.limits.spec(),
        customer_id: args.customer_id,
        allowed_ips: args.allowed_ips,
        expires_at: args.expiry.instant()?,
        metadata: args.metadata.unwrap_or_default(),
        quota: args
            .quota
            .request()
            .map(|quota| quota.anchored(whole_second(Timestamp::now()))),
    })
}

fn patch(args: UpdateArgs) -> Result<KeyPatch, Failure> {
    Ok(KeyPatch {
        name: args.name,
        permissions: match (args.no_perms, args.permissions.is_empty()) {
            (true, _) => Some(Vec::new()),
            (false, false) => Some(args.permissions),
            (false, true) => None,
        },
        rate_limit: args.limits.spec().map(Some).or(clear_if(args.default_rate)),
        customer_id: args.customer_id.map(Some).or(clear_if(args.no_customer)),
        allowed_ips: match (args.any_ip, args.allowed_ips.is_empty()) {
            (true, _) => Some(Vec::new()),
            (false, false) => Some(args.allowed_ips),
            (false, true) => None,
        },
        expires_at: args.expiry.instant()?.map(Some).or(clear_if(args.no_expiry)),
        metadata: args.metadata,
        quota: args.quota.request().map(Some).or(clear_if(args.no_quota)),
    })
}

/// `Some(None)` (clear the field) when the flag is given.
fn clear_if<T>(flag: bool) -> Option<Option<T>> {
    flag.then_some(None)
}

/// The secret to import: the first line of stdin, without its line ending.
fn read_secret() -> Result<Secret, Failure> {
    Secret::import(read_line("import")?).map_err(Failure::Usage)
}

/// The first line of stdin without its line ending, for `command`; empty is a usage error.
pub(super) fn read_line(command: &str) -> Result<String, Failure> {
    let mut input = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut input)
        .map_err(|e| Failure::Runtime(format!("cannot read the secret from stdin: {e}")))?;
    let line = input
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .to_owned();
    if line.is_empty() {
        return Err(Failure::Usage(format!(
            "{command} reads the secret from stdin, and stdin was empty"
        )));
    }
    Ok(line)
}
