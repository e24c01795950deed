//! keygate's integration tests, one binary: each module is one area of the product driven
//! from the outside (the real binary, or a gateway started in-process on port 0), all sharing
//! the harness in `support`. One binary links the crate once instead of once per file.

mod support;

mod admin_api;
mod analytics;
mod cli;
mod customers;
mod deploy;
mod drain;
mod edge;
mod fleet;
mod forwarding;
mod https_upstream;
mod idle_expiry;
mod leaks;
mod lifecycle;
mod limiter_conformance;
mod logs;
mod postgres_tls;
mod protective_limits;
mod quota_fleet;
mod quotas;
mod reference;
mod reload;
mod replicas;
mod request_path;
mod shared_limits;
mod snapshot_customers;
mod store_conformance;
mod store_copy;
mod store_faults;
mod tls;
mod traces;
mod transparency;
mod ui;
mod ui_headers;
mod upgrade;
mod upstream_pool;
