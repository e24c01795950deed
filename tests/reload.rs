//! Config reloads (SIGHUP): their outcomes as metrics, and the settings a reload cannot apply
//! named against what the gateway started with (issues 12 and 15).

mod support;

use std::time::Duration;

use support::{sample, Harness};

async fn metric(h: &Harness, series: &str) -> Option<f64> {
    sample(&h.metrics().await, series)
}

const SUCCESSES: &str = r#"keygate_config_reloads_total{result="success"}"#;
const FAILURES: &str = r#"keygate_config_reloads_total{result="failure"}"#;
const LAST_SUCCESS: &str = "keygate_config_last_reload_success_timestamp_seconds";

#[tokio::test]
async fn reload_outcomes_are_counted_and_the_last_success_is_timed() {
    let h = Harness::start().await;
    let started = h.clock_now().as_millisecond() as f64 / 1000.0;
    assert_eq!(metric(&h, SUCCESSES).await, Some(0.0));
    assert_eq!(metric(&h, FAILURES).await, Some(0.0));
    assert_eq!(metric(&h, LAST_SUCCESS).await, Some(started), "the start counts");

    let good = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        good.replace("timeout = \"1s\"", "timeout = \"soon\""),
    )
    .unwrap();
    h.clock.advance(Duration::from_secs(60));
    let refused = h.gateway.reload_file(&h.config_path).unwrap_err().to_string();
    assert!(refused.contains("timeout"), "{refused}");
    assert_eq!(metric(&h, FAILURES).await, Some(1.0));
    assert_eq!(metric(&h, LAST_SUCCESS).await, Some(started));

    std::fs::write(&h.config_path, &good).unwrap();
    h.clock.advance(Duration::from_secs(60));
    h.gateway.reload_file(&h.config_path).unwrap();
    assert_eq!(metric(&h, SUCCESSES).await, Some(1.0));
    assert_eq!(metric(&h, FAILURES).await, Some(1.0));
    assert_eq!(metric(&h, LAST_SUCCESS).await, Some(started + 120.0));
}

/// Issue 15: change `listen`, reload, restore it, reload: the second reload used to warn
/// "listen addresses changed" because it compared with the first reload's config, not with
/// what the gateway had bound.
#[tokio::test]
async fn a_restored_setting_needs_no_restart_on_the_next_reload() {
    let h = Harness::start().await;
    let original = std::fs::read_to_string(&h.config_path).unwrap();
    let moved = original
        .replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1)
        .replace("sqlite://keygate.db", "sqlite://other.db");
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
        std::fs::write(&h.config_path, original.replace(edit.0, edit.1)).unwrap();
        let reloaded = h.gateway.reload_file(&h.config_path).unwrap();
        assert_eq!(reloaded.restart_needed, restart_needed, "{edit:?}");
    }
}
