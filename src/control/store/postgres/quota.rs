//! The PostgreSQL store's quota counters (control plane): the row is made if missing, then
//! read `FOR UPDATE` inside the caller's transaction, so replicas leasing from one counter take
//! turns; what the row becomes is [`CounterRow`]'s to compute, the same for both stores.

use deadpool_postgres::GenericClient;

use crate::control::store::quota::{
    forever_period, from_column, to_column, CounterId, CounterRow, LeaseAsk, LeaseGrant,
};
use crate::control::store::StoreError;
use crate::core::quota::QuotaChange;

pub(super) async fn lease(client: &impl GenericClient, ask: &LeaseAsk<'_>) -> Result<LeaseGrant, StoreError> {
    let grant = held(client, &ask.counter).await?.lease(ask);
    write(client, &ask.counter, &grant.row).await?;
    Ok(grant)
}

pub(super) async fn change(
    client: &impl GenericClient,
    counter: &CounterId<'_>,
    change: QuotaChange,
) -> Result<CounterRow, StoreError> {
    if change == QuotaChange::Read {
        // A read takes no lock and makes no row: showing a quota writes nothing.
        return Ok(current(client, counter)
            .await?
            .unwrap_or_default()
            .changed(change));
    }
    let row = held(client, counter).await?.changed(change);
    write(client, counter, &row).await?;
    Ok(row)
}

/// Deletes the counters of periods a later one of the same owner followed by `before`.
pub(super) async fn prune(client: &impl GenericClient, before: i64) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM quota_counters AS old WHERE old.period > $2 AND EXISTS (SELECT 1 \
             FROM quota_counters AS later WHERE later.kind = old.kind \
             AND later.owner = old.owner AND later.period > old.period AND later.period <= $1)",
            &[&before, &forever_period()],
        )
        .await?)
}

/// The counter's row, made if missing, locked until the transaction ends.
async fn held(client: &impl GenericClient, counter: &CounterId<'_>) -> Result<CounterRow, StoreError> {
    client
        .execute(
            "INSERT INTO quota_counters (kind, owner, period) VALUES ($1, $2, $3) \
             ON CONFLICT (kind, owner, period) DO NOTHING",
            &[&counter.kind, &counter.owner, &counter.period],
        )
        .await?;
    let row = client
        .query_one(
            &format!("{SELECT_ROW} FOR UPDATE"),
            &[&counter.kind, &counter.owner, &counter.period],
        )
        .await?;
    Ok(counter_row(&row))
}

/// The counter's row as it stands, if there is one; no lock.
async fn current(
    client: &impl GenericClient,
    counter: &CounterId<'_>,
) -> Result<Option<CounterRow>, StoreError> {
    let row = client
        .query_opt(SELECT_ROW, &[&counter.kind, &counter.owner, &counter.period])
        .await?;
    Ok(row.as_ref().map(counter_row))
}

const SELECT_ROW: &str = "SELECT used, added, generation, warned FROM quota_counters \
                          WHERE kind = $1 AND owner = $2 AND period = $3";

fn counter_row(row: &tokio_postgres::Row) -> CounterRow {
    CounterRow {
        used: from_column(row.get(0)),
        added: from_column(row.get(1)),
        generation: row.get(2),
        warned: row.get::<_, i64>(3) as u64,
    }
}

async fn write(
    client: &impl GenericClient,
    counter: &CounterId<'_>,
    row: &CounterRow,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE quota_counters SET used = $4, added = $5, generation = $6, warned = $7 \
             WHERE kind = $1 AND owner = $2 AND period = $3",
            &[
                &counter.kind,
                &counter.owner,
                &counter.period,
                &to_column(row.used),
                &to_column(row.added),
                &row.generation,
                &(row.warned as i64),
            ],
        )
        .await?;
    Ok(())
}
