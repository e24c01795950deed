#!/usr/bin/env python3
"""Bulk import benchmark: `keygate keys import-file` of N generated keys (default a million)
into a throwaway SQLite store and a throwaway PostgreSQL, each timed by /usr/bin/time -v: wall
time and the CLI's peak RSS (PostgreSQL's own memory is not in it). Prints the machine, the
method and one row a backend. Run through benches/import/run, which builds keygate first.

The PostgreSQL server is started here from /usr/lib/postgresql/*/bin (initdb, postgres) in a
temporary folder, on a free loopback port, with its default settings (fsync on), and stopped by
PID at the end; `--postgres URL` uses a server of yours instead (in a fresh schema, dropped
after)."""

import argparse
import glob
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KEYGATE = os.path.join(ROOT, "target", "release", "keygate")

CONFIG = """
[store]
url = "{url}"

[[upstream]]
name = "api"
url = "http://127.0.0.1:7001"

[[route]]
name = "api"
path = "/"
upstream = "api"
"""


def generate(path, count):
    """A JSON Lines file of `count` keys as a legacy system would export them: a random secret,
    a name, an environment, permissions, and now and then a customer and metadata."""
    environments = ["production", "staging", "development"]
    with open(path, "w") as out:
        for i in range(count):
            secret = f"legacy-{secrets.token_hex(16)}"
            line = (
                f'{{"key":"{secret}","name":"imported key {i}",'
                f'"environment":"{environments[i % 3]}","permissions":["customer:read","orders:*"]'
            )
            if i % 4 == 0:
                line += f',"customer_id":"cust-{i % 5000}","metadata":{{"source":"legacy","n":{i}}}'
            out.write(line + "}\n")


def timed(args, env=None):
    """Runs `args` under /usr/bin/time -v: (exit code, wall seconds, CPU seconds (user and
    system), peak RSS in MiB, stdout, stderr less time's report)."""
    result = subprocess.run(
        ["/usr/bin/time", "-v", *args], capture_output=True, text=True, env=env
    )
    stderr = result.stderr
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    cpu = sum(
        float(m.group(1)) for m in re.finditer(r"(?:User|System) time \(seconds\): (\S+)", stderr)
    )
    seconds = 0.0
    if wall:
        for part in wall.group(1).split(":"):
            seconds = seconds * 60 + float(part)
    report = stderr.find("\tCommand being timed")
    return (
        result.returncode,
        seconds,
        cpu,
        int(rss.group(1)) / 1024 if rss else 0.0,
        result.stdout,
        stderr[:report] if report >= 0 else stderr,
    )


