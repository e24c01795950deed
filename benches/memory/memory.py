#!/usr/bin/env python3
"""Memory benchmark: the RSS of `keygate serve` holding N keys (default a million), from SQLite
and from PostgreSQL, each binary given in the same run. Prints the machine, the method and one
row a store and binary. Run through benches/memory/run, which builds keygate first.

Method: N keys generated as benches/import/import.py does (`generate`), imported with `keygate
keys import-file` into a SQLite store, copied with `keygate store copy --to postgres://...` into
a fresh database (created here, dropped after). With `--fill-sql`, the PostgreSQL database is
filled by SQL instead (ten keys imported by keygate, then copied N times with new ids, secrets'
hashes and seqs by one INSERT ... SELECT generate_series): ten million keys in minutes rather than
the import's hour. For each store and binary: `keygate serve` on loopback ports (access log off,
per-key metrics off, no snapshot), /readyz polled until 200 (the load time, from the start of
the process), then `--settle` seconds idle, then VmRSS and VmHWM (the peak) read from
/proc/PID/status. The server is stopped by its PID. The stores are kept in `--data` (reused
by the next run with the same N) unless `--clean`."""

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import importlib.util

_spec = importlib.util.spec_from_file_location(
    "import_bench", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "import", "import.py"))
_import_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_import_bench)
# The same generated keys as the import bench: a random secret, a name, three environments,
# two permissions, a customer (of 5,000) and metadata on every fourth.
generate = _import_bench.generate

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KEYGATE = os.path.join(ROOT, "target", "release", "keygate")

