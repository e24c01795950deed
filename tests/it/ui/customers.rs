//! The Customers view of the API Keys page (SPEC 11's last bullet): the list with each
//! customer's rate limit, quota bar and key count; create, edit and delete (the 409 while keys
//! name it said in words); the customer's view with its keys, their usage and its quota bar,
//! topped up and reset from the page; the read-only token's view without a button that writes;
//! and the key dialog offering the customers that exist.

use http::StatusCode;
use jiff::SignedDuration;
use serde_json::{json, Value};

use super::{a_minute_back, main_buttons, page, rows, setup};
use crate::support::browser::Browser;
use crate::support::{admin_call, spec, Harness, ADMIN_TOKEN, READ_TOKEN};
use keygate::core::environment::Environment;

/// Creates a customer through the admin API.
async fn customer(harness: &Harness, body: Value) {
    let created = admin_call(&harness.gateway, "POST", "/v1/customers", &body.to_string()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
}

/// The customer as `GET /v1/customers/{id}` shows it.
async fn stored(harness: &Harness, id: &str) -> Value {
    let shown = admin_call(&harness.gateway, "GET", &format!("/v1/customers/{id}"), "").await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text());
    shown.json()
}

/// Acme: 50 requests a second and 10 a day, shared by its keys.
async fn acme(harness: &Harness) {
    customer(
        harness,
        json!({"id": "acme", "name": "Acme Corp", "rate_limit": {"requests": 50, "per": "1s"},
               "quota": {"limit": 10, "period": "day"}, "metadata": {"plan": "pro"}}),
    )
    .await;
}

/// A key of `customer` that may read customers; (id, secret).
async fn key_of(harness: &Harness, customer: &str, name: &str) -> (String, String) {
    let mut key = spec(Environment::Production, &["customer:read"]);
    key.customer_id = Some(customer.into());
    key.name = name.into();
    harness.create_key(key).await
}

/// Signs in with `token` and opens the Customers view from the navigation.
async fn open_customers(harness: &Harness, browser: &Browser, token: &str) {
    browser.sign_in(&page(harness), token).await;
    browser
        .find("nav a[data-nav=\"customers\"]")
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("main h2", "Customers").await;
}

/// The text of customer `id`'s row, once its quota and key count have loaded.
async fn row_of(browser: &Browser, id: &str) -> String {
    let css = format!("tr[data-customer-id=\"{id}\"]");
    browser
        .until(
            &format!("{id}'s row loaded"),
            &format!(
                "const row = document.querySelector({}); return !!row && !row.textContent.includes('…');",
                json!(css)
            ),
        )
        .await;
    browser.text(&css).await
}

async fn submit(browser: &Browser) {
    browser
        .find("dialog button[type=\"submit\"]")
        .await
        .click()
        .await
        .unwrap();
}

