//! The digest of a config that replicas compare (SPEC 12): BLAKE3 of the effective config
//! ([`super::effective`], whose secrets are already redacted), less what differs from replica
//! to replica by design: the listen addresses, `admin.advertise` (and its environment form),
//! `store.snapshot` (a file of each replica's own), and the addresses of shared services,
//! which carry credentials and which replicas may reach by other names (the store's URL, the
//! Redis URL, the trace collector's). Two replicas with the same digest serve the same routes,
//! keys and limits.

use super::effective::Effective;
use super::Config;

/// The settings left out of the digest: `(section, name)`.
const PER_REPLICA: [(&str, &str); 8] = [
    ("server", "listen"),
    ("admin", "listen"),
    ("admin", "advertise"),
    ("admin", "advertise_env"),
    ("store", "snapshot"),
    ("store", "url"),
    ("rate_limit", "redis_url"),
    ("tracing", "otlp_endpoint"),
];

/// 16 hex digits of BLAKE3 over the effective config without [`PER_REPLICA`], its keys
/// sorted.
pub fn config_digest(config: &Config) -> String {
    let mut value = serde_json::to_value(Effective::of(config)).unwrap_or_default();
    for (section, name) in PER_REPLICA {
        if let Some(table) = value.get_mut(section).and_then(|t| t.as_object_mut()) {
            table.remove(name);
        }
    }
    let hash = blake3::hash(value.to_string().as_bytes());
    hash.to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let text = format!(
            "{text}\n[[upstream]]\nname = \"api\"\nurl = \"http://127.0.0.1:7001\"\n\
             [[route]]\nname = \"api\"\npath = \"/\"\nupstream = \"api\"\n"
        );
        super::super::parse(&text, std::path::Path::new("/etc/keygate")).unwrap()
    }

    #[test]
    fn replicas_that_differ_only_in_their_addresses_have_one_digest() {
        let a = config("[server]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9901\"\n");
        let b = config(
            "[server]\nlisten = \"0.0.0.0:80\"\n[admin]\nlisten = \"10.0.0.2:9901\"\nadvertise = \"http://10.0.0.2\"\n",
        );
        assert_eq!(config_digest(&a), config_digest(&b));
        assert_eq!(config_digest(&a).len(), 16);
    }

    #[test]
    fn the_shared_services_reached_by_another_name_or_credential_are_one_digest() {
        let a = config(
            "[store]\nurl = \"postgres://keygate:one@db-1.internal/keygate\"\n\
             [rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://10.0.0.9:6379\"\n\
             [tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\n",
        );
        let b = config(
            "[store]\nurl = \"postgres://keygate:two@db.service.consul/keygate\"\n\
             [rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://redis.internal:6379\"\n\
             [tracing]\notlp_endpoint = \"http://otel-agent:4318\"\n",
        );
        assert_eq!(config_digest(&a), config_digest(&b));
        let c = config("[admin]\nadvertise_env = \"POD_IP\"\n");
        assert_eq!(config_digest(&c), config_digest(&config("")));
    }

    #[test]
    fn a_different_limit_is_a_different_digest() {
        let a = config("[rate_limit]\ndefault = \"100/s\"\n");
        let b = config("[rate_limit]\ndefault = \"101/s\"\n");
        assert_ne!(config_digest(&a), config_digest(&b));
    }
}