CONFIG = """
[server]
listen = "127.0.0.1:{proxy}"

[admin]
listen = "127.0.0.1:{admin}"

[store]
url = "{url}"

[metrics]
per_key = false

[logs]
access = false

[[upstream]]
name = "api"
url = "http://127.0.0.1:9"

[[route]]
name = "api"
path = "/"
upstream = "api"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_for(url, work, name):
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(CONFIG.format(url=url, proxy=free_port(), admin=free_port()))
    return path


def run(args, **kw):
    result = subprocess.run(args, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)}: exit {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def psql(url, sql):
    return run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql]).strip()


def with_database(server, name):
    base, _, _ = server.rstrip("/").rpartition("/")
    if "://" not in base or base.endswith(":/"):
        base = server.rstrip("/")
    return f"{base}/{name}"


def sqlite_store(keys, data, keygate):
    """A SQLite store of `keys` keys in `data`, made once: the generated file imported."""
    db = os.path.join(data, f"keys-{keys}.db")
    if os.path.exists(db):
        return db
    keys_file = os.path.join(data, f"keys-{keys}.jsonl")
    if not os.path.exists(keys_file):
        started = time.time()
        generate(keys_file + ".partial", keys)
        os.rename(keys_file + ".partial", keys_file)
        print(f"setup: generated {keys:,} keys in {time.time() - started:.0f} s", flush=True)
    started = time.time()
    partial = db + ".partial"
    config = config_for(f"sqlite://{partial}", data, "import")
    run([keygate, "keys", "import-file", "--config", config, keys_file, "--json"])
    os.rename(partial, db)
    os.remove(keys_file)
    print(f"setup: imported into SQLite in {time.time() - started:.0f} s", flush=True)
    return db


def fill_by_sql(url, keys, data, keygate):
    """Ten keys imported by keygate, then copied until the store holds `keys` (new id, hash,
    name, prefix, seq and revision each; the rest as the template row)."""
    seed = os.path.join(data, "seed.jsonl")
    generate(seed, 10)
    config = config_for(url, data, "seed")
    run([keygate, "keys", "import-file", "--config", config, seed, "--json"])
    started = time.time()
    psql(url, f"""
        SET keygate.bulk_import = 'on';
        INSERT INTO keys (id, name, environment, hash, prefix, permissions, rate_limit,
            customer_id, allowed_ips, expires_at, status, created_at, updated_at, metadata,
            revision)
        SELECT 'key_' || lpad(n::text, 20, '0'), 'generated key ' || n, t.environment,
            sha256(int8send(n)), 'gen' || n, t.permissions, t.rate_limit,
            CASE WHEN n % 4 = 0 THEN 'cust-' || (n % 5000) END, t.allowed_ips, t.expires_at,
            t.status, t.created_at, t.updated_at, t.metadata, (SELECT value FROM meta WHERE name = 'revision') + n
        FROM generate_series(1, {keys - 10}) AS n,
            (SELECT * FROM keys ORDER BY seq LIMIT 1) AS t;
        INSERT INTO key_secrets (hash, key_seq)
            SELECT hash, seq FROM keys WHERE seq > (SELECT max(key_seq) FROM key_secrets);
        UPDATE meta SET value = (SELECT max(revision) FROM keys) WHERE name = 'revision';
        ANALYZE keys;
    """)
    print(f"setup: PostgreSQL filled to {keys:,} keys by SQL in {time.time() - started:.0f} s", flush=True)


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields


def cpu_seconds(pid):
    """User and system CPU time of `pid` so far (a figure a busy machine does not stretch much,
    unlike the load's wall time)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(keygate, url, work, settle, timeout):
    """(load seconds, load CPU seconds, RSS MiB, peak MiB) of `keygate serve` on `url`."""
    config = config_for(url, work, "serve")
    with open(config) as f:
        # The second `listen` is the admin listener's.
        admin = [line.split(":")[-1].strip().strip('"') for line in f if line.startswith("listen")][1]
    log = open(os.path.join(work, "serve.log"), "w")
    env = dict(os.environ, KEYGATE_ADMIN_TOKEN="memory-bench-token-0123456789")
    started = time.time()
    server = subprocess.Popen([keygate, "serve", "--config", config], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"keygate serve exited {server.returncode}; see {log.name}")
            if time.time() - started > timeout:
                sys.exit(f"not ready within {timeout} s")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        loaded = time.time() - started
        cpu = cpu_seconds(server.pid)
        time.sleep(settle)
        fields = status(server.pid)
        return (loaded, cpu), fields["VmRSS"], fields["VmHWM"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def row(store, binary, keys, loaded, rss, peak, per_key, load):
    label = os.path.relpath(binary, ROOT) if binary.startswith(ROOT) else binary
    print(f"| {store} | {label} | {keys:,} | {loaded[0]:.1f} s ({loaded[1]:.1f} s CPU) | {rss:.1f} MiB ({rss * 1.048576:.0f} MB) "
          f"| {peak:.1f} MiB | {per_key} | {load:.1f} |", flush=True)


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--only", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server (a fresh database is created there, dropped after)")
    parser.add_argument("--database", help="measure this database of the server as it is "
                        "(filled by an earlier run: --fill-sql --keep-database), instead of a fresh one")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database made")
    parser.add_argument("--fill-sql", action="store_true",
                        help="fill PostgreSQL by SQL rather than by copying the SQLite store")
    parser.add_argument("--keygate", action="append",
                        help="a keygate binary to measure (repeat to compare; default the release build)")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "mem-data"),
                        help="where the generated stores are kept between runs")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle after /readyz")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for /readyz")
    parser.add_argument("--clean", action="store_true", help="remove the generated stores at the end")
    args = parser.parse_args()
    binaries = args.keygate or [KEYGATE]
    only = set(args.only.split(","))
    data = os.path.abspath(args.data)
    os.makedirs(data, exist_ok=True)
    work = os.path.join(data, f"work-{os.getpid()}")
    os.makedirs(work)

    print(f"machine: {machine()}, load {os.getloadavg()[0]:.2f} at start")
    print(f"method: `keygate serve` (access log off, per-key metrics off) on {args.keys:,} keys; "
          f"VmRSS and VmHWM {args.settle:g} s after /readyz answered 200; load = start to /readyz "
          f"(and keygate's CPU time until then)")
    print()
    print("| store | binary | keys | load | RSS | peak (VmHWM) | bytes a key over the empty store | load average |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    database = None
    try:
        stores = []
        if "sqlite" in only or not (args.fill_sql or args.database):
            db = sqlite_store(args.keys, data, binaries[0])
            if "sqlite" in only:
                stores.append(("SQLite", f"sqlite://{db}"))
        if "postgres" in only and args.database:
            stores.append(("PostgreSQL", with_database(args.postgres, args.database)))
        elif "postgres" in only:
            database = f"mem_{os.getpid()}"
            psql(args.postgres, f"CREATE DATABASE {database}")
            url = with_database(args.postgres, database)
            started = time.time()
            if args.keep_database:
                print(f"setup: database {database} kept", flush=True)
                database = None
            if args.fill_sql:
                fill_by_sql(url, args.keys, work, binaries[0])
            else:
                config = config_for(f"sqlite://{db}", work, "copy")
                run([binaries[0], "store", "copy", "--config", config, "--to", url])
                print(f"setup: copied to PostgreSQL in {time.time() - started:.0f} s", flush=True)
            psql(url, "VACUUM ANALYZE")
            stores.append(("PostgreSQL", url))
        empty_db = os.path.join(work, "empty.db")
        run([binaries[0], "store", "init", "--config", config_for(f"sqlite://{empty_db}", work, "init")])
        empty = {}
        for binary in binaries:
            load = os.getloadavg()[0]
            loaded, rss, peak = measure(binary, f"sqlite://{empty_db}", work, args.settle, args.timeout)
            empty[binary] = rss
            row("SQLite, empty", binary, 0, loaded, rss, peak, "-", load)
        for name, url in stores:
            for binary in binaries:
                load = os.getloadavg()[0]
                loaded, rss, peak = measure(binary, url, work, args.settle, args.timeout)
                per_key = (rss - empty[binary]) * 2**20 / args.keys
                row(name, binary, args.keys, loaded, rss, peak, f"{per_key:.0f}", load)
    finally:
        if database:
            psql(args.postgres, f"DROP DATABASE IF EXISTS {database}")
        shutil.rmtree(work, ignore_errors=True)
        if args.clean:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
