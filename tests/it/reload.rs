//! Config reloads (SIGHUP): their outcomes as metrics, the settings a reload cannot apply
//! named against what the gateway started with (issues 12 and 15), and what a reload refuses
//! or warns of because it would stop serving (issue 19).

use std::time::Duration;

use crate::support::{spec, ConfigEdit, Harness, RELOAD_FAILURES, RELOAD_SUCCESSES};
use keygate::core::environment::Environment;

const LAST_SUCCESS: &str = "keygate_config_last_reload_success_timestamp_seconds";

#[tokio::test]
async fn reload_outcomes_are_counted_and_the_last_success_is_timed() {
    let h = Harness::start().await;
    let started = h.clock_now().as_millisecond() as f64 / 1000.0;
    assert_eq!(h.metric(RELOAD_SUCCESSES).await, Some(0.0));
    assert_eq!(h.metric(RELOAD_FAILURES).await, Some(0.0));
    assert_eq!(h.metric(LAST_SUCCESS).await, Some(started), "the start counts");

    let good = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        good.edit("timeout = \"1s\"", "timeout = \"soon\""),
    )
    .unwrap();
    h.clock.advance(Duration::from_secs(60));
    let refused = h.gateway.reload_file(&h.config_path).unwrap_err().to_string();
    assert!(refused.contains("timeout"), "{refused}");
    assert_eq!(h.metric(RELOAD_FAILURES).await, Some(1.0));
    assert_eq!(h.metric(LAST_SUCCESS).await, Some(started));

    std::fs::write(&h.config_path, &good).unwrap();
    h.clock.advance(Duration::from_secs(60));
    h.gateway.reload_file(&h.config_path).unwrap();
    assert_eq!(h.metric(RELOAD_SUCCESSES).await, Some(1.0));
    assert_eq!(h.metric(RELOAD_FAILURES).await, Some(1.0));
    assert_eq!(h.metric(LAST_SUCCESS).await, Some(started + 120.0));
}

/// Issue 15: change `listen`, reload, restore it, reload: the second reload used to warn
/// "listen addresses changed" because it compared with the first reload's config, not with
/// what the gateway had bound.
#[tokio::test]
async fn a_restored_setting_needs_no_restart_on_the_next_reload() {
    let h = Harness::start().await;
    let original = std::fs::read_to_string(&h.config_path).unwrap();
    let moved = original
        .edit(
            "[server]\nlisten = \"127.0.0.1:0\"",
            "[server]\nlisten = \"127.0.0.1:1\"",
        )
        .edit("sqlite://keygate.db", "sqlite://other.db");
    for (text, restart_needed) in [
        (&moved, vec!["server.listen", "store.url"]),
        (&original, vec![]),
        (&moved, vec!["server.listen", "store.url"]),
        (&moved, vec!["server.listen", "store.url"]),
        (&original, vec![]),
    ] {
        std::fs::write(&h.config_path, text).unwrap();
        let reloaded = h.gateway.reload_file(&h.config_path).unwrap();
        assert_eq!(reloaded.restart_needed, restart_needed);
    }
    // What the listener was built from is named too; what a reload applies is not.
    for (edit, restart_needed) in [
        (
            ("[server]\n", "[server]\nidle_timeout = \"5s\"\n"),
            vec!["server.idle_timeout"],
        ),
        (("[server]\n", "[server]\nmax_uri_bytes = 100\n"), vec![]),
        (("timeout = \"1s\"", "timeout = \"2s\""), vec![]),
    ] {
        std::fs::write(&h.config_path, original.edit(edit.0, edit.1)).unwrap();
        let reloaded = h.gateway.reload_file(&h.config_path).unwrap();
        assert_eq!(reloaded.restart_needed, restart_needed, "{edit:?}");
    }
}

