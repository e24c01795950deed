//! The SQLite store's schema and its migrations (control plane).

use rusqlite::{Connection, TransactionBehavior};

use crate::control::store::StoreError;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (name, value) VALUES ('revision', 0);
    CREATE TABLE keys (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        environment TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        permissions TEXT NOT NULL,
        rate_limit TEXT,
        customer_id TEXT,
        allowed_ips TEXT NOT NULL,
        expires_at INTEGER,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_used_at INTEGER,
        previous_hash BLOB,
        grace_until INTEGER,
        previous_last_used_at INTEGER,
        metadata TEXT NOT NULL,
        revision INTEGER NOT NULL
    );
    CREATE INDEX keys_revision ON keys (revision);
    CREATE INDEX keys_customer ON keys (customer_id);
    CREATE TABLE key_usage (
        key_seq INTEGER NOT NULL REFERENCES keys (seq),
        day TEXT NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (key_seq, day)
    ) WITHOUT ROWID;
"#,
    r#"
    ALTER TABLE keys ADD COLUMN idle_from INTEGER;
    CREATE TABLE key_events (
        id INTEGER PRIMARY KEY,
        key_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        changes TEXT NOT NULL
    );
    CREATE INDEX key_events_key ON key_events (key_id, id);
    CREATE TABLE idle_warnings (
        key_seq INTEGER NOT NULL REFERENCES keys (seq),
        deadline INTEGER NOT NULL,
        threshold INTEGER NOT NULL,
        sent_at INTEGER NOT NULL,
        PRIMARY KEY (key_seq, deadline, threshold)
    ) WITHOUT ROWID;
    CREATE TABLE webhook_outbox (
        id INTEGER PRIMARY KEY,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms INTEGER NOT NULL);
"#,
    // One secret, one key: every hash that authenticates (a key's current secret, and the one a
    // regeneration replaced while its grace runs) appears once across all keys. The UNIQUE on
    // keys.hash and one on previous_hash could not see a current secret equal to another key's
    // previous one, so every secret gets a row here, kept by triggers in the same statement as
    // the change: whatever writes the keys table (keygate, a script, sqlite3) cannot make two
    // keys share a secret. Tombstones keep their secret: a deleted key's secret is not reissued.
    //
    // Stores written before this check may hold such a pair already: the grace period of the
    // replaced secret ends (it is the side that was meant to stop anyway), with a new revision
    // so running gateways drop it at their next sync.
    r#"
    UPDATE meta SET value = value + 1 WHERE name = 'revision' AND EXISTS (
        SELECT 1 FROM keys k WHERE k.previous_hash IS NOT NULL AND (
            k.previous_hash IN (SELECT hash FROM keys)
            OR EXISTS (SELECT 1 FROM keys o WHERE o.previous_hash = k.previous_hash AND o.seq < k.seq)));
    UPDATE keys SET previous_hash = NULL, grace_until = NULL, previous_last_used_at = NULL,
        revision = (SELECT value FROM meta WHERE name = 'revision')
    WHERE previous_hash IS NOT NULL AND (
        previous_hash IN (SELECT hash FROM keys)
        OR EXISTS (SELECT 1 FROM keys o WHERE o.previous_hash = keys.previous_hash AND o.seq < keys.seq));
    CREATE TABLE secret_hashes (
        hash BLOB PRIMARY KEY,
        key_seq INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('current', 'previous'))
    ) WITHOUT ROWID;
    CREATE INDEX secret_hashes_key ON secret_hashes (key_seq);
    INSERT INTO secret_hashes (hash, key_seq, kind) SELECT hash, seq, 'current' FROM keys;
    INSERT INTO secret_hashes (hash, key_seq, kind)
        SELECT previous_hash, seq, 'previous' FROM keys WHERE previous_hash IS NOT NULL;
    CREATE TRIGGER keys_secrets_insert AFTER INSERT ON keys BEGIN
        INSERT INTO secret_hashes (hash, key_seq, kind) VALUES (NEW.hash, NEW.seq, 'current');
        INSERT INTO secret_hashes (hash, key_seq, kind)
            SELECT NEW.previous_hash, NEW.seq, 'previous' WHERE NEW.previous_hash IS NOT NULL;
    END;
    CREATE TRIGGER keys_secrets_update AFTER UPDATE OF seq, hash, previous_hash ON keys BEGIN
        DELETE FROM secret_hashes WHERE key_seq = OLD.seq;
        INSERT INTO secret_hashes (hash, key_seq, kind) VALUES (NEW.hash, NEW.seq, 'current');
        INSERT INTO secret_hashes (hash, key_seq, kind)
            SELECT NEW.previous_hash, NEW.seq, 'previous' WHERE NEW.previous_hash IS NOT NULL;
    END;
    CREATE TRIGGER keys_secrets_delete AFTER DELETE ON keys BEGIN
        DELETE FROM secret_hashes WHERE key_seq = OLD.seq;
    END;
