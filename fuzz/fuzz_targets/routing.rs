//! Routing (step 1): any normalized path and host against a fixed set of routes, never a
//! panic, and a matched customer segment is one segment of the path.
#![no_main]

use std::sync::OnceLock;

use keygate::proxy::path::normalize;
use keygate::proxy::router::Router;
use libfuzzer_sys::fuzz_target;

const ROUTES: &str = r#"
[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"

[[route]]
name = "customers"
path = "/v1/customers/{customer}"
upstream = "api"
customer_param = "customer"

[[route]]
name = "licenses"
host = "api.example.com"
path = "/v1/customers/{customer}/licenses/{license}"
upstream = "api"
customer_param = "customer"

[[route]]
name = "root"
path = "/"
upstream = "api"
"#;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let config = keygate::config::parse(ROUTES, std::path::Path::new("/")).expect("valid routes");
        Router::new(&config.routes)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host, path) = text.split_once(' ').unwrap_or(("", text));
    let Ok(path) = normalize(path) else {
        return;
    };
    let host = (!host.is_empty()).then_some(host);
    if let Some(matched) = router().route(host, &path) {
        if let Some(customer) = matched.customer {
            assert!(!customer.contains('/'));
            assert!(path.split('/').any(|segment| segment == customer));
        }
    }
});
