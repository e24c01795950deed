//! Validation of `[[upstream]]` and `[[route]]` tables: URLs, compiled path patterns, upstream
//! references, permission maps, and the clashes between routes that would make one unreachable.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::{Method, Uri};
use toml::Spanned;

use super::raw::{Field, RawRoute, RawUpstream};
use super::upstream_tls::upstream_tls;
use super::validate::Checker;
use super::Problem;
use super::{Config, PathPattern, Route, RoutePermissions, Segment, Upstream, DEFAULT_COST};
use crate::core::environment::Environment;
use crate::core::permission::Permission;

/// The most `pool_max_connections` may be: past it the cap protects nothing.
const MAX_CONNECTIONS: u64 = 1_000_000;

/// How a table is named in messages: by its `name` when it has one, else by position.
fn label(kind: &str, name: &Field<String>, index: usize) -> String {
    match name {
        Some(name) => format!("{kind} {:?}", name.get_ref()),
        None => format!("{kind} #{}", index + 1),
    }
}

/// Reports a missing required field at the table's own position.
fn required<'a, T>(
    checker: &mut Checker,
    value: &'a Field<T>,
    table: &Spanned<impl Sized>,
    field: String,
) -> Option<&'a T> {
    if value.is_none() {
        checker.fail(&table.span(), &field, "is required");
    }
    value.as_ref().map(Spanned::get_ref)
}

fn check_name(checker: &mut Checker, name: &Field<String>, label: &str, seen: &mut HashSet<String>) {
    let Some(name) = name else { return };
    let text = name.get_ref();
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        checker.fail(
            &name.span(),
            &format!("{label}.name"),
            "must be non-empty: letters, digits, - _ .",
        );
    } else if !seen.insert(text.clone()) {
        checker.fail(
            &name.span(),
            &format!("{label}.name"),
            format!("{text:?} is used twice"),
        );
    }
}

/// What keeps a valid file from serving anything: no route (every request would be a 404), or
/// no upstream (no route could name one). `check`, `serve` and every reload refuse it; an empty
/// file or one cut short by a non-atomic write is the usual cause. Not part of
/// [`super::parse`]: the `keys` and `store` commands serve nothing and take such a file.
pub fn serving_problems(config: &Config) -> Vec<Problem> {
    let missing = |field: &str, message: &str| Problem {
        line: None,
        column: None,
        field: field.to_owned(),
        message: format!("{message} (is the file empty, or cut short?)"),
    };
    let mut problems = Vec::new();
    if config.upstreams.is_empty() {
        problems.push(missing(
            "upstream",
            "no [[upstream]]: a gateway needs at least one to forward to",
        ));
    }
    if config.routes.is_empty() {
        problems.push(missing(
            "route",
            "no [[route]]: every request would be answered 404 \"no route\"; a gateway needs at least one",
        ));
    }
    problems
}

pub(super) fn upstreams(
    checker: &mut Checker,
    raw: &[Spanned<RawUpstream>],
    base_dir: &Path,
) -> Vec<Upstream> {
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(index, table)| {
            let upstream = table.get_ref();
            let label = label("upstream", &upstream.name, index);
            check_name(checker, &upstream.name, &label, &mut seen);
            required(checker, &upstream.name, table, format!("{label}.name"));
            let url = required(checker, &upstream.url, table, format!("{label}.url"));
            let url = url
                .and_then(|_| {
                    checker.parsed(&upstream.url, &format!("{label}.url"), |text| upstream_url(text))
                })
                .unwrap_or_else(|| Uri::from_static("http://127.0.0.1"));
            let field = |name: &str| format!("{label}.{name}");
            let tls = upstream_tls(checker, upstream, &label, &url, base_dir);
            let timeout =
                checker.duration_or(&upstream.timeout, &field("timeout"), Upstream::DEFAULT_TIMEOUT);
            let queue_timeout = queue_timeout(checker, upstream, &field("queue_timeout"), timeout);
            Upstream {
                name: upstream
                    .name
                    .as_ref()
                    .map_or_else(String::new, |n| n.get_ref().clone()),
                url,
                tls,
                connect_timeout: checker.duration_or(
                    &upstream.connect_timeout,
                    &field("connect_timeout"),
                    Upstream::DEFAULT_CONNECT_TIMEOUT,
                ),
                timeout,
                queue_timeout,
                pool_max_connections: checker
                    .count(
                        &upstream.pool_max_connections,
                        &field("pool_max_connections"),
                        MAX_CONNECTIONS,
                    )
                    .map_or(Upstream::DEFAULT_POOL_MAX_CONNECTIONS, |n| n as usize),
                pool_max_idle: checker
                    .parsed(&upstream.pool_max_idle, &field("pool_max_idle"), |&n| {
                        usize::try_from(n).map_err(|_| "is too large")
                    })
                    .unwrap_or(Upstream::DEFAULT_POOL_MAX_IDLE),
                pool_idle_timeout: checker.duration_or(
                    &upstream.pool_idle_timeout,
                    &field("pool_idle_timeout"),
                    Upstream::DEFAULT_POOL_IDLE_TIMEOUT,
                ),
            }
        })
        .collect()
}