"#,
    // Which admin token made a change through the admin API, and from which client address.
    r#"
    ALTER TABLE key_events ADD COLUMN token TEXT;
    ALTER TABLE key_events ADD COLUMN client TEXT;
"#,
    // Usage analytics: requests by key, route, status and hour, added by every replica's usage
    // flush; keyed by key and hour first, as `GET /v1/usage` reads them, and by hour for the
    // retention's prune.
    r#"
    CREATE TABLE usage_hours (
        key_seq INTEGER NOT NULL,
        route TEXT NOT NULL,
        status INTEGER NOT NULL,
        hour INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (key_seq, hour, route, status)
    ) WITHOUT ROWID;
    CREATE INDEX usage_hours_hour ON usage_hours (hour);
"#,
    // A key whose secret was reported leaked under `leaks.action = "quarantine"`.
    r#"
    ALTER TABLE keys ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
"#,
    // A key's quota (SPEC 11), as JSON: {"limit","period","anchor"}.
    r#"
    ALTER TABLE keys ADD COLUMN quota TEXT;
"#,
    // Customers (SPEC 11): their own rate limit, quota and metadata, shared by their keys;
    // stamped with the store-wide revision like keys, deleted ones kept as tombstones; and
    // their audit trail.
    r#"
    CREATE TABLE customers (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        rate_limit TEXT,
        quota TEXT,
        metadata TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX customers_revision ON customers (revision);
    CREATE TABLE customer_events (
        id INTEGER PRIMARY KEY,
        customer_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        changes TEXT NOT NULL,
        token TEXT,
        client TEXT
    );
    CREATE INDEX customer_events_customer ON customer_events (customer_id, id);
"#,
    // The replicas on this store, each writing its own row once a second (SPEC 12).
    r#"
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        version TEXT NOT NULL,
        advertise TEXT,
        config_digest TEXT NOT NULL,
        revision INTEGER NOT NULL,
        synced_at_ms INTEGER,
        limiter TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        heartbeat_at_ms INTEGER NOT NULL
    );
"#,
    // The fleet's quota counters, one per owner and period, that replicas lease blocks from
    // when quotas are not shared through Redis (`control::store::quota`).
    r#"
    CREATE TABLE quota_counters (
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        period INTEGER NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        added INTEGER NOT NULL DEFAULT 0,
        generation INTEGER NOT NULL DEFAULT 0,
        warned INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (kind, owner, period)
    ) WITHOUT ROWID;
