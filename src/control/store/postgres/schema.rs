//! The PostgreSQL store's schema and its migrations (control plane), applied once under an
//! advisory lock however many gateways start together.

use super::postgres_error;
use crate::control::store::StoreError;

/// Schema versions, applied in order under an advisory lock; `keygate_schema` records how many
/// ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (name, value) VALUES ('revision', 0);
    CREATE TABLE keys (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        environment TEXT NOT NULL,
        hash BYTEA NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        permissions TEXT NOT NULL,
        rate_limit TEXT,
        customer_id TEXT,
        allowed_ips TEXT NOT NULL,
        expires_at BIGINT,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        last_used_at BIGINT,
        previous_hash BYTEA,
        grace_until BIGINT,
        previous_last_used_at BIGINT,
        metadata TEXT NOT NULL,
        revision BIGINT NOT NULL,
        idle_from BIGINT
    );
    CREATE INDEX keys_revision ON keys (revision);
    CREATE INDEX keys_customer ON keys (customer_id);
    -- Every secret a key answers to, current or in its grace period, belongs to that key only:
    -- kept by a trigger, so rows written by any client are held to it too.
    CREATE TABLE key_secrets (
        hash BYTEA PRIMARY KEY,
        key_seq BIGINT NOT NULL REFERENCES keys (seq)
    );
    CREATE FUNCTION keygate_claim_secrets() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- A bulk import claims its secrets in one statement at its end, in its transaction.
        IF current_setting('keygate.bulk_import', true) = 'on' THEN
            RETURN NEW;
        END IF;
        DELETE FROM key_secrets WHERE key_seq = NEW.seq
            AND hash IS DISTINCT FROM NEW.hash AND hash IS DISTINCT FROM NEW.previous_hash;
        INSERT INTO key_secrets (hash, key_seq) VALUES (NEW.hash, NEW.seq) ON CONFLICT (hash) DO NOTHING;
        IF NEW.previous_hash IS NOT NULL THEN
            INSERT INTO key_secrets (hash, key_seq) VALUES (NEW.previous_hash, NEW.seq)
                ON CONFLICT (hash) DO NOTHING;
        END IF;
        IF EXISTS (SELECT 1 FROM key_secrets WHERE hash IN (NEW.hash, NEW.previous_hash)
                   AND key_seq <> NEW.seq) THEN
            RAISE EXCEPTION 'this secret is already in use' USING ERRCODE = 'unique_violation';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER keys_claim_secrets AFTER INSERT OR UPDATE OF hash, previous_hash ON keys
        FOR EACH ROW EXECUTE FUNCTION keygate_claim_secrets();
    CREATE TABLE key_usage (
        key_seq BIGINT NOT NULL REFERENCES keys (seq),
        day TEXT NOT NULL,
        requests BIGINT NOT NULL,
        PRIMARY KEY (key_seq, day)
    );
    CREATE TABLE key_events (
        id BIGSERIAL PRIMARY KEY,
        key_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        changes TEXT NOT NULL
    );
    CREATE INDEX key_events_key ON key_events (key_id, id);
    CREATE TABLE idle_warnings (
        key_seq BIGINT NOT NULL REFERENCES keys (seq),
        deadline BIGINT NOT NULL,
        threshold BIGINT NOT NULL,
        sent_at BIGINT NOT NULL,
        PRIMARY KEY (key_seq, deadline, threshold)
    );
    CREATE TABLE webhook_outbox (
        id BIGSERIAL PRIMARY KEY,
        payload TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL);
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
        key_seq BIGINT NOT NULL,
        route TEXT NOT NULL,
        status INTEGER NOT NULL,
        hour BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        PRIMARY KEY (key_seq, hour, route, status)
    );
    CREATE INDEX usage_hours_hour ON usage_hours (hour);
"#,
    // A key whose secret was reported leaked under `leaks.action = "quarantine"`.
    r#"
    ALTER TABLE keys ADD COLUMN quarantined BIGINT NOT NULL DEFAULT 0;
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
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        rate_limit TEXT,
        quota TEXT,
        metadata TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        revision BIGINT NOT NULL,
        deleted BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX customers_revision ON customers (revision);
    CREATE TABLE customer_events (
        id BIGSERIAL PRIMARY KEY,
        customer_id TEXT NOT NULL,
        at BIGINT NOT NULL,
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
        revision BIGINT NOT NULL,
        synced_at_ms BIGINT,
        limiter TEXT NOT NULL,
        started_at_ms BIGINT NOT NULL,
        heartbeat_at_ms BIGINT NOT NULL
    );
