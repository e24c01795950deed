#!/usr/bin/env python3
"""PostgreSQL bulk-import phases, outside keygate: the server's time for each phase of a
one-transaction import of N keys into keygate's key schema (migration 1 of
src/control/store/postgres/schema.rs, read from the source), through psql: `COPY` of the key
rows, `COPY` of their audit records, the claim of the secrets (EXPLAIN ANALYZE: the foreign
key's share is its trigger line), and what was set aside made again. Separates what the schema
costs from what keygate's code costs, and says what setting each thing aside saves.
    python3 benches/import/postgres_phases.py N MODE [URL]
MODE joins with '+': base (everything kept up row by row; the trigger on and told to let the
rows by, as keygate does); noidx (the trigger disabled, the keys' unique id and hash and
keys_customer dropped, made again at the end); evidx (key_events_key too); fkset (key_secrets'
foreign key dropped before the claim and added after: checked in one join); sort (the claim
in hash order); pkset (key_secrets' primary key dropped before the claim and added after);
mem (maintenance_work_mem 256MB for the index builds). URL: a server to use (default postgres://postgres@127.0.0.1:5432/), in a
database `import_phases` made and dropped here. Writes its CSV files to /tmp/imp."""
import os, random, secrets, string, subprocess, sys

N = int(sys.argv[1])
mode = sys.argv[2]
url = sys.argv[3] if len(sys.argv) > 3 else "postgres://postgres@127.0.0.1:5432/"
db = "import_phases"
os.makedirs("/tmp/imp", exist_ok=True)
alnum = string.ascii_letters + string.digits
keys_csv, events_csv = f"/tmp/imp/keys-{N}.csv", f"/tmp/imp/events-{N}.csv"
if not os.path.exists(events_csv):
    with open(keys_csv, "w") as f, open(events_csv, "w") as e:
        for i in range(N):
            kid = "key_" + "".join(random.choices(alnum, k=20))
            cust = f"cust-{i % 5000}" if i % 4 == 0 else ""
            f.write(f'{kid},imported key {i},production,\\\\x{secrets.token_hex(32)},legacy-ab,'
                    f'"[""customer:read"",""orders:*""]",{cust},[],active,1,1,{{}},{i + 1}\n')
            e.write(f'{kid},1,cli,created,"{{""name"":""x""}}"\n')

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
schema = open(os.path.join(root, "src/control/store/postgres/schema.rs")).read()
schema = schema.split('r#"')[1].split('"#')[0]
pre, post = [], []
if "noidx" in mode:
    pre += ["ALTER TABLE keys DISABLE TRIGGER keys_claim_secrets",
            "ALTER TABLE keys DROP CONSTRAINT keys_id_key, DROP CONSTRAINT keys_hash_key",
            "DROP INDEX keys_customer"]
    post += ["ALTER TABLE keys ADD UNIQUE (id), ADD UNIQUE (hash)",
             "CREATE INDEX keys_customer ON keys (customer_id)",
             "ALTER TABLE keys ENABLE TRIGGER keys_claim_secrets"]
if "evidx" in mode:
    pre.append("DROP INDEX key_events_key")
    post.append("CREATE INDEX key_events_key ON key_events (key_id, id)")
claim = ("EXPLAIN (ANALYZE, BUFFERS, WAL) INSERT INTO key_secrets (hash, key_seq) "
         "SELECT hash, seq FROM keys WHERE revision > 0" + (" ORDER BY hash" if "sort" in mode else ""))
if "pkset" in mode:
    claim = ("ALTER TABLE key_secrets DROP CONSTRAINT key_secrets_pkey;\n" + claim + ";\n"
             "ALTER TABLE key_secrets ADD CONSTRAINT key_secrets_pkey PRIMARY KEY (hash)")
if "mem" in mode:
    pre.insert(0, "SET LOCAL maintenance_work_mem = '256MB'")
if "fkset" in mode:
    claim = ("ALTER TABLE key_secrets DROP CONSTRAINT key_secrets_key_seq_fkey;\n" + claim + ";\n"
             "ALTER TABLE key_secrets ADD CONSTRAINT key_secrets_key_seq_fkey "
             "FOREIGN KEY (key_seq) REFERENCES keys (seq)")
columns = "id,name,environment,hash,prefix,permissions,customer_id,allowed_ips,status,created_at,updated_at,metadata,revision"
script = f"""{schema}
ALTER TABLE key_events ADD COLUMN token TEXT; ALTER TABLE key_events ADD COLUMN client TEXT;
\\timing on
BEGIN;
SET LOCAL keygate.bulk_import = 'on';
{''.join(s + ';' + chr(10) for s in pre)}
\\echo copy keys
\\copy keys ({columns}) FROM '{keys_csv}' CSV
\\echo copy events
\\copy key_events (key_id,at,actor,event,changes) FROM '{events_csv}' CSV
\\echo claim
{claim};
\\echo made again
{''.join(s + ';' + chr(10) for s in post)}
\\echo commit
COMMIT;
"""
subprocess.run(["psql", "-X", "-q", url + "postgres", "-c", f"DROP DATABASE IF EXISTS {db}",
                "-c", f"CREATE DATABASE {db}"], check=True)
try:
    out = subprocess.run(["psql", "-X", "-q", url + db], input=script, text=True,
                         capture_output=True).stdout
    for line in out.splitlines():
        if line.startswith(("copy", "claim", "made", "commit", "Time:", " Trigger", " Execution", "ERROR")):
            print(line.strip())
finally:
    subprocess.run(["psql", "-X", "-q", url + "postgres", "-c", f"DROP DATABASE {db}"])
