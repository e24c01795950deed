#!/usr/bin/env python3
"""Load benchmark: keygate beside nginx and HAProxy doing the same job, on loopback.

One run starts a fast upstream (nginx `return 200`), keygate, and the peers, all holding the
same keys; then runs the contenders interleaved, round after round (A B C ... A B C ...), so
drift hits all alike, over four scenarios: a valid key (200), one wrong key (401), a different
wrong key on every request (401, key scanning) and a key over its limit (429). It prints a
table and stops every process it started, by PID.

Contenders run pinned to CPU 0 with one worker; wrk and the upstream share CPU 1, so the
contender's CPU time per request is its own. See benches/load/README.md and the README's
Performance section.

    benches/load/run [--rounds 3] [--duration 5] [--connections 64]
    benches/load/run --logs     # the cost of the access log: keygate and nginx, logs on and off
    benches/load/run --recent   # the cost of the recent-requests ring: keygate with it (the
                                # default, 10000 kept) beside keygate-norecent (logs.recent = 0)
    benches/load/run --saturated  # keygate's fast 503 before an upstream that never answers
    benches/load/run --only keygate --quotas   # the CPU a key quota and a customer quota add

Beside each run's req/s the table gives the contender's CPU share (its CPU seconds over the run
divided by the wall time times the cores it may use) and the whole machine's: a contender well
under 100% while the machine is busy was starved, and its req/s says little.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import random
import re
import shutil
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYGATE = os.path.join(ROOT, "target", "release", "keygate")
# examples/hyper_floor.rs: hyper's server and pooled client with no checks, keygate's floor.
HYPER_FLOOR = os.path.join(ROOT, "target", "release", "examples", "hyper_floor")
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
ADMIN_TOKEN = "load-benchmark-admin-token-" + "".join(random.choices(BASE62, k=16))
CONTENDER_CPU = "0"
DRIVER_CPU = "1"
TICKS = os.sysconf("SC_CLK_TCK")

started: list[subprocess.Popen] = []


# --- keys ---------------------------------------------------------------------------------

def generated_key(env_tag: str = "prod") -> str:
    """A well-formed keygate key: kg_<env>_<32 base62><6 base62 CRC32 checksum>."""
    signed = f"kg_{env_tag}_" + "".join(random.choices(BASE62, k=32))
    value = zlib.crc32(signed.encode())
    checksum = ""
    for _ in range(6):
        checksum = BASE62[value % 62] + checksum
        value //= 62
    return signed + checksum


def basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def ssha(password: str) -> str:
    import hashlib

    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass
class Keys:
    valid: list[tuple[str, str, str]]  # (user, key, key id)
    limited: tuple[str, str, str]
    # With --quotas: a key with a quota whose customer has one too (issue 23's CPU budget).
    quota: tuple[str, str, str]
    wrong: str
    scanning: list[str]


def make_keys(n: int, scanning: int) -> Keys:
    valid = [(f"u{i:07d}", generated_key(), f"key_bench{i:07d}") for i in range(n)]
    limited = ("ulimited", generated_key(), "key_benchlimited")
    quota = ("uquota", generated_key(), "key_benchquota")
    return Keys(valid, limited, quota, generated_key(), [generated_key() for _ in range(scanning)])


# --- processes ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], cpu: str, log: str, env: dict | None = None) -> subprocess.Popen:
    # Appending, so a log can be truncated between runs while the process writes it.
    out = open(log, "a")
    process = subprocess.Popen(
        ["taskset", "-c", cpu, *args], stdout=out, stderr=subprocess.STDOUT, env=env
    )
    started.append(process)
    return process


def stop_all() -> None:
    for process in reversed(started):
        if process.poll() is None:
            process.terminate()
    deadline = time.time() + 10
    for process in started:
        try:
            process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for_port(port: int, what: str, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start listening on 127.0.0.1:{port}")


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    for child in children.split():
        pids.extend(process_tree(int(child)))
    return pids


def machine_jiffies() -> tuple[int, int]:
    """The whole machine's CPU time so far, from /proc/stat: (busy, total) jiffies."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of a process and its children so far: (user, kernel) seconds."""
    user = kernel = 0
    for p in process_tree(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user += int(fields[11])  # utime
        kernel += int(fields[12])  # stime
    return user / TICKS, kernel / TICKS


# --- contenders ---------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    port: int
    pid: int = 0
    scenarios: tuple[str, ...] = ("valid", "wrong", "scanning", "limited")
    # The access log it writes, checked and emptied after each run.
    access_log: str | None = None


# With --logs: each of these beside its twin with the access log on (name + "-log").
LOGGED = ("keygate", "nginx-basic", "nginx-map")
LOG_SCENARIOS = ("valid", "scanning")


def upstream_config(work: str, port: int) -> str:
    return f"""
worker_processes 1;
daemon off;
pid {work}/upstream.pid;
error_log {work}/upstream-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{{"customer":"acme","plan":"pro","seats":42}}';
        }}
    }}
}}
"""


def log_format(name: str, key_id: str) -> str:
    """An nginx log_format of keygate's access record (written with `buffer=64k flush=1s`)."""
    fields = (
        '{"time":"$time_iso8601","request_id":"$request_id","route":"api",'
        f'"key_id":"{key_id}","environment":"production","client":"$remote_addr",'
        '"method":"$request_method","path":"$uri","status":$status,"duration_ms":$request_time,'
        '"upstream_ms":"$upstream_response_time","reason":null}'
    )
    return f"    log_format {name} escape=json '{fields}';"


def nginx_peers_config(work: str, keys: Keys, upstream: int, ports: dict[str, int]) -> str:
    """One nginx, one worker, three servers: plain proxy, auth_basic, and a map lookup."""
    everyone = keys.valid + [keys.limited]
    with open(f"{work}/htpasswd", "w") as f:
        for user, key, _ in everyone:
            f.write(f"{user}:{ssha(key)}\n")
    ids = "\n".join(f"        {user} {kid};" for user, _, kid in everyone)
    by_header = "\n".join(f'        "{basic(user, key)}" {kid};' for user, key, kid in everyone)
    proxy = f"""
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header X-API-Key "";
            proxy_set_header X-Request-Id $request_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Keygate-Environment production;"""
    basic_location = f"""
        location / {{
            auth_basic "keygate";
            auth_basic_user_file {work}/htpasswd;
            limit_req zone=perkey burst=1000000 nodelay;
            limit_req zone=tight nodelay;
            proxy_set_header X-Keygate-Key-Id $key_id;
            {proxy}
        }}"""
    map_location = f"""
        location / {{
            if ($map_key_id = "") {{
                add_header WWW-Authenticate 'Basic realm="keygate"' always;
                return 401 '{{"error":"authentication failed"}}';
            }}
            limit_req zone=mapkey burst=1000000 nodelay;
            limit_req zone=maptight nodelay;
            proxy_set_header X-Keygate-Key-Id $map_key_id;
            {proxy}
        }}"""
    return f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log crit;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    map_hash_bucket_size 256;
    map_hash_max_size {max(16384, 16 * len(everyone))};
    upstream upstream {{
        server 127.0.0.1:{upstream};
        keepalive 128;
    }}
    map $remote_user $key_id {{
        default "";
{ids}
    }}
    map $http_authorization $map_key_id {{
        default "";
{by_header}
    }}
    # As keygate's access record: the same fields, JSON-escaped; each server's own key id.
{log_format("keygate_basic", "$key_id")}
{log_format("keygate_map", "$map_key_id")}
    map $remote_user $tight_user {{ default ""; ulimited $remote_user; }}
    map $map_key_id $map_tight {{ default ""; key_benchlimited $map_key_id; }}
    limit_req_zone $remote_user zone=perkey:10m rate=1000000r/s;
    limit_req_zone $tight_user zone=tight:1m rate=1r/m;
    limit_req_zone $map_key_id zone=mapkey:10m rate=1000000r/s;
    limit_req_zone $map_tight zone=maptight:1m rate=1r/m;
    limit_req_status 429;
    server {{
        listen 127.0.0.1:{ports['nginx-plain']} backlog=4096;
        location / {{ {proxy} }}
    }}
    server {{
        listen 127.0.0.1:{ports['nginx-basic']} backlog=4096;
        {basic_location}
    }}
    server {{
        listen 127.0.0.1:{ports['nginx-basic-log']} backlog=4096;
        access_log {work}/nginx-basic-access.log keygate_basic buffer=64k flush=1s;
        {basic_location}
    }}
    server {{
        listen 127.0.0.1:{ports['nginx-map']} backlog=4096;
        {map_location}
    }}
    server {{
        listen 127.0.0.1:{ports['nginx-map-log']} backlog=4096;
        access_log {work}/nginx-map-access.log keygate_map buffer=64k flush=1s;
        {map_location}
    }}
}}
"""


def haproxy_config(keys: Keys, upstream: int, ports: dict[str, int]) -> str:
    everyone = keys.valid + [keys.limited]
    users = "\n".join(f"    user {user} insecure-password {key}" for user, key, _ in everyone)
    return f"""
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout client 30s
    timeout server 30s
    timeout connect 2s
    option http-keep-alive
