"""Revocation propagation across a fleet of gateways on one PostgreSQL store.

Four measurements (--mode):
- revoke (default): POST /v1/keys/{id}/revoke; the time from the admin API's answer to the
  first 401 on every replica.
- leak: POST /v1/leaks with the key's secret (any scanner's report, decided as GitHub's are);
  the time from sending the report to the first 401 on every replica.
- github: GitHub's secret scanning alert for the key, POSTed to the proxy listener's
  leaks.github.path, signed with a P-256 key pair this script makes (its public key served
  from leaks.github.keys_file, as GitHub's list would be): the partner endpoint's real path,
  signature check included; the time from sending the alert to the first 401 everywhere.
- receipt: POST /v1/keys/{id}/revoke?wait=applied; the API's answer time (the receipt), and
  whether any replica still admitted the key once it had answered (it must not).

Starts N gateways (release build) on a fresh schema of the PostgreSQL database, with the poll
set to an hour so that only pushed changes (NOTIFY) count. Creates the keys through the admin
API of the first gateway, waits until every gateway admits them, then revokes them one at a
time through the admin API of a gateway chosen in turn, and measures for each revocation the
time from the admin API's answer to the first 401 on every replica (the slowest replica's). A
thread per replica polls its gateway with the key, over a kept-alive connection, as fast as it
answers (the poll's own round trip, about 0.1 ms here, is the resolution). Prints p50, p99 and
max over the revocations, and the time to the first 401 on the replica that made the change
(which the admin API promises before it answers: 0 expected).

Under load (issue 24's third figure): --keys N imports N more keys (`keygate keys
import-file`, before the gateways start) so every replica holds them; --load runs wrk (the load
bench's valid-key scenario: one valid key, 16 connections, one thread) against every replica
for the whole measurement, through an nginx upstream answering 200. The load average is
printed beside the figures: on a machine shared with other work they are only comparable
within one run.

--keygate PATH (or KEYGATE_BIN) runs that binary instead of target/release/keygate.

Everything listens on 127.0.0.1 at free ports; every process it starts is stopped by PID.
"""

import argparse
import base64
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "load"))
from run import (ADMIN_TOKEN, KEYGATE, basic, free_port, start, stop_all, upstream_config,  # noqa: E402
                 wait_for_port)

GITHUB_PATH = "/.well-known/keygate/github"
GITHUB_TYPE = "keygate_api_key"


class GithubSigner:
    """A P-256 key pair as GitHub holds one: signs alert bodies; its public key is served to
    the gateways from leaks.github.keys_file."""

    def __init__(self, work: str):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.private = ec.generate_private_key(ec.SECP256R1())
        pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.keys_file = f"{work}/github-keys.json"
        with open(self.keys_file, "w") as f:
            json.dump({"public_keys": [{"key_identifier": "bench", "key": pem, "is_current": True}]}, f)

    def alert(self, key: str) -> tuple[bytes, dict]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        body = json.dumps([{"token": key, "type": GITHUB_TYPE,
                            "url": "https://github.com/example/repo/blob/main/leak.txt",
                            "source": "content"}]).encode()
        signature = self.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return body, {"Content-Type": "application/json",
                      "Github-Public-Key-Identifier": "bench",
                      "Github-Public-Key-Signature": base64.b64encode(signature).decode()}


def config(work: str, i: int, proxy: int, admin: int, store: str, upstream: int = 9,
           keys_file: str | None = None) -> str:
    github = f'[leaks.github]\npath = "{GITHUB_PATH}"\nkeys_file = "{keys_file}"\n' if keys_file else ""
    return f"""
[server]
listen = "127.0.0.1:{proxy}"
[admin]
listen = "127.0.0.1:{admin}"
token_env = "KEYGATE_BENCH_ADMIN_TOKEN"
[store]
url = "{store}"
sync_interval = "1h"
[auth]
failed_per_ip = "1000000000/s"
[rate_limit]
default = "1000000000/s"
{github}
[[upstream]]
name = "api"
url = "http://127.0.0.1:{upstream}"
[[route]]
name = "api"
path = "/"
upstream = "api"
"""


