"""The soak: minutes of mixed traffic against one keygate, to show that nothing drifts.

Four wrk processes share the connections, one per kind of request, each counting every answer
whose status is not the one its kind must get (a Lua `response` hook): a valid key (200), a
wrong key (401), a key over its limit (429) and no key at all (401). Beside them, slow clients
open connections and trickle a request head a byte at a time: the gateway must cut each off
at `server.header_read_timeout` without the others noticing. Every 30 s the gateway's RSS is
sampled. The verdict: 0 unexpected answers, every slow client cut off in time, and the RSS
flat after warm-up (the last sample within 10% of the one at 1 minute).

Everything listens on 127.0.0.1 at free ports; every process it starts is stopped by PID.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "load"))
from run import (  # noqa: E402  (the load benchmark's helpers)
    ADMIN_TOKEN, KEYGATE, basic, free_port, generated_key, start, stop_all, upstream_config,
    wait_for_port,
)

HEADER_READ_TIMEOUT = 5

COUNTING = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) expected = tonumber(args[1]); unexpected = 0; answered = 0 end
function response(status, headers, body)
  answered = answered + 1
  if status ~= expected then unexpected = unexpected + 1 end
end
function done(summary, latency, requests)
  local bad, all = 0, 0
  for _, t in ipairs(threads) do bad = bad + t:get("unexpected"); all = all + t:get("answered") end
  io.write(string.format("SOAK answered=%d unexpected=%d errors=%d p99_ms=%.2f\\n", all, bad,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(99) / 1000))
end
"""


def gateway_config(work: str, upstream: int, proxy: int, admin: int) -> str:
    return f"""
[server]
listen = "127.0.0.1:{proxy}"
header_read_timeout = "{HEADER_READ_TIMEOUT}s"
[admin]
listen = "127.0.0.1:{admin}"
token_env = "KEYGATE_BENCH_ADMIN_TOKEN"
[store]
url = "sqlite://{work}/keygate.db"
[auth]
failed_per_ip = "1000000000/s"
[rate_limit]
default = "1000000000/s"
[[upstream]]
name = "api"
url = "http://127.0.0.1:{upstream}"
[[route]]
name = "api"
path = "/"
upstream = "api"
"""


def rss_mib(pid: int) -> float:
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