userlist keys
{users}
backend per_key
    stick-table type string len 32 size 10k expire 60s store http_req_rate(60s)
frontend plain
    bind 127.0.0.1:{ports['haproxy-plain']}
    default_backend api
frontend auth
    bind 127.0.0.1:{ports['haproxy']}
    http-request auth realm keygate unless {{ http_auth(keys) }}
    http-request track-sc0 http_auth_user table per_key
    http-request deny deny_status 429 if {{ http_auth_user -m str ulimited }} {{ sc_http_req_rate(0) gt 1 }}
    http-request del-header Authorization
    http-request del-header X-API-Key
    http-request set-header X-Keygate-Key-Id %[http_auth_user]
    http-request set-header X-Keygate-Environment production
    http-request set-header X-Request-Id %[uuid]
    option forwardfor
    default_backend api
backend api
    http-reuse always
    server upstream 127.0.0.1:{upstream} maxconn 128
"""


def keygate_config(work: str, upstream: int, proxy: int, admin: int, access_log: bool = False,
                   redis: str = "", store: str = "", recent: int = 10000, redis_timeout: str = "",
                   pool: str = "pool_max_idle = 128") -> str:
    # With a PostgreSQL URL: that store instead of the SQLite file.
    store = store or f"sqlite://{work}/keygate.db"
    # With a Redis URL: the shared (fleet-wide) limiter instead of the local one.
    backend = f'backend = "redis"\nredis_url = "{redis}"\nredis_prefix = "keygate-bench:{proxy}:"' if redis else ""
    if redis and redis_timeout:
        backend += f'\nredis_timeout = "{redis_timeout}"'
    return f"""
