//! A dump's many rows written in bulk (control plane): `keygate store copy` and `store import`
//! of a million keys. Row by row, each key took three round trips and each audit record one:
//! a million keys took over half an hour. Here the keys go in with one binary `COPY` when the
//! target holds none (their secrets claimed in one statement at the end, as a bulk import
//! does), and audit records and usage through a temporary table and one
//! `INSERT ... ON CONFLICT`, so rows the target holds already are kept as row by row.

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::keys::sql_values;
use super::{conflict, Tx};
use crate::control::store::dump::{EventRow, KeyRow, UsageRow};
use crate::control::store::row::KeyWrite;
use crate::control::store::StoreError;

/// Writes `keys` as new rows with their own seq, each at `stamp` or its own revision, into a
/// key table that holds none; then claims their secrets (current and previous) in one
/// statement. A secret two of them share fails it.
pub(super) async fn keys(tx: &Tx<'_>, keys: &[KeyRow], stamp: Option<i64>) -> Result<(), StoreError> {
    let Some(first) = keys.first() else {
        return Ok(());
    };
    tx.batch_execute("SET LOCAL keygate.bulk_import = 'on'").await?;
    let types: Vec<Type> = KeyWrite::Restore
        .values(&first.cells())
        .iter()
        .map(|cell| cell.pg_type())
        .collect();
    let copy = format!("COPY keys ({}) FROM STDIN BINARY", KeyWrite::Restore.names());
    let writer = BinaryCopyInWriter::new(tx.copy_in(&copy).await?, &types);
    let mut writer = std::pin::pin!(writer);
    for key in keys {
        let row = KeyRow {
            revision: stamp.unwrap_or(key.revision),
            ..key.clone()
        };
        let cells = row.cells();
        writer
            .as_mut()
            .write(&sql_values(KeyWrite::Restore, &cells))
            .await?;
    }
    writer.finish().await?;
    let claim = "INSERT INTO key_secrets (hash, key_seq) \
                 SELECT hash, seq FROM keys UNION SELECT previous_hash, seq FROM keys \
                 WHERE previous_hash IS NOT NULL ORDER BY 1";
    let why = "a key of the dump clashes with a key of the target";
    tx.execute(claim, &[]).await.map_err(|e| conflict(e, why))?;
    tx.batch_execute("SET LOCAL keygate.bulk_import = 'off'").await?;
    Ok(())
}

/// Adds the audit records the target lacks (by id).
pub(super) async fn events(tx: &Tx<'_>, events: &[EventRow]) -> Result<(), StoreError> {
    let columns = "id, key_id, at, actor, event, changes, token, client";
    let types = [
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ];
    let rows = events.iter().map(|row| -> [&(dyn ToSql + Sync); 8] {
        [
            &row.id,
            &row.key_id,
            &row.at,
            &row.actor,
            &row.event,
            &row.changes,
            &row.token,
            &row.client,
        ]
    });
    let staged = stage(tx, "key_events", columns, &types, rows).await?;
    let add = format!(
        "INSERT INTO key_events ({columns}) SELECT {columns} FROM {staged} ON CONFLICT (id) DO NOTHING"
    );
    tx.execute(&add, &[]).await?;
    Ok(())
}

/// Sets the usage rows, each for its key's seq in the target (`seq_of` the dump's).
pub(super) async fn usage(
    tx: &Tx<'_>,
    usage: &[UsageRow],
    seq_of: impl Fn(i64) -> Result<i64, StoreError>,
) -> Result<(), StoreError> {
    let seqs = usage
        .iter()
        .map(|row| seq_of(row.key_seq))
        .collect::<Result<Vec<i64>, _>>()?;
    let columns = "key_seq, day, requests";
    let rows = (usage.iter().zip(&seqs))
        .map(|(row, seq)| -> [&(dyn ToSql + Sync); 3] { [seq, &row.day, &row.requests] });
    let staged = stage(
        tx,
        "key_usage",
        columns,
        &[Type::INT8, Type::TEXT, Type::INT8],
        rows,
    )
    .await?;
    let set = format!(
        "INSERT INTO key_usage ({columns}) SELECT {columns} FROM {staged} \
         ON CONFLICT (key_seq, day) DO UPDATE SET requests = excluded.requests"
    );
    tx.execute(&set, &[]).await?;
    Ok(())
}

/// `COPY`s `rows` into a temporary table shaped like `table`'s `columns`, dropped at the
/// commit; its name.
async fn stage<'r, const N: usize>(
    tx: &Tx<'_>,
    table: &str,
    columns: &str,
    types: &[Type; N],
    rows: impl Iterator<Item = [&'r (dyn ToSql + Sync); N]>,
) -> Result<String, StoreError> {
    let staged = format!("restore_{table}");
    tx.batch_execute(&format!(
        "CREATE TEMPORARY TABLE {staged} ON COMMIT DROP AS SELECT {columns} FROM {table} WITH NO DATA"
    ))
    .await?;
    let copy = format!("COPY {staged} ({columns}) FROM STDIN BINARY");
    let writer = BinaryCopyInWriter::new(tx.copy_in(&copy).await?, types);
    let mut writer = std::pin::pin!(writer);
    for row in rows {
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(staged)
}