const FITS: &str = "return document.documentElement.scrollWidth <= window.innerWidth;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_are_listed_with_limits_quota_and_keys_and_created_from_the_page() {
    let Some((harness, browser)) = setup("customers_create").await else {
        return;
    };
    a_minute_back(&harness);
    acme(&harness).await;
    customer(
        &harness,
        json!({"id": "globex", "name": "<img src=x onerror=window.__xss=1>"}),
    )
    .await;
    let (_, one) = key_of(&harness, "acme", "Acme Berlin").await;
    key_of(&harness, "acme", "Acme Paris").await;
    for _ in 0..8 {
        assert_eq!(harness.get("/v1/status", &one).await.status, StatusCode::OK);
    }

    open_customers(&harness, &browser, ADMIN_TOKEN).await;
    let acme_row = row_of(&browser, "acme").await;
    for shown in [
        "Acme Corp",
        "50 per 1s",
        "8 of 10 (80%), renews in 23 hours",
        "2 keys",
    ] {
        assert!(acme_row.contains(shown), "{shown:?} in {acme_row:?}");
    }
    let bar = browser
        .find("tr[data-customer-id=\"acme\"] .quota-bar")
        .await
        .attr("class")
        .await
        .unwrap();
    assert_eq!(bar.as_deref(), Some("quota-bar quota-high"));
    let globex = row_of(&browser, "globex").await;
    assert!(globex.contains("<img src=x onerror=window.__xss=1>"), "{globex}");
    assert!(globex.contains("no keys"), "{globex}");
    assert_eq!(browser.count("main img, main script").await, 0);
    browser.screenshot_as("customers_list").await;
    browser.client.set_window_size(390, 844).await.unwrap();
    assert_eq!(browser.eval(FITS).await, true, "the list fits the phone");
    browser.screenshot_as("customers_list_phone").await;
    browser.click("Create customer").await;
    browser
        .until(
            "the id field focused",
            "return document.activeElement.id === 'f-id';",
        )
        .await;
    assert_eq!(browser.eval(FITS).await, true, "the dialog fits the phone");
    browser.screenshot_as("customers_create_phone").await;
    browser.click("Cancel").await;
    browser.until_gone("dialog").await;
    browser.client.set_window_size(1280, 1100).await.unwrap();

    // A taken id and metadata that is no object are refused in words, beside their fields.
    browser.click("Create customer").await;
    browser.fill("#f-id", "acme").await;
    browser.fill("#f-metadata", "[1, 2]").await;
    submit(&browser).await;
    browser
        .until_text("dialog .form-error", "Metadata must be a JSON object")
        .await;
    browser.fill("#f-metadata", "{\"plan\": \"enterprise\"}").await;
    submit(&browser).await;
    browser
        .until_text(
            "dialog .form-error",
            "a customer with this id exists already (field: id)",
        )
        .await;
    let invalid = browser.find("#f-id").await.attr("aria-invalid").await.unwrap();
    assert_eq!(invalid.as_deref(), Some("true"));
    browser.screenshot_as("customers_create_taken").await;

    browser.fill("#f-id", "initech").await;
    browser.fill("#f-name", "Initech").await;
    browser.fill("#f-requests", "5").await;
    browser.fill("#f-quota_limit", "1000").await;
    submit(&browser).await;
    browser.until_gone("dialog").await;
    browser.until_text("#flash", "Customer “Initech” created.").await;
    browser.until_text("main h2", "Initech").await;
    browser
        .until_text(".quota-words", "0 of 1000 requests used this period")
        .await;
    let initech = stored(&harness, "initech").await;
    assert_eq!(initech["rate_limit"]["requests"], 5);
    assert_eq!(initech["rate_limit"]["per"], "1m");
    assert_eq!(initech["quota"]["limit"], 1000);
    assert_eq!(initech["quota"]["period"], "month");
    assert_eq!(initech["metadata"], json!({"plan": "enterprise"}));
    browser.until_text("main", "No key names this customer yet").await;
    assert!(browser
        .eval("return window.__xss === undefined;")
        .await
        .as_bool()
        .unwrap());
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_shows_its_keys_their_usage_and_its_quota_topped_up_and_reset() {
    let Some((harness, browser)) = setup("customer_view").await else {
        return;
    };
    acme(&harness).await;
    let (berlin, one) = key_of(&harness, "acme", "Acme Berlin").await;
    let (_, two) = key_of(&harness, "acme", "Acme Paris").await;
    for _ in 0..5 {
        assert_eq!(harness.get("/v1/status", &one).await.status, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(
            harness.get("/v1/customers/acme", &two).await.status,
            StatusCode::OK
        );
    }

    open_customers(&harness, &browser, ADMIN_TOKEN).await;
    browser
        .find("tr[data-customer-id=\"acme\"] a.key-name")
        .await
        .click()
        .await
        .unwrap();
    browser.until_text("main h2", "Acme Corp").await;
    browser
        .until_text(".quota-words", "8 of 10 requests used this period (80%), 2 left.")
        .await;
    let renews = harness
        .clock_now()
        .checked_add(SignedDuration::from_hours(24))
        .unwrap();
    let day = renews.strftime("%Y-%m-%d").to_string();
    browser
        .until_text(".quota-renews", &format!("Renews {day}"))
        .await;
    browser
        .until_text("dl.details", "50 per 1s, shared by its keys")
        .await;
    browser.until_text("dl.details", "{\"plan\":\"pro\"}").await;
    browser.until_text("main", "2 keys name this customer.").await;
    assert_eq!(browser.count("table.customer-keys tbody tr").await, 2);
    browser
        .until_text(
            &format!("table.customer-keys tr[data-key-id=\"{berlin}\"]"),
            "Acme Berlin",
        )
        .await;
    browser
        .until_text("figure.usage figcaption", "8 requests in the last 30 days")
        .await;
    browser.until_text(".legend", "2xx 8").await;
    browser.until_text("table.events", "created").await;
    browser.screenshot_as("customer_view").await;
    browser.client.set_window_size(390, 844).await.unwrap();
    assert_eq!(browser.eval(FITS).await, true, "the view fits the phone");
    browser.screenshot_as("customer_view_phone").await;
    browser.client.set_window_size(1280, 1100).await.unwrap();

    // Top up 5: the keys get 7 more requests between them, then the customer's 429.
    browser.click("Top up").await;
    browser
        .until_text("dialog h2", "Top up the quota of “Acme Corp”")
        .await;
    browser.fill("#f-add", "5").await;
    submit(&browser).await;
    browser.until_gone("dialog").await;
    browser.until_text("#flash", "Quota topped up by 5.").await;
    browser
        .until_text(".quota-words", "8 of 15 requests used this period (53%), 7 left.")
        .await;
    browser.until_text("table.events", "quota_topped_up").await;
    for _ in 0..7 {
        assert_eq!(harness.get("/v1/status", &two).await.status, StatusCode::OK);
    }
    let spent = harness.get("/v1/status", &one).await;
    assert_eq!(spent.status, StatusCode::TOO_MANY_REQUESTS, "{}", spent.text());

    browser.click("Reset").await;
    browser
        .until_text("dialog p", "“Acme Corp” has its full 10 a day again")
        .await;
    browser.click("Reset quota").await;
    browser.until_gone("dialog").await;
    browser
        .until_text(".quota-words", "0 of 10 requests used this period (0%), 10 left.")
        .await;
    browser.until_text("table.events", "quota_reset").await;
    assert_eq!(harness.get("/v1/status", &one).await.status, StatusCode::OK);

    // Edit: a new name, no rate limit of its own, other metadata.
    browser.click("Edit").await;
    browser.fill("#f-name", "Acme Inc").await;
    browser.fill("#f-requests", "").await;
    browser.fill("#f-metadata", "{\"plan\": \"team\"}").await;
    submit(&browser).await;
    browser.until_gone("dialog").await;
    browser.until_text("main h2", "Acme Inc").await;
    browser
        .until_text("dl.details", "none: each key only has its own")
        .await;
    let acme = stored(&harness, "acme").await;
    assert_eq!(acme["name"], "Acme Inc");
    assert_eq!(acme["rate_limit"], Value::Null);
    assert_eq!(acme["quota"]["limit"], 10, "the quota stays");
    assert_eq!(acme["metadata"], json!({"plan": "team"}));

    // Its keys, all of them, in the key list filtered by the customer.
    browser.find("a.all-keys").await.click().await.unwrap();
    rows(&browser, 2).await;
    browser
        .until_text(".customer-usage h3", "Daily usage of customer “acme”")
        .await;
    browser.find("a.customer-view").await.click().await.unwrap();
    browser.until_text("main h2", "Acme Inc").await;

    // From one of its keys back to the customer.
    let key = format!("table.customer-keys tr[data-key-id=\"{berlin}\"] a");
    browser.find(&key).await.click().await.unwrap();
    browser.until_text("main h2", "Acme Berlin").await;
    browser.find("dd a.customer-view").await.click().await.unwrap();
    browser.until_text("main h2", "Acme Inc").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_customer_that_keys_name_is_refused_in_words() {
    let Some((harness, browser)) = setup("customer_delete").await else {
        return;
    };
    acme(&harness).await;
    let (id, _) = key_of(&harness, "acme", "Acme Berlin").await;
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.goto(&harness.admin_url("/ui/#/customers/acme")).await;
    browser.until_text("main h2", "Acme Corp").await;
    browser.click("Delete").await;
    browser.until_text("dialog h2", "Delete “Acme Corp”?").await;
    browser.click("Delete customer").await;
    browser
        .until_text(
            "dialog .form-error",
            "Not deleted: 1 key(s) still name this customer; delete them or change their customer_id first.",
        )
        .await;
    browser.until_text("main", "1 key names this customer.").await;
    browser.screenshot_as("customer_delete_refused").await;
    browser.click("Cancel").await;
    browser.until_gone("dialog").await;
    stored(&harness, "acme").await;

    harness.keys.delete(&id).unwrap();
    harness.sync().await;
    browser.click("Delete").await;
    browser.click("Delete customer").await;
    browser
        .until_text("#flash", "Customer “Acme Corp” deleted.")
        .await;
    browser.until_text("main", "No customers yet.").await;
    let gone = admin_call(&harness.gateway, "GET", "/v1/customers/acme", "").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // Its address now says so, and offers to make it again.
    browser.goto(&harness.admin_url("/ui/#/customers/acme")).await;
    browser.until_text("main", "There is no customer “acme”").await;
    browser.button("Create customer “acme”").await;
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_token_sees_customers_without_a_button_that_writes() {
    let Some((harness, browser)) = setup("customers_read_only").await else {
        return;
    };
    acme(&harness).await;
    open_customers(&harness, &browser, READ_TOKEN).await;
    row_of(&browser, "acme").await;
    assert_eq!(main_buttons(&browser).await, Vec::<String>::new());
    browser
        .find("tr[data-customer-id=\"acme\"] a.key-name")
        .await
        .click()
        .await
        .unwrap();
    browser
        .until_text(".quota-words", "0 of 10 requests used this period")
        .await;
    browser
        .until_text("main", "No requests in the last 30 days")
        .await;
    browser.until_text("table.events", "created").await;
    assert_eq!(main_buttons(&browser).await, Vec::<String>::new());
    browser.goto(&harness.admin_url("/ui/#/customers/nobody")).await;
    browser.until_text("main", "There is no customer “nobody”").await;
    assert_eq!(main_buttons(&browser).await, Vec::<String>::new());
    browser.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_dialog_offers_the_customers_that_exist() {
    let Some((harness, browser)) = setup("customers_offered").await else {
        return;
    };
    acme(&harness).await;
    customer(&harness, json!({"id": "globex"})).await;
    browser.sign_in(&page(&harness), ADMIN_TOKEN).await;
    browser.click("Create key").await;
    browser
        .until(
            "two customers offered",
            "return document.querySelectorAll('#customer-ids option').length === 2;",
        )
        .await;
    let offered = browser
        .eval("return Array.from(document.querySelectorAll('#customer-ids option')).map(o => o.value);")
        .await;
    assert_eq!(offered, json!(["acme", "globex"]));
    let list = browser.find("#f-customer_id").await.attr("list").await.unwrap();
    assert_eq!(list.as_deref(), Some("customer-ids"));
    browser.finish().await;
}

/// The Customers view's pure parts (format.js, customer-form.js), table-driven, in the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_words_follow_the_api_values() {
    let Some((harness, browser)) = setup("customers_pure").await else {
        return;
    };
    browser.goto(&page(&harness)).await;
    browser.find("input[name=\"token\"]").await;
    let script = r#"
        const [done] = arguments;
        Promise.all([import("/ui/format.js"), import("/ui/customer-form.js")]).then(([f, c]) => {
          const now = Date.parse("2026-03-01T12:00:00Z");
          const metadata = (text) => { try { return JSON.stringify(c.readMetadata(text)); } catch (e) { return `${e.field}: ${e.message}`; } };
          done([
            f.quotaBrief({ limit: 10, period: "day" }, { limit: 10, used: 8, remaining: 2, resets_at: "2026-03-02T12:00:00Z" }, now),
            f.quotaBrief({ limit: 50, period: "none" }, { limit: 60, used: 6, remaining: 54, resets_at: null }, now),
            f.quotaBrief({ limit: 1, period: "hour" }, { limit: 0, used: 0, remaining: 0, resets_at: "2026-03-01T12:30:00Z" }, now),
            [f.keyCount(0), f.keyCount(1), f.keyCount(3), f.keyCount(100, true)].join(" / "),
            f.reason("customer_quota"),
            f.reason("customer_rate_limited"),
            metadata(""),
            metadata(" {\"plan\": \"pro\"} "),
            metadata("[1]"),
            metadata("null"),
            metadata("{plan: 1}"),
          ]);
        }, (e) => done(["import failed: " + e]));
    "#;
    let out = browser.client.execute_async(script, Vec::new()).await.unwrap();
    let out: Vec<String> = serde_json::from_value(out).unwrap();
    let refused = "metadata: Metadata must be a JSON object, e.g. {\"plan\": \"pro\"}, or empty.";
    let expected = [
        "8 of 10 (80%), renews in 1 day",
        "6 of 60 credits (10%), never renews",
        "0 of 0 (100%), renews in 30 minutes",
        "no keys / 1 key / 3 keys / 100+ keys",
        "customer's quota spent (customer_quota)",
        "customer's rate limit reached (customer_rate_limited)",
        "{}",
        "{\"plan\":\"pro\"}",
        refused,
        refused,
        refused,
    ];
    assert_eq!(out, expected);
    browser.finish().await;
}

/// The README's picture of the Customers view (docs/ui-customers.png). Not a check; run it with
/// `cargo test --test it ui::customers::readme_customers_picture -- --ignored` and copy
/// target/ui-screenshots/readme_customers.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn readme_customers_picture() {
    let Some((harness, browser)) = setup("readme_customers").await else {
        return;
    };
    let plans = [
        json!({"id": "acme", "name": "Acme Corp", "rate_limit": {"requests": 50, "per": "1s"},
               "quota": {"limit": 60, "period": "day"}, "metadata": {"plan": "pro"}}),
        json!({"id": "globex", "name": "Globex", "quota": {"limit": 20, "period": "none"},
               "metadata": {"plan": "credits"}}),
        json!({"id": "hooli", "name": "Hooli", "quota": {"limit": 10, "period": "week"}}),
        json!({"id": "initech", "name": "Initech"}),
    ];
    for plan in plans {
        customer(&harness, plan).await;
    }
    // The manual clock stands still, so a rate limit never refills: keep under Acme's 50.
    let spend = [
        ("acme", 3, 45),
        ("globex", 1, 18),
        ("hooli", 2, 12),
        ("initech", 1, 0),
    ];
    for (id, keys, requests) in spend {
        let mut secrets = Vec::new();
        for n in 0..keys {
            secrets.push(key_of(&harness, id, &format!("{id} key {n}")).await.1);
        }
        for n in 0..requests {
            harness.get("/v1/status", &secrets[n % keys]).await;
        }
    }
    browser.client.set_window_size(1280, 600).await.unwrap();
    open_customers(&harness, &browser, ADMIN_TOKEN).await;
    row_of(&browser, "initech").await;
    row_of(&browser, "acme").await;
    browser.finish().await;
}