"#,
    // The keys' uniqueness as indexes of their own, so a bulk import can set them aside and
    // build them again from one sort (`sqlite::import`): a column's UNIQUE makes an index that
    // cannot be dropped, and a million entries at random places cost several times a sort.
    // A key's id stays unique (`keys_id`). Its secret's hash has no index of its own any more:
    // `secret_hashes` holds every secret that authenticates, each once (current and previous
    // alike, kept by the triggers), and lookups by hash go through it; the keys' own UNIQUE on
    // hash was a second copy of that guarantee, 45 MB for a million keys.
    //
    // SQLite changes a column's constraints only by making the table again: the rows are
    // copied with their seq, so the rows that name a key by seq still point at it (foreign keys
    // are off while migrations run, see `migrate`), and the indexes and triggers dropped with
    // the old table are made again as they were.
    //
    // The secrets' rows are rewritten only when an update changes a secret: the store's key
    // writes set every column, so a revocation or a leak report rewrote them too (`UPDATE OF`
    // fires on the columns named, not on the values changed).
    r#"
    CREATE TABLE keys_new (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        environment TEXT NOT NULL,
        hash BLOB NOT NULL,
        prefix TEXT NOT NULL,
        permissions TEXT NOT NULL,
        rate_limit TEXT,
        customer_id TEXT,
        allowed_ips TEXT NOT NULL,
        expires_at INTEGER,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_used_at INTEGER,
        previous_hash BLOB,
        grace_until INTEGER,
        previous_last_used_at INTEGER,
        metadata TEXT NOT NULL,
        revision INTEGER NOT NULL,
        idle_from INTEGER,
        quarantined INTEGER NOT NULL DEFAULT 0,
        quota TEXT
    );
    INSERT INTO keys_new (seq, id, name, environment, hash, prefix, permissions, rate_limit,
        customer_id, allowed_ips, expires_at, status, created_at, updated_at, last_used_at,
        previous_hash, grace_until, previous_last_used_at, metadata, revision, idle_from,
        quarantined, quota)
    SELECT seq, id, name, environment, hash, prefix, permissions, rate_limit,
        customer_id, allowed_ips, expires_at, status, created_at, updated_at, last_used_at,
        previous_hash, grace_until, previous_last_used_at, metadata, revision, idle_from,
        quarantined, quota
    FROM keys ORDER BY seq;
    DROP TABLE keys;
    ALTER TABLE keys_new RENAME TO keys;
    CREATE UNIQUE INDEX keys_id ON keys (id);
    CREATE INDEX keys_revision ON keys (revision);
    CREATE INDEX keys_customer ON keys (customer_id);
    CREATE TRIGGER keys_secrets_insert AFTER INSERT ON keys BEGIN
        INSERT INTO secret_hashes (hash, key_seq, kind) VALUES (NEW.hash, NEW.seq, 'current');
        INSERT INTO secret_hashes (hash, key_seq, kind)
            SELECT NEW.previous_hash, NEW.seq, 'previous' WHERE NEW.previous_hash IS NOT NULL;
    END;
    CREATE TRIGGER keys_secrets_update AFTER UPDATE OF seq, hash, previous_hash ON keys
    WHEN OLD.seq IS NOT NEW.seq OR OLD.hash IS NOT NEW.hash
        OR OLD.previous_hash IS NOT NEW.previous_hash
    BEGIN
        DELETE FROM secret_hashes WHERE key_seq = OLD.seq;
        INSERT INTO secret_hashes (hash, key_seq, kind) VALUES (NEW.hash, NEW.seq, 'current');
        INSERT INTO secret_hashes (hash, key_seq, kind)
            SELECT NEW.previous_hash, NEW.seq, 'previous' WHERE NEW.previous_hash IS NOT NULL;
    END;
    CREATE TRIGGER keys_secrets_delete AFTER DELETE ON keys BEGIN
        DELETE FROM secret_hashes WHERE key_seq = OLD.seq;
    END;
"#,
];

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if applied as usize > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the store's schema version {applied} is newer than this keygate knows ({}); upgrade keygate",
            MIGRATIONS.len()
        )));
    }
    if applied as usize == MIGRATIONS.len() {
        return Ok(());
    }
    // A migration that makes a table again drops the old one: with foreign keys on, that
    // would check (and refuse) the rows that name its keys, though the new table holds the
    // same seqs. The pragma is a no-op inside a transaction, so it is off around them.
    let checked: i64 = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let migrated = apply(conn, applied as usize);
    conn.pragma_update(None, "foreign_keys", checked)?;
    migrated
}

fn apply(conn: &mut Connection, applied: usize) -> Result<(), StoreError> {
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
