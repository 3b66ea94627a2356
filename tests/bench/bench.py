"""The daemon benchmarks of scripts/bench (issue 13, ARCHITECTURE.md section 11): the real
azs-usaged against the real azs-sim over HTTPS on loopback, with a test CA made by
tests/e2e/azsim.py.

    bench.py catchup [--records N] [--hours H] ...   the catch-up after an outage, and the floor
    bench.py backlog [--records N] [--hours H] ...   backlog memory, restart, then forwarding
    bench.py smoke                                   a tiny catch-up: correctness, every figure

catchup: the simulator holds N records (default 2,000,000) in H reported hours (default 168, a
week) that all ended; azs-usaged starts on an empty store in $BENCH_DIR with collect_from at the
first hour, batches of 1,000 and 4 in flight, and the bench waits until the daemon has forwarded
N records and the simulator's ledger summary matches the expected charges exactly. A run whose
ledger does not match prints FAIL and no rate. Figures: records/s end to end (wall time from
starting the daemon to the last record forwarded), the daemon's CPU time per record
((utime + stime) / N from /proc), the simulator's (its own accounting without its control API,
over the same span) and the daemon's peak RSS (VmHWM), the slowest /healthz answer (asked every
100 ms from a thread while catching up; the health server's thread answers it from the loop's
heartbeat) and, with no target, the slowest /readyz (the loop answers it); then bench-floor on a sample of the same pages (saved
from the simulator before the daemon starts) and the ratio of the daemon's CPU per record to it.

backlog: the same world with N records (default 10,000,000) while Commerce is down (the daemon's
Commerce URL names a loopback port that refuses connections): the daemon's peak RSS when 1,000,000
records are stored and when all N are; then the daemon is stopped and started again with Commerce
working, the time from its start to READY=1 on a NOTIFY_SOCKET the bench binds is the restart
time, and it forwards all N while the bench checks the ledger as above.

smoke: catchup with 5,000 records in 10 hours, for scripts/test: it judges no figure (nothing
here is timed for a verdict) and fails only when the ledger does not match or a figure is
missing.

Results go to stdout as a table and to a JSON file with the conditions (cores, CPU, build type,
compiler, library versions, daemon version and commit, load average). Standard library only,
for Debian's /usr/bin/python3.
"""

import argparse
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "e2e"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests"))
import azsim  # noqa: E402  (the simulator harness and its test CA)

MiB = 1024 * 1024
TARGETS = {
    "daemon_cpu_us_per_record": 25.0,  # at most
    "floor_ratio": 1.5,  # at most
    "records_per_s": 50000.0,  # at least
    "peak_rss_mib": 48.0,  # under
    "healthz_max_ms": 50.0,  # under
    "rss_growth": 0.10,  # |RSS at N / RSS at 1M - 1| at most
    "ready_s": 1.0,  # under
}
HEALTHZ_INTERVAL = 0.1
FLOOR_PAGES_RECORDS = 30000  # records of saved pages the floor goes round
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def say(text=""):
    print(text, flush=True)