"#,
    // The fleet's quota counters, one per owner and period, that replicas lease blocks from
    // when quotas are not shared through Redis (`control::store::quota`).
    r#"
    CREATE TABLE quota_counters (
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        period BIGINT NOT NULL,
        used BIGINT NOT NULL DEFAULT 0,
        added BIGINT NOT NULL DEFAULT 0,
        generation BIGINT NOT NULL DEFAULT 0,
        warned BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (kind, owner, period)
    );
"#,
    // The secrets by key, as SQLite's `secret_hashes_key`: a change to a key's secrets runs the
    // secrets' trigger, whose `DELETE ... WHERE key_seq = NEW.seq` scanned every secret
    // without it (60 ms idle at a million keys, about a second under load: each revocation,
    // leak report and receipt waited for it, issue 24). And the trigger's work is skipped when
    // an update leaves both secrets as they were: the store's key writes set every column, so
    // a revocation or a leak report ran it too (`UPDATE OF` fires on the columns named, not on
    // the values changed; a `WHEN` on OLD cannot go on a trigger that also fires on INSERT).
    r#"
    CREATE INDEX key_secrets_key_seq ON key_secrets (key_seq);
    CREATE OR REPLACE FUNCTION keygate_claim_secrets() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- A bulk import claims its secrets in one statement at its end, in its transaction.
        IF current_setting('keygate.bulk_import', true) = 'on' THEN
            RETURN NEW;
        END IF;
        -- The secrets' rows are the key's already: nothing to claim or release.
        IF TG_OP = 'UPDATE' AND OLD.hash IS NOT DISTINCT FROM NEW.hash
                AND OLD.previous_hash IS NOT DISTINCT FROM NEW.previous_hash THEN
            RETURN NEW;
        END IF;
        DELETE FROM key_secrets WHERE key_seq = NEW.seq
            AND hash IS DISTINCT FROM NEW.hash AND hash IS DISTINCT FROM NEW.previous_hash;
        INSERT INTO key_secrets (hash, key_seq) VALUES (NEW.hash, NEW.seq) ON CONFLICT (hash) DO NOTHING;
        IF NEW.previous_hash IS NOT NULL THEN
            INSERT INTO key_secrets (hash, key_seq) VALUES (NEW.previous_hash, NEW.seq)
                ON CONFLICT (hash) DO NOTHING;
        END IF;
        IF EXISTS (SELECT 1 FROM key_secrets WHERE hash IN (NEW.hash, NEW.previous_hash)
                   AND key_seq <> NEW.seq) THEN
            RAISE EXCEPTION 'this secret is already in use' USING ERRCODE = 'unique_violation';
        END IF;
        RETURN NEW;
    END $$;
"#,
];

/// Applies the migrations this store has not run, once, even when several gateways start
/// together: they queue on an advisory lock (one per schema). A schema newer than this build
/// is refused.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    const LOCK: &str = "SELECT pg_advisory_lock(hashtext('keygate_migrations:' || current_schema()))";
    const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('keygate_migrations:' || current_schema()))";
    client.execute(LOCK, &[]).await?;
    let result = async {
        // Looked for (in the schema a CREATE TABLE would make it in) rather than `CREATE TABLE
        // IF NOT EXISTS`, whose NOTICE ("relation ... already exists, skipping") tokio-postgres
        // logs at INFO on every start. The lock makes the look and the create one step.
        const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_tables \
             WHERE schemaname = current_schema() AND tablename = 'keygate_schema')";
        let exists: bool = client.query_one(EXISTS, &[]).await?.get(0);
        if !exists {
            client
                .batch_execute("CREATE TABLE keygate_schema (version INTEGER NOT NULL)")
                .await?;
        }
        let applied: i32 = client
            .query_opt("SELECT version FROM keygate_schema", &[])
            .await?
            .map_or(0, |row| row.get(0));
        if applied as usize > MIGRATIONS.len() {
            return Err(StoreError::Unavailable(format!(
                "the store's schema version {applied} is newer than this keygate knows ({}); upgrade keygate",
                MIGRATIONS.len()
            )));
        }
        for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let version = version as i32 + 1;
            let failed = |e: tokio_postgres::Error| {
                StoreError::Unavailable(format!("migration {version}: {}", postgres_error(&e)))
            };
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await.map_err(failed)?;
            tx.execute("DELETE FROM keygate_schema", &[]).await?;
            tx.execute("INSERT INTO keygate_schema (version) VALUES ($1)", &[&version])
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }
    .await;
    client.execute(UNLOCK, &[]).await?;
    result
}
