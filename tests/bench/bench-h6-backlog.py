#!/usr/bin/python3
"""bench-h6-backlog: the daemon's memory and responsiveness while it collects a backlog that it
cannot forward (issue 13: peak RSS under 48 MiB and the same, within 10 %, at 1,000,000 and at
10,000,000 records of backlog; /healthz always under 50 ms while catching up).

    bench-h6-backlog.py --build BUILD [--records N] [--marks N,N,...] [--dir DIR]
                        [--per-hour N] [--commerce down|sim]

azs-sim (BUILD/tests/sim/azs-sim) holds N records (default 1,000,000) over reported hours of
--per-hour records (default 60,000) in pages of 1,000; azs-usaged (BUILD/daemon/azs-usaged)
collects them from an empty store in DIR (default /var/tmp). With --commerce down (the default)
its [commerce] url is a closed loopback port, so every batch fails and is retried: the whole
backlog stays in the store. With --commerce sim it forwards to the simulator as it collects.

Meanwhile a client in this process asks /healthz every 50 ms on a connection of its own, and
/metrics every second (the records gauge tells how many are stored; the scrape runs
store_counts and store_oldest_pending on the loop). At each mark (default: N) it prints the
records stored, the daemon's VmHWM and VmRSS, its CPU time, the slowest /healthz and /metrics
answers so far and the largest WAL seen; at the end the /healthz answers over 50 ms and a JSON
line of the marks. The answers' times count the machine's other load (this client's too); with
--stalls the daemon runs with bench-h6-loopstall preloaded, which reports the loop's longest
turns in wall time, less run-queue waits, and in CPU time. Not a test: scripts/bench backlog can
call it.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from azsim import Sim, scenario, write_config  # noqa: E402


def proc_status(pid):
    """VmHWM and VmRSS (KiB) of a process."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def proc_cpu(pid):
    """User + system CPU seconds of a process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Poller(threading.Thread):
    """GET a path every interval seconds on one kept-alive connection; keep the slowest."""

    def __init__(self, port, path, interval):
        super().__init__(daemon=True)
        self.port, self.path, self.interval = port, path, interval
        self.worst, self.worst_at, self.count, self.errors = 0.0, None, 0, 0
        self.slow = []  # (seconds since start, answer seconds) of answers over 50 ms
        self.t0 = time.monotonic()
        self.last_body = None
        self.stop_flag = threading.Event()

    def run(self):
        conn = None
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", self.path)
                r = conn.getresponse()
                body = r.read()
                dt = time.monotonic() - t0
                self.count += 1
                self.last_body = body
                if dt > self.worst:
                    self.worst, self.worst_at = dt, time.time()
                if dt > 0.05:
                    self.slow.append((round(t0 - self.t0, 2), round(dt * 1e3, 1)))
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            left = self.interval - (time.monotonic() - t0)
            if left > 0:
                self.stop_flag.wait(left)


def stored(metrics_text):
    """Records stored, by the records gauge of /metrics (every state)."""
    total = 0
    for m in re.finditer(r'^azs_usaged_records\{state="[a-z]+"\} (\d+)$', metrics_text, re.M):
        total += int(m.group(1))
    return total


def socket_port():
    """A free loopback TCP port (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--records", type=int, default=1000000)
    ap.add_argument("--marks", default="")
    ap.add_argument("--per-hour", type=int, default=60000)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"))
    ap.add_argument("--commerce", choices=("down", "sim"), default="down")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--stalls", action="store_true",
                    help="preload BUILD/tests/bench/libbench-h6-loopstall.so: the loop's turns")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    os.environ.setdefault("AZS_SIM", os.path.join(build, "tests", "sim", "azs-sim"))
    marks = sorted(int(m) for m in args.marks.split(",") if m) or [args.records]
    hours = -(-args.records // args.per_hour)
    work = tempfile.mkdtemp(prefix="azs-h6-backlog-", dir=args.dir)
    sc = scenario(hours={"from": "2026-11-01T00:00:00Z", "count": hours},
                  recordsPerHour=args.per_hour, pageSize=1000, latePercent=10, splitPercent=5,
                  tenants=20, subscriptionsPerTenant=5, resourcesPerSubscription=20)
    daemon = None
    pollers = []
    try:
        with Sim(sc, workdir=os.path.join(work, "sim"), timeout=120) as sim:
            conf = sim.daemon_config(work)
            health_port = socket_port()
            conf["stack"].update({"poll_interval": "1s", "settle": "0s", "lookback": "1h"})
            if args.commerce == "down":
                conf["commerce"]["url"] = "https://127.0.0.1:%d/api/usageEvents/batch" % \
                    socket_port()
            conf["health"] = {"listen": "127.0.0.1:%d" % health_port}
            conf["log"] = {"level": "notice"}
            path = write_config(os.path.join(work, "azs-usaged.conf"), conf)
            log = open(os.path.join(work, "azs-usaged.log"), "wb")
            env = dict(os.environ)
            stalls = os.path.join(work, "stalls")
            if args.stalls:
                env["LD_PRELOAD"] = os.path.join(build, "tests", "bench",
                                                 "libbench-h6-loopstall.so")
                env["AZS_H6_STALLS"] = stalls
            t0 = time.monotonic()
            daemon = subprocess.Popen([os.path.join(build, "daemon", "azs-usaged"), "-c", path,
                                       "--foreground"], stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=log, env=env)
            health = Poller(health_port, "/healthz", 0.05)
            metrics = Poller(health_port, "/metrics", 1.0)
            pollers = [health, metrics]
            for p in pollers:
                p.start()
            print("bench-h6-backlog: %d records (%d hours of %d), Commerce %s, store in %s"
                  % (args.records, hours, args.per_hour, args.commerce, work), flush=True)
            rows = []
            n = 0
            wal_max = 0
            while marks:
                time.sleep(1)
                try:
                    wal_max = max(wal_max, os.path.getsize(os.path.join(work, "usage.db-wal")))
                except OSError:
                    pass
                if daemon.poll() is not None:
                    sys.exit("azs-usaged exited %d; see %s" % (daemon.returncode,
                                                               os.path.join(work, "azs-usaged.log")))
                body = metrics.last_body
                if body is None:
                    continue
                n = stored(body.decode())
                if n >= marks[0]:
                    st = proc_status(daemon.pid)
                    row = {"records": n, "seconds": round(time.monotonic() - t0, 1),
                           "wal_max_mib": round(wal_max / 1048576, 1),
                           "vmhwm_kib": st["VmHWM"], "vmrss_kib": st["VmRSS"],
                           "cpu_s": round(proc_cpu(daemon.pid), 1),
                           "healthz_max_ms": round(health.worst * 1e3, 1),
                           "metrics_max_ms": round(metrics.worst * 1e3, 1)}
                    rows.append(row)
                    print("  %(records)10d records after %(seconds)7.1f s: VmHWM %(vmhwm_kib)d KiB,"
                          " VmRSS %(vmrss_kib)d KiB, CPU %(cpu_s)s s, slowest /healthz"
                          " %(healthz_max_ms)s ms, /metrics %(metrics_max_ms)s ms, WAL up to"
                          " %(wal_max_mib)s MiB" % row, flush=True)
                    if args.stalls and os.path.exists(stalls):
                        with open(stalls) as f:
                            row["loop"] = f.read().strip().replace("\n", "; ")
                        print("    loop turns: %s" % row["loop"], flush=True)
                    marks.pop(0)
            for p in pollers:
                p.stop_flag.set()
            print("  /healthz: %d answers, %d errors, slowest %.1f ms; /metrics: %d answers,"
                  " slowest %.1f ms" % (health.count, health.errors, health.worst * 1e3,
                                        metrics.count, metrics.worst * 1e3))
            print("  /healthz answers over 50 ms (s after start, ms): %s" % health.slow[:40])
            print("RESULT " + json.dumps(rows))
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
            if args.stalls and os.path.exists(stalls):
                with open(stalls) as f:
                    print("  loop turns over the whole run: %s"
                          % f.read().strip().replace("\n", "; "))
    finally:
        for p in pollers:
            p.stop_flag.set()
        if daemon and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
