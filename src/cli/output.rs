//! How `keys` commands print: one JSON document with `--json`, readable text without.

use serde::Serialize;

use super::Failure;
use crate::control::store::{KeyEvent, Usage};
use crate::core::key::{KeyView, KeyWithSecret};

pub(super) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Runtime(e.to_string()))?;
    out!("{text}");
    Ok(())
}

pub(super) fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn created(created: &KeyWithSecret, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(created);
    }
    let key = &created.view;
    out!("Key {} ({}, {})", key.id, key.spec.name, key.spec.environment);
    out!("");
    out!("    {}", created.key);
    out!("");
    out!("Store this secret now: keygate does not keep it and will not show it again.");
    if let Some(until) = key.grace_until {
        out!("The previous secret keeps working until {until}.");
    }
    Ok(())
}

pub fn key(key: &KeyView, json: bool, verb: &str) -> Result<(), Failure> {
    if json {
        return print_json(key);
    }
    if !verb.is_empty() {
        out!("{verb} {}", key.id);
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
        (
            "status",
            match key.quarantined {
                true => format!(
                    "{} (quarantined: a secret was reported leaked; regenerate it)",
                    key.status
                ),
                false => key.status.to_string(),
            },
        ),
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
        (
            "quota",
            or_dash(
                key.spec
                    .quota
                    .map(|q| format!("{}/{} from {}", q.limit, q.period, q.anchor)),
            ),
        ),
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
        out!("{label:>13}  {value}");
    }
    Ok(())
}

pub fn list(keys: &[KeyView], json: bool) -> Result<(), Failure> {
    if json {
        return print_json(keys);
    }
    let rows = keys.iter().map(|key| {
        vec![
            key.id.clone(),
            key.spec.environment.to_string(),
            key.status.to_string(),
            key.prefix.clone(),
            or_dash(key.last_used_at),
            key.spec.name.clone(),
        ]
    });
    let header = ["ID", "ENVIRONMENT", "STATUS", "PREFIX", "LAST USED", "NAME"];
    for line in table(&header, rows.collect()) {
        out!("{line}");
    }
    Ok(())
}

/// Rows under a header, each column as wide as its widest cell (in characters) and two spaces
/// apart; the last column is not padded, so no line ends in spaces.
pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let header: Vec<String> = header.iter().map(|&cell| cell.to_owned()).collect();
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(header)
        .chain(rows)
        .map(|row| {
            let last = row.len().saturating_sub(1);
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, cell)| match i == last {
                    true => cell.clone(),
                    false => format!("{cell:<width$}", width = widths[i]),
                })
                .collect();
            cells.join("  ")
        })
        .collect()
}

pub fn deleted(id: &str, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::json!({ "id": id, "deleted": true }));
    }
    out!("Deleted {id}");
    Ok(())
}

pub fn usage(usage: &Usage, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(usage);
    }
    out!(
        "{}: {} request(s), last used {}",
        usage.key_id,
        usage.total_requests,
        or_dash(usage.last_used_at)
    );
    for day in &usage.days {
        out!("  {}  {}", day.date, day.requests);
    }
    Ok(())
}

pub fn events(events: &[KeyEvent], json: bool) -> Result<(), Failure> {
    if json {
        return print_json(events);
    }
    for event in events {
        let fields: Vec<&str> = event.changes.keys().map(String::as_str).collect();
        out!(
            "{}  {:<12} by {:<9} {}",
            event.at,
            event.event,
            event.actor,
            fields.join(", ")
        );
    }
    Ok(())
}

pub fn imported(count: u64, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::json!({ "imported": count }));
    }
    out!("Imported {count} key(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up_whatever_the_widths() {
        let rows = vec![
            vec!["a".to_owned(), "development".to_owned(), "x".to_owned()],
            vec!["a-much-longer-id".to_owned(), "é".to_owned(), "last".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "ENV", "NAME"], rows),
            [
                "ID                ENV          NAME",
                "a                 development  x",
                "a-much-longer-id  é            last",
            ]
        );
    }
}
