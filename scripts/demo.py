"""The azs-usaged demo (started by ./scripts/demo, which installs and builds first).

Creates a state directory holding a demo CA, the completed scenario, the simulator's state and
log, the daemon's rendered configuration, its secret files, store and log. Starts azs-sim (the
Azure simulator) with conf/demo/scenario.json and azs-usaged with conf/demo/azs-usaged.conf.in,
shows progress read from the real sources (the daemon's store through `azs-usagectl --json
status`, the simulator's /_sim/requests and /_sim/ledger/summary), then prints the charges per
subscription that the simulator's Commerce ledger received next to the expected charges, summed
exactly with decimal.Decimal. Whatever does not happen within --wait seconds is reported as not
done (e.g. no usage request: collection is not built yet), derived from what the simulator saw.

    /usr/bin/python3 scripts/demo.py [--build-dir DIR] [--dir DIR] [--wait SECONDS]
                                     [--keep-running]

Exit status: 0 when the demo ran (even if the charges do not match yet), 1 when something is
broken (the simulator or the daemon does not start or dies, --check-config fails), 2 on a usage
error. Standard library only; runs with Debian's /usr/bin/python3.
"""

import argparse
import calendar
import decimal
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "e2e"))
import azsim  # noqa: E402  (the simulator harness: its pki() makes the demo CA)

CONF_DIR = os.path.join(SOURCE_DIR, "conf", "demo")
SETTLE_SECONDS = 60  # [stack] settle of the rendered configuration
PROGRESS_SECONDS = 2.0
STOP_TIMEOUT = 40  # the daemon may wait up to 30 s for batches in flight on SIGTERM
# Exact sums: quantities have at most 20 integer digits and 18 decimals, so 200 digits never
# round; Inexact is trapped so that a rounding would be an error, not a wrong total.
EXACT = decimal.Context(prec=200, traps=[decimal.Inexact, decimal.InvalidOperation])
# Answers that make a client try again (ARCHITECTURE.md sections 4 and 6); 0: no answer at all.
RETRY_STATUSES = {0, 408, 429}
DAEMON_ENDPOINTS = ("metadata", "token", "usage", "subscriptions", "arm", "commerce")


class DemoError(Exception):
    """Something is broken: the demo stops and exits 1 with this message."""


def say(text=""):
    """Print one line of the demo's output at once."""
    print(text, flush=True)