def utc(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


class BenchError(Exception):
    """The run could not be completed (a process died, a wait gave up): FAIL."""


# -- the processes ---------------------------------------------------------------------------

def proc_cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_status_kib(pid, name):
    """A kB figure of /proc/PID/status (VmHWM, VmRSS)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise BenchError("no %s in /proc/%d/status" % (name, pid))


class Notify:
    """A NOTIFY_SOCKET of our own: a thread notes when READY=1 arrives (monotonic time)."""

    def __init__(self):
        self.name = "azs-bench-%s" % uuid.uuid4().hex
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.ready_at = None
        self.event = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return "@" + self.name

    def _read(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            now = time.monotonic()
            if "READY=1" in data.decode(errors="replace").split("\n") and self.ready_at is None:
                self.ready_at = now
                self.event.set()

    def close(self):
        self.sock.close()


class Daemon:
    """azs-usaged --foreground with its log in a file and NOTIFY_SOCKET set."""

    def __init__(self, build_dir, conf_path, log_path):
        self.binary = os.path.join(build_dir, "daemon", "azs-usaged")
        self.conf_path = conf_path
        self.log_path = log_path
        self.notify = Notify()
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                            "CREDENTIALS_DIRECTORY", "LISTEN_FDS", "LISTEN_PID")}
        env["NOTIFY_SOCKET"] = self.notify.address
        self.log = open(log_path, "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([self.binary, "-c", conf_path, "--foreground"],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def check(self):
        if not self.alive():
            raise BenchError("azs-usaged exited with status %d:\n%s"
                             % (self.proc.returncode, tail(self.log_path)))

    def wait_ready(self, seconds):
        """Seconds from the start to READY=1."""
        deadline = time.monotonic() + seconds
        while not self.notify.event.wait(0.05):
            self.check()
            if time.monotonic() > deadline:
                raise BenchError("azs-usaged sent no READY=1 within %d s:\n%s"
                                 % (seconds, tail(self.log_path)))
        return self.notify.ready_at - self.started_at

    def stop(self, seconds=120):
        """SIGTERM and wait; True when it exited 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(seconds)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.notify.close()
        return self.proc.returncode == 0


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "\n".join("    " + x for x in f.read().splitlines()[-lines:])
    except OSError:
        return "    (no log)"


class HealthProbe:
    """Asks GET path every HEALTHZ_INTERVAL on a new connection (as a monitor would) and keeps
    the slowest answer once the first one came; a failure after that counts as an answer as slow
    as the time it took to fail. /healthz is answered by the health server's thread from the
    loop's heartbeat, /readyz by the loop itself (either status is an answer there): the second
    shows how long the loop keeps a question waiting."""

    def __init__(self, port, path="/healthz", answers=(200,)):
        self.port = port
        self.path = path
        self.answers = answers
        self.max_ms = None
        self.count = 0
        self.failures = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            ok = False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    conn.request("GET", self.path)
                    r = conn.getresponse()
                    r.read()
                    ok = r.status in self.answers
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException):
                ok = False
            ms = (time.monotonic() - t0) * 1000
            if ok or self.count > 0:
                self.count += 1
                if not ok:
                    self.failures += 1
                self.max_ms = ms if self.max_ms is None else max(self.max_ms, ms)
            self.stop_event.wait(max(0.0, HEALTHZ_INTERVAL - (time.monotonic() - t0)))

    def stop(self):
        self.stop_event.set()
        self.thread.join(15)


def metrics(port):
    """{name: value} of the daemon's /metrics, labelled series summed per name; None when the
    health server does not answer (yet)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            body = r.read().decode()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None
    if r.status != 200:
        return None
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the world -------------------------------------------------------------------------------

def recent_hours(count):
    """The count whole hours that ended last by the real clock (the daemon schedules by it)."""
    now = int(time.time())
    return {"from": utc(now - now % 3600 - count * 3600), "count": count}


def start_sim(workdir, records, hours):
    """azs-sim with records spread over hours (rounded up to whole hours of equal size)."""
    per_hour = max(1, math.ceil(records / hours))
    # As many resources as the simulator makes (1,000 per user subscription), so that a resource
    # reports a few meters an hour, as on a real stamp: a page then repeats an instanceData a few
    # times, not hundreds, and the daemon's per-page reuse of a parsed instanceData gains only
    # what it would gain there.
    sc = azsim.scenario(hours=recent_hours(hours), recordsPerHour=per_hour, pageSize=1000,
                        tokenLifetime=3600, resourcesPerSubscription=1000)
    return azsim.Sim(sc, workdir=os.path.join(workdir, "sim"), timeout=60)


def save_pages(sim, directory, want):
    """Save usage pages of the first hours (following nextLinks) until they hold want records;
    returns the file paths."""
    os.makedirs(directory, exist_ok=True)
    w = sim.world()
    token = sim.token(w["audiences"]["stack"])
    start = azsim._parse_time(w["hours"]["from"])
    paths, records, hour = [], 0, 0
    while records < want and hour < w["hours"]["count"]:
        path = sim.usage_path(utc(start + 3600 * hour))
        while path and records < want:
            r = sim.get(path, token=token, timeout=60)
            if r.status != 200:
                raise BenchError("usage page: %d %s" % (r.status, r.body[:300]))
            page = r.json()
            records += len(page["value"])
            p = os.path.join(directory, "page-%04d.json" % len(paths))
            with open(p, "wb") as f:
                f.write(r.body)
            paths.append(p)
            path = page.get("nextLink")
        hour += 1
    return paths, records


def daemon_conf(sim, directory, store_dir, health_port, records, commerce_url=None):
    """The daemon's configuration for a catch-up: collect every hour at once (settle 0, the
    look-back pass after the run), Commerce batches of 1,000 with 4 in flight and gzip."""
    os.makedirs(directory, exist_ok=True)
    conf = sim.daemon_config(directory)
    conf["stack"].update({"poll_interval": "1s", "settle": "0s", "lookback": "6h",
                          "refresh_interval": "15m"})
    conf["commerce"].update({"batch_size": "1000", "max_inflight": "4", "compress": "gzip",
                             "timeout": "30s", "retry_initial": "1s", "retry_max": "10s"})
    if commerce_url:
        conf["commerce"]["url"] = commerce_url
    conf["store"] = {"path": os.path.join(store_dir, "usage.db"),
                     "max_pending": str(max(50000000, 2 * records))}
    conf["health"] = {"listen": "127.0.0.1:%d" % health_port}
    conf["log"] = {"level": "info"}
    path = os.path.join(directory, "azs-usaged.conf")
    azsim.write_config(path, conf)
    return path, conf


def ledger_summary(sim):
    """The ledger summary; its first comparison of millions of rows takes longer than the
    harness's ten seconds for a control call."""
    r = sim.request("GET", "/_sim/ledger/summary", timeout=1800)
    if r.status != 200:
        raise BenchError("ledger summary: %d %s" % (r.status, r.body[:300]))
    return r.json()