def admin_call(port: int, method: str, path: str, body: dict | None = None) -> dict:
    return admin_answer(port, method, path, body)[1]


def admin_answer(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    payload = json.dumps(body) if body is not None else ""
    conn.request(method, path, payload, {"Authorization": f"Bearer {ADMIN_TOKEN}",
                                         "Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data!r}")
    return response.status, (json.loads(data) if data else {})


class Poller(threading.Thread):
    """Polls one gateway with the current key until it is refused; records when."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.key = None
        self.refused_at = None
        self.go = threading.Event()
        self.done = threading.Event()
        self.stop = False
        self.admitted = False

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop:
            self.go.wait()
            self.go.clear()
            if self.stop:
                return
            header = {"Authorization": basic("x", self.key)}
            self.admitted = False
            while True:
                try:
                    conn.request("GET", "/", headers=header)
                    response = conn.getresponse()
                    response.read()
                except (http.client.HTTPException, OSError):
                    # An idle keep-alive connection closed between measurements: open another.
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    continue
                if response.status == 401:
                    self.refused_at = time.perf_counter()
                    break
                self.admitted = True
            self.done.set()


def wait_ready(admin: int, timeout: float = 600) -> None:
    """Until the gateway's /readyz says its key table is loaded (a million keys take a while)."""
    wait_for_port(admin, "a gateway")
    deadline = time.time() + timeout
    while time.time() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            return
        time.sleep(0.2)
    raise SystemExit(f"the gateway on admin port {admin} was not ready within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--revocations", type=int, default=200)
    parser.add_argument("--mode", default="revoke",
                        help="revoke, leak, github or receipt; several, comma-separated, run in turn on one fleet")
    parser.add_argument("--keys", type=int, default=0, help="import this many more keys first")
    parser.add_argument("--load", action="store_true", help="wrk on every replica meanwhile")
    parser.add_argument("--load-connections", type=int, default=16)
    parser.add_argument("--keygate", default=os.environ.get("KEYGATE_BIN", KEYGATE))
    parser.add_argument("--postgres", default=os.environ.get("KEYGATE_TEST_POSTGRES_URL",
                                                             "postgres://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    for mode in args.mode.split(","):
        if mode not in ("revoke", "leak", "github", "receipt"):
            parser.error(f"--mode {mode}: revoke, leak, github or receipt")
    if not shutil.which("psql"):
        raise SystemExit("psql is needed to make the benchmark's schema")
    schema = f"kg_bench_{random.getrandbits(48):012x}"
    subprocess.run(["psql", "-q", args.postgres, "-c", f"CREATE SCHEMA {schema}"], check=True)
    sep = "&" if "?" in args.postgres else "?"
    store = f"{args.postgres}{sep}options=-c%20search_path%3D{schema}"
    work = tempfile.mkdtemp(prefix="keygate-fleet-")
    try:
        bench(work, store, args)
    finally:
        stop_all()
        if not os.environ.get("KEYGATE_BENCH_LOG"):
            shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["psql", "-q", args.postgres, "-c", "SET client_min_messages = warning",
                        "-c", f"DROP SCHEMA {schema} CASCADE"], check=False)


def import_keys(keygate: str, path: str, count: int, work: str, env: dict) -> None:
    """`count` keys into the store with `keygate keys import-file`, as the import bench makes
    them (benches/import/import.py)."""
    source = f"{work}/keys.jsonl"
    environments = ["production", "staging", "development"]
    with open(source, "w") as out:
        for i in range(count):
            out.write(json.dumps({"key": f"legacy-{secrets.token_hex(16)}", "name": f"imported key {i}",
                                  "environment": environments[i % 3]}) + "\n")
    began = time.time()
    subprocess.run([keygate, "keys", "--config", path, "import-file", source], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    print(f"imported {count} keys with keys import-file in {time.time() - began:.1f} s")
    os.remove(source)


def start_load(replicas, key: str, connections: int, work: str) -> list[subprocess.Popen]:
    """wrk with one valid key on every replica's proxy listener, until stopped."""
    script = f"{work}/valid.lua"
    with open(script, "w") as f:
        f.write(f'wrk.headers["Authorization"] = "{basic("x", key)}"\n')
    return [start(["wrk", "-t1", f"-c{connections}", "-d3600s", "-s", script, f"http://127.0.0.1:{proxy}/"],
                  "0-1", f"{work}/wrk-{proxy}.log")
            for proxy, _ in replicas]


def load_average() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def bench(work: str, store: str, args) -> None:
    """Starts the fleet once (keys imported, load running), then measures each mode in turn."""
    # KEYGATE_BENCH_LOG: the gateways' RUST_LOG, their logs kept in the folder printed. With
    # "warn,keygate::control=debug" each step's time is logged: a leak report's lookup, store
    # change and sync (`leak reports decided`, `leak report in force on this gateway`), each
    # sync a NOTIFY woke (`key changes synced`), each early heartbeat, and what woke each
    # receipt's reads and how long it waited (`receipt: rows read again`).
    log = os.environ.get("KEYGATE_BENCH_LOG")
    env = dict(os.environ, KEYGATE_BENCH_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG=log or "warn")
    if log:
        print(f"gateway logs in {work}")
    keygate = args.keygate
    upstream = 9
    if args.load:
        upstream = free_port()
        with open(f"{work}/upstream.conf", "w") as f:
            f.write(upstream_config(work, upstream))
        start(["nginx", "-p", work, "-c", f"{work}/upstream.conf"], "0-1", f"{work}/upstream.log")
        wait_for_port(upstream, "the upstream nginx")
    signer = GithubSigner(work)
    replicas = []
    for i in range(args.replicas):
        proxy, admin = free_port(), free_port()
        path = f"{work}/gateway-{i}.toml"
        with open(path, "w") as f:
            f.write(config(work, i, proxy, admin, store, upstream, signer.keys_file))
        if i == 0:
            subprocess.run([keygate, "store", "init", "--config", path], check=True, stdout=subprocess.DEVNULL, env=env)
            if args.keys:
                import_keys(keygate, path, args.keys, work, env)
            began = time.time()
        start([keygate, "serve", "--config", path], "0-1", f"{work}/gateway-{i}.log", env)
        replicas.append((proxy, admin))
    for proxy, admin in replicas:
        wait_ready(admin)
    if args.keys:
        print(f"{args.replicas} replicas ready with their keys loaded in {time.time() - began:.1f} s")
    loaders = []
    if args.load:
        load_key = admin_call(replicas[0][1], "POST", "/v1/keys", {"name": "load", "environment": "production"})
        loaders = start_load(replicas, load_key["key"], args.load_connections, work)
        time.sleep(2)  # wrk's connections open and the replicas warm up before the first change
    pollers = [Poller(proxy) for proxy, _ in replicas]
    for p in pollers:
        p.start()
    for mode in args.mode.split(","):
        measure(mode, replicas, pollers, signer, args)
    for p in pollers:
        p.stop = True
        p.go.set()
    for loader in loaders:
        loader.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
    for loader, (proxy, _) in zip(loaders, replicas):
        loader.wait(timeout=10)
        summary = open(f"{work}/wrk-{proxy}.log").read()
        rate = [line.strip() for line in summary.splitlines() if "Requests/sec" in line or "Non-2xx" in line]
        print(f"load on the replica at :{proxy}: {'; '.join(rate) or summary.strip()[-200:]}")


def admitted_everywhere(replicas, keys) -> None:
    """Waits until every replica admits every key (they arrive by NOTIFY)."""
    deadline = time.time() + 30
    for proxy, _ in replicas:
        conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=10)
        for _, key in keys:
            while True:
                conn.request("GET", "/", headers={"Authorization": basic("x", key)})
                response = conn.getresponse()
                response.read()
                if response.status != 401:
                    break
                if time.time() > deadline:
                    raise SystemExit("the replicas did not all learn the keys")
                time.sleep(0.01)


def measure(mode: str, replicas, pollers, signer: GithubSigner, args) -> None:
    """Makes `args.revocations` keys, then revokes them one at a time as `mode` says."""
    keys = []
    for n in range(args.revocations):
        created = admin_call(replicas[0][1], "POST", "/v1/keys",
                             {"name": f"bench {mode} {n}", "environment": "production"})
        keys.append((created["id"], created["key"]))
    admitted_everywhere(replicas, keys)
    slowest, at_origin, answers, admitted_after = [], [], [], 0
    for n, (key_id, key) in enumerate(keys):
        origin = n % len(replicas)
        for p in pollers:
            p.key, p.refused_at = key, None
            p.done.clear()
        admin = replicas[origin][1]
        if mode in ("leak", "github"):
            # The pollers run from before the report: the first 401 anywhere is seen.
            if mode == "github":
                body_ready = signer.alert(key)  # signed before the clock starts
            for p in pollers:
                p.go.set()
            since = time.perf_counter()
            if mode == "leak":
                answer = admin_call(admin, "POST", "/v1/leaks", {"key": key, "source": "bench"})
                if answer.get("result") != "revoked":
                    raise SystemExit(f"leak report {n}: {answer}")
            else:
                post_alert(replicas[origin][0], body_ready, n)
        elif mode == "receipt":
            sent = time.perf_counter()
            status, answer = admin_answer(admin, "POST", f"/v1/keys/{key_id}/revoke?wait=applied")
            since = time.perf_counter()
            answers.append((since - sent) * 1000)
            if status != 200 or len(answer["receipt"]["applied"]) != len(replicas):
                raise SystemExit(f"receipt {n}: {status} {answer.get('receipt')}")
            for p in pollers:
                p.go.set()
        else:
            admin_call(admin, "POST", f"/v1/keys/{key_id}/revoke")
            since = time.perf_counter()
            for p in pollers:
                p.go.set()
        for p in pollers:
            if not p.done.wait(10):
                raise SystemExit(f"revocation {n} did not reach replica {pollers.index(p)} within 10 s")
        delays = [max(0.0, p.refused_at - since) * 1000 for p in pollers]
        # After a receipt, the pollers' first request must already be refused.
        admitted_after += sum(1 for p in pollers if p.admitted)
        slowest.append(max(delays))
        at_origin.append(delays[origin])
    report(mode, keys, slowest, at_origin, answers, admitted_after, len(replicas), args)


def post_alert(proxy: int, alert: tuple[bytes, dict], n: int) -> None:
    body, headers = alert
    conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=10)
    conn.request("POST", GITHUB_PATH, body, headers)
    response = conn.getresponse()
    feedback = response.read()
    if response.status != 200 or b"true_positive" not in feedback:
        raise SystemExit(f"GitHub alert {n}: {response.status} {feedback!r}")


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def report(mode, keys, slowest, at_origin, answers, admitted_after, replicas, args) -> None:
    what = {"revoke": "revocations", "leak": "leak reports (POST /v1/leaks)",
            "github": "GitHub secret scanning alerts (signed, on the proxy listener)",
            "receipt": "revocations with ?wait=applied"}[mode]
    held = f", {args.keys} more keys held" if args.keys else ""
    under = f", wrk -c{args.load_connections} valid key on every replica" if args.load else ""
    print(f"\nrevocation propagation: {replicas} replicas on one PostgreSQL (poll 1h: pushed only), "
          f"{len(keys)} {what}{held}{under}, {os.cpu_count()} CPUs, load average {load_average()}")
    if mode == "receipt":
        print(f"the receipt (the API's answer, every replica applied): p50 {pct(answers, 50):.2f}  "
              f"p99 {pct(answers, 99):.2f}  max {max(answers):.2f}  mean {statistics.mean(answers):.2f} ms")
        print(f"requests admitted by any replica after its receipt: {admitted_after} (must be 0)")
        return
    since = "the report was sent" if mode in ("leak", "github") else "the admin API answered"
    print(f"every replica refuses the key, ms after {since}: "
          f"p50 {pct(slowest, 50):.2f}  p99 {pct(slowest, 99):.2f}  max {max(slowest):.2f}  "
          f"mean {statistics.mean(slowest):.2f}")
    print(f"the replica that took the change: p50 {pct(at_origin, 50):.2f}  max {max(at_origin):.2f}")


if __name__ == "__main__":
    main()