def utc_stamp(t=None):
    """RFC 3339 UTC time of t (default now), seconds precision."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def parse_time(s):
    """Seconds since the epoch of an RFC 3339 UTC time."""
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))


def meter_key(meter_id):
    """A meter id as compared here: lower case without dashes (the API mixes both forms)."""
    return meter_id.lower().replace("-", "")


def free_port():
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_private(path, text):
    """Write text to a new file readable by its owner only (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def alive(pid):
    """True while process pid runs (a zombie waiting to be reaped counts as stopped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def tail(path, lines=20):
    """The last lines of a log file, indented, for an error message."""
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text) or "    (empty log)"


class Layout:
    """The paths of one demo run inside its state directory."""

    def __init__(self, root):
        self.root = root
        self.pki = os.path.join(root, "pki")
        self.ca_file = os.path.join(self.pki, "ca.pem")
        self.sim = os.path.join(root, "sim")
        self.sim_state = os.path.join(self.sim, "state")
        self.scenario = os.path.join(self.sim, "scenario.json")
        self.sim_port = os.path.join(self.sim, "port")
        self.sim_log = os.path.join(self.sim, "azs-sim.log")
        self.world = os.path.join(self.sim, "world.json")
        self.summary = os.path.join(self.sim, "ledger-summary.json")
        self.daemon = os.path.join(root, "daemon")
        self.config = os.path.join(self.daemon, "azs-usaged.conf")
        self.store = os.path.join(self.daemon, "usage.db")
        self.daemon_log = os.path.join(self.daemon, "azs-usaged.log")
        self.sim_pid = os.path.join(root, "azs-sim.pid")
        self.daemon_pid = os.path.join(root, "azs-usaged.pid")
        self.stop_script = os.path.join(root, "stop")

    def rel(self, path):
        """A path inside the state directory, relative to it (for shorter output lines)."""
        return os.path.relpath(path, self.root)

    def make(self):
        """Create the directories (the state directory itself may exist, but must be empty)."""
        if os.path.isdir(self.root) and os.listdir(self.root):
            raise DemoError("the state directory %s is not empty" % self.root)
        for d in (self.root, self.pki, self.sim, self.sim_state, self.daemon):
            os.makedirs(d, mode=0o700, exist_ok=True)


class Process:
    """One process the demo started, detached in its own session, its output in a log file."""

    def __init__(self, name, args, log_path, pid_path):
        self.name = name
        self.log_path = log_path
        self.pid_path = pid_path
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                            "CREDENTIALS_DIRECTORY", "LISTEN_FDS", "LISTEN_PID")}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.pid = self.proc.pid
        with open(pid_path, "w") as f:
            f.write("%d\n" % self.pid)

    def running(self):
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM, wait (SIGKILL after STOP_TIMEOUT); return (clean, how it ended)."""
        how = ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                how = " (killed: no exit %d s after SIGTERM)" % STOP_TIMEOUT
        try:
            os.unlink(self.pid_path)
        except FileNotFoundError:
            pass
        rc = self.proc.returncode
        if rc < 0:
            return False, "stopped by signal %d%s" % (-rc, how)
        return rc == 0 and not how, "exit status %d%s" % (rc, how)


class SimClient:
    """The simulator's control API over HTTPS with the demo CA (standard library only)."""

    def __init__(self, port, ca_file):
        self.port = port
        self.url = "https://127.0.0.1:%d" % port
        self.ctx = ssl.create_default_context(cafile=ca_file)

    def get(self, path):
        """GET a control path; return the parsed JSON answer."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException) as e:
            raise DemoError("azs-sim: GET %s: %s" % (path, e)) from e
        finally:
            conn.close()
        if r.status != 200:
            raise DemoError("azs-sim: GET %s answered %d: %s" % (path, r.status, body[:300]))
        return json.loads(body)


def last_settled_hour(now, settle):
    """Start of the last reported hour that has ended at least settle seconds before now."""
    return (int(now - settle) // 3600) * 3600 - 3600


def complete_scenario(layout, now):
    """Read conf/demo/scenario.json, fill in the hours and the client secrets, write it (0600)
    into the state directory and write each client's secret file beside the daemon's
    configuration. Return the completed scenario."""
    with open(os.path.join(CONF_DIR, "scenario.json")) as f:
        sc = json.load(f)
    count = int(sc["hours"]["count"])
    last = last_settled_hour(now, SETTLE_SECONDS)
    sc["hours"]["from"] = utc_stamp(last - (count - 1) * 3600)
    for client in sc["clients"]:
        secret = "demo-" + secrets.token_urlsafe(24)
        client["secret"] = secret
        write_private(os.path.join(layout.daemon, client["secretFile"]), secret + "\n")
    write_private(layout.scenario, json.dumps(sc, indent=1) + "\n")
    return sc


def render_config(layout, values):
    """Render conf/demo/azs-usaged.conf.in with values (@NAME@ → values[NAME]); every
    placeholder must have a value."""
    with open(os.path.join(CONF_DIR, "azs-usaged.conf.in")) as f:
        text = f.read()
    for name, value in values.items():
        text = text.replace("@%s@" % name, str(value))
    if "@" in "".join(line.split(";")[0] for line in text.splitlines()):
        left = sorted({w for w in text.split("@")[1::2] if w.isupper()})
        raise DemoError("conf/demo/azs-usaged.conf.in: no value for %s" % ", ".join(left))
    with open(layout.config, "w") as f:
        f.write(text)


def start_sim(build_dir, layout):
    """Start azs-sim on a free loopback port at real time; return (Process, SimClient)."""
    binary = os.path.join(build_dir, "tests", "sim", "azs-sim")
    if not os.access(binary, os.X_OK):
        raise DemoError("%s is not built (configure with -Dtests=true)" % binary)
    p = Process("azs-sim", [binary, "--listen", "127.0.0.1:0",
                            "--cert", os.path.join(layout.pki, "server.pem"),
                            "--key", os.path.join(layout.pki, "server.key"),
                            "--scenario", layout.scenario, "--state-dir", layout.sim_state,
                            "--port-file", layout.sim_port],
                layout.sim_log, layout.sim_pid)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(layout.sim_port):
            if not p.running():
                raise DemoError("azs-sim exited with status %d:\n%s"
                                % (p.proc.returncode, tail(layout.sim_log)))
            if time.monotonic() > deadline:
                raise DemoError("azs-sim did not start within 15 s:\n%s" % tail(layout.sim_log))
            time.sleep(0.05)
        with open(layout.sim_port) as f:
            port = int(f.read().strip())
    except BaseException:
        p.stop()
        raise
    return p, SimClient(port, layout.ca_file)


def check_config(build_dir, layout):
    """Run azs-usaged --check-config on the rendered file; return its 'configuration OK' line."""
    binary = os.path.join(build_dir, "daemon", "azs-usaged")
    r = subprocess.run([binary, "--check-config", "-c", layout.config], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or "configuration OK" not in r.stdout:
        raise DemoError("azs-usaged --check-config failed (exit %d):\n%s%s"
                        % (r.returncode, r.stdout, r.stderr))
    return r.stdout.strip()


def start_daemon(build_dir, layout):
    """Start azs-usaged --foreground; wait until it logs that it is ready."""
    binary = os.path.join(build_dir, "daemon", "azs-usaged")
    p = Process("azs-usaged", [binary, "-c", layout.config, "--foreground"],
                layout.daemon_log, layout.daemon_pid)
    try:
        deadline = time.monotonic() + 15
        while True:
            with open(layout.daemon_log, errors="replace") as f:
                if daemon_ready(f.read()):
                    return p
            if not p.running():
                raise DemoError("azs-usaged exited with status %d:\n%s"
                                % (p.proc.returncode, tail(layout.daemon_log)))
            if time.monotonic() > deadline:
                raise DemoError("azs-usaged did not log 'ready' within 15 s:\n%s"
                                % tail(layout.daemon_log))
            time.sleep(0.05)
    except BaseException:
        p.stop()
        raise


def daemon_ready(log_text):
    """True when a logfmt line of the daemon says it is ready (msg ready or its MESSAGE_ID)."""
    for line in log_text.splitlines():
        if "4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c02" in line or " msg=ready" in " " + line:
            return True
    return False


def store_status(build_dir, layout):
    """Counts by state from `azs-usagectl --store DB --json status`, or (None, why)."""
    if not os.path.exists(layout.store):
        return None, "the daemon has not created its store %s" % layout.store
    r = subprocess.run([os.path.join(build_dir, "daemon", "azs-usagectl"), "--store", layout.store,
                        "--json", "status"], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        return None, "azs-usagectl status failed: %s" % r.stderr.strip()
    return json.loads(r.stdout), None


def request_counts(requests):
    """Per endpoint the total number of requests and of answers that make a client retry."""
    out = {}
    for endpoint in DAEMON_ENDPOINTS:
        by_status = requests["counts"].get(endpoint, {})
        total = sum(by_status.values())
        retries = sum(n for st, n in by_status.items()
                      if int(st) in RETRY_STATUSES or int(st) >= 500)
        out[endpoint] = (total, retries, by_status)
    return out


def progress_line(elapsed, status, counts, summary):
    """One progress line from the store's counts, the request counts and the ledger."""
    if status is None:
        collected = pending = forwarded = dead = "0"
    else:
        rec = status["records"]
        collected = str(sum(rec.values()))
        pending = str(rec.get("pending", 0) + rec.get("held", 0) + rec.get("inflight", 0))
        forwarded = str(rec.get("forwarded", 0))
        dead = str(rec.get("dead", 0))
    retries = sum(c[1] for c in counts.values())
    return "  %5.0fs %10s %8s %10s %6s %8d   %d of %d" % (
        elapsed, collected, pending, forwarded, dead, retries, summary["accepted"],
        summary["expected"]["events"])


def ledger_matches(summary):
    """True when the ledger holds exactly the expected charges: the simulator's comparison is
    clean and every expected total equals the actual one as exact decimals."""
    if not summary["comparison"]["ok"] or summary["expected"]["events"] == 0:
        return False
    return all(decimal.Decimal(t["expected"]) == decimal.Decimal(t["actual"])
               for t in summary["totals"])


def watch(build_dir, layout, sim, client, daemon, wait):
    """Print progress every PROGRESS_SECONDS until the ledger matches or wait seconds passed;
    return (store status, its note, request counts, summary)."""
    say("  %6s %10s %8s %10s %6s %8s   %s" % ("time", "collected", "pending", "forwarded",
                                              "dead", "retries", "ledger events accepted"))
    start = time.monotonic()
    while True:
        if not daemon.running():
            raise DemoError("azs-usaged exited with status %d during the demo:\n%s"
                            % (daemon.proc.returncode, tail(layout.daemon_log)))
        if not sim.running():
            raise DemoError("azs-sim exited with status %d during the demo:\n%s"
                            % (sim.proc.returncode, tail(layout.sim_log)))
        status, note = store_status(build_dir, layout)
        counts = request_counts(client.get("/_sim/requests"))
        summary = client.get("/_sim/ledger/summary")
        elapsed = time.monotonic() - start
        say(progress_line(elapsed, status, counts, summary))
        if ledger_matches(summary) or elapsed >= wait:
            return status, note, counts, summary
        # ticks on a fixed schedule, so that slow polls do not stretch the interval
        tick = min(wait, (int(elapsed / PROGRESS_SECONDS) + 1) * PROGRESS_SECONDS)
        time.sleep(max(0.0, tick - (time.monotonic() - start)))


def explain(wait, status, note, counts, summary):
    """Say what did not happen, derived from what the simulator and the store saw."""
    lines = []
    usage = counts["usage"][0]
    commerce = counts["commerce"][0]
    if usage == 0 and commerce == 0:
        lines.append("The daemon made no usage request and no Commerce request in %d s: "
                     "collection and forwarding are not built yet (the next issues), so nothing "
                     "reaches the ledger." % wait)
    elif usage == 0:
        lines.append("The daemon made no usage request in %d s: collection is not built yet."
                     % wait)
    elif commerce == 0:
        collected = sum(status["records"].values()) if status else 0
        lines.append("The daemon made %d usage requests (%d records in its store) but no "
                     "Commerce request in %d s: forwarding is not built yet."
                     % (usage, collected, wait))
    if note:
        lines.append("Store: %s." % note)
    seen = ["%s %s" % (ep, " ".join("%sx%d" % (st, n) for st, n in sorted(c[2].items())))
            for ep, c in counts.items() if c[0]]
    lines.append("The simulator answered: %s." % ("; ".join(seen) if seen else "no request"))
    comp = summary["comparison"]
    if not comp["ok"]:
        lines.append("Ledger vs expected: %d missing, %d extra, %d wrong subscription, "
                     "%d wrong quantity." % (comp.get("missingCount", len(comp["missing"])),
                                             comp.get("extraCount", len(comp["extra"])),
                                             comp.get("wrongSubscriptionCount",
                                                      len(comp["wrongSubscription"])),
                                             comp.get("wrongQuantityCount",
                                                      len(comp["wrongQuantity"]))))
    for line in lines:
        say(textwrap.fill(line, 100, subsequent_indent="  "))


def charge_blocks(world, summary):
    """The charged subscriptions in table order: (kind, subscription, tenants) for each customer
    subscription, then the default one, then any other the ledger names."""
    blocks = []
    default = world["defaultSubscription"].lower()
    for t in world["tenants"]:
        if t.get("customerSubscription"):
            blocks.append(("customer subscription", t["customerSubscription"].lower(), [t]))
    blocks.append(("default subscription", default,
                   [t for t in world["tenants"] if not t.get("customerSubscription")]))
    known = {b[1] for b in blocks}
    for sub in sorted({t["subscriptionId"].lower() for t in summary["totals"]} - known):
        blocks.append(("other subscription", sub, []))
    return blocks


def print_table(world, meter_names, summary):
    """Print per charged subscription its tenants, record counts and exact totals per meter
    name, expected vs actual; return True when everything matches."""
    rows = {}
    for t in summary["totals"]:
        rows.setdefault(t["subscriptionId"].lower(), []).append(t)
    names = {meter_key(m): name for m, name in meter_names.items()}
    blocks = []
    for kind, sub, tenants in charge_blocks(world, summary):
        got = rows.get(sub, [])
        by_meter = {}
        for t in got:
            name = names.get(meter_key(t["meterId"]), t["meterId"])
            e, a = by_meter.get(name, (decimal.Decimal(0), decimal.Decimal(0)))
            by_meter[name] = (EXACT.add(e, decimal.Decimal(t["expected"])),
                              EXACT.add(a, decimal.Decimal(t["actual"])))
        lines = [(name,) + by_meter[name] for name in sorted(by_meter)]
        te = ta = decimal.Decimal(0)
        for _, e, a in lines:
            te, ta = EXACT.add(te, e), EXACT.add(ta, a)
        lines.append(("total", te, ta))
        blocks.append((kind, sub, tenants, sum(t["expectedEvents"] for t in got),
                       sum(t["actualEvents"] for t in got), lines))
    nw = max([len("meter")] + [len(n) for b in blocks for n, _, _ in b[5]])
    vw = max([len("expected")] + [len(fmt(v)) for b in blocks for _, e, a in b[5]
                                  for v in (e, a)])

    say("Charges per subscription: expected = what the simulator generated for the hours that")
    say("have ended, actual = what its Commerce ledger accepted (exact decimal sums)")
    for kind, sub, tenants, ex_events, ac_events, lines in blocks:
        say()
        say("%s %s" % (kind, sub))
        if kind == "default subscription":
            say("  tenants not registered:%s" % ("" if tenants else " none"))
        for t in tenants:
            say("  tenant %s %s, %d user subscription%s" % (
                t["name"], t["tenantId"], len(t["subscriptions"]),
                "" if len(t["subscriptions"]) == 1 else "s"))
        say("  records: expected %d, actual %d" % (ex_events, ac_events))
        say("    %-*s  %*s  %*s" % (nw, "meter", vw, "expected", vw, "actual"))
        for name, e, a in lines:
            say("    %-*s  %*s  %*s%s" % (nw, name, vw, fmt(e), vw, fmt(a),
                                          "" if e == a else "  differs"))
    ok = ledger_matches(summary)
    say()
    say("matches expected charges: %s" % ("yes" if ok else "no"))
    return ok


def fmt(d):
    """An exact decimal as plain text (never an exponent)."""
    return format(d, "f")


def health_line(listen):
    """Say whether the daemon's /healthz answers."""
    url = "http://%s/healthz" % listen
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return "%s answers %d" % (url, r.status)
    except urllib.error.HTTPError as e:
        return "%s answers %d" % (url, e.code)
    except (urllib.error.URLError, OSError):
        return "%s: nothing answers yet (the health server comes with a later issue)" % url


STOP_SCRIPT = """#!/bin/sh
# Stop the azs-usaged and azs-sim that ./scripts/demo --keep-running left running here.
cd "$(dirname "$0")" || exit 1
status=0
for name in azs-usaged azs-sim; do
	[ -f "$name.pid" ] || continue
	pid=$(cat "$name.pid")
	# only a process of that name: the pid may have been reused since
	if grep -q "$name" "/proc/$pid/cmdline" 2>/dev/null; then
		kill -TERM "$pid"
		i=0
		while [ $i -lt 400 ] && [ -r "/proc/$pid/stat" ] &&
			[ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -c1)" != Z ]; do
			sleep 0.1
			i=$((i + 1))
		done
		if [ $i -ge 400 ]; then
			echo "$name ($pid) did not stop within 40 s" >&2
			status=1
			continue
		fi
		echo "stopped $name ($pid)"
	fi
	rm -f "$name.pid"
done
exit $status
"""


def keep_running(build_dir, layout, sim_client, listen, sim, daemon):
    """Leave both processes up: write the stop script and print what to try."""
    with open(layout.stop_script, "w") as f:
        f.write(STOP_SCRIPT)
    os.chmod(layout.stop_script, 0o755)
    ctl = short(os.path.join(build_dir, "daemon", "azs-usagectl"))
    say("Left running (--keep-running):")
    say("  azs-sim     pid %d, %s" % (sim.pid, sim_client.url))
    say("              control API (CA %s): /_sim/world, /_sim/requests, /_sim/ledger/summary"
        % short(layout.ca_file))
    say("  azs-usaged  pid %d, log %s" % (daemon.pid, short(layout.daemon_log)))
    say("  health      %s" % health_line(listen))
    say("Try:")
    first = parse_time(world_from(layout))
    report = "report --from %s --to %s" % (time.strftime("%Y-%m-%d", time.gmtime(first - 86400)),
                                           time.strftime("%Y-%m-%d",
                                                         time.gmtime(time.time() + 86400)))
    for verb in ("status", "records --limit 5", "dead", report, report + " --by tenant"):
        say("  %s --store %s %s" % (ctl, short(layout.store), verb))
    if not os.path.exists(layout.store):
        say("  (the store does not exist yet: the daemon has not created it)")
    say("Stop both with: %s" % layout.stop_script)


def short(path):
    """path relative to the working directory when it is below it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def world_from(layout):
    """The first reported hour of the run, from the saved world."""
    with open(layout.world) as f:
        return json.load(f)["hours"]["from"]



def run(args):
    """The demo; raises DemoError when something is broken. Returns the exit status."""
    build_dir = os.path.abspath(args.build_dir)
    root = os.path.abspath(args.dir or os.path.join(
        SOURCE_DIR, ".demo", "run-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))
    layout = Layout(root)
    layout.make()
    say("azs-usaged demo")
    say("  state directory  %s" % root)

    azsim.pki(layout.pki, days=30)
    say("  demo CA          %s" % layout.rel(layout.ca_file))
    now = time.time()
    sc = complete_scenario(layout, now)
    sim, sim_client = start_sim(build_dir, layout)
    daemon = None
    try:
        world = sim_client.get("/_sim/world")
        with open(layout.world, "w") as f:
            json.dump(world, f, indent=1)
        n_subs = sum(len(t["subscriptions"]) for t in world["tenants"])
        n_reg = sum(1 for t in world["tenants"] if t.get("customerSubscription"))
        first = world["hours"]["from"]
        last = utc_stamp(parse_time(first) + (world["hours"]["count"] - 1) * 3600)
        expected = sim_client.get("/_sim/ledger/summary")["expected"]["events"]
        say("  azs-sim          %s (pid %d), clock %s" % (sim_client.url, sim.pid, world["now"]))
        say("                   %d tenants (%d registered), %d user subscriptions, %d meters,"
            % (len(world["tenants"]), n_reg, n_subs, len(world["meters"])))
        say("                   reported hours %s .. %s: %d usage records expected"
            % (first, last, expected))

        listen = "127.0.0.1:%d" % free_port()
        by_file = {c["secretFile"]: c["clientId"] for c in sc["clients"]}
        reg = world["registration"]
        render_config(layout, {
            "SIM_URL": sim_client.url, "PROVIDER_SUBSCRIPTION": world["providerSubscription"],
            "AAD_TENANT": sc["aadTenant"], "STACK_CLIENT_ID": by_file["stack-secret"],
            "AZURE_CLIENT_ID": by_file["azure-secret"], "COLLECT_FROM": first,
            "SETTLE": "%ds" % SETTLE_SECONDS, "REGISTRATION_SUBSCRIPTION": reg["subscriptionId"],
            "REGISTRATION_RESOURCE_GROUP": reg["resourceGroup"], "REGISTRATION_NAME": reg["name"],
            "ARM_AUDIENCE": world["audiences"]["arm"],
            "COMMERCE_PATH": world["commercePath"],
            "COMMERCE_AUDIENCE": world["audiences"]["commerce"], "STORE_PATH": layout.store,
            "CA_FILE": layout.ca_file, "HEALTH_LISTEN": listen,
        })
        say("  azs-usaged       %s: %s" % (layout.rel(layout.config),
                                             check_config(build_dir, layout)))
        daemon = start_daemon(build_dir, layout)
        say("                   started (pid %d), ready; log %s"
            % (daemon.pid, layout.rel(layout.daemon_log)))
        say()
        say("Progress (every %d s for up to %d s; stops early once the ledger matches):"
            % (PROGRESS_SECONDS, args.wait))
        status, note, counts, summary = watch(build_dir, layout, sim, sim_client, daemon, args.wait)
        with open(layout.summary, "w") as f:
            json.dump(summary, f, indent=1)
        say()
        explain(args.wait, status, note, counts, summary)
        say()
        meter_names = sc.get("meterNames", {})
        print_table(world, meter_names, summary)
        say()
        if args.keep_running:
            keep_running(build_dir, layout, sim_client, listen, sim, daemon)
            say("State directory: %s" % root)
            return 0
    except BaseException:
        for p in (daemon, sim):
            if p is not None:
                p.stop()
        raise
    clean = True
    for p in (daemon, sim):
        ok, how = p.stop()
        clean = clean and ok
        say("%-11s %s" % (p.name, how))
    say("State directory: %s (configuration, logs, store, ledger, PKI)" % root)
    if not clean:
        say("A process did not stop cleanly; see its log in the state directory.")
        return 1
    return 0


def main():
    """Parse the options and run the demo."""
    ap = argparse.ArgumentParser(description="The azs-usaged demo against azs-sim.")
    ap.add_argument("--build-dir", default=os.environ.get("AZS_BUILD_DIR")
                    or os.path.join(SOURCE_DIR, "build-demo"),
                    help="meson build directory (default $AZS_BUILD_DIR, else build-demo)")
    ap.add_argument("--dir", help="state directory (default .demo/run-<UTC time>)")
    ap.add_argument("--wait", type=int, default=20,
                    help="seconds to wait for the ledger to match (default 20)")
    ap.add_argument("--keep-running", action="store_true",
                    help="leave azs-sim and azs-usaged running at the end")
    args = ap.parse_args()
    if args.wait < 0:
        ap.error("--wait must be >= 0")
    if not shutil.which("openssl"):
        say("demo: the openssl command is missing (scripts/install-deps installs it)")
        return 1
    try:
        return run(args)
    except DemoError as e:
        say("demo: %s" % e)
        return 1
    except KeyboardInterrupt:
        say("demo: interrupted; both processes stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