def sim_work_us(summary):
    """The simulator's CPU time outside its control API, in µs (its own accounting)."""
    s = summary["sim"]
    return s["cpuUs"] - s["controlCpuUs"]


def ledger_ok(summary, n):
    return (summary["comparison"]["ok"] and summary["expected"]["events"] == n
            and summary["accepted"] == n)


def ledger_problem(summary, n):
    c = summary["comparison"]
    counts = {k: v for k, v in c.items() if k.endswith("Count") and v}
    return ("expected %d, accepted %d, comparison %s"
            % (summary["expected"]["events"], summary["accepted"],
               json.dumps(counts) if counts else "ok"))


def wait_counter(daemon, port, name, n, seconds, what, on_poll=None):
    """Poll the daemon's /metrics until counter name reaches n; returns the monotonic time it was
    seen there. Prints progress every 10 s."""
    deadline = time.monotonic() + seconds
    last_print = time.monotonic()
    value = 0
    while True:
        daemon.check()
        m = metrics(port)
        now = time.monotonic()
        if m is not None:
            value = m.get(name, 0)
            if on_poll:
                on_poll(m, now)
            if value >= n:
                return now, m
        if now - last_print >= 10:
            say("  %6.0f s  %s: %d of %d" % (now - daemon.started_at, what, value, n))
            last_print = now
        if now > deadline:
            raise BenchError("gave up after %d s: %s %d of %d" % (seconds, what, value, n))
        time.sleep(0.2)


def wait_ledger(sim, n, seconds):
    """Ask the summary until the ledger holds n records matching the expected charges; returns
    the summary (the last one, matching or not, when seconds pass)."""
    deadline = time.monotonic() + seconds
    while True:
        s = ledger_summary(sim)
        if ledger_ok(s, n) or time.monotonic() > deadline:
            return s
        time.sleep(1)


# -- conditions ------------------------------------------------------------------------------

def conditions(build_dir):
    c = {"time": utc(), "nproc": os.cpu_count(), "loadavg_start": os.getloadavg(),
         "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            c["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                             if line.startswith("model name")), "unknown")
    except OSError:
        c["cpu"] = "unknown"
    info = os.path.join(build_dir, "meson-info")
    try:
        with open(os.path.join(info, "intro-buildoptions.json")) as f:
            opts = {o["name"]: o["value"] for o in json.load(f)}
        c["buildtype"] = opts.get("buildtype")
        c["b_sanitize"] = opts.get("b_sanitize")
        c["b_ndebug"] = opts.get("b_ndebug")
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(info, "intro-dependencies.json")) as f:
            c["libraries"] = {d["name"]: d.get("version") for d in json.load(f)
                              if d.get("version") not in (None, "unknown")}
    except (OSError, ValueError):
        c["libraries"] = {}
    try:
        with open(os.path.join(info, "intro-targets.json")) as f:
            compiler = json.load(f)[0]["target_sources"][0]["compiler"]
        out = subprocess.run(compiler + ["--version"], capture_output=True, text=True)
        c["compiler"] = out.stdout.splitlines()[0] if out.stdout else " ".join(compiler)
    except (OSError, ValueError, IndexError, KeyError):
        c["compiler"] = "unknown"
    out = subprocess.run([os.path.join(build_dir, "daemon", "azs-usaged"), "--version"],
                         capture_output=True, text=True)
    c["daemon_version"] = out.stdout.strip()
    git = subprocess.run(["git", "-C", SOURCE_DIR, "describe", "--always", "--dirty",
                          "--abbrev=12"], capture_output=True, text=True)
    # a tree without .git (an exported commit) names it in $BENCH_COMMIT
    c["commit"] = git.stdout.strip() or os.environ.get("BENCH_COMMIT") or "unknown"
    return c


