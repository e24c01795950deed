#!/usr/bin/env python3
"""SQLite bulk-import phases, outside keygate: the CPU time (this process, user + system) of
each phase of a one-transaction import of N keys into keygate's key schema (migrations 1-3:
keys, key_events, secret_hashes), with Python's sqlite3 module and a 64 MiB page cache
(CACHE=KiB to change). Separates what the schema costs from what keygate's code costs.
    python3 benches/import/sqlite_phases.py N base   # every index kept up row by row
    python3 benches/import/sqlite_phases.py N drop   # key_events_key and secret_hashes_key
                                                     # (and keys_revision, keys_customer)
                                                     # dropped and built again at the end
Writes /tmp/imp/t.db (removed first)."""
import sqlite3, os, sys, time, secrets, random, string, json
N=int(sys.argv[1]); mode=sys.argv[2]
os.makedirs('/tmp/imp', exist_ok=True)
db='/tmp/imp/t.db'
for s in ('','-wal','-shm'):
    if os.path.exists(db+s): os.remove(db+s)
c=sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL")
c.executescript("""
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE keys (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, environment TEXT NOT NULL,
 hash BLOB NOT NULL UNIQUE, prefix TEXT NOT NULL, permissions TEXT NOT NULL, rate_limit TEXT, customer_id TEXT,
 allowed_ips TEXT NOT NULL, expires_at INTEGER, status TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
 last_used_at INTEGER, previous_hash BLOB, grace_until INTEGER, previous_last_used_at INTEGER, metadata TEXT NOT NULL, revision INTEGER NOT NULL);
CREATE INDEX keys_revision ON keys (revision);
CREATE INDEX keys_customer ON keys (customer_id);
CREATE TABLE key_events (id INTEGER PRIMARY KEY, key_id TEXT NOT NULL, at INTEGER NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL, changes TEXT NOT NULL);
CREATE INDEX key_events_key ON key_events (key_id, id);
CREATE TABLE secret_hashes (hash BLOB PRIMARY KEY, key_seq INTEGER NOT NULL, kind TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX secret_hashes_key ON secret_hashes (key_seq);
""")
alnum=string.ascii_letters+string.digits
def rows():
    for i in range(N):
        kid='key_'+''.join(random.choices(alnum,k=20))
        cust=f'cust-{i%5000}' if i%4==0 else None
        yield (kid,f'imported key {i}','production',secrets.token_bytes(32),'legacy-ab','["customer:read","orders:*"]',cust,'[]','active',1,1,'{}',i+1)
t0=time.process_time()
c.execute("PRAGMA cache_size=-%d" % int(os.environ.get("CACHE","65536")))
c.execute("BEGIN IMMEDIATE")
if 'drop' in mode:
    for st in "DROP INDEX keys_revision; DROP INDEX keys_customer; DROP INDEX key_events_key; DROP INDEX secret_hashes_key".split(";"): c.execute(st)
data=list(rows())
t1=time.process_time()
c.executemany("INSERT INTO keys (id,name,environment,hash,prefix,permissions,customer_id,allowed_ips,status,created_at,updated_at,metadata,revision) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", data)
t2=time.process_time()
c.executemany("INSERT INTO key_events (key_id,at,actor,event,changes) VALUES (?,1,'cli','created','{\"name\":\"x\",\"environment\":\"production\",\"permissions\":[\"a\"]}')", ((r[0],) for r in data))
t3=time.process_time()
c.execute("INSERT INTO secret_hashes (hash,key_seq,kind) SELECT hash, seq, 'current' FROM keys ORDER BY hash")
t4=time.process_time()
if 'drop' in mode:
    for st in "CREATE INDEX keys_revision ON keys (revision); CREATE INDEX keys_customer ON keys (customer_id); CREATE INDEX key_events_key ON key_events (key_id, id); CREATE INDEX secret_hashes_key ON secret_hashes (key_seq)".split(";"): c.execute(st)
t5=time.process_time()
c.execute("COMMIT")
t6=time.process_time()
c.close()
t7=time.process_time()
print(mode, f"gen {t1-t0:.1f} keys {t2-t1:.1f} events {t3-t2:.1f} claim {t4-t3:.1f} index {t5-t4:.1f} commit {t6-t5:.1f} close {t7-t6:.1f} total-sql {t7-t1:.1f}", os.times())
