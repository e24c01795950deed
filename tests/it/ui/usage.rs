//! A key's usage and quota on the API Keys page (SPEC 11's last bullet): the last 30 days
//! stacked by status class and by route from `GET /v1/usage`, and the quota bar with its
//! renewal, top-up and reset. Usage is made by real requests through the gateway, the clock
//! moved back to spread them over days; the page's own `GET /v1/usage` writes the counts.

use http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use keygate::core::environment::Environment;
use keygate::core::quota::{Period, QuotaSpec};
use serde_json::Value;

use super::{a_minute_back, main_buttons, open_key, page, rows, setup};
use crate::support::browser::Browser;
use crate::support::{spec, Harness, READ_TOKEN};

fn date(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d").to_string()
}

/// The texts of the elements matching `css`.
async fn texts(browser: &Browser, css: &str) -> Vec<String> {
    let script = format!(
        "return Array.from(document.querySelectorAll({})).map(n => n.textContent);",
        serde_json::json!(css)
    );
    serde_json::from_value(browser.eval(&script).await).unwrap()
}

/// The usage table's row for `day`, cell by cell.
async fn numbers_of(browser: &Browser, day: &str) -> Vec<String> {
    texts(browser, &format!("table.numbers tr[data-date=\"{day}\"] td")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_stacked_by_status_class_and_by_route() {
    let Some((harness, browser)) = setup("usage_by_status").await else {
        return;
    };
    let now = harness.clock_now();
    let earlier = now.checked_sub(SignedDuration::from_hours(72)).unwrap();
    // Three days ago: the key is made, two good requests and a refusal (403).
    harness.clock.set(earlier);
    let (id, secret) = harness.key(&["customer:read"]).await;
    for _ in 0..2 {
        assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    }
    let refused = harness
        .call("POST", "/v1/customers/acme", Some(&secret), &[])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    // Today: three good requests and a timeout (504). Nothing flushed: the page's question does it.
    harness.clock.set(now);
    for _ in 0..3 {
        let answer = harness.get("/v1/customers/acme", &secret).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let slow = harness.get("/slow", &secret).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);

    open_key(&harness, &browser, &id).await;
    browser
        .until_text(
            "figure.usage figcaption",
            "7 requests in the last 30 days, refusals included; 7 authenticated since the key was created.",
        )
        .await;
    assert_eq!(texts(&browser, ".legend li").await, ["2xx 5", "4xx 1", "5xx 1"]);
    assert_eq!(
        browser.count("svg.chart rect.seg").await,
        4,
        "two layers on each of two days"
    );
    let label = browser
        .find("svg.chart")
        .await
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap();
    assert!(label.contains("by status class: 2xx 5, 4xx 1, 5xx 1"), "{label}");
    assert_eq!(
        numbers_of(&browser, &date(earlier)).await,
        [date(earlier), "2".into(), "1".into(), "0".into(), "3".into()]
    );
    assert_eq!(
        numbers_of(&browser, &date(now)).await,
        [date(now), "3".into(), "0".into(), "1".into(), "4".into()]
    );
    browser.until_text(".flushed", "Counts as of").await;
    browser.until_text("dd.last-used", "just now").await;
    browser.screenshot().await;

    browser.click("By route").await;
    browser.until_text(".legend", "customers").await;
    assert_eq!(
        texts(&browser, ".legend li").await,
        ["customers 4", "status 2", "slow 1"]
    );
    let pressed = texts(&browser, ".split [aria-pressed=\"true\"]").await;
    assert_eq!(pressed, ["By route"]);
    let title = format!("{}, customers: 3 requests of 4", date(now));
    browser.until_text("svg.chart rect.seg title", &title).await;
    assert_eq!(
        numbers_of(&browser, &date(earlier)).await,
        [date(earlier), "1".into(), "2".into(), "0".into(), "3".into()]
    );
    browser.screenshot_as("usage_by_route").await;

    // From the keyboard: Enter on "By status" splits by status again, and the focus stays put.
    browser
        .eval("document.querySelector('.split [data-split=status]').focus(); return true;")
        .await;
    browser
        .client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    browser.until_text(".legend", "2xx 5").await;
    let focused = "return document.activeElement.dataset.split === 'status' \
                   && document.activeElement.getAttribute('aria-pressed') === 'true';";
    assert_eq!(browser.eval(focused).await, true);

    // At a phone's width nothing is wider than the screen, the numbers included.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.eval("document.querySelector('.usage-numbers').open = true; document.querySelector('figure.usage').scrollIntoView(); return true;").await;
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth;";
    assert_eq!(browser.eval(fits).await, true, "nothing wider than the phone");
    browser.screenshot_as("usage_phone").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_requests_says_so_and_offers_no_split() {
    let Some((harness, browser)) = setup("usage_none").await else {
        return;
    };
    let (id, _) = harness.key(&[]).await;
    open_key(&harness, &browser, &id).await;
    browser
        .until_text(
            "main",
            "No requests in the last 30 days (0 authenticated since the key was created).",
        )
        .await;
    assert_eq!(browser.count("svg.chart").await, 0);
    assert_eq!(
        main_buttons(&browser).await,
        ["Edit", "Regenerate", "Revoke", "Delete", "Refresh"]
    );
    browser.finish().await;
}

/// A leaked key revoked: its refusals still show, apart from what it authenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_still_shows_the_requests_refused_with_it() {
    let Some((harness, browser)) = setup("usage_revoked").await else {
        return;
    };
    let (id, secret) = harness.key(&[]).await;
    assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    harness.keys.revoke(&id).unwrap();
    harness.sync().await;
    for _ in 0..2 {
        let refused = harness.get("/v1/status", &secret).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    }
    open_key(&harness, &browser, &id).await;
    browser
        .until_text(
            "figure.usage figcaption",
            "3 requests in the last 30 days, refusals included; 1 authenticated since the key was created.",
        )
        .await;
    assert_eq!(texts(&browser, ".legend li").await, ["2xx 1", "4xx 2", "5xx 0"]);
    browser.finish().await;
}

/// A key of customer `customer` that may read customers.
async fn customer_key(harness: &Harness, customer: &str) -> (String, String) {
    let mut key = spec(Environment::Production, &["customer:read"]);
    key.customer_id = Some(customer.into());
    harness.create_key(key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_by_customer_the_list_shows_the_usage_of_its_keys() {
    let Some((harness, browser)) = setup("customer_usage").await else {
        return;
    };
    let (acme, one) = customer_key(&harness, "acme").await;
    let (_, two) = customer_key(&harness, "acme").await;
    let (_, other) = customer_key(&harness, "globex").await;
    for _ in 0..2 {
        let answer = harness.get("/v1/customers/acme", &one).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(harness.get("/v1/status", &two).await.status, StatusCode::OK);
    let refused = harness.call("POST", "/v1/customers/acme", Some(&two), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    for _ in 0..5 {
        assert_eq!(harness.get("/v1/status", &other).await.status, StatusCode::OK);
    }

    browser.sign_in(&page(&harness), READ_TOKEN).await;
    rows(&browser, 3).await;
    assert_eq!(
        browser.count(".customer-usage").await,
        0,
        "not without a customer"
    );
    // The customer in a key's row leads to its keys and their usage.
    let link = format!("tr[data-key-id=\"{acme}\"] td[data-label=\"Customer\"] a");
    browser.find(&link).await.click().await.unwrap();
    rows(&browser, 2).await;
    browser
        .until_text(".customer-usage h3", "Daily usage of customer “acme”")
        .await;
    browser
        .until_text(
            ".customer-usage figcaption",
            "4 requests in the last 30 days, refusals included.",
        )
        .await;
    assert_eq!(texts(&browser, ".legend li").await, ["2xx 3", "4xx 1", "5xx 0"]);
    browser
        .until_text(".customer-usage .flushed", "counted up to now")
        .await;
    browser.click("By route").await;
    browser.until_text(".legend", "customers").await;
    assert_eq!(texts(&browser, ".legend li").await, ["customers 3", "status 1"]);
    browser.finish().await;
}

/// A key of `limit` requests a day, anchored now.
async fn metered(harness: &Harness, limit: u64) -> (String, String) {
    let mut key = spec(Environment::Production, &[]);
    key.name = "metered".into();
    key.quota = Some(QuotaSpec {
        limit,
        period: Period::Day,
        anchor: harness.clock_now(),
    });
    harness.create_key(key).await
}

async fn bar(browser: &Browser) -> (Value, String) {
    let bar = browser.find(".quota-bar").await;
    let now = bar.attr("aria-valuenow").await.unwrap().unwrap_or_default();
    let class = bar.attr("class").await.unwrap().unwrap_or_default();
    (Value::String(now), class)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_bar_shows_this_period_and_tops_up_and_resets() {
    let Some((harness, browser)) = setup("quota").await else {
        return;
    };
    a_minute_back(&harness);
    let (id, secret) = metered(&harness, 10).await;
    for _ in 0..8 {
        assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    }
    open_key(&harness, &browser, &id).await;
    browser
        .until_text(".quota-words", "8 of 10 requests used this period (80%), 2 left.")
        .await;
    let renews = harness
        .clock_now()
        .checked_add(SignedDuration::from_hours(24))
        .unwrap();
    browser
        .until_text(".quota-renews", &format!("Renews {}", date(renews)))
        .await;
    browser.until_text(".quota-renews", "(in 23 hours)").await;
    assert_eq!(
        bar(&browser).await,
        (Value::from("8"), "quota-bar quota-high".into())
    );
    browser.screenshot().await;

    // At a phone's width: the card and the dialog fit.
    browser.client.set_window_size(390, 844).await.unwrap();
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth;";
    assert_eq!(browser.eval(fits).await, true, "the card fits the phone");
    browser.click("Top up").await;
    browser
        .until_text("dialog h2", "Top up the quota of “metered”")
        .await;
    browser.fill("#f-add", "5").await;
    browser.screenshot_as("quota_top_up_phone").await;
    assert_eq!(browser.eval(fits).await, true, "the dialog fits the phone");
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_gone("dialog").await;
    browser.client.set_window_size(1280, 1100).await.unwrap();
    browser.until_text("#flash", "Quota topped up by 5.").await;
    browser
        .until_text(
            ".quota-words",
            "8 of 15 requests used this period (53%), 7 left. The allowance includes 5 topped up.",
        )
        .await;
    browser.until_text("table.events", "quota_topped_up").await;
    for _ in 0..7 {
        assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    }
    let spent = harness.get("/v1/status", &secret).await;
    assert_eq!(spent.status, StatusCode::TOO_MANY_REQUESTS, "{}", spent.text());

    browser.client.refresh().await.unwrap();
    browser
        .until_text(
            ".quota-words",
            "15 of 15 requests used this period (100%), 0 left.",
        )
        .await;
    assert_eq!(
        bar(&browser).await,
        (Value::from("15"), "quota-bar quota-full".into())
    );
    browser.until_text("table.requests", "quota spent (quota)").await;
    browser.screenshot_as("quota_spent").await;

    browser.click("Reset").await;
    browser
        .until_text("dialog h2", "Reset the quota of “metered”?")
        .await;
    browser.until_text("dialog p", "full 10 a day again").await;
    browser.click("Reset quota").await;
    browser.until_gone("dialog").await;
    browser
        .until_text(".quota-words", "0 of 10 requests used this period (0%), 10 left.")
        .await;
    browser.until_text("table.events", "quota_reset").await;
    assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_token_sees_the_quota_and_usage_without_changing_them() {
    let Some(browser) = Browser::start("quota_read_only").await else {
        return;
    };
    let harness = Harness::start().await;
    let (id, secret) = metered(&harness, 3).await;
    assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    browser.sign_in(&page(&harness), READ_TOKEN).await;
    browser
        .goto(&harness.admin_url(&format!("/ui/#/keys/{id}")))
        .await;
    browser
        .until_text(".quota-words", "1 of 3 requests used this period (33%), 2 left.")
        .await;
    browser.until_text(".legend", "2xx 1").await;
    browser.until_text("table.requests", "GET /v1/status").await;
    assert_eq!(main_buttons(&browser).await, ["By status", "By route", "Refresh"]);
    browser.finish().await;
}

/// The chart's pure parts (chart.js) and the quota's words (format.js), table-driven, in the
/// browser that runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacking_and_quota_words_follow_the_api_values() {
    let Some((harness, browser)) = setup("usage_pure").await else {
        return;
    };
    browser.goto(&page(&harness)).await;
    browser.find("input[name=\"token\"]").await;
    let script = r#"
        const [done] = arguments;
        Promise.all([import("/ui/chart.js"), import("/ui/format.js")]).then(([c, f]) => {
          const dates = ["2026-12-01", "2026-12-02"];
          const at = (day, count) => ({ t: `${day}T00:00:00Z`, count });
          const show = (stack) => stack.map((l) => `${l.name}=${l.counts.join("/")}`).join(" ");
          const status = [
            { group: "200", points: [at("2026-11-01", 9), at("2026-12-01", 3)] },
            { group: "204", points: [at("2026-12-02", 1)] },
            { group: "302", points: [at("2026-12-02", 2)] },
            { group: "503", points: [at("2026-12-01", 1)] },
          ];
          const routes = (n) => Array.from({ length: n }, (_, i) => ({ group: `r${i}`, points: [at("2026-12-01", 10 - i)] }));
          const days = c.lastDates(new Date("2026-03-01T12:00:00Z"));
          const month = { limit: 1000, period: "month" };
          done([
            show(c.layers(status, "status", dates)),
            show(c.layers(routes(7), "route", dates)),
            show(c.layers(routes(8), "route", dates)),
            show(c.layers([], "status", dates)),
            ["101", "200", "404", "599", "x"].map(c.statusClass).join(" "),
            `${days.length} ${days[0]} ${days[29]}`,
            f.quotaUsed(month, { limit: 1000, used: 999, remaining: 1 }),
            f.quotaUsed(month, { limit: 1500, used: 1600, remaining: 0 }),
            f.quotaUsed({ limit: 50, period: "none" }, { limit: 50, used: 5, remaining: 45, resets_at: null }),
            f.quotaRenews({ limit: 50, period: "none" }, { resets_at: null }),
          ]);
        }, (e) => done(["import failed: " + e]));
    "#;
    let out = browser.client.execute_async(script, Vec::new()).await.unwrap();
    let out: Vec<String> = serde_json::from_value(out).unwrap();
    let expected = [
        "2xx=3/1 3xx=0/2 4xx=0/0 5xx=1/0",
        "r0=10/0 r1=9/0 r2=8/0 r3=7/0 r4=6/0 r5=5/0 r6=4/0",
        "r0=10/0 r1=9/0 r2=8/0 r3=7/0 r4=6/0 r5=5/0 other routes=7/0",
        "2xx=0/0 4xx=0/0 5xx=0/0",
        "1xx 2xx 4xx 5xx x",
        "30 2026-01-31 2026-03-01",
        "999 of 1000 requests used this period (99%), 1 left.",
        "1600 of 1500 requests used this period (106%), 0 left. The allowance includes 500 topped up.",
        "5 of 50 credits used (10%), 45 left.",
        "Never renews: only a top-up adds more.",
    ];
    assert_eq!(out, expected);
    browser.finish().await;
}

/// The README's picture of a key (docs/ui-key.png): two weeks of traffic and a monthly quota.
/// Not a check; run it with `cargo test --test it ui::usage::readme_key_picture -- --ignored`
/// and copy target/ui-screenshots/readme_key.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn readme_key_picture() {
    let Some((harness, browser)) = setup("readme_key").await else {
        return;
    };
    let now = harness.clock_now();
    let start = now.checked_sub(SignedDuration::from_hours(24 * 14)).unwrap();
    harness.clock.set(start);
    let mut key = spec(Environment::Production, &["customer:read", "report:read"]);
    key.name = "Main website".into();
    key.customer_id = Some("acme".into());
    key.quota = Some(QuotaSpec {
        limit: 500,
        period: Period::Month,
        anchor: start,
    });
    let (id, secret) = harness.create_key(key).await;
    for day in 0..=14 {
        let at = start.checked_add(SignedDuration::from_hours(24 * day)).unwrap();
        harness.clock.set(at.min(now));
        for _ in 0..(8 + (day * 7) % 13) {
            harness.get("/v1/customers/acme", &secret).await;
        }
        for _ in 0..(3 + day % 4) {
            harness.get("/v1/status", &secret).await;
        }
        for _ in 0..(day % 3) {
            harness
                .call("POST", "/v1/customers/acme", Some(&secret), &[])
                .await;
        }
        if day % 6 == 5 {
            harness.get("/slow", &secret).await;
        }
    }
    browser.client.set_window_size(1280, 900).await.unwrap();
    open_key(&harness, &browser, &id).await;
    browser.until_text(".legend", "2xx").await;
    browser
        .eval("document.querySelector('.quota-bar').closest('section').scrollIntoView(); return true;")
        .await;
    browser.finish().await;
}