# -- the runs --------------------------------------------------------------------------------

class Result:
    """Figures, verdicts and the table."""

    def __init__(self, target, judge=True):
        self.target = target
        self.judge = judge
        self.figures = {}
        self.checks = []  # (name, ok, text)
        self.rows = []  # (label, value text, verdict text)

    def figure(self, key, value, label, fmt, target=None, ok=None):
        self.figures[key] = value
        verdict = ""
        if target is not None:
            if not self.judge:
                verdict = "(%s; not judged)" % target
            else:
                verdict = "%s  (%s)" % ("PASS" if ok else "FAIL", target)
                self.checks.append((key, ok, target))
        self.rows.append((label, fmt % value if value is not None else "-", verdict))

    def check(self, key, ok, text):
        self.checks.append((key, ok, text))
        self.rows.append((text, "", "PASS" if ok else "FAIL"))

    def failed(self):
        return [k for k, ok, _ in self.checks if not ok]

    def table(self):
        w = max(len(r[0]) for r in self.rows) if self.rows else 10
        v = max(len(r[1]) for r in self.rows) if self.rows else 10
        for label, value, verdict in self.rows:
            say("  %-*s  %*s  %s" % (w, label, v, value, verdict))


def run_catchup(args, build_dir, work, res):
    n_req, hours = args.records, args.hours
    say("== catch-up: %d records over %d reported hours (files in %s)" % (n_req, hours, work))
    sim = start_sim(work, n_req, hours)
    daemon = probe = rprobe = None
    try:
        pages, page_records = save_pages(sim, os.path.join(work, "pages"),
                                         min(FLOOR_PAGES_RECORDS, n_req))
        say("  saved %d usage pages (%d records) for the floor" % (len(pages), page_records))
        s0 = ledger_summary(sim)  # makes the simulator's expected totals before the clock starts
        n = s0["expected"]["events"]
        res.figures["records"] = n
        res.figures["hours"] = hours
        health_port = free_port()
        conf_path, conf = daemon_conf(sim, os.path.join(work, "daemon"), work, health_port, n)
        res.figures["config"] = {"commerce": conf["commerce"], "stack": {
            k: conf["stack"][k] for k in ("poll_interval", "settle", "lookback")}}
        daemon = Daemon(build_dir, conf_path, os.path.join(work, "daemon", "azs-usaged.log"))
        probe = HealthProbe(health_port)
        rprobe = HealthProbe(health_port, "/readyz", (200, 503))
        daemon.wait_ready(60)
        phases = {}

        def collected(m, now):
            if "collected" not in phases and m.get("azs_usaged_records_collected_total", 0) >= n:
                phases["collected"] = (now - daemon.started_at, proc_cpu_seconds(daemon.pid))

        t_end, m = wait_counter(daemon, health_port, "azs_usaged_records_forwarded_total", n,
                                args.limit or 300 + n / 1000, "records forwarded",
                                on_poll=collected)
        cpu = proc_cpu_seconds(daemon.pid)
        hwm = proc_status_kib(daemon.pid, "VmHWM")
        wall = t_end - daemon.started_at
        deadline = time.monotonic() + 30  # a run shorter than one probe still gets one answer
        while (probe.count == 0 or rprobe.count == 0) and time.monotonic() < deadline:
            daemon.check()
            time.sleep(0.05)
        probe.stop()
        rprobe.stop()
        summary = wait_ledger(sim, n, 120 + n / 20000)
        ok = ledger_ok(summary, n)
        res.check("ledger", ok, "ledger holds all %d records and matches the expected charges"
                  % n if ok else "ledger: " + ledger_problem(summary, n))
        if not ok:
            return
        sim_us = sim_work_us(summary) - sim_work_us(s0)
        collected_n = m.get("azs_usaged_records_collected_total", 0)
        res.figure("records_per_s", n / wall, "records/s end to end (%d in %.1f s)" % (n, wall),
                   "%.0f", ">= %.0f" % TARGETS["records_per_s"],
                   n / wall >= TARGETS["records_per_s"])
        res.figures["wall_s"] = wall
        res.figures["daemon_records_collected"] = collected_n
        if "collected" in phases:  # the collector's share: all N stored, some not yet forwarded
            res.figures["collected_all_s"], res.figures["daemon_cpu_s_at_collected_all"] = \
                phases["collected"]
            res.rows.append(("  of which collecting all %d (s; CPU s)" % n, "%.1f; %.1f"
                             % phases["collected"], ""))
        res.figure("daemon_cpu_us_per_record", cpu * 1e6 / n, "daemon CPU per record (us)",
                   "%.2f", "<= %.0f" % TARGETS["daemon_cpu_us_per_record"],
                   cpu * 1e6 / n <= TARGETS["daemon_cpu_us_per_record"])
        res.figures["daemon_cpu_s"] = cpu
        res.figure("sim_cpu_us_per_record", sim_us / n,
                   "simulator CPU per record (us, usage + Commerce)", "%.2f")
        res.figures["sim"] = {"before": s0["sim"], "after": summary["sim"]}
        res.figure("peak_rss_mib", hwm / 1024, "daemon peak RSS (MiB)", "%.1f",
                   "< %.0f" % TARGETS["peak_rss_mib"], hwm / 1024 < TARGETS["peak_rss_mib"])
        hz = probe.max_ms
        res.figure("healthz_max_ms", hz, "slowest /healthz while catching up (ms, %d asked)"
                   % probe.count, "%.1f", "< %.0f" % TARGETS["healthz_max_ms"],
                   hz is not None and hz < TARGETS["healthz_max_ms"] and probe.failures == 0)
        res.figures["healthz_count"] = probe.count
        res.figures["healthz_failures"] = probe.failures
        # no target of its own: how long the loop itself keeps a question waiting
        res.figure("readyz_max_ms", rprobe.max_ms, "slowest /readyz, answered by the loop (ms, %d"
                   " asked)" % rprobe.count, "%.1f")
        res.figures["readyz_count"] = rprobe.count
        res.figures["readyz_failures"] = rprobe.failures
        if not daemon.stop():
            res.check("daemon_exit", False, "azs-usaged did not exit 0 on SIGTERM")
        daemon = None

        floor = run_floor(build_dir, pages, args.floor_records,
                          conf["commerce"]["compress"] == "gzip")
        res.figures["floor"] = floor
        res.figure("floor_us_per_record", floor["us_per_record"],
                   "floor per record (us: jansson parse %.2f + encode %.2f)"
                   % (floor["parse_us"], floor["encode_us"]), "%.2f")
        ratio = cpu * 1e6 / n / floor["us_per_record"]
        res.figure("floor_ratio", ratio, "daemon CPU per record / floor", "%.2f",
                   "<= %.1f" % TARGETS["floor_ratio"], ratio <= TARGETS["floor_ratio"])
    finally:
        if probe:
            probe.stop()
        if rprobe:
            rprobe.stop()
        if daemon:
            daemon.stop()
        sim.stop(check=False)