fn queue_timeout(checker: &mut Checker, upstream: &RawUpstream, field: &str, timeout: Duration) -> Duration {
    let default = Upstream::DEFAULT_QUEUE_TIMEOUT.min(timeout / 2);
    checker
        .parsed(&upstream.queue_timeout, field, |text| {
            match crate::core::units::parse_duration(text) {
                Ok(wait) if wait.is_zero() => Err("must be longer than zero".to_owned()),
                // A wait as long as the response timeout would always end in a 504 instead.
                Ok(wait) if wait >= timeout => Err(format!("must be shorter than timeout ({timeout:?})")),
                Ok(wait) => Ok(wait),
                Err(error) => Err(error.to_string()),
            }
        })
        .unwrap_or(default)
}

/// `http[s]://host[:port][/prefix]`, stored without a trailing slash.
fn upstream_url(text: &str) -> Result<Uri, String> {
    let uri = Uri::from_str(text.trim())
        .map_err(|_| format!("{text:?} is not a URL like \"http://127.0.0.1:7001\""))?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        _ => return Err(format!("{text:?} must start with http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| format!("{text:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in the upstream URL are not supported".into());
    }
    if authority.host().is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if uri.query().is_some() {
        return Err("an upstream URL cannot have a query".into());
    }
    let prefix = uri.path().trim_end_matches('/');
    Uri::from_str(&format!("{scheme}://{authority}{prefix}")).map_err(|e| e.to_string())
}

pub(super) fn routes(
    checker: &mut Checker,
    raw: &[Spanned<RawRoute>],
    upstreams: &[Upstream],
    default_environment: Environment,
) -> Vec<Route> {
    let mut seen = HashSet::new();
    let mut shapes: Vec<(Option<String>, Vec<Option<String>>, String)> = Vec::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (index, table) in raw.iter().enumerate() {
        let route = table.get_ref();
        let label = label("route", &route.name, index);
        let field = |name: &str| format!("{label}.{name}");
        check_name(checker, &route.name, &label, &mut seen);
        required(checker, &route.name, table, field("name"));
        required(checker, &route.path, table, field("path"));
        required(checker, &route.upstream, table, field("upstream"));
        let path = checker.parsed(&route.path, &field("path"), |text| path_pattern(text));
        let host = checker.parsed(&route.host, &field("host"), |text| host(text));
        let upstream = checker.parsed(&route.upstream, &field("upstream"), |name| {
            upstreams
                .iter()
                .position(|u| &u.name == name)
                .ok_or_else(|| format!("no upstream named {name:?}"))
        });
        let environment = checker
            .parsed(&route.environment, &field("environment"), |text| {
                Environment::from_str(text)
            })
            .unwrap_or(default_environment);
        let customer_param = path.as_ref().and_then(|path| {
            checker.parsed(&route.customer_param, &field("customer_param"), |name| {
                path.segments
                    .iter()
                    .position(|s| matches!(s, Segment::Param(p) if p == name))
                    .ok_or_else(|| format!("the path {:?} has no {{{name}}} segment", path.source))
            })
        });
        let permissions = route
            .permissions
            .as_ref()
            .and_then(|map| route_permissions(checker, map, &field("permissions")));
        let cost = checker
            .count(&route.cost, &field("cost"), u32::MAX.into())
            .and_then(|cost| NonZeroU32::new(u32::try_from(cost).ok()?))
            .unwrap_or(DEFAULT_COST);
        let (Some(path), Some(upstream)) = (path, upstream) else {
            continue;
        };
        let shape = (
            host.clone(),
            path.segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => Some(l.clone()),
                    Segment::Param(_) => None,
                })
                .collect(),
            label.clone(),
        );
        if let Some((_, _, other)) = shapes.iter().find(|(h, s, _)| *h == shape.0 && *s == shape.1) {
            let span = route.path.as_ref().map_or(table.span(), Spanned::span);
            let message = format!("has the same host and path as {other}, so one could never match");
            checker.fail(&span, &field("path"), message);
        }
        shapes.push(shape);
        routes.push(Route {
            name: route
                .name
                .as_ref()
                .map_or_else(String::new, |n| n.get_ref().clone()),
            host,
            path,
            environment,
            upstream,
            customer_param,
            permissions,
            forward_credentials: route.forward_credentials.as_ref().is_some_and(|v| *v.get_ref()),
            preserve_host: route.preserve_host.as_ref().is_some_and(|v| *v.get_ref()),
            allow_method_override: route.allow_method_override.as_ref().is_some_and(|v| *v.get_ref()),
            cost,
        });
    }
    routes
}

