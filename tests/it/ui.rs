//! The API Keys page (SPEC 9) in a real headless Chromium, against a real gateway from the
//! harness: each story signs in, does what a person would do, checks the effect through the
//! proxy, and leaves a screenshot in target/ui-screenshots/ for a person to look at.

mod customers;
mod usage;

use crate::support;

use crate::support::browser::Browser;
use crate::support::{spec, ConfigEdit, Harness, ADMIN_TOKEN, READ_TOKEN};
use http::StatusCode;
use keygate::core::environment::Environment;

/// A gateway and a browser, or `None` (the test skips) when there is no browser here.
async fn setup(name: &str) -> Option<(Harness, Browser)> {
    let browser = Browser::start(name).await?;
    Some((Harness::start().await, browser))
}

/// Sets the gateway's clock a minute back. The page words a time by the browser's clock, the
/// gateway counts by the harness's: a quota anchored at the harness's now renews a little under
/// a day from the browser's, "in 23 hours", however fast the page opens (at once, it was
/// "in 1 day").
fn a_minute_back(harness: &Harness) {
    let back = harness
        .clock_now()
        .checked_sub(jiff::SignedDuration::from_mins(1))
        .unwrap();
    harness.clock.set(back);
}

fn page(harness: &Harness) -> String {
    harness.admin_url("/ui/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_keeps_the_token_in_the_tab_only() {
    let Some((harness, browser)) = setup("sign_in").await else {
        return;
    };
    browser.goto(&page(&harness)).await;
    browser.fill("input[name=\"token\"]", "not-the-token").await;
    browser.click("Sign in").await;
    browser.until_text(".signin [role=alert]", "did not accept").await;

    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.until_text("main", "No keys yet").await;
    let stored = browser
        .eval("return sessionStorage.getItem('keygate.token');")
        .await;
    assert_eq!(stored, ADMIN_TOKEN);
    assert_eq!(browser.eval("return document.cookie;").await, "");
    assert_eq!(browser.eval("return localStorage.length;").await, 0);
    browser.until_text("#access", "Full access").await;
    browser.screenshot().await;

    browser.click("Sign out").await;
    browser.find("input[name=\"token\"]").await;
    assert!(browser
        .eval("return sessionStorage.getItem('keygate.token');")
        .await
        .is_null());
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_key_shows_its_secret_once_and_the_secret_works() {
    let Some((harness, browser)) = setup("create").await else {
        return;
    };
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.click("Create key").await;
    browser.fill("#f-name", "billing service").await;
    browser.fill("#f-permissions", "customer:read, invoice:*").await;
    browser.fill("#f-requests", "100").await;
    browser.fill("#f-customer_id", "acme").await;
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    let secret = browser.text("[data-secret]").await;
    browser.screenshot_as("create_secret").await;

    let answer = harness.get("/v1/status", &secret).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());

    browser.click("Copy").await;
    browser
        .until(
            "the copy said what it did",
            "return document.querySelector('dialog [role=status]').textContent !== '';",
        )
        .await;
    browser.click("Done").await;
    browser.until_gone("dialog").await;
    assert_eq!(
        browser.count("[data-secret]").await,
        0,
        "the secret left the page"
    );
    let source = browser.eval("return document.documentElement.outerHTML;").await;
    assert!(
        !source.as_str().unwrap().contains(&secret),
        "the secret is nowhere in the page"
    );
    browser.until_text("table#keys", "billing service").await;
    let row = browser.text("table#keys tr[data-key-id]").await;
    for shown in [
        "production",
        "customer:read, invoice:*",
        "active",
        "never",
        "100 per 1m",
        "acme",
    ] {
        assert!(row.contains(shown), "{shown:?} in {row:?}");
    }
    browser.finish().await;
}

/// Opens the page of key `id`.
async fn open_key(harness: &Harness, browser: &Browser, id: &str) {
    browser.sign_in(&page(harness), ADMIN_TOKEN).await;
    browser
        .find(&format!("tr[data-key-id=\"{id}\"] a"))
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("main h3", "Daily usage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regenerating_shows_the_new_secret_and_the_grace_period() {
    let Some((harness, browser)) = setup("regenerate").await else {
        return;
    };
    let (id, old) = harness.key(&[]).await;
    assert_eq!(harness.get("/v1/status", &old).await.status, StatusCode::OK);
    open_key(&harness, &browser, &id).await;
    browser.click("Regenerate").await;
    browser.fill("#f-grace", "10m").await;
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    let new = browser.text("[data-secret]").await;
    assert_ne!(new, old);
    assert_eq!(harness.get("/v1/status", &new).await.status, StatusCode::OK);
    assert_eq!(
        harness.get("/v1/status", &old).await.status,
        StatusCode::OK,
        "the old secret works while the grace period runs"
    );
    browser.click("Done").await;
    browser.until_gone("[data-secret]").await;
    browser
        .until_text(".grace", "previous secret keeps working")
        .await;
    browser.until_text("main", "regenerated").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_asks_first_naming_the_key_and_the_401_then_refuses_it_at_once() {
    let Some((harness, browser)) = setup("revoke").await else {
        return;
    };
    let (id, secret) = harness.key(&[]).await;
    open_key(&harness, &browser, &id).await;
    browser.click("Revoke").await;
    browser.until_text("dialog h2", "Revoke “test key”?").await;
    browser.until_text("dialog", "gets 401 at once").await;
    browser.until_text("dialog p", "“test key”").await;
    browser.screenshot_as("revoke_confirm").await;
    browser.click("Cancel").await;
    browser.until_gone("dialog").await;
    assert_eq!(
        harness.get("/v1/status", &secret).await.status,
        StatusCode::OK,
        "cancelled: the key still works"
    );
    browser.until_text("main h2 .badge", "active").await;

    browser.click("Revoke").await;
    browser.click("Revoke key").await;
    browser.until_gone("dialog").await;
    browser.until_text("main h2 .badge", "revoked").await;
    assert_eq!(
        harness.get("/v1/status", &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    browser.button("Activate").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activating_from_the_page_lets_the_key_in_again() {
    let Some((harness, browser)) = setup("activate").await else {
        return;
    };
    let (id, secret) = harness.key(&[]).await;
    harness.keys.revoke(&id).unwrap();
    harness.sync().await;
    assert_eq!(
        harness.get("/v1/status", &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    open_key(&harness, &browser, &id).await;
    browser.click("Activate").await;
    browser.until_text("main h2 .badge", "active").await;
    assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    browser.until_text("table.events", "activated").await;
    // Who and from where: the page's change went through the admin API with the full token.
    let activated = "return Array.from(document.querySelectorAll('table.events tr'))\
        .find(r => r.textContent.includes('activated')).textContent;";
    let row = browser.eval(activated).await;
    let row = row.as_str().unwrap();
    assert!(
        row.contains("admin_api") && row.contains("write token") && row.contains("127.0.0.1"),
        "{row}"
    );
    browser
        .eval("document.querySelector('table.events').scrollIntoView(); return true;")
        .await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_asks_first_then_removes_the_key() {
    let Some((harness, browser)) = setup("delete").await else {
        return;
    };
    let (id, secret) = harness.key(&[]).await;
    open_key(&harness, &browser, &id).await;
    browser.click("Delete").await;
    browser.until_text("dialog", "cannot be brought back").await;
    browser.screenshot_as("delete_confirm").await;
    browser.click("Cancel").await;
    browser.until_gone("dialog").await;
    assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);

    browser.click("Delete").await;
    browser.click("Delete key").await;
    browser.until_text("#flash", "deleted").await;
    browser.until_text("main", "No keys yet").await;
    assert_eq!(
        harness.get("/v1/status", &secret).await.status,
        StatusCode::UNAUTHORIZED
    );
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_markup_is_shown_as_text_and_never_runs() {
    let Some((harness, browser)) = setup("xss").await else {
        return;
    };
    let name = "<img src=x onerror=window.__xss=1>";
    let mut hostile = spec(Environment::Production, &[]);
    hostile.name = name.into();
    hostile.customer_id = Some("<svg onload=window.__xss=2>".into());
    let (id, _) = harness.create_key(hostile).await;
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.until_text("table#keys .key-name", name).await;
    assert_eq!(browser.count("table#keys img, table#keys script").await, 0);
    browser.screenshot_as("xss_list").await;
    browser
        .find(&format!("tr[data-key-id=\"{id}\"] a"))
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("main h2", name).await;
    browser.until_text("main", "Audit trail").await;
    assert_eq!(browser.count("main img, main script").await, 0);
    assert!(browser
        .eval("return window.__xss === undefined;")
        .await
        .as_bool()
        .unwrap());
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_idle_expiry_will_soon_revoke_carries_a_notice() {
    let Some(browser) = Browser::start("idle").await else {
        return;
    };
    let lifecycle = "[lifecycle]\nidle_expiry = \"90d\"\nwarn_before = [\"15d\", \"7d\", \"1d\"]\n";
    let harness = Harness::with_config(support::STANDARD, lifecycle).await;
    let (idle, _) = harness.key(&[]).await;
    let (used, secret) = harness.key(&[]).await;
    let created = harness.keys.get(&idle).unwrap().created_at;
    harness.clock.set(
        created
            .checked_add(std::time::Duration::from_secs(86_400 * 80))
            .unwrap(),
    );
    assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    harness.gateway.flush_usage().await;

    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser
        .until_text(&format!("tr[data-key-id=\"{idle}\"] .idle-warning"), "revoked")
        .await;
    assert_eq!(
        browser
            .count(&format!("tr[data-key-id=\"{used}\"] .idle-warning"))
            .await,
        0
    );
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_saves_the_changes_and_shows_api_errors_in_words() {
    let Some((harness, browser)) = setup("edit").await else {
        return;
    };
    let (id, _) = harness.key(&["customer:read"]).await;
    open_key(&harness, &browser, &id).await;
    browser.click("Edit").await;
    browser.fill("#f-permissions", "not a permission").await;
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("dialog .form-error", "permissions").await;
    browser.screenshot_as("edit_error").await;

    browser.fill("#f-name", "renamed key").await;
    browser
        .fill("#f-permissions", "customer:read, customer:write")
        .await;
    browser.fill("#f-requests", "5").await;
    browser.fill("#f-quota_limit", "1000").await;
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_gone("dialog").await;
    browser.until_text("main h2", "renamed key").await;
    browser.until_text("dl.details", "5 per 1m").await;
    browser.until_text("dl.details", "1000 a month").await;
    browser
        .until_text(".quota-words", "0 of 1000 requests used this period")
        .await;
    assert!(
        !browser.text("dl.details").await.contains("burst"),
        "an empty burst is the default: as many as requests"
    );
    let key = harness.keys.get(&id).unwrap();
    assert_eq!(key.spec.name, "renamed key");
    assert_eq!(key.spec.permissions.len(), 2);
    assert_eq!(key.spec.rate_limit.unwrap().requests.get(), 5);
    assert_eq!(key.spec.quota.map(|q| q.limit), Some(1000));
    browser.until_text("table.events", "updated").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_said_in_words() {
    let Some((harness, browser)) = setup("connection_lost").await else {
        return;
    };
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    harness.gateway.shutdown().await;
    browser.click("Filter").await;
    browser.until_text("main [role=alert]", "cannot be reached").await;
    browser.button("Try again").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_no_longer_accepted_signs_out_in_words() {
    let Some((harness, browser)) = setup("token_refused").await else {
        return;
    };
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    // As if the token had been rotated on the gateway while the tab stayed open.
    browser
        .eval("sessionStorage.setItem('keygate.token', 'rotated-away'); return true;")
        .await;
    browser.click("Filter").await;
    browser.find("input[name=\"token\"]").await;
    browser.until_text("#flash", "no longer accepts your token").await;
    assert!(browser
        .eval("return sessionStorage.getItem('keygate.token');")
        .await
        .is_null());

    // A mangled address is no key, said in words.
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.goto(&harness.admin_url("/ui/#/keys/%E0%A4%A")).await;
    browser.until_text("main", "There is no key with this id").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_by_cursor_and_filters() {
    let Some((harness, browser)) = setup("paging").await else {
        return;
    };
    for n in 0..53 {
        let mut key = spec(Environment::Production, &["customer:read"]);
        key.name = format!("production key {n:02}");
        harness.keys.create(key).unwrap();
    }
    for n in 0..2 {
        let mut key = spec(Environment::Staging, &[]);
        key.name = format!("staging key {n}");
        key.customer_id = Some("acme".into());
        harness.keys.create(key).unwrap();
    }
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.until_text("table#keys", "production key 00").await;
    assert_eq!(browser.count("table#keys tbody tr").await, 50);
    browser.click("Next page →").await;
    browser.until_text("table#keys", "staging key 1").await;
    assert_eq!(browser.count("table#keys tbody tr").await, 5);
    browser.click("← Previous page").await;
    browser.until_text("table#keys", "production key 00").await;

    browser
        .find("#filter-environment")
        .await
        .select_by_value("staging")
        .await
        .unwrap();
    browser.click("Filter").await;
    browser
        .until(
            "two rows",
            "return document.querySelectorAll('table#keys tbody tr').length === 2;",
        )
        .await;
    browser
        .find("#filter-environment")
        .await
        .select_by_value("")
        .await
        .unwrap();
    browser.fill("#filter-customer", "nobody").await;
    browser.click("Filter").await;
    browser.until_text("main", "No key matches these filters.").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_works_from_the_keyboard_and_at_a_phone_width() {
    let Some((harness, browser)) = setup("phone").await else {
        return;
    };
    let mut key = spec(
        Environment::Production,
        &["customer:read", "customer:write", "invoice:read"],
    );
    key.name = "mobile app".into();
    key.customer_id = Some("acme".into());
    harness.create_key(key).await;
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.until_text("table#keys", "mobile app").await;
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth;";
    assert_eq!(browser.eval(fits).await, true, "nothing wider than the phone");

    // Enter on the focused button opens the dialog with the focus inside; Escape closes it.
    browser
        .eval("document.querySelector('.view-head button').focus(); return true;")
        .await;
    browser
        .client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    browser
        .until(
            "the name field focused",
            "return document.activeElement.id === 'f-name';",
        )
        .await;
    browser.screenshot_as("phone_dialog").await;
    assert_eq!(browser.eval(fits).await, true, "the dialog fits too");
    browser
        .client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E00C}")
        .await
        .unwrap();
    browser.until_gone("dialog").await;
    browser.finish().await;
}

/// The texts of the buttons in the main area.
async fn main_buttons(browser: &Browser) -> Vec<String> {
    let texts = browser
        .eval("return Array.from(document.querySelectorAll('main button')).map(b => b.textContent);")
        .await;
    serde_json::from_value(texts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_token_sees_everything_and_no_button_that_changes_anything() {
    let Some((harness, browser)) = setup("read_only").await else {
        return;
    };
    let (id, _) = harness.key(&["customer:read"]).await;
    browser.sign_in(&page(&harness), READ_TOKEN).await;
    browser.until_text("#access", "Read-only").await;
    browser.until_text("table#keys", "test key").await;
    assert_eq!(main_buttons(&browser).await, ["Filter"]);
    browser.screenshot_as("read_only_list").await;

    browser
        .find(&format!("tr[data-key-id=\"{id}\"] a"))
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("main h3", "Audit trail").await;
    browser.until_text("table.events", "created").await;
    assert_eq!(
        main_buttons(&browser).await,
        ["Refresh"],
        "only a button that reads"
    );
    assert_eq!(
        harness.keys.get(&id).unwrap().status,
        keygate::core::key::KeyStatus::Active
    );
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_requests_show_a_refusal_with_its_reason() {
    let Some((harness, browser)) = setup("requests").await else {
        return;
    };
    let (id, secret) = harness.key(&["customer:read"]).await;
    assert_eq!(
        harness.get("/v1/customers/c1", &secret).await.status,
        StatusCode::OK
    );
    let refused = harness.call("POST", "/v1/customers/c1", Some(&secret), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    open_key(&harness, &browser, &id).await;
    browser
        .until_text("table.requests tr[data-status=\"403\"]", "permission")
        .await;
    let row = browser.text("table.requests tr[data-status=\"403\"]").await;
    assert!(row.contains("POST /v1/customers/c1"), "{row}");
    browser
        .until_text("table.requests tr[data-status=\"200\"]", "GET /v1/customers/c1")
        .await;
    browser.screenshot_as("requests_key").await;

    browser
        .find("#nav a[data-nav=\"requests\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("main h2", "Recent requests").await;
    browser
        .until_text("table.requests tr[data-status=\"403\"]", &id)
        .await;
    browser
        .until_text("table.requests tr[data-status=\"403\"] a", "test key")
        .await;
    browser.fill("#filter-status", "4xx").await;
    browser.click("Filter").await;
    browser.until_gone("table.requests tr[data-status=\"200\"]").await;
    browser
        .until_text("table.requests tr[data-status=\"403\"]", "permission")
        .await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_create_and_edit_forms_set_a_burst() {
    let Some((harness, browser)) = setup("burst").await else {
        return;
    };
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.click("Create key").await;
    browser.fill("#f-name", "bursty").await;
    browser.fill("#f-burst", "30").await;
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .until_text("dialog .form-error", "A burst needs a rate")
        .await;
    assert_eq!(
        browser.eval("return document.activeElement.id;").await,
        "f-requests"
    );
    browser.fill("#f-requests", "10").await;
    browser.find("#f-per").await.select_by_value("1s").await.unwrap();
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.find("[data-secret]").await;
    browser.click("Done").await;
    browser.until_text("table#keys", "10 per 1s (burst 30)").await;
    let id = browser
        .eval("return document.querySelector('table#keys tr[data-key-id]').dataset.keyId;")
        .await;
    let id = id.as_str().unwrap().to_owned();
    let limit = harness.keys.get(&id).unwrap().spec.rate_limit.unwrap();
    assert_eq!((limit.requests.get(), limit.burst().get()), (10, 30));

    browser
        .find(&format!("tr[data-key-id=\"{id}\"] a"))
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("dl.details", "(burst 30)").await;
    browser.click("Edit").await;
    assert_eq!(
        browser
            .eval("return document.getElementById('f-burst').value;")
            .await,
        "30",
        "the edit form shows the key's burst"
    );
    browser.screenshot_as("burst_edit").await;
    // More than the API takes (a burst is a 32-bit count): the browser lets it through.
    browser.fill("#f-burst", "4294967296").await;
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("dialog .form-error", "burst").await;
    assert_eq!(
        browser.eval("return document.activeElement.id;").await,
        "f-burst",
        "the API's error marks the burst field"
    );
    browser.fill("#f-burst", "50").await;
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_gone("dialog").await;
    browser.until_text("dl.details", "10 per 1s (burst 50)").await;
    let limit = harness.keys.get(&id).unwrap().spec.rate_limit.unwrap();
    assert_eq!(limit.burst().get(), 50);
    browser.finish().await;
}

/// The part of the page's address after the `#`.
async fn hash(browser: &Browser) -> String {
    let hash = browser.eval("return location.hash;").await;
    hash.as_str().unwrap().to_owned()
}

async fn rows(browser: &Browser, n: usize) {
    let check = format!("return document.querySelectorAll('table#keys tbody tr').length === {n};");
    browser.until(&format!("{n} rows"), &check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_the_page_live_in_the_address() {
    let Some((harness, browser)) = setup("address").await else {
        return;
    };
    for n in 0..53 {
        let mut key = spec(Environment::Production, &[]);
        key.name = format!("production key {n:02}");
        harness.keys.create(key).unwrap();
    }
    for n in 0..3 {
        let mut key = spec(Environment::Staging, &[]);
        key.name = format!("staging key {n}");
        key.customer_id = Some(if n == 0 { "globex" } else { "acme" }.into());
        harness.keys.create(key).unwrap();
    }
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    rows(&browser, 50).await;

    // Filtering writes the address; a reload shows the same view, filters filled in.
    browser
        .find("#filter-environment")
        .await
        .select_by_value("staging")
        .await
        .unwrap();
    browser.fill("#filter-customer", "acme").await;
    browser.click("Filter").await;
    rows(&browser, 2).await;
    let filtered = hash(&browser).await;
    assert_eq!(filtered, "#/keys?environment=staging&customer_id=acme");
    browser.client.refresh().await.unwrap();
    rows(&browser, 2).await;
    assert_eq!(
        browser
            .eval("return document.getElementById('filter-environment').value;")
            .await,
        "staging"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('filter-customer').value;")
            .await,
        "acme"
    );

    // Back and forward move between the views.
    browser.client.back().await.unwrap();
    rows(&browser, 50).await;
    assert_eq!(
        browser
            .eval("return document.getElementById('filter-environment').value;")
            .await,
        ""
    );
    browser.client.forward().await.unwrap();
    rows(&browser, 2).await;

    // The page is in the address too, and the way back survives a reload.
    browser
        .find("#filter-environment")
        .await
        .select_by_value("")
        .await
        .unwrap();
    browser.fill("#filter-customer", "").await;
    browser.click("Filter").await;
    rows(&browser, 50).await;
    browser.click("Next page →").await;
    browser.until_text("table#keys", "staging key 2").await;
    let second = hash(&browser).await;
    assert!(second.starts_with("#/keys?cursor="), "{second}");
    browser.client.refresh().await.unwrap();
    browser.until_text("table#keys", "staging key 2").await;
    rows(&browser, 6).await;
    browser.click("← Previous page").await;
    browser.until_text("table#keys", "production key 00").await;
    assert_eq!(hash(&browser).await, "#/keys");
    browser.client.back().await.unwrap();
    browser.until_text("table#keys", "staging key 2").await;

    // A shared link opens its view once the person signs in, in a tab of their own.
    browser.click("Sign out").await;
    let link = harness.admin_url(&format!("/ui/{filtered}"));
    browser.goto(&link).await;
    browser.fill("input[name=\"token\"]", ADMIN_TOKEN).await;
    browser.click("Sign in").await;
    rows(&browser, 2).await;
    browser.until_text("table#keys", "staging key 1").await;
    assert_eq!(hash(&browser).await, filtered);
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_requests_are_paged_newest_first() {
    let Some((harness, browser)) = setup("requests_paged").await else {
        return;
    };
    let (id, secret) = harness.key(&[]).await;
    for n in 0..105 {
        let answer = harness.get(&format!("/v1/status/{n}"), &secret).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser
        .find("#nav a[data-nav=\"requests\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("table.requests", "GET /v1/status/104").await;
    let count = "return document.querySelectorAll('table.requests tbody tr').length;";
    assert_eq!(browser.eval(count).await, 100);
    browser.click("Older requests →").await;
    browser.until_text("table.requests", "GET /v1/status/0").await;
    assert_eq!(browser.eval(count).await, 5);
    let older = hash(&browser).await;
    assert!(older.starts_with("#/requests?cursor="), "{older}");
    browser.screenshot_as("requests_older").await;
    browser.client.refresh().await.unwrap();
    browser.until_text("table.requests", "GET /v1/status/0").await;
    browser.click("← Newer requests").await;
    browser.until_text("table.requests", "GET /v1/status/104").await;
    assert_eq!(hash(&browser).await, "#/requests");

    // In the key's view, paged in place.
    browser
        .goto(&harness.admin_url(&format!("/ui/#/keys/{id}")))
        .await;
    browser.until_text("main h3", "Daily usage").await;
    browser.until_text("table.requests", "GET /v1/status/104").await;
    assert_eq!(browser.eval(count).await, 50);
    browser.click("Older requests →").await;
    browser.until_text("table.requests", "GET /v1/status/54").await;
    browser.click("Older requests →").await;
    browser.until_text("table.requests", "GET /v1/status/0").await;
    assert_eq!(browser.eval(count).await, 5);
    browser.click("← Newer requests").await;
    browser.until_text("table.requests", "GET /v1/status/54").await;
    browser.click("Refresh").await;
    browser.until_text("table.requests", "GET /v1/status/104").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_counts_up_to_the_moment_the_page_asks() {
    let Some(browser) = Browser::start("usage_flushed").await else {
        return;
    };
    // No flush but the ones the page's questions make.
    let template = support::STANDARD.set("store", "usage_flush_interval = \"1h\"");
    let harness = Harness::with_config(&template, "").await;
    let (id, secret) = harness.key(&[]).await;
    assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    let at = harness.clock_now().strftime("%H:%M:%S").to_string();
    open_key(&harness, &browser, &id).await;
    browser.until_text(".flushed", &format!("as of {at}")).await;
    browser
        .until_text(
            "figure.usage figcaption",
            "1 authenticated since the key was created",
        )
        .await;
    browser
        .eval("document.querySelector('.flushed').scrollIntoView(); return true;")
        .await;
    browser.finish().await;
}

/// The README's picture (docs/ui.png): a list with keys of every kind. Not a check; run it with
/// `cargo test --test it ui::readme_picture -- --ignored` and copy target/ui-screenshots/readme.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn readme_picture() {
    let Some(browser) = Browser::start("readme").await else {
        return;
    };
    let lifecycle = "[lifecycle]\nidle_expiry = \"30d\"\nwarn_before = [\"7d\", \"1d\"]\n";
    let harness = Harness::with_config(support::STANDARD, lifecycle).await;
    let now = harness.clock_now();
    let days = |n: i64| jiff::SignedDuration::from_hours(24 * n);
    let key = |name: &str, env, permissions: &[&str], customer: Option<&str>| {
        let mut key = spec(env, permissions);
        key.name = name.into();
        key.customer_id = customer.map(str::to_owned);
        key
    };
    harness.clock.set(now.checked_sub(days(26)).unwrap());
    let mut expiring = key(
        "Partner export (old)",
        Environment::Production,
        &["invoice:read"],
        Some("globex"),
    );
    expiring.expires_at = Some(now.checked_sub(days(2)).unwrap());
    harness.create_key(expiring).await;
    harness
        .create_key(key(
            "Nightly reports",
            Environment::Production,
            &["report:read"],
            None,
        ))
        .await;
    let (website, website_secret) = harness
        .create_key(key(
            "Main website",
            Environment::Production,
            &["customer:read", "customer:write", "invoice:read"],
            Some("acme"),
        ))
        .await;
    let mut limited = key(
        "Mobile app",
        Environment::Production,
        &["customer:read"],
        Some("acme"),
    );
    limited.rate_limit = Some(keygate::core::key::RateLimitSpec {
        requests: std::num::NonZeroU32::new(100).unwrap(),
        per: std::time::Duration::from_secs(60),
        burst: None,
    });
    let (_, mobile_secret) = harness.create_key(limited).await;
    harness
        .create_key(key("Staging CI", Environment::Staging, &["*"], None))
        .await;
    let (old, _) = harness
        .create_key(key(
            "Agency Berlin",
            Environment::Production,
            &["customer:read"],
            Some("initech"),
        ))
        .await;
    harness.keys.revoke(&old).unwrap();
    harness
        .clock
        .set(now.checked_sub(jiff::SignedDuration::from_hours(3)).unwrap());
    harness.get("/v1/customers/acme", &mobile_secret).await;
    harness.clock.set(now);
    for _ in 0..3 {
        harness.get("/v1/customers/acme", &website_secret).await;
    }
    harness.gateway.flush_usage().await;
    harness.sync().await;
    let _ = website;

    browser.client.set_window_size(1280, 800).await.unwrap();
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.until_text("table#keys", "Agency Berlin").await;
    browser.until_text("table#keys", "Idle").await;
    browser.finish().await;
}

/// The page's pure formatting (format.js), table-driven, in the browser that runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatting_turns_api_values_into_words() {
    let Some((harness, browser)) = setup("format").await else {
        return;
    };
    browser.goto(&page(&harness)).await;
    browser.find("input[name=\"token\"]").await;
    let script = r#"
        const [done] = arguments;
        import("/ui/format.js").then((f) => {
          const now = Date.parse("2026-12-01T12:00:00Z");
          done([
            f.relative(null, now),
            f.relative("2026-12-01T11:59:30Z", now),
            f.relative("2026-12-01T09:00:00Z", now),
            f.relative("2026-11-30T12:00:00Z", now),
            f.relative("2026-12-11T12:00:00Z", now),
            f.permissions([]),
            f.permissions(["*"]),
            f.permissions(["a:read", "b:read", "c:read", "d:read"]),
            f.rateLimit(null),
            f.rateLimit({ requests: 100, per: "1m", burst: 100 }),
            f.rateLimit({ requests: 100, per: "1s", burst: 200 }),
            f.reason("permission"),
            f.reason("some_new_reason"),
            f.list(" a, b  c,,"),
            f.exact("2026-12-01T12:00:00Z"),
            f.asOf(null, now),
            f.asOf("2026-12-01T11:59:30Z", now),
            f.asOf("2026-11-30T23:59:30Z", now),
          ].map(String));
        }, (e) => done(["import failed: " + e]));
    "#;
    let out = browser.client.execute_async(script, Vec::new()).await.unwrap();
    let out: Vec<String> = serde_json::from_value(out).unwrap();
    let expected = [
        "never",
        "just now",
        "3 hours ago",
        "1 day ago",
        "in 10 days",
        "none",
        "all (*)",
        "a:read, b:read +2 more",
        "default",
        "100 per 1m",
        "100 per 1s (burst 200)",
        "permission denied (permission)",
        "some new reason",
        "a,b,c",
        "2026-12-01 12:00:00 UTC",
        "null",
        "11:59:30 UTC",
        "2026-11-30 23:59:30 UTC",
    ];
    assert_eq!(out, expected);
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_keeping_no_recent_requests_says_so() {
    let Some(browser) = Browser::start("requests_off").await else {
        return;
    };
    let harness = Harness::with_config(support::STANDARD, "[logs]\nrecent = 0\n").await;
    let (_, secret) = harness.key(&[]).await;
    assert_eq!(harness.get("/v1/status", &secret).await.status, StatusCode::OK);
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser
        .find("#nav a[data-nav=\"requests\"]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .until_text("main", "keeps no recent requests (logs.recent = 0)")
        .await;
    assert_eq!(
        browser.eval("return document.activeElement.id;").await,
        "main",
        "after moving to another view the keyboard starts at its content"
    );
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_view_lists_the_fleet_and_a_revocation_says_where_it_is_in_force() {
    let Some(browser) = Browser::start("replicas").await else {
        return;
    };
    let advertised = support::STANDARD.set("admin", "advertise = \"http://127.0.0.1\"");
    let harness = Harness::with_config(&advertised, "").await;
    let second = harness.another_gateway().await;
    let (id, secret) = harness.key(&[]).await;
    let both_listed = support::eventually(std::time::Duration::from_secs(10), || async {
        let listing = support::admin_call(&harness.gateway, "GET", "/v1/replicas", "").await;
        listing.json()["replicas"].as_array().map_or(0, Vec::len) == 2
    })
    .await;
    assert!(both_listed);

    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser
        .find("#nav a[data-nav=\"replicas\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("main h2", "Replicas").await;
    browser
        .until_text("main .notice", "2 replicas, on one config and one version")
        .await;
    assert_eq!(browser.count("table.replicas tbody tr").await, 2);
    browser.until_text("table.replicas", "(this one)").await;
    browser.screenshot_as("replicas_view").await;

    browser.goto(&format!("{}#/keys/{id}", page(&harness))).await;
    browser.until_text("main h3", "Daily usage").await;
    browser.click("Revoke").await;
    browser.click("Revoke key").await;
    browser
        .until_text("#flash", "Key revoked on 2 of 2 replicas in")
        .await;
    let refused = support::clients::get(&second, "/v1/status", &secret).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "the receipt held");

    browser
        .goto(&format!("{}#/requests?scope=fleet", page(&harness)))
        .await;
    browser.until_text("main p.muted", "every replica").await;
    browser.until_text("table.requests", &second.replica.id).await;
    browser.screenshot_as("requests_fleet").await;
    browser.finish().await;
    second.shutdown().await;
}
