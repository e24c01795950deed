"""Revocation propagation across a fleet of gateways on one PostgreSQL store.

Three measurements (--mode):
- revoke (default): POST /v1/keys/{id}/revoke; the time from the admin API's answer to the
  first 401 on every replica.
- leak: POST /v1/leaks with the key's secret (any scanner's report, decided as GitHub's are);
  the time from sending the report to the first 401 on every replica.
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

Everything listens on 127.0.0.1 at free ports; every process it starts is stopped by PID.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "load"))
from run import ADMIN_TOKEN, KEYGATE, basic, free_port, start, stop_all, wait_for_port  # noqa: E402


def config(work: str, i: int, proxy: int, admin: int, store: str) -> str:
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
[[upstream]]
name = "api"
url = "http://127.0.0.1:9"
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
                conn.request("GET", "/", headers=header)
                response = conn.getresponse()
                response.read()
                if response.status == 401:
                    self.refused_at = time.perf_counter()
                    break
                self.admitted = True
            self.done.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--revocations", type=int, default=200)
    parser.add_argument("--mode", choices=["revoke", "leak", "receipt"], default="revoke")
    parser.add_argument("--postgres", default=os.environ.get("KEYGATE_TEST_POSTGRES_URL",
                                                             "postgres://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
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
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["psql", "-q", args.postgres, "-c", "SET client_min_messages = warning",
                        "-c", f"DROP SCHEMA {schema} CASCADE"], check=False)


def bench(work: str, store: str, args) -> None:
    env = dict(os.environ, KEYGATE_BENCH_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG="warn")
    replicas = []
    for i in range(args.replicas):
        proxy, admin = free_port(), free_port()
        path = f"{work}/gateway-{i}.toml"
        with open(path, "w") as f:
            f.write(config(work, i, proxy, admin, store))
        if i == 0:
            subprocess.run([KEYGATE, "store", "init", "--config", path], check=True, stdout=subprocess.DEVNULL, env=env)
        start([KEYGATE, "serve", "--config", path], "0-1", f"{work}/gateway-{i}.log", env)
        replicas.append((proxy, admin))
    for proxy, admin in replicas:
        wait_for_port(admin, "a gateway")
    keys = []
    for n in range(args.revocations):
        created = admin_call(replicas[0][1], "POST", "/v1/keys",
                             {"name": f"bench {n}", "environment": "production"})
        keys.append((created["id"], created["key"]))
    pollers = [Poller(proxy) for proxy, _ in replicas]
    for p in pollers:
        p.start()
    # Every replica admits every key before the measurement (they arrived by NOTIFY).
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

    slowest, at_origin, answers, admitted_after = [], [], [], 0
    for n, (key_id, key) in enumerate(keys):
        origin = n % len(replicas)
        for p in pollers:
            p.key, p.refused_at = key, None
            p.done.clear()
        admin = replicas[origin][1]
        if args.mode == "leak":
            # The pollers run from before the report: the first 401 anywhere is seen.
            for p in pollers:
                p.go.set()
            sent = time.perf_counter()
            answer = admin_call(admin, "POST", "/v1/leaks", {"key": key, "source": "bench"})
            if answer.get("result") != "revoked":
                raise SystemExit(f"leak report {n}: {answer}")
            since = sent
        elif args.mode == "receipt":
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
    for p in pollers:
        p.stop = True
        p.go.set()

    def pct(values, q):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    what = {"revoke": "revocations", "leak": "leak reports (POST /v1/leaks)",
            "receipt": "revocations with ?wait=applied"}[args.mode]
    print(f"\nrevocation propagation: {args.replicas} replicas on one PostgreSQL (poll 1h: pushed only), "
          f"{len(keys)} {what}, {os.cpu_count()} CPUs")
    if args.mode == "receipt":
        print(f"the receipt (the API's answer, every replica applied): p50 {pct(answers, 50):.2f}  "
              f"p99 {pct(answers, 99):.2f}  max {max(answers):.2f}  mean {statistics.mean(answers):.2f} ms")
        print(f"requests admitted by any replica after its receipt: {admitted_after} (must be 0)")
        return
    since = "the report was sent" if args.mode == "leak" else "the admin API answered"
    print(f"every replica refuses the key, ms after {since}: "
          f"p50 {pct(slowest, 50):.2f}  p99 {pct(slowest, 99):.2f}  max {max(slowest):.2f}  "
          f"mean {statistics.mean(slowest):.2f}")
    print(f"the replica that took the change: p50 {pct(at_origin, 50):.2f}  max {max(at_origin):.2f}")


if __name__ == "__main__":
    main()