class SlowClients(threading.Thread):
    """Opens `count` connections at a time that send a request head a byte every second; each
    must be closed by the gateway within the head timeout (plus slack)."""

    def __init__(self, port: int, count: int, until: float):
        super().__init__(daemon=True)
        self.port, self.count, self.until = port, count, until
        self.cut_in_time = 0
        self.overstayed = 0

    def one(self) -> None:
        head = b"GET /slow HTTP/1.1\r\nHost: soak\r\nX-Padding: " + b"a" * 64
        opened = time.time()
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.settimeout(1)
            for byte in head:
                try:
                    s.sendall(bytes([byte]))
                    if s.recv(1024) == b"":
                        break
                except socket.timeout:
                    continue
                except OSError:
                    break
            else:
                self.overstayed += 1
                return
        if time.time() - opened <= HEADER_READ_TIMEOUT + 3:
            self.cut_in_time += 1
        else:
            self.overstayed += 1

    def run(self) -> None:
        while time.time() < self.until:
            workers = [threading.Thread(target=self.one) for _ in range(self.count)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--slow-clients", type=int, default=32)
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed; benches/soak/run installs it")
    work = tempfile.mkdtemp(prefix="keygate-soak-")
    os.chmod(work, 0o755)
    try:
        soak(work, args)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def soak(work: str, args) -> None:
    upstream, proxy, admin = free_port(), free_port(), free_port()
    with open(f"{work}/upstream.conf", "w") as f:
        f.write(upstream_config(work, upstream))
    start(["nginx", "-p", work, "-c", f"{work}/upstream.conf"], "1", f"{work}/upstream.log")
    wait_for_port(upstream, "the upstream nginx")
    with open(f"{work}/keygate.toml", "w") as f:
        f.write(gateway_config(work, upstream, proxy, admin))
    valid, limited = generated_key(), generated_key()
    with open(f"{work}/keys.jsonl", "w") as f:
        f.write(json.dumps({"name": "valid", "environment": "production", "key": valid}) + "\n")
        f.write(json.dumps({"name": "limited", "environment": "production", "key": limited,
                            "rate_limit": {"requests": 1, "per": "1h"}}) + "\n")
    subprocess.run([KEYGATE, "keys", "--config", f"{work}/keygate.toml", "import-file", f"{work}/keys.jsonl"],
                   check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, KEYGATE_BENCH_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG="warn")
    gateway = start([KEYGATE, "serve", "--config", f"{work}/keygate.toml"], "0", f"{work}/keygate.log", env)
    wait_for_port(proxy, "keygate")
    with open(f"{work}/count.lua", "w") as f:
        f.write(COUNTING)

    seconds = int(args.minutes * 60)
    share = max(1, args.connections // 4)
    kinds = [
        ("valid", 200, ["-H", f"Authorization: {basic('x', valid)}"]),
        ("wrong", 401, ["-H", f"Authorization: {basic('x', generated_key())}"]),
        ("limited", 429, ["-H", f"Authorization: {basic('x', limited)}"]),
        ("missing", 401, []),
    ]
    # The limited key's one request an hour is spent before the run.
    subprocess.run(["curl", "-s", "-o", "/dev/null", "-u", f"x:{limited}", f"http://127.0.0.1:{proxy}/"])
    drivers = []
    for name, expected, headers in kinds:
        out = open(f"{work}/wrk-{name}.out", "w")
        drivers.append((name, subprocess.Popen(
            ["taskset", "-c", "1", "wrk", "-t1", f"-c{share}", f"-d{seconds}s", "--timeout", "10s",
             "-s", f"{work}/count.lua", *headers, f"http://127.0.0.1:{proxy}/", "--", str(expected)],
            stdout=out, stderr=subprocess.STDOUT)))
    slow = SlowClients(proxy, args.slow_clients, time.time() + seconds - HEADER_READ_TIMEOUT - 5)
    slow.start()

    began = time.time()
    samples = []
    while any(d.poll() is None for _, d in drivers):
        elapsed = time.time() - began
        if not samples or elapsed - samples[-1][0] >= 30:
            samples.append((elapsed, rss_mib(gateway.pid)))
            print(f"{elapsed:6.0f} s  RSS {samples[-1][1]:7.1f} MiB", flush=True)
        time.sleep(1)
    samples.append((time.time() - began, rss_mib(gateway.pid)))
    slow.join()

    total_unexpected = 0
    print(f"\nsoak: {args.minutes:g} min, {args.connections} connections in 4 kinds, "
          f"{args.slow_clients} slow clients at a time; {os.cpu_count()} CPUs")
    for name, _ in drivers:
        text = open(f"{work}/wrk-{name}.out").read()
        line = re.search(r"SOAK answered=(\d+) unexpected=(\d+) errors=(\d+) p99_ms=([\d.]+)", text)
        if not line:
            print(f"{name:<8} no summary from wrk:\n{text}")
            total_unexpected += 1
            continue
        answered, unexpected, errors, p99 = line.groups()
        total_unexpected += int(unexpected) + int(errors)
        print(f"{name:<8} answered {int(answered):>10,}  unexpected {unexpected:>6}  socket errors {errors:>5}  p99 {p99} ms")
    print(f"slow     cut off in time {slow.cut_in_time}, overstayed {slow.overstayed}")
    warm = next((rss for t, rss in samples if t >= 60), samples[0][1])
    last = samples[-1][1]
    print(f"RSS      {' '.join(f'{rss:.0f}' for _, rss in samples)} MiB (at 1 min {warm:.0f}, last {last:.0f})")
    flat = last <= warm * 1.10
    ok = total_unexpected == 0 and slow.overstayed == 0 and flat
    print("verdict: " + ("pass" if ok else "FAIL"))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