[server]
listen = "127.0.0.1:{proxy}"
environment = "production"
worker_threads = 1

[admin]
listen = "127.0.0.1:{admin}"
token_env = "KEYGATE_BENCH_ADMIN_TOKEN"

[store]
url = "{store}"
sync_interval = "1s"

[auth]
# The scanning scenario is one client sending millions of wrong keys: keygate would throttle
# it with 429s (auth.failed_per_ip); the peers have no such guard, so it is off here.
failed_per_ip = "1000000000/s"

[rate_limit]
default = "1000000000/s"
{backend}

[metrics]
per_key = false

[logs]
access = {str(access_log).lower()}
recent = {recent}

[[upstream]]
name = "api"
url = "http://127.0.0.1:{upstream}"
{pool}

[[route]]
name = "api"
path = "/"
upstream = "api"
"""


def admin_call(port: int, method: str, path: str, body: dict | None = None) -> dict | list:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def status_of(port: int, authorization: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/customers/acme")
    request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# --- load ---------------------------------------------------------------------------------

EXPECTED = {"valid": 200, "quota": 200, "wrong": 401, "scanning": 401, "limited": 429, "churn": 200,
            "saturated": 503}
# The monthly quota of --quotas' key and of its customer: never reached in a run.
BENCH_QUOTA = "1000000000/month"
# Past this many keys only keygate runs: the peers' credential lists are searched linearly.
PEER_KEYS = 10_000


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    # The part of cpu_us spent in the kernel: loopback TCP, epoll, the syscalls themselves.
    kernel_us: float
    requests: int
    unexpected: int
    # The contender's CPU seconds over the run / (wall seconds x the cores it may use), in %.
    share: float = float("nan")
    # The whole machine's busy share over the run, in %: the other processes' load shows here.
    machine: float = float("nan")


def parse_latency(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(contender: Contender, scenario: str, header: str, args, scan_script: str) -> Result:
    command = [
        "taskset", "-c", DRIVER_CPU, "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
        "--latency", "--timeout", "5s",
    ]
    if scenario == "scanning":
        command += ["-s", scan_script]
    else:
        command += ["-H", f"Authorization: {header}"]
    command.append(f"http://127.0.0.1:{contender.port}/v1/customers/acme")
    before, machine_before, began = cpu_seconds(contender.pid), machine_jiffies(), time.time()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after, machine_after, wall = cpu_seconds(contender.pid), machine_jiffies(), time.time() - began
    if contender.access_log:
        # Written within a second (both flush at least that often); emptied for the next run.
        deadline = time.time() + 5
        while not os.path.exists(contender.access_log) or os.path.getsize(contender.access_log) == 0:
            if time.time() > deadline:
                raise SystemExit(f"{contender.name} wrote no access log to {contender.access_log}")
            time.sleep(0.1)
        os.truncate(contender.access_log, 0)
    user, kernel = after[0] - before[0], after[1] - before[1]
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(g) for g in errors.groups()) if errors else 0
    # wrk tells 2xx from the rest; the exact status was checked before the run (see `check`).
    unexpected = (non_2xx if EXPECTED[scenario] == 200 else requests - non_2xx) + socket_errors
    return Result(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        p50_ms=parse_latency(output, "50"),
        p99_ms=parse_latency(output, "99"),
        cpu_us=(user + kernel) / max(requests, 1) * 1e6,
        kernel_us=kernel / max(requests, 1) * 1e6,
        requests=requests,
        unexpected=unexpected,
        share=100 * (user + kernel) / (wall * len(os.sched_getaffinity(contender.pid))),
        machine=100 * (machine_after[0] - machine_before[0]) / max(machine_after[1] - machine_before[1], 1),
    )


def check(contender: Contender, scenario: str, header: str) -> None:
    # A limited key's first requests pass; by the third it is over its limit everywhere.
    for _ in range(3 if scenario == "limited" else 1):
        status = status_of(contender.port, header)
    if status != EXPECTED[scenario]:
        raise SystemExit(f"{contender.name} answered {status} for {scenario}, not {EXPECTED[scenario]}")


def scan_script(work: str, keys: Keys, user: str) -> str:
    path = f"{work}/scan.lua"
    with open(f"{work}/scan-keys.txt", "w") as f:
        for key in keys.scanning:
            f.write(basic(user, key) + "\n")
    with open(path, "w") as f:
        f.write(f"""