def run_floor(build_dir, pages, records, gzip):
    binary = os.path.join(build_dir, "tests", "bench", "bench-floor")
    cmd = [binary, "--records", str(records), "--batch", "1000"]
    if not gzip:
        cmd.append("--no-gzip")
    say("== floor: bench-floor on %d saved pages, %d records" % (len(pages), records))
    out = subprocess.run(cmd + pages, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if not line.startswith("floor "):
            say("  " + line)
    if out.returncode != 0:
        raise BenchError("bench-floor failed (%d): %s" % (out.returncode, out.stderr.strip()))
    line = next((x for x in out.stdout.splitlines() if x.startswith("floor ")), None)
    if line is None:
        raise BenchError("bench-floor printed no figures")
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


def run_backlog(args, build_dir, work, res):
    n_req, hours = args.records, args.hours
    say("== backlog: %d records over %d reported hours with Commerce down (files in %s)"
        % (n_req, hours, work))
    sim = start_sim(work, n_req, hours)
    daemon = None
    refuse = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        w = sim.world()
        n = w["recordsPerHour"] * w["hours"]["count"]
        res.figures["records"] = n
        res.figures["hours"] = hours
        # a bound port that never listens: every connection to it is refused at once
        refuse.bind(("127.0.0.1", 0))
        down = "https://127.0.0.1:%d%s" % (refuse.getsockname()[1], w["commercePath"])
        health_port = free_port()
        conf_path, conf = daemon_conf(sim, os.path.join(work, "daemon"), work, health_port, n,
                                      commerce_url=down)
        log = os.path.join(work, "daemon", "azs-usaged.log")
        daemon = Daemon(build_dir, conf_path, log)
        daemon.wait_ready(60)
        marks = {}
        mark = 1000000 if n >= 2000000 else max(1, n // 10)

        def at_mark(m, now):
            if "mark" not in marks and m.get("azs_usaged_records_collected_total", 0) >= mark:
                marks["mark"] = (m["azs_usaged_records_collected_total"],
                                 proc_status_kib(daemon.pid, "VmHWM"),
                                 proc_status_kib(daemon.pid, "VmRSS"))

        t_end, m = wait_counter(daemon, health_port, "azs_usaged_records_collected_total", n,
                                args.limit or 300 + n / 1000, "records collected",
                                on_poll=at_mark)
        hwm_n = proc_status_kib(daemon.pid, "VmHWM")
        rss_n = proc_status_kib(daemon.pid, "VmRSS")
        cpu = proc_cpu_seconds(daemon.pid)
        wall = t_end - daemon.started_at
        got, hwm_1m, rss_1m = marks["mark"]
        res.figure("collect_records_per_s", n / wall,
                   "collected with Commerce down, records/s (%d in %.1f s)" % (n, wall), "%.0f")
        res.figure("collect_cpu_us_per_record", cpu * 1e6 / n,
                   "daemon CPU per record collected (us)", "%.2f")
        res.figure("peak_rss_mib_1m", hwm_1m / 1024,
                   "daemon peak RSS at %d records stored (MiB)" % got, "%.1f")
        growth = hwm_n / hwm_1m - 1
        res.figure("peak_rss_mib_n", hwm_n / 1024,
                   "daemon peak RSS at %d records stored (MiB)" % n, "%.1f",
                   "within %.0f %% of the first" % (TARGETS["rss_growth"] * 100),
                   abs(growth) <= TARGETS["rss_growth"])
        res.figures["rss_mib_1m"] = rss_1m / 1024
        res.figures["rss_mib_n"] = rss_n / 1024
        res.figure("peak_rss_mib", hwm_n / 1024, "daemon peak RSS, backlog (MiB)", "%.1f",
                   "< %.0f" % TARGETS["peak_rss_mib"], hwm_n / 1024 < TARGETS["peak_rss_mib"])
        if not daemon.stop():
            res.check("daemon_exit", False, "azs-usaged did not exit 0 on SIGTERM")
        daemon = None
        refuse.close()
        store_bytes = sum(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work)
                          if f.startswith("usage.db"))
        res.figure("store_mib", store_bytes / MiB, "store size on disk (MiB)", "%.0f")

        # restart with all of it stored, Commerce working
        conf_path, conf = daemon_conf(sim, os.path.join(work, "daemon"), work, health_port, n)
        daemon = Daemon(build_dir, conf_path, log)
        ready = daemon.wait_ready(120)
        res.figure("ready_s", ready, "start to READY=1 with %d records stored (s)" % n, "%.3f",
                   "< %.0f" % TARGETS["ready_s"], ready < TARGETS["ready_s"])
        t_end, m = wait_counter(daemon, health_port, "azs_usaged_records_forwarded_total", n,
                                args.limit or 300 + n / 1000, "records forwarded")
        cpu = proc_cpu_seconds(daemon.pid)
        hwm = proc_status_kib(daemon.pid, "VmHWM")
        wall = t_end - daemon.started_at
        summary = wait_ledger(sim, n, 300 + n / 20000)
        ok = ledger_ok(summary, n)
        res.check("ledger", ok, "ledger holds all %d records and matches the expected charges"
                  % n if ok else "ledger: " + ledger_problem(summary, n))
        if not ok:
            return
        res.figure("forward_records_per_s", n / wall,
                   "forwarded after the restart, records/s (%d in %.1f s)" % (n, wall), "%.0f")
        res.figure("forward_cpu_us_per_record", cpu * 1e6 / n,
                   "daemon CPU per record forwarded (us)", "%.2f")
        res.figure("forward_peak_rss_mib", hwm / 1024, "daemon peak RSS while forwarding (MiB)",
                   "%.1f", "< %.0f" % TARGETS["peak_rss_mib"],
                   hwm / 1024 < TARGETS["peak_rss_mib"])
        if not daemon.stop():
            res.check("daemon_exit", False, "azs-usaged did not exit 0 on SIGTERM")
        daemon = None
    finally:
        refuse.close()
        if daemon:
            daemon.stop()
        sim.stop(check=False)


SMOKE_FIGURES = ("records_per_s", "daemon_cpu_us_per_record", "sim_cpu_us_per_record",
                 "peak_rss_mib", "healthz_max_ms", "floor_us_per_record", "floor_ratio")


def main():
    p = argparse.ArgumentParser(description="azs-usaged benchmarks against azs-sim")
    p.add_argument("target", choices=("catchup", "backlog", "smoke"))
    p.add_argument("--build-dir", required=True)
    p.add_argument("--records", type=int)
    p.add_argument("--hours", type=int)
    p.add_argument("--floor-records", type=int)
    p.add_argument("--limit", type=float, help="give up after this many seconds per phase")
    p.add_argument("--json", help="write the results here (default: BENCH_DIR/bench-...json)")
    p.add_argument("--keep", action="store_true", help="keep the run's files")
    args = p.parse_args()
    defaults = {"catchup": (2000000, 168, 200000), "backlog": (10000000, 168, 0),
                "smoke": (5000, 10, 3000)}[args.target]
    args.records = args.records or defaults[0]
    args.hours = args.hours or defaults[1]
    args.floor_records = args.floor_records or defaults[2]
    if args.records < 1 or args.hours < 1:
        p.error("--records and --hours must be positive")
    build_dir = os.path.abspath(args.build_dir)
    bench_dir = os.environ.get("BENCH_DIR", "/var/tmp")
    os.environ["AZS_BUILD_DIR"] = build_dir  # for azsim.sim_binary()

    cond = conditions(build_dir)
    say("== conditions: %d cores (%s), %s build%s, %s, %s, %s; load %.2f"
        % (cond["nproc"], cond["cpu"], cond.get("buildtype"),
           "" if cond.get("b_sanitize") in (None, "none") else " with " + cond["b_sanitize"],
           cond["compiler"], cond["daemon_version"], cond["commit"], cond["loadavg_start"][0]))
    res = Result(args.target, judge=args.target != "smoke")
    work = tempfile.mkdtemp(prefix="azs-bench-%s-" % args.target, dir=bench_dir)
    error = None
    try:
        if args.target == "backlog":
            run_backlog(args, build_dir, work, res)
        else:
            run_catchup(args, build_dir, work, res)
    except (BenchError, RuntimeError, OSError, KeyError) as e:
        error = "%s: %s" % (type(e).__name__, e)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    cond["loadavg_end"] = os.getloadavg()

    if args.target == "smoke" and error is None:
        for key in SMOKE_FIGURES:
            present = res.figures.get(key) is not None
            if not present and "ledger" not in res.failed():
                res.check(key, False, "figure %s was not measured" % key)
    if error:
        res.checks.append(("run", False, error))
    say("== results (%s)" % args.target)
    res.table()
    if error:
        say("  FAIL %s" % error)
    failed = res.failed()
    out = {"target": args.target, "conditions": cond, "figures": res.figures,
           "targets": TARGETS, "checks": [{"name": k, "ok": ok, "text": t}
                                          for k, ok, t in res.checks],
           "pass": not failed, "files": work if args.keep else None}
    path = args.json or os.path.join(bench_dir, "bench-%s-%s.json"
                                     % (args.target, time.strftime("%Y%m%dT%H%M%SZ",
                                                                   time.gmtime())))
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    say("results written to %s" % path)
    say("bench %s: %s" % (args.target, "PASS" if not failed else "FAIL (%s)" % ", ".join(failed)))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