def import_into(url, keys_file, work):
    config = os.path.join(work, f"gateway-{abs(hash(url))}.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(url=url))
    code, seconds, cpu, rss, stdout, stderr = timed(
        [KEYGATE, "keys", "import-file", "--config", config, keys_file, "--json"]
    )
    failed = None
    if code != 0:
        failed = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {code}"
    return seconds, cpu, rss, failed


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway server: initdb in a temporary folder, started on a free loopback port,
    stopped by PID (SIGINT, a fast shutdown) and removed by `stop`."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        found = shutil.which("initdb") or (bins[-1] if bins else None)
        if not found:
            sys.exit("no PostgreSQL server binaries (initdb, postgres) were found")
        self.bin = os.path.dirname(os.path.realpath(found))
        self.dir = tempfile.mkdtemp(prefix="keygate-import-pg-")
        self.data = os.path.join(self.dir, "data")
        self.as_user = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: then it runs as the `postgres` user.
            subprocess.run(["chown", "-R", "postgres:", self.dir], check=True)
            self.as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        subprocess.run(
            [*self.as_user, f"{self.bin}/initdb", "-D", self.data, "-U", "postgres",
             "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True,
        )
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.process = subprocess.Popen(
            [*self.as_user, f"{self.bin}/postgres", "-D", self.data, "-p", str(self.port),
             "-k", self.dir, "-c", "listen_addresses=127.0.0.1"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            ready = subprocess.run(
                [f"{self.bin}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
            )
            if ready.returncode == 0:
                break
            time.sleep(0.1)
        else:
            self.stop()
            sys.exit("PostgreSQL did not start within 60 s")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        version = subprocess.run(
            [f"{self.bin}/postgres", "--version"], capture_output=True, text=True
        ).stdout.strip()
        self.description = f"{version}, default settings (fsync on), throwaway on 127.0.0.1"

    def cpu_seconds(self):
        """CPU time of the server and of its children it has reaped (the backend of a
        connection that closed), from /proc."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def psql(url, sql):
    return subprocess.run(
        ["psql", "-X", "-A", "-t", "-q", url, "-c", sql], capture_output=True, text=True, check=True
    ).stdout.strip()


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, " \
           f"load {load:.2f} at start; keygate {commit} (release build)"


def main():
    global KEYGATE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="how many keys the file holds")
    parser.add_argument("--only", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--postgres", help="a PostgreSQL server to use instead of a throwaway one")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (file, store)")
    parser.add_argument("--keygate", default=KEYGATE, help="the keygate binary (to compare builds)")
    args = parser.parse_args()
    KEYGATE = args.keygate
    only = set(args.only.split(","))

    work = tempfile.mkdtemp(prefix="keygate-import-")
    keys_file = os.path.join(work, "keys.jsonl")
    started = time.time()
    generate(keys_file, args.keys)
    size = os.path.getsize(keys_file) / 2**20
    print(f"machine: {machine()}")
    if args.keygate != os.path.join(ROOT, "target", "release", "keygate"):
        print(f"binary: {args.keygate}")
    print(f"file: {args.keys:,} keys, {size:.0f} MiB of JSON Lines, generated in {time.time() - started:.1f} s")
    print("method: `keygate keys import-file --config C FILE --json` under /usr/bin/time -v, into an "
          "empty store; wall time, the CLI's CPU time (user + system: on a busy machine the "
          "steadier figure) and peak RSS; the 1-minute load average just before")
    print()
    print("| store | keys stored | wall time | CLI CPU time | server CPU time | keys/s (wall) | CLI peak RSS | load before | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    failures = []

    def row(name, seconds, cpu, rss, load, failed, stored, server_cpu, note):
        if failed:
            failures.append(f"{name}: {failed}")
            note = f"FAILED: {failed}"
        rate = f"{stored / seconds:,.0f}" if seconds and not failed else "-"
        server = f"{server_cpu:.1f} s" if server_cpu is not None else "-"
        print(f"| {name} | {stored:,} | {seconds:.1f} s | {cpu:.1f} s | {server} | {rate} | {rss:.0f} MiB | {load:.1f} | {note} |",
              flush=True)
        if not failed and stored != args.keys:
            failures.append(f"{name} holds {stored} keys, not {args.keys}")

    try:
        if "sqlite" in only:
            db = os.path.join(work, "keys.db")
            load = os.getloadavg()[0]
            seconds, cpu, rss, failed = import_into(f"sqlite://{db}", keys_file, work)
            stored = 0
            if os.path.exists(db):
                with sqlite3.connect(db) as conn:
                    stored = conn.execute("SELECT count(*) FROM keys").fetchone()[0]
            size = sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s)) / 2**20
            row("SQLite", seconds, cpu, rss, load, failed, stored, None, f"store file {size:.0f} MiB")
        if "postgres" in only:
            server = None
            if args.postgres:
                # A fresh schema on the server given, dropped after.
                schema = f"keygate_import_{os.getpid()}"
                psql(args.postgres, f"CREATE SCHEMA {schema}")
                joiner = "&" if "?" in args.postgres else "?"
                url = f"{args.postgres}{joiner}options=-c%20search_path%3D{schema}"
                where = "the server given, a fresh schema"
            else:
                server = Postgres()
                url = server.url
                where = server.description
            try:
                load = os.getloadavg()[0]
                before = server.cpu_seconds() if server else None
                seconds, cpu, rss, failed = import_into(url, keys_file, work)
                stored = int(psql(url, "SELECT count(*) FROM keys"))
                server_cpu = server.cpu_seconds() - before if server else None
                row("PostgreSQL", seconds, cpu, rss, load, failed, stored, server_cpu, where)
            finally:
                if server:
                    server.stop()
                else:
                    psql(args.postgres, f"DROP SCHEMA {schema} CASCADE")
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        sys.exit("; ".join(failures))


if __name__ == "__main__":
    main()