-- Every request is formatted once, up front: formatting one per request in Lua made wrk's
-- CPU, not the contender's, the limit of this scenario. (In `init`, once wrk knows the Host.)
local requests, n, i = {{}}, 0, 0
function init(args)
  for line in io.lines("{work}/scan-keys.txt") do
    requests[#requests + 1] = wrk.format("GET", nil, {{ ["Authorization"] = line }})
  end
  n = #requests
end
request = function()
  i = i % n + 1
  return requests[i]
end
""")
    return path


# --- a stalled upstream (--saturated) -----------------------------------------------------

class Stalled(__import__("threading").Thread):
    """An upstream that accepts connections and never answers: keygate's pool of it fills, the
    requests holding a connection get 504 past `timeout`, and every other one waits its turn
    for `queue_timeout`, then gets 503 (the fast 503)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []

    def run(self) -> None:
        while True:
            connection, _ = self.listener.accept()
            self.held.append(connection)


def statuses(admin: int) -> dict[str, float]:
    """keygate_requests_total by status, from the admin listener's /metrics."""
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        status = re.match(r'keygate_requests_total\{.*status="(\d+)".*\} (\S+)$', line)
        if status:
            counts[status.group(1)] = counts.get(status.group(1), 0) + float(status.group(2))
    return counts


def saturated_counts(contender: Contender, admins: dict[str, int]) -> str:
    """For keygate-saturated: its 503s and 504s so far (wrk tells only 2xx from the rest)."""
    if contender.name not in admins:
        return ""
    counts = statuses(admins[contender.name])
    return f"; so far 503: {counts.get('503', 0):,.0f}, 504: {counts.get('504', 0):,.0f}"


# --- churn --------------------------------------------------------------------------------

def key_ids(admin: int, n: int) -> list[str]:
    ids, cursor = [], ""
    while len(ids) < n:
        page = urllib.request.Request(
            f"http://127.0.0.1:{admin}/v1/keys?limit=1000{'&cursor=' + cursor if cursor else ''}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(page, timeout=30) as response:
            ids += [key["id"] for key in json.loads(response.read()) if key["name"] != "ulimited"]
            cursor = response.headers.get("X-Next-Cursor") or ""
        if not cursor:
            break
    return ids[:n]


class Churn(__import__("threading").Thread):
    """Changes keys (their metadata) through the admin API, spread over `seconds`."""

    def __init__(self, admin: int, ids: list[str], seconds: float):
        super().__init__(daemon=True)
        self.admin, self.ids, self.seconds, self.done = admin, ids, seconds, 0

    def run(self) -> None:
        started = time.time()
        for i, key_id in enumerate(self.ids):
            due = started + self.seconds * 0.9 * i / len(self.ids)
            if due > time.time():
                time.sleep(due - time.time())
            admin_call(self.admin, "PATCH", f"/v1/keys/{key_id}", {"metadata": {"churn": i}})
            self.done += 1


def start_churn(admin: int, ids: list[str], seconds: float) -> Churn:
    churn = Churn(admin, ids, seconds)
    churn.start()
    return churn


# --- report -------------------------------------------------------------------------------

def quota_cost(results: dict) -> None:
    """keygate's CPU a request with a key quota and a customer quota beside the valid key's.

    The two run one after the other in each round, so each round gives a ratio under the same
    conditions; their median is the figure (the medians' ratio moves with whatever else the
    machine did in one run). Rounds where keygate had less than 95% of its core are named.
    """
    valid, quota = results.get(("keygate", "valid")), results.get(("keygate", "quota"))
    if not valid or not quota:
        return
    ratios = [q.cpu_us / v.cpu_us - 1 for v, q in zip(valid, quota)]
    busy = [str(i + 1) for i, (v, q) in enumerate(zip(valid, quota)) if min(v.share, q.share) < 95]
    plain = statistics.median(r.cpu_us for r in valid)
    quoted = statistics.median(r.cpu_us for r in quota)
    print(f"keygate, key quota + customer quota: {100 * statistics.median(ratios):+.1f}% CPU a request, the "
          f"median of the rounds' ratios ({', '.join(f'{100 * r:+.1f}%' for r in ratios)}; medians "
          f"{quoted:.2f} against {plain:.2f} us/req); issue 23 allows +5%"
          + (f"; rounds with under 95% of a core: {', '.join(busy)}" if busy else ""))


def report(results: dict, contenders: list[Contender], args) -> None:
    cores = os.cpu_count()
    print(f"\nkeygate load benchmark: {args.keys} keys, {args.rounds} rounds x {args.duration}s, "
          f"{args.connections} connections, wrk -t1 on CPU {DRIVER_CPU} with the upstream, "
          f"contenders on CPU {CONTENDER_CPU} with one worker; {cores} CPUs\n")
    header = (f"{'scenario':<9} {'contender':<14} {'req/s median':>12} {'(min - max)':>19} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'kernel':>6} {'CPU %':>5} {'box %':>5} "
              f"{'log +us':>7} {'keygate x':>9} {'unexpected':>10}")
    print(header)
    print("-" * len(header))
    for scenario in EXPECTED:
        rows = [(c, results.get((c.name, scenario))) for c in contenders]
        rows = [(c, r) for c, r in rows if r]
        if not rows:
            continue
        rps_of = {c.name: statistics.median(x.rps for x in r) for c, r in rows}
        cpu_of = {c.name: statistics.median(x.cpu_us for x in r) for c, r in rows}
        for contender, runs in rows:
            rps = rps_of[contender.name]
            # Logging contenders against keygate logging; the others against keygate without.
            logged = contender.name.endswith("-log")
            ours = rps_of.get("keygate-log" if logged else "keygate")
            ratio = f"{ours / rps:.2f}" if ours and not contender.name.startswith("keygate") else ""
            # What the access log costs it: CPU per request beside its twin without one.
            twin = cpu_of.get(contender.name.removesuffix("-log")) if logged else None
            cost = f"{cpu_of[contender.name] - twin:+.1f}" if twin is not None else ""
            print(f"{scenario:<9} {contender.name:<14} {rps:>12,.0f} "
                  f"{'(' + format(min(r.rps for r in runs), ',.0f') + ' - ' + format(max(r.rps for r in runs), ',.0f') + ')':>19} "
                  f"{statistics.median(r.p50_ms for r in runs):>7.2f} {statistics.median(r.p99_ms for r in runs):>7.2f} "
                  f"{cpu_of[contender.name]:>10.1f} {statistics.median(r.kernel_us for r in runs):>6.1f} "
                  f"{statistics.median(r.share for r in runs):>5.0f} {statistics.median(r.machine for r in runs):>5.0f} "
                  f"{cost:>7} {ratio:>9} {sum(r.unexpected for r in runs):>10}")
        print()


# --- main ---------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--scanning-keys", type=int, default=100_000)
    parser.add_argument("--only", default="", help="comma-separated contenders to run")
    parser.add_argument("--postgres", default="",
                        help="also run keygate on a fresh schema of this PostgreSQL database")
    parser.add_argument("--redis", default="",
                        help="also run keygate with its limits in this Redis (redis://127.0.0.1:6379)")
    parser.add_argument("--redis-timeout", default="",
                        help="rate_limit.redis_timeout of keygate-redis (default: keygate's own)")
    parser.add_argument("--churn", type=int, default=0,
                        help="also run keygate's valid scenario while this many key changes go in")
    parser.add_argument("--recent", action="store_true",
                        help="also run keygate without its recent-requests ring (logs.recent = 0)")
    parser.add_argument("--quotas", action="store_true",
                        help="also run keygate's valid scenario with a key that has a quota and whose "
                             "customer has one too (scenario 'quota'; the CPU it adds)")
    parser.add_argument("--saturated", action="store_true",
                        help="only keygate-saturated: keygate before an upstream that accepts and never "
                             "answers, its pool full, so that requests get the fast 503 (or 504)")
    parser.add_argument("--pool", type=int, default=8,
                        help="pool_max_connections of keygate-saturated's stalled upstream")
    parser.add_argument("--queue-timeout", default="100ms",
                        help="queue_timeout of keygate-saturated's stalled upstream (keygate's default)")
    parser.add_argument("--logs", action="store_true",
                        help="the access log's cost: keygate, nginx auth_basic and map, each with its access "
                             "log off and on (to a file), valid and scanning only")
    args = parser.parse_args()
    for tool in ("nginx", "haproxy", "wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed; benches/load/run installs it")
    for binary in (KEYGATE, HYPER_FLOOR):
        if not os.path.exists(binary):
            raise SystemExit(f"{binary} is missing; benches/load/run builds it")

    # The driver (this script, wrk, the upstream) stays off the contenders' CPU.
    os.sched_setaffinity(0, {int(DRIVER_CPU)})
    work = tempfile.mkdtemp(prefix="keygate-load-")
    os.chmod(work, 0o755)  # nginx workers drop root and must read the htpasswd file
    try:
        bench(work, args)
    finally:
        stop_all()
        if os.environ.get("KEEP_WORK"):
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: str, args) -> None:
    keys = make_keys(args.keys, args.scanning_keys)
    names = ["keygate", "keygate-saturated", "keygate-norecent", "keygate-redis", "keygate-pg", "nginx-basic", "nginx-map", "haproxy", "nginx-plain", "haproxy-plain", "hyper-plain"]
    ports = {name: free_port() for name in names + [f"{name}-log" for name in LOGGED]}
    upstream = free_port()
    admin = free_port()

    with open(f"{work}/upstream.conf", "w") as f:
        f.write(upstream_config(work, upstream))
    start(["nginx", "-p", work, "-c", f"{work}/upstream.conf"], DRIVER_CPU, f"{work}/upstream.log")
    wait_for_port(upstream, "the upstream nginx")

    with open(f"{work}/keygate.toml", "w") as f:
        f.write(keygate_config(work, upstream, ports["keygate"], admin))
    # The keys go in with `keygate keys import-file` before the gateway starts, so the start
    # measures loading them.
    with open(f"{work}/keys.jsonl", "w") as f:
        for user, key, _ in keys.valid:
            f.write(json.dumps({"name": user, "environment": "production", "key": key}) + "\n")
        user, key, _ = keys.limited
        f.write(json.dumps({"name": user, "environment": "production", "key": key,
                            "rate_limit": {"requests": 1, "per": "1m"}}) + "\n")
        if args.quotas:
            user, key, _ = keys.quota
            limit, period = BENCH_QUOTA.split("/")
            f.write(json.dumps({"name": user, "environment": "production", "key": key,
                                "quota": {"limit": int(limit), "period": period},
                                "customer_id": "bench-quota"}) + "\n")
    if args.quotas:
        subprocess.run([KEYGATE, "customers", "--config", f"{work}/keygate.toml", "create", "bench-quota",
                        "--quota", BENCH_QUOTA], check=True, stdout=subprocess.DEVNULL)
    began = time.time()
    subprocess.run([KEYGATE, "keys", "--config", f"{work}/keygate.toml", "import-file",
                    f"{work}/keys.jsonl"], check=True, stdout=subprocess.DEVNULL)
    print(f"keygate: imported {len(keys.valid) + 1} keys with keys import-file in {time.time() - began:.1f}s")
    env = dict(os.environ, KEYGATE_BENCH_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG="warn")
    began = time.time()
    gateway = start([KEYGATE, "serve", "--config", f"{work}/keygate.toml"], CONTENDER_CPU,
                    f"{work}/keygate.log", env)
    wait_for_port(ports["keygate"], "keygate")
    print(f"keygate: started with its {len(keys.valid) + 1} keys loaded in {time.time() - began:.1f}s")
    if args.logs:
        # A second gateway on the same store, its access log on, its stdout to a file.
        with open(f"{work}/keygate-log.toml", "w") as f:
            f.write(keygate_config(work, upstream, ports["keygate-log"], free_port(), access_log=True))
        logging_gateway = start([KEYGATE, "serve", "--config", f"{work}/keygate-log.toml", "--log-format", "json"],
                                CONTENDER_CPU, f"{work}/keygate-access.log",
                                dict(env, RUST_LOG="warn,keygate::access=info"))
        wait_for_port(ports["keygate-log"], "keygate-log")

    keygate_scenarios = (("valid",) + (("quota",) if args.quotas else ()) + ("wrong", "scanning", "limited")
                         + (("churn",) if args.churn else ()))
    contenders = [Contender("keygate", ports["keygate"], gateway.pid, keygate_scenarios)]
    if args.redis:
        # A second gateway on the same store, its limits shared in Redis: only an admitted key's
        # check goes there, so only the valid and limited scenarios differ. Redis's own CPU time
        # is not in its column (Redis runs beside the driver, not pinned).
        redis_admin = free_port()
        with open(f"{work}/keygate-redis.toml", "w") as f:
            f.write(keygate_config(work, upstream, ports["keygate-redis"], redis_admin, redis=args.redis,
                                   redis_timeout=args.redis_timeout))
        shared = start([KEYGATE, "serve", "--config", f"{work}/keygate-redis.toml"], CONTENDER_CPU,
                       f"{work}/keygate-redis.log", env)
        wait_for_port(ports["keygate-redis"], "keygate-redis")
        contenders.append(Contender("keygate-redis", ports["keygate-redis"], shared.pid, ("valid", "limited")))
    if args.recent:
        # A second gateway on the same store keeping no recent requests: the difference to
        # keygate is what the ring costs a request.
        with open(f"{work}/keygate-norecent.toml", "w") as f:
            f.write(keygate_config(work, upstream, ports["keygate-norecent"], free_port(), recent=0))
        norecent = start([KEYGATE, "serve", "--config", f"{work}/keygate-norecent.toml"], CONTENDER_CPU,
                         f"{work}/keygate-norecent.log", env)
        wait_for_port(ports["keygate-norecent"], "keygate-norecent")
        contenders.append(Contender("keygate-norecent", ports["keygate-norecent"], norecent.pid, ("valid", "wrong")))
    if args.postgres:
        # The same keys in PostgreSQL: the request path reads only the in-memory table, so this
        # should run as keygate on SQLite does.
        schema = f"kg_load_{random.getrandbits(48):012x}"
        subprocess.run(["psql", "-q", args.postgres, "-c", f"CREATE SCHEMA {schema}"], check=True)
        atexit.register(subprocess.run, ["psql", "-q", args.postgres, "-c", "SET client_min_messages = warning",
                                         "-c", f"DROP SCHEMA {schema} CASCADE"], check=False)
        sep = "&" if "?" in args.postgres else "?"
        pg_url = f"{args.postgres}{sep}options=-c%20search_path%3D{schema}"
        with open(f"{work}/keygate-pg.toml", "w") as f:
            f.write(keygate_config(work, upstream, ports["keygate-pg"], free_port(), store=pg_url))
        began = time.time()
        subprocess.run([KEYGATE, "keys", "--config", f"{work}/keygate-pg.toml", "import-file",
                        f"{work}/keys.jsonl"], check=True, stdout=subprocess.DEVNULL)
        print(f"keygate-pg: imported {len(keys.valid) + 1} keys into PostgreSQL in {time.time() - began:.1f}s")
        on_pg = start([KEYGATE, "serve", "--config", f"{work}/keygate-pg.toml"], CONTENDER_CPU,
                      f"{work}/keygate-pg.log", env)
        wait_for_port(ports["keygate-pg"], "keygate-pg")
        contenders.append(Contender("keygate-pg", ports["keygate-pg"], on_pg.pid))
    admins: dict[str, int] = {}
    if args.saturated:
        stalled = Stalled()
        stalled.start()
        admins["keygate-saturated"] = free_port()
        with open(f"{work}/keygate-saturated.toml", "w") as f:
            pool = (f'pool_max_connections = {args.pool}\nqueue_timeout = "{args.queue_timeout}"\n'
                    'timeout = "1s"')
            f.write(keygate_config(work, stalled.port, ports["keygate-saturated"], admins["keygate-saturated"],
                                   pool=pool))
        saturated = start([KEYGATE, "serve", "--config", f"{work}/keygate-saturated.toml"], CONTENDER_CPU,
                          f"{work}/keygate-saturated.log", env)
        wait_for_port(ports["keygate-saturated"], "keygate-saturated")
        contenders.append(Contender("keygate-saturated", ports["keygate-saturated"], saturated.pid,
                                    ("saturated",)))
    if args.logs:
        contenders.append(Contender("keygate-log", ports["keygate-log"], logging_gateway.pid, LOG_SCENARIOS,
                                    f"{work}/keygate-access.log"))
    # The floor holds no keys (it compares the header with the valid one), so it runs at any
    # key count.
    valid_user, valid_key, _ = keys.valid[len(keys.valid) // 2]
    floor = start([HYPER_FLOOR, f"127.0.0.1:{ports['hyper-plain']}", f"http://127.0.0.1:{upstream}",
                   basic(valid_user, valid_key)], CONTENDER_CPU, f"{work}/hyper-floor.log")
    wait_for_port(ports["hyper-plain"], "hyper-plain")
    contenders.append(Contender("hyper-plain", ports["hyper-plain"], floor.pid, ("valid", "wrong", "scanning")))
    if len(keys.valid) <= PEER_KEYS:
        with open(f"{work}/nginx.conf", "w") as f:
            f.write(nginx_peers_config(work, keys, upstream, ports))
        nginx = start(["nginx", "-p", work, "-c", f"{work}/nginx.conf"], CONTENDER_CPU, f"{work}/nginx.log")
        with open(f"{work}/haproxy.cfg", "w") as f:
            f.write(haproxy_config(keys, upstream, ports))
        haproxy = start(["haproxy", "-f", f"{work}/haproxy.cfg"], CONTENDER_CPU, f"{work}/haproxy.log")
        for name in names + ["nginx-basic-log", "nginx-map-log"]:
            if name.startswith(("nginx", "haproxy")):
                wait_for_port(ports[name], name)
        contenders += [
            Contender("nginx-basic", ports["nginx-basic"], nginx.pid),
            Contender("nginx-map", ports["nginx-map"], nginx.pid),
            Contender("nginx-basic-log", ports["nginx-basic-log"], nginx.pid, LOG_SCENARIOS,
                      f"{work}/nginx-basic-access.log"),
            Contender("nginx-map-log", ports["nginx-map-log"], nginx.pid, LOG_SCENARIOS,
                      f"{work}/nginx-map-access.log"),
            Contender("haproxy", ports["haproxy"], haproxy.pid),
            Contender("nginx-plain", ports["nginx-plain"], nginx.pid, ("valid",)),
            Contender("haproxy-plain", ports["haproxy-plain"], haproxy.pid, ("valid",)),
        ]
    else:
        print(f"peers skipped: nginx's htpasswd and HAProxy's userlist are searched line by line, "
              f"so only keygate runs with {len(keys.valid)} keys")
    if args.logs:
        contenders = [c for c in contenders if c.name.removesuffix("-log") in LOGGED]
        for contender in contenders:
            contender.scenarios = LOG_SCENARIOS
    else:
        contenders = [c for c in contenders if not c.name.endswith("-log")]
    if args.saturated:
        contenders = [c for c in contenders if c.name == "keygate-saturated"]
    if args.only:
        wanted = set(args.only.split(","))
        contenders = [c for c in contenders if c.name in wanted]

    headers = {
        "valid": basic(valid_user, valid_key),
        "churn": basic(valid_user, valid_key),
        "wrong": basic(valid_user, keys.wrong),
        "limited": basic(*keys.limited[:2]),
        "quota": basic(*keys.quota[:2]),
        "saturated": basic(valid_user, valid_key),
    }
    scan = scan_script(work, keys, valid_user)
    deadline = time.time() + 15
    for name in ("keygate", "keygate-log") if args.logs else ("keygate",):
        while status_of(ports[name], headers["valid"]) != 200:
            if time.time() > deadline:
                raise SystemExit(f"{name} did not pick up the imported keys")
            time.sleep(0.2)
    for contender in contenders:
        for scenario in contender.scenarios:
            # A stalled upstream answers nothing: the runs' 503s and 504s are read from keygate.
            if scenario not in ("scanning", "saturated"):
                check(contender, scenario, headers[scenario])

    churn_ids = key_ids(admin, args.churn) if args.churn else []

    # Warm every contender up once (pools, caches), then the measured rounds.
    warm = argparse.Namespace(**{**vars(args), "duration": 1})
    for contender in contenders:
        run_wrk(contender, contender.scenarios[0], headers["valid"], warm, scan)

    results: dict = {}
    for round_ in range(args.rounds):
        for scenario in EXPECTED:
            order = contenders[round_ % len(contenders):] + contenders[:round_ % len(contenders)]
            for contender in order:
                if scenario not in contender.scenarios:
                    continue
                if scenario == "limited":
                    # The limit refills one request a minute: use it up, so the run sees 429s.
                    check(contender, scenario, headers[scenario])
                churn = start_churn(admin, churn_ids, args.duration) if scenario == "churn" else None
                result = run_wrk(contender, scenario, headers.get(scenario, ""), args, scan)
                if churn:
                    churn.join()
                    print(f"  churn: {churn.done} key changes through the admin API during the run")
                results.setdefault((contender.name, scenario), []).append(result)
                print(f"round {round_ + 1} {scenario:<9} {contender.name:<14} {result.rps:>10,.0f} req/s "
                      f"p99 {result.p99_ms:.2f} ms  cpu {result.cpu_us:.1f} us/req ({result.kernel_us:.1f} kernel), "
                      f"CPU {result.share:.0f}% (machine {result.machine:.0f}%){saturated_counts(contender, admins)}",
                      flush=True)
    rss = open(f"/proc/{gateway.pid}/status").read()
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", rss).group(1))
    report(results, contenders, args)
    if args.quotas:
        quota_cost(results)
    print(f"keygate RSS after the run: {rss_kib / 1024:.0f} MiB")
    if args.redis:
        # How often a check at saturation was decided locally because Redis answered late.
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{redis_admin}/metrics", timeout=5).read().decode()
        def total(name: str) -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith(name) and not line.startswith("#"))
        fallbacks, requests = total("keygate_rate_limit_fallback_total"), total("keygate_requests_total")
        timeout = args.redis_timeout or "the default"
        print(f"keygate-redis (redis_timeout {timeout}): {fallbacks:,.0f} of {requests:,.0f} checks decided "
              f"locally ({100 * fallbacks / max(requests, 1):.3f}%)")


if __name__ == "__main__":
    main()
