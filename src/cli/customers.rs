//! `keygate customers ...`: customers (SPEC 11) in the store the config names, running gateway
//! or not, through the same customer service the admin API uses. Same conventions as `keygate
//! keys`: `--json` prints exactly one JSON document (the customer object, an array for `list`,
//! an error document on failure).
//!
//! A customer's quota counters live in the limiter that enforces them (a gateway's memory, or
//! Redis), not in the store: a top-up or reset goes through the admin API
//! (`POST /v1/customers/{id}/quota`), which reaches them.

use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use jiff::Timestamp;

use super::keys::{metadata, quota, timestamp};
use super::output::{or_dash, print_json, table};
use super::store::Create;
use super::{Detailed, Failure};
use crate::control::customers::{
    CustomerError, CustomerPatch, CustomerRequest, CustomerService, CustomerView,
};
use crate::control::store::{Actor, CustomerEvent};
use crate::core::clock::system_clock;
use crate::core::key::RateLimitSpec;
use crate::core::quota::{Period, QuotaRequest};
use crate::core::units::Rate;

#[derive(Debug, Args)]
pub struct CustomersArgs {
    /// The gateway.toml whose store holds the customers.
    #[arg(long, short, global = true, env = "KEYGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Print exactly one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CustomersCommand,
}

#[derive(Debug, Subcommand)]
enum CustomersCommand {
    /// Create a customer: the id its keys name as their customer (--customer ID).
    Create(CreateArgs),
    /// List customers, oldest first.
    List,
    /// Show one customer.
    Show {
        /// The customer's id.
        id: String,
    },
    /// Change a customer's settings.
    Update(UpdateArgs),
    /// Delete a customer; refused while keys name it.
    Delete {
        /// The customer's id.
        id: String,
    },
    /// The customer's audit trail: every change, who made it and when (kept after deletion).
    Events {
        /// The customer's id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The customer's id, as its keys name it, e.g. acme (no '/').
    id: String,
    /// What the customer is called (default: its id).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Free JSON object stored with the customer.
    #[arg(long, value_parser = metadata)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Args)]
struct LimitArgs {
    /// A rate limit all of the customer's keys share, e.g. 100/s, on top of each key's own.
    #[arg(long)]
    rate: Option<Rate>,
    /// Requests allowed at once (default: the rate's count).
    #[arg(long, requires = "rate")]
    burst: Option<NonZeroU32>,
    /// A quota all of the customer's keys share: LIMIT/PERIOD, the period one of hour, day,
    /// week, month or none (credits an operator tops up), e.g. 100000/month.
    #[arg(long, value_name = "LIMIT/PERIOD", value_parser = quota)]
    quota: Option<(u64, Period)>,
    /// When the quota's periods start, an RFC 3339 instant (default: its creation; on update,
    /// the quota's current anchor).
    #[arg(long, value_parser = timestamp, requires = "quota")]
    quota_anchor: Option<Timestamp>,
}

impl LimitArgs {
    fn rate(&self) -> Option<RateLimitSpec> {
        self.rate.map(|rate| RateLimitSpec::from_rate(rate, self.burst))
    }

    fn quota(&self) -> Option<QuotaRequest> {
        self.quota.map(|(limit, period)| QuotaRequest {
            limit,
            period,
            anchor: self.quota_anchor,
        })
    }
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// The customer's id.
    id: String,
    /// A new name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Remove the customer's rate limit.
    #[arg(long, conflicts_with = "rate")]
    no_rate: bool,
    /// Remove the customer's quota.
    #[arg(long, conflicts_with = "quota")]
    no_quota: bool,
    /// Replaces the customer's metadata with this JSON object ('{}' clears it).
    #[arg(long, value_parser = metadata)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CustomersArgs {
    /// Whether the command is to print one JSON document, failed or not.
    pub fn json(&self) -> bool {
        self.json
    }
}

impl From<CustomerError> for Failure {
    fn from(error: CustomerError) -> Self {
        match error {
            CustomerError::Invalid { field, .. } => Failure::Detailed(Box::new(Detailed {
                usage: true,
                message: error.to_string(),
                notes: Vec::new(),
                detail: [("field".to_owned(), field.into())].into_iter().collect(),
            })),
            other => Failure::Runtime(other.to_string()),
        }
    }
}

pub fn run(args: CustomersArgs) -> Result<(), Failure> {
    let path = args
        .config
        .ok_or_else(|| Failure::Usage("--config FILE is required (or set KEYGATE_CONFIG)".into()))?;
    let config = super::load(&path)?;
    let create = match args.command {
        CustomersCommand::Create(_) => Create::IfMissing,
        _ => Create::Never,
    };
    let store = super::store::open(&config, &path, create)?;
    let customers = CustomerService::new(store, system_clock(), Actor::Cli);
    let json = args.json;
    match args.command {
        CustomersCommand::Create(create) => {
            let request = CustomerRequest {
                rate_limit: create.limits.rate(),
                quota: create.limits.quota(),
                id: create.id,
                name: create.name,
                metadata: create.metadata.unwrap_or_default(),
            };
            customer(&customers.create(request)?, json, "Created")
        }
        CustomersCommand::List => list(&customers.list()?, json),
        CustomersCommand::Show { id } => customer(&customers.get(&id)?, json, ""),
        CustomersCommand::Update(update) => {
            let id = update.id.clone();
            customer(&customers.update(&id, patch(update))?, json, "Updated")
        }
        CustomersCommand::Delete { id } => {
            customers.delete(&id)?;
            match json {
                true => print_json(&serde_json::json!({ "id": id, "deleted": true })),
                false => {
                    out!("Deleted {id}");
                    Ok(())
                }
            }
        }
        CustomersCommand::Events { id } => events(&customers, &id, json),
    }
}

fn patch(args: UpdateArgs) -> CustomerPatch {
    CustomerPatch {
        name: args.name,
        rate_limit: args.limits.rate().map(Some).or(args.no_rate.then_some(None)),
        quota: args.limits.quota().map(Some).or(args.no_quota.then_some(None)),
        metadata: args.metadata,
    }
}

fn events(customers: &CustomerService, id: &str, json: bool) -> Result<(), Failure> {
    let mut all: Vec<CustomerEvent> = Vec::new();
    let mut after = 0;
    loop {
        let (page, next) = customers.events(id, after, crate::control::keys::MAX_PAGE)?;
        all.extend(page);
        match next {
            Some(next) => after = next,
            None => break,
        }
    }
    if json {
        return print_json(&all);
    }
    for event in &all {
        let fields: Vec<&str> = event.changes.keys().map(String::as_str).collect();
        out!(
            "{}  {:<15} by {:<9} {}",
            event.at,
            event.event,
            event.actor,
            fields.join(", ")
        );
    }
    Ok(())
}

fn customer(customer: &CustomerView, json: bool, verb: &str) -> Result<(), Failure> {
    if json {
        return print_json(customer);
    }
    if !verb.is_empty() {
        out!("{verb} {}", customer.id);
    }
    for (label, value) in [
        ("id", customer.id.clone()),
        ("name", customer.name.clone()),
        ("rate limit", or_dash(rate_text(customer))),
        ("quota", or_dash(quota_text(customer))),
        (
            "metadata",
            serde_json::Value::Object(customer.metadata.clone()).to_string(),
        ),
        ("created at", customer.created_at.to_string()),
        ("updated at", customer.updated_at.to_string()),
    ] {
        out!("{label:>10}  {value}");
    }
    Ok(())
}

fn rate_text(customer: &CustomerView) -> Option<String> {
    customer
        .rate_limit
        .map(|r| format!("{} (burst {})", r.rate(), r.burst()))
}

fn quota_text(customer: &CustomerView) -> Option<String> {
    customer
        .quota
        .map(|q| format!("{}/{} from {}", q.limit, q.period, q.anchor))
}

fn list(customers: &[CustomerView], json: bool) -> Result<(), Failure> {
    if json {
        return print_json(customers);
    }
    let rows = customers.iter().map(|customer| {
        vec![
            customer.id.clone(),
            or_dash(rate_text(customer)),
            or_dash(quota_text(customer)),
            customer.name.clone(),
        ]
    });
    for line in table(&["ID", "RATE LIMIT", "QUOTA", "NAME"], rows.collect()) {
        out!("{line}");
    }
    Ok(())
}
