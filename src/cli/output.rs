//! How `keys` commands print: one JSON document with `--json`, readable text without.

use serde::Serialize;

use super::Failure;
use crate::control::store::{KeyEvent, Usage};
use crate::core::key::{KeyView, KeyWithSecret};

fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Runtime(e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn created(created: &KeyWithSecret, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(created);
    }
    let key = &created.view;
    println!("Key {} ({}, {})", key.id, key.spec.name, key.spec.environment);
    println!();
    println!("    {}", created.key);
    println!();
    println!("Store this secret now: keygate does not keep it and will not show it again.");
    if let Some(until) = key.grace_until {
        println!("The previous secret keeps working until {until}.");
    }
    Ok(())
}

pub fn key(key: &KeyView, json: bool, verb: &str) -> Result<(), Failure> {
    if json {
        return print_json(key);
    }
    if !verb.is_empty() {
        println!("{verb} {}", key.id);
    }
    let permissions: Vec<&str> = key.spec.permissions.iter().map(|p| p.as_str()).collect();
    let allowed: Vec<String> = key.spec.allowed_ips.iter().map(ToString::to_string).collect();
    let rate = key
        .spec
        .rate_limit
        .map(|r| format!("{} (burst {})", r.rate(), r.burst()))
        .unwrap_or_else(|| "gateway default".into());
    for (label, value) in [
        ("id", key.id.clone()),
        ("name", key.spec.name.clone()),
        ("environment", key.spec.environment.to_string()),
        ("status", key.status.to_string()),
        ("prefix", key.prefix.clone()),
        (
            "permissions",
            if permissions.is_empty() {
                "-".into()
            } else {
                permissions.join(", ")
            },
        ),
        ("rate limit", rate),
        ("customer", or_dash(key.spec.customer_id.as_ref())),
        (
            "allowed ips",
            if allowed.is_empty() {
                "any".into()
            } else {
                allowed.join(", ")
            },
        ),
        ("expires at", or_dash(key.spec.expires_at)),
        ("created at", key.created_at.to_string()),
        ("updated at", key.updated_at.to_string()),
        ("last used at", or_dash(key.last_used_at)),
        ("grace until", or_dash(key.grace_until)),
    ] {
        println!("{label:>13}  {value}");
    }
    Ok(())
}

pub fn list(keys: &[KeyView], json: bool) -> Result<(), Failure> {
    if json {
        return print_json(keys);
    }
    println!(
        "{:<26} {:<12} {:<8} {:<14} {:<22} NAME",
        "ID", "ENVIRONMENT", "STATUS", "PREFIX", "LAST USED"
    );
    for key in keys {
        println!(
            "{:<26} {:<12} {:<8} {:<14} {:<22} {}",
            key.id,
            key.spec.environment,
            key.status,
            key.prefix,
            or_dash(key.last_used_at),
            key.spec.name
        );
    }
    Ok(())
}

pub fn deleted(id: &str, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::json!({ "id": id, "deleted": true }));
    }
    println!("Deleted {id}");
    Ok(())
}

pub fn usage(usage: &Usage, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(usage);
    }
    println!(
        "{}: {} request(s), last used {}",
        usage.key_id,
        usage.total_requests,
        or_dash(usage.last_used_at)
    );
    for day in &usage.days {
        println!("  {}  {}", day.date, day.requests);
    }
    Ok(())
}

pub fn events(events: &[KeyEvent], json: bool) -> Result<(), Failure> {
    if json {
        return print_json(events);
    }
    for event in events {
        let fields: Vec<&str> = event.changes.keys().map(String::as_str).collect();
        println!(
            "{}  {:<12} by {:<9} {}",
            event.at,
            event.event,
            event.actor,
            fields.join(", ")
        );
    }
    Ok(())
}

pub fn imported(count: usize, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::json!({ "imported": count }));
    }
    println!("Imported {count} key(s)");
    Ok(())
}