/// Issue 19, item 1: `: > gateway.toml` (or a write cut short), then SIGHUP, used to be
/// "config reloaded" and 404 for every request from then on.
#[tokio::test]
async fn a_file_emptied_or_cut_short_is_refused_and_the_routes_keep_serving() {
    let h = Harness::start().await;
    let (_, key) = h.key(&["*"]).await;
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
    let good = std::fs::read_to_string(&h.config_path).unwrap();
    let before_routes = &good[..good.find("[[route]]").unwrap()];
    let before_upstreams = &good[..good.find("[[upstream]]").unwrap()];
    for (n, (text, says)) in [
        ("", vec!["upstream: no [[upstream]]", "route: no [[route]]"]),
        (before_routes, vec!["route: no [[route]]"]),
        (
            before_upstreams,
            vec!["upstream: no [[upstream]]", "route: no [[route]]"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&h.config_path, text).unwrap();
        let refused = h.gateway.reload_file(&h.config_path).unwrap_err();
        let problems: Vec<String> = refused.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), says.len(), "{problems:?}");
        for (problem, says) in problems.iter().zip(says) {
            assert!(problem.starts_with(says), "{problem}");
        }
        assert_eq!(h.metric(RELOAD_FAILURES).await, Some(n as f64 + 1.0));
        assert_eq!(h.metric(RELOAD_SUCCESSES).await, Some(0.0));
        assert_eq!(
            h.get("/v1/status", &key).await.status,
            200,
            "the old routes serve"
        );
    }
    // The same config handed over in process is refused the same way.
    let empty = keygate::config::parse("", h.dir.path()).unwrap();
    assert!(h.gateway.reload(empty).is_err());
    assert_eq!(h.metric(RELOAD_FAILURES).await, Some(4.0));
    assert_eq!(h.get("/v1/status", &key).await.status, 200);
}

#[tokio::test]
async fn a_gateway_with_no_route_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygate::config::parse(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        dir.path(),
    )
    .unwrap();
    let options = keygate::gateway::Options {
        hasher: keygate::core::secret::Hasher::unkeyed(),
        admin_token: None,
        admin_read_token: None,
        clock: keygate::core::clock::system_clock(),
    };
    let refused = keygate::gateway::Gateway::start(config, options)
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("no [[route]]"), "{refused}");
}

/// A valid file that drops every route of an environment, or a route's permissions, is the
/// operator's to apply (retiring staging must not need a restart), but never silently: a file
/// cut short between two routes looks just like it.
#[tokio::test]
async fn a_reload_that_unroutes_an_environment_or_opens_a_route_says_so() {
    let h = Harness::start().await;
    let (_, staging) = h.create_key(spec(Environment::Staging, &[])).await;
    assert_eq!(h.get("/staging/customers", &staging).await.status, 200);
    let good = std::fs::read_to_string(&h.config_path).unwrap();
    let staging_route = "[[route]]\nname = \"staging-customers\"\npath = \"/staging/customers\"\nenvironment = \"staging\"\nupstream = \"api\"\n";
    let open =
        "permissions = { GET = \"customer:read\", HEAD = \"customer:read\", \"*\" = \"customer:write\" }\n";

    std::fs::write(&h.config_path, good.edit(staging_route, "")).unwrap();
    let reloaded = h.gateway.reload_file(&h.config_path).unwrap();
    assert_eq!(reloaded.environments_unrouted, vec![Environment::Staging]);
    assert!(reloaded.routes_opened.is_empty());
    assert_eq!(h.get("/staging/customers", &staging).await.status, 404);

    std::fs::write(&h.config_path, good.edit(open, "")).unwrap();
    let reloaded = h.gateway.reload_file(&h.config_path).unwrap();
    assert!(
        reloaded.environments_unrouted.is_empty(),
        "staging is routed again"
    );
    assert_eq!(reloaded.routes_opened, vec!["customers".to_owned()]);
    assert_eq!(h.get("/staging/customers", &staging).await.status, 200);
    assert_eq!(h.metric(RELOAD_SUCCESSES).await, Some(2.0));
}