fn host(text: &str) -> Result<String, String> {
    let host = text.trim().to_ascii_lowercase();
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if valid {
        Ok(host)
    } else {
        Err(format!(
            "{text:?} must be a host name without port or path, e.g. \"api.example.com\""
        ))
    }
}

/// Characters a literal segment may hold: RFC 3986 unreserved and sub-delims, `:` and `@`.
/// No `%`: the gateway matches normalized paths, and an escape would never equal one.
fn literal_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

pub(crate) fn path_pattern(text: &str) -> Result<PathPattern, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with \"/\""));
    }
    let mut segments = Vec::new();
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    for part in trimmed.split('/').skip(1) {
        let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name)
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                if segments.contains(&Segment::Param(name.to_owned())) {
                    return Err(format!("{text:?} names {{{name}}} twice"));
                }
                Segment::Param(name.to_owned())
            }
            Some(_) => {
                return Err(format!(
                    "{text:?}: a parameter is {{name}} with letters, digits and _"
                ))
            }
            None if part.is_empty() => return Err(format!("{text:?} has an empty segment (\"//\")")),
            None if part == "." || part == ".." => return Err(format!("{text:?} has a dot segment")),
            None if !part.bytes().all(literal_char) => {
                return Err(format!(
                    "{text:?}: segment {part:?} has a character that must not appear in a path"
                ))
            }
            None => Segment::Literal(part.to_owned()),
        };
        segments.push(segment);
    }
    Ok(PathPattern {
        segments,
        source: text.to_owned(),
    })
}

fn route_permissions(
    checker: &mut Checker,
    map: &Spanned<std::collections::BTreeMap<String, Spanned<String>>>,
    field: &str,
) -> Option<RoutePermissions> {
    let mut permissions = RoutePermissions {
        by_method: Vec::new(),
        fallback: None,
    };
    if map.get_ref().is_empty() {
        checker.fail(
            &map.span(),
            field,
            "must map at least one method (or \"*\") to a permission; leave it out to admit any key",
        );
        return None;
    }
    for (method, required) in map.get_ref() {
        let Some(permission) =
            checker.parsed(&Some(required.clone()), field, |text| Permission::from_str(text))
        else {
            continue;
        };
        if method == "*" {
            permissions.fallback = Some(permission);
            continue;
        }
        let upper = method.to_ascii_uppercase();
        let Some(method) = Method::from_bytes(upper.as_bytes())
            .ok()
            .filter(|_| is_token(&upper))
        else {
            checker.fail(
                &required.span(),
                field,
                format!("{method:?} is not an HTTP method"),
            );
            continue;
        };
        if permissions.by_method.iter().any(|(m, _)| *m == method) {
            checker.fail(&required.span(), field, format!("{method} is listed twice"));
            continue;
        }
        permissions.by_method.push((method, permission));
    }
    Some(permissions)
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}
