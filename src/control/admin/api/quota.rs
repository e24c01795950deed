//! A key's quota on the admin API (control plane): its state on `GET /v1/keys/{id}` and in the
//! answer to `PATCH /v1/keys/{id}` (`quota_state`) and an operator's top-up or reset, `POST /v1/keys/{id}/quota` (SPEC 11).
//!
//! The counters live in the limiter that enforces them, not in the store: in Redis with
//! `rate_limit.backend = "redis"` (the fleet's), else in this replica's memory. A read while
//! Redis does not answer shows this replica's local counter, the one enforcing meanwhile; a
//! change then is refused (503) rather than made where the fleet would not see it.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{blocking, changing, ok, read_json, Admin, Answer, ApiError};
use crate::control::keys::KeyPatch;
use crate::control::store::StoredKey;
use crate::core::key::KeyView;
use crate::core::quota::{QuotaChange, QuotaSpec, QuotaUse, MAX_QUOTA_LIMIT};
use crate::proxy::limits::Owner;
use crate::proxy::state::Shared;

/// A key as `GET /v1/keys/{id}` shows it: the key object, and its quota's state when it has
/// a quota.
#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    view: KeyView,
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_state: Option<QuotaUse>,
}

/// `POST /v1/keys/{id}/quota`: `{"add": N}` or `{"reset": true}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangeBody {
    #[serde(default)]
    add: Option<u64>,
    #[serde(default)]
    reset: Option<bool>,
}

impl ChangeBody {
    pub(super) fn change(self) -> Result<QuotaChange, ApiError> {
        match (self.add, self.reset) {
            (Some(more), None) if (1..=MAX_QUOTA_LIMIT).contains(&more) => Ok(QuotaChange::Add(more)),
            (Some(_), None) => Err(ApiError::bad(
                "add",
                format!("must be a whole number from 1 to {MAX_QUOTA_LIMIT}"),
            )),
            (None, Some(true)) => Ok(QuotaChange::Reset),
            (None, Some(false)) => Err(ApiError::bad("reset", "must be true")),
            _ => Err(ApiError::bad("body", r#"give {"add": N} or {"reset": true}"#)),
        }
    }
}

/// `GET /v1/keys/{id}`.
pub(super) async fn show(admin: &Admin, id: String) -> Answer {
    let key = blocking(admin, move |keys| keys.stored(&id)).await?;
    shown(admin, &key).await
}

/// `PATCH /v1/keys/{id}`: the key after the change, with its quota's state as `GET` shows it.
pub(super) async fn update(admin: &Admin, id: String, request: Request<Incoming>) -> Answer {
    let patch: KeyPatch = read_json(request).await?;
    let key = changing(admin, move |keys| {
        keys.update(&id, patch)?;
        keys.stored(&id)
    })
    .await?;
    shown(admin, &key).await
}

/// The key object and its quota's state.
async fn shown(admin: &Admin, key: &StoredKey) -> Answer {
    let view = key.view(admin.keys.now());
    let quota_state = match &key.spec.quota {
        Some(spec) => Some(state(&admin.shared, key, spec, QuotaChange::Read).await?),
        None => None,
    };
    Ok(ok(&Shown { view, quota_state }))
}

/// `POST /v1/keys/{id}/quota`: the change, audited, answered with the quota's state after it.
pub(super) async fn change(admin: &Admin, id: String, request: Request<Incoming>) -> Answer {
    let change = read_json::<ChangeBody>(request).await?.change()?;
    let key = blocking(admin, move |keys| keys.stored(&id)).await?;
    let Some(spec) = key.spec.quota else {
        return Err(ApiError::status(StatusCode::CONFLICT, "the key has no quota"));
    };
    let after = state(&admin.shared, &key, &spec, change).await?;
    let id = key.id.clone();
    blocking(admin, move |keys| keys.record_quota_change(&id, change)).await?;
    Ok(ok(&after))
}

/// A key's quota's state after `change`, in the limiter that enforces it.
async fn state(
    shared: &Shared,
    key: &StoredKey,
    spec: &QuotaSpec,
    change: QuotaChange,
) -> Result<QuotaUse, ApiError> {
    let owner = Owner::Key {
        seq: key.seq,
        id: &key.id,
        customer: key.spec.customer_id.as_deref(),
    };
    quota_state(shared, owner, spec, change).await
}

/// The state of `owner`'s quota after `change`, in the limiter that enforces it: a key's or a
/// customer's.
pub(super) async fn quota_state(
    shared: &Shared,
    owner: Owner<'_>,
    spec: &QuotaSpec,
    change: QuotaChange,
) -> Result<QuotaUse, ApiError> {
    let Some(redis) = shared.shared_limits.as_ref().filter(|redis| redis.is_shared()) else {
        return Ok(shared.key_limits.quota(owner, spec, change));
    };
    match (redis.quota(owner, spec, change).await, change) {
        (Ok(state), _) => Ok(state),
        (Err(_), QuotaChange::Read) => Ok(shared.key_limits.quota(owner, spec, change)),
        (Err(_), QuotaChange::Add(_) | QuotaChange::Reset) => Err(ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "the shared rate-limit backend (Redis) did not answer; the quota is unchanged",
        )),
    }
}
