//! Customers on the admin API (control plane, SPEC 11): `POST|GET /v1/customers`,
//! `GET|PATCH|DELETE /v1/customers/{id}` (`DELETE` is 409 while keys name the customer),
//! `POST /v1/customers/{id}/quota` and `GET /v1/customers/{id}/events`, through the same
//! [`CustomerService`] the CLI uses. `GET` shows the quota's state (`quota_state`) from the
//! limiter that enforces it, as for keys ([`super::quota`]); the list adds to each customer
//! how many keys name it (`key_count`, one store query a page).
//!
//! The id in the path is percent-decoded: a customer id may hold any character but `/`.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::quota::{quota_state, ChangeBody};
use super::{no_content, ok, paged, paging, query, read_json, with_status, Admin, Answer, ApiError};
use crate::control::customers::{
    CustomerError, CustomerPatch, CustomerRequest, CustomerService, CustomerView,
};
use crate::core::quota::{QuotaChange, QuotaUse};
use crate::proxy::limits::Owner;

impl From<CustomerError> for ApiError {
    fn from(error: CustomerError) -> Self {
        match error {
            CustomerError::Invalid { field, message } => ApiError::bad(field, message),
            CustomerError::NotFound(_) => ApiError::status(StatusCode::NOT_FOUND, "customer not found"),
            CustomerError::Conflict(why) => ApiError {
                status: StatusCode::CONFLICT,
                message: why,
                field: None,
            },
            CustomerError::Store(error) => {
                tracing::error!(%error, "admin API: store failed");
                ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
            }
        }
    }
}

/// A customer as `GET /v1/customers/{id}` shows it: the object, and its quota's state when it
/// has a quota.
#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    view: CustomerView,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_state: Option<QuotaUse>,
}

/// A customer as `GET /v1/customers` lists it: as shown alone, and how many keys (not
/// deleted) name it.
#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    shown: Shown,
    key_count: u64,
}

/// The customer id of a path segment, percent-decoded.
fn path_id(segment: &str) -> Result<String, ApiError> {
    crate::core::percent::decode(segment, false)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::status(StatusCode::NOT_FOUND, "customer not found"))
}

/// Runs a customer service call on the blocking pool: the store is synchronous.
async fn blocking<T: Send + 'static>(
    admin: &Admin,
    call: impl FnOnce(&CustomerService) -> Result<T, CustomerError> + Send + 'static,
) -> Result<T, ApiError> {
    let customers = admin.keys.customers();
    match tokio::task::spawn_blocking(move || call(&customers)).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => {
            tracing::error!(%error, "admin API: store task failed");
            Err(ApiError::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
            ))
        }
    }
}

/// Like [`blocking`] for a change: this gateway's customer map takes it before the answer goes
/// out (other gateways at their next sync), as for keys.
async fn changing<T: Send + 'static>(
    admin: &Admin,
    call: impl FnOnce(&CustomerService) -> Result<T, CustomerError> + Send + 'static,
) -> Result<T, ApiError> {
    let sync = admin.sync.clone();
    blocking(admin, move |customers| {
        let changed = call(customers)?;
        if let Err(error) = sync.sync_once() {
            tracing::error!(%error, "admin API: change stored, but not yet in force on this gateway");
        }
        Ok(changed)
    })
    .await
}

/// `GET /v1/customers`: a page in creation order, each customer with how many keys name it
/// (one store query for the page) and its quota's state when it has a quota (left out when
/// the limiter cannot say).
pub(super) async fn list(admin: &Admin, request: &Request<Incoming>) -> Answer {
    let pairs = query(request, &["limit", "cursor"])?;
    let (after, limit) = paging(&pairs)?;
    let (page, next) = blocking(admin, move |customers| {
        customers.page_with_key_counts(after, limit)
    })
    .await?;
    // Read at once; a state that cannot be read is left out of its row, not the page's failure.
    let states = page.iter().map(|(customer, _)| async move {
        let spec = customer.spec.quota.as_ref()?;
        let owner = Owner::Customer { id: &customer.id };
        quota_state(admin, owner, spec, QuotaChange::Read).await.ok()
    });
    let states = futures_util::future::join_all(states).await;
    let listed: Vec<Listed> = page
        .iter()
        .zip(states)
        .map(|((customer, key_count), quota_state)| Listed {
            shown: Shown {
                view: CustomerView::of(customer),
                quota_state,
            },
            key_count: *key_count,
        })
        .collect();
    Ok(paged(&listed, next, request))
}

/// `POST /v1/customers`: 201 with the customer.
pub(super) async fn create(admin: &Admin, request: Request<Incoming>) -> Answer {
    let body: CustomerRequest = read_json(request).await?;
    let created = changing(admin, move |customers| customers.create(body)).await?;
    Ok(with_status(StatusCode::CREATED, &created))
}

/// `GET /v1/customers/{id}`, with `quota_state` when it has a quota.
pub(super) async fn show(admin: &Admin, segment: &str) -> Answer {
    let id = path_id(segment)?;
    let customer = blocking(admin, move |customers| customers.stored(&id)).await?;
    let quota_state = match &customer.spec.quota {
        Some(spec) => {
            let owner = Owner::Customer { id: &customer.id };
            Some(quota_state(admin, owner, spec, QuotaChange::Read).await?)
        }
        None => None,
    };
    let view = CustomerView::of(&customer);
    Ok(ok(&Shown { view, quota_state }))
}

/// `PATCH /v1/customers/{id}`.
pub(super) async fn update(admin: &Admin, segment: &str, request: Request<Incoming>) -> Answer {
    let id = path_id(segment)?;
    let patch: CustomerPatch = read_json(request).await?;
    let updated = changing(admin, move |customers| customers.update(&id, patch)).await?;
    Ok(ok(&updated))
}

/// `DELETE /v1/customers/{id}`: 204, or 409 while keys name it.
pub(super) async fn delete(admin: &Admin, segment: &str) -> Answer {
    let id = path_id(segment)?;
    changing(admin, move |customers| customers.delete(&id)).await?;
    Ok(no_content())
}

/// `POST /v1/customers/{id}/quota`: `{"add": N}` or `{"reset": true}`, audited, answered with
/// the quota's state after it.
pub(super) async fn change_quota(admin: &Admin, segment: &str, request: Request<Incoming>) -> Answer {
    let id = path_id(segment)?;
    let change = read_json::<ChangeBody>(request).await?.change()?;
    let customer = blocking(admin, move |customers| customers.stored(&id)).await?;
    let Some(spec) = customer.spec.quota else {
        return Err(ApiError::status(
            StatusCode::CONFLICT,
            "the customer has no quota",
        ));
    };
    let owner = Owner::Customer { id: &customer.id };
    let after = quota_state(admin, owner, &spec, change).await?;
    let id = customer.id.clone();
    blocking(admin, move |customers| customers.record_quota_change(&id, change)).await?;
    Ok(ok(&after))
}

/// `GET /v1/customers/{id}/events`: its audit trail, kept after its deletion.
pub(super) async fn events(admin: &Admin, segment: &str, request: &Request<Incoming>) -> Answer {
    let id = path_id(segment)?;
    let pairs = query(request, &["limit", "cursor"])?;
    let (after, limit) = paging(&pairs)?;
    let (events, next) = blocking(admin, move |customers| customers.events(&id, after, limit)).await?;
    Ok(paged(&events, next, request))
}
