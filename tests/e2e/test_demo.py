"""./scripts/demo end to end: it runs with the build under test (--no-build), says
"configuration OK", prints one block per customer subscription and one for the default
subscription with the tenants of the simulator's world and the simulator's exact expected totals
(checked here against the saved ledger summary and, with --keep-running, against the expected
events summed independently with decimal.Decimal), a "matches expected charges:" line that is
"yes" exactly when the ledger received the charges (a stand-in forwarder posts them), and leaves
no process behind — or, with --keep-running, both processes up until its stop script stops them.
A demo that cannot run (no build, a used state directory, a daemon whose --check-config fails or
that exits at start) exits 1 and leaves no process behind.
"""
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import urllib.parse
from decimal import Decimal
from pathlib import Path

import pytest
from waiting import limit, wait_until

SOURCE = Path(os.environ.get("AZS_SOURCE_DIR") or Path(__file__).resolve().parents[2])
DEMO_SH = SOURCE / "scripts" / "demo"
DEMO_PY = SOURCE / "scripts" / "demo.py"


@pytest.fixture(scope="module")
def build():
    """The build under test, with the daemon, azs-usagectl and azs-sim in it."""
    b = os.environ.get("AZS_BUILD_DIR")
    if not b:
        pytest.fail("$AZS_BUILD_DIR is not set (meson test sets it)")
    for exe in ("daemon/azs-usaged", "daemon/azs-usagectl", "tests/sim/azs-sim"):
        if not os.access(os.path.join(b, exe), os.X_OK):
            pytest.fail(f"{exe} is not built in {b}")
    return b


def demo_env(build):
    """The environment for a demo run against the build under test."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["AZS_BUILD_DIR"] = str(build)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_demo(build, *args, timeout=90):
    """Run scripts/demo --no-build with args; return the CompletedProcess (timeout: a limit
    for giving up, scaled by limit())."""
    return subprocess.run(["bash", str(DEMO_SH), "--no-build", *map(str, args)],
                          capture_output=True, text=True, timeout=limit(timeout),
                          env=demo_env(build),
                          stdin=subprocess.DEVNULL)


def parse_table(out):
    """The charge table of the demo's output: {subscription: {kind, tenants, records, meters}}
    with Decimal values, and the value of the 'matches expected charges:' line."""
    blocks, cur = {}, None
    match = None
    for line in out.splitlines():
        m = re.match(r"^(customer|default|other) subscription ([0-9a-f-]{36})$", line)
        if m:
            cur = blocks[m.group(2)] = {"kind": m.group(1), "tenants": [], "records": None,
                                        "meters": {}}
            continue
        m = re.match(r"^matches expected charges: (yes|no)$", line)
        if m:
            match = m.group(1)
            cur = None
            continue
        if cur is None:
            continue
        m = re.match(r"^  tenant (\S+) ([0-9a-f-]{36}), \d+ user subscriptions?$", line)
        if m:
            cur["tenants"].append(m.group(2))
            continue
        m = re.match(r"^  records: expected (\d+), actual (\d+)$", line)
        if m:
            cur["records"] = (int(m.group(1)), int(m.group(2)))
            continue
        m = re.match(r"^    (.+?)\s+(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)(  differs)?$", line)
        if m:
            cur["meters"][m.group(1)] = (Decimal(m.group(2)), Decimal(m.group(3)))
            assert (m.group(4) is not None) == (Decimal(m.group(2)) != Decimal(m.group(3))), line
    return blocks, match


def meter_names(state):
    """Meter id (lower case, no dashes) → name, from the completed scenario."""
    sc = json.loads((state / "sim" / "scenario.json").read_text())
    return {k.lower().replace("-", ""): v for k, v in sc["meterNames"].items()}


def check_blocks(blocks, world, expected, actual=None):
    """The table has a block per customer subscription and the default one, with their tenants,
    and per meter name the expected (and actual) totals given as {(sub, name): Decimal}."""
    customers = {t["customerSubscription"]: t for t in world["tenants"]
                 if t["customerSubscription"]}
    default = world["defaultSubscription"]
    assert len(customers) == 3
    for sub, t in customers.items():
        assert blocks[sub]["kind"] == "customer"
        assert blocks[sub]["tenants"] == [t["tenantId"]]
    assert blocks[default]["kind"] == "default"
    assert blocks[default]["tenants"] == [t["tenantId"] for t in world["tenants"]
                                          if not t["customerSubscription"]]
    assert list(blocks)[:4] == list(customers) + [default]
    for sub in list(customers) + [default]:
        want = {name: v for (s, name), v in expected.items() if s == sub}
        assert want, f"no expected charges for {sub}"
        table = {name: e for name, (e, _) in blocks[sub]["meters"].items() if name != "total"}
        assert table == want
        assert blocks[sub]["meters"]["total"][0] == sum(want.values(), Decimal(0))
        if actual is not None:
            got = {name: a for name, (_, a) in blocks[sub]["meters"].items() if name != "total"}
            assert got == {name: actual.get((sub, name), Decimal(0)) for name in want}


def processes_using(path):
    """Pids of live processes whose command line names path."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(path) in cmd and state not in ("Z", "X"):
            found.append(int(p.name))
    return found


def sim_connection(state):
    """An HTTPS connection to the demo's simulator with the demo CA."""
    port = int((state / "sim" / "port").read_text())
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.pem"))
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=limit(10))


def sim_call(state, method, path, body=None, headers=None):
    """One request to the demo's simulator; return (status, parsed JSON)."""
    conn = sim_connection(state)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def forward_expected_events(state):
    """Stand in for the forwarder: post the simulator's expected events to its Commerce
    endpoint with a token of the demo's Azure client; return how many were accepted."""
    sc = json.loads((state / "sim" / "scenario.json").read_text())
    world = json.loads((state / "sim" / "world.json").read_text())
    client = next(c for c in sc["clients"] if c["secretFile"] == "azure-secret")
    form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                   "client_id": client["clientId"], "client_secret":
                                   client["secret"], "resource": world["audiences"]["commerce"]})
    st, tok = sim_call(state, "POST", "/%s/oauth2/token" % sc["aadTenant"], form,
                       {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 200, tok
    st, events = sim_call(state, "GET", "/_sim/expected/events")
    assert st == 200 and events
    st, res = sim_call(state, "POST", world["commercePath"], json.dumps({"request": events}),
                       {"Content-Type": "application/json",
                        "Authorization": "Bearer " + tok["access_token"]})
    assert st == 200, res
    return sum(1 for r in res["result"] if r["status"] == "Accepted")


def test_demo_run_prints_expected_charges_and_stops_both(build, tmp_path):
    state = tmp_path / "run"
    r = run_demo(build, "--dir", state, "--wait", 3)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "configuration OK" in out
    assert out.splitlines()[1] == f"  state directory  {state}"
    assert f"State directory: {state}" in out.splitlines()[-1]

    world = json.loads((state / "sim" / "world.json").read_text())
    summary = json.loads((state / "sim" / "ledger-summary.json").read_text())
    names = meter_names(state)
    expected, actual = {}, {}
    for t in summary["totals"]:
        k = (t["subscriptionId"], names[t["meterId"].replace("-", "")])
        expected[k] = expected.get(k, Decimal(0)) + Decimal(t["expected"])
        actual[k] = actual.get(k, Decimal(0)) + Decimal(t["actual"])
    blocks, match = parse_table(out)
    check_blocks(blocks, world, expected, actual)
    assert sum(b["records"][0] for b in blocks.values()) == summary["expected"]["events"] > 0
    assert match == ("yes" if summary["comparison"]["ok"] else "no")
    # what the demo says about collection is derived from what the simulator saw
    if "made no usage request" in out:
        assert all(v == 0 for v in actual.values()) and match == "no"

    # both stopped, nothing left behind; secrets only in their 0600 files
    assert not (state / "azs-sim.pid").exists() and not (state / "azs-usaged.pid").exists()
    assert processes_using(state) == []
    assert re.search(r"^azs-usaged  exit status 0$", out, re.M)
    assert re.search(r"^azs-sim     exit status 0$", out, re.M)
    sc = json.loads((state / "sim" / "scenario.json").read_text())
    for c in sc["clients"]:
        secret_file = state / "daemon" / c["secretFile"]
        assert secret_file.read_text().strip() == c["secret"]
        assert secret_file.stat().st_mode & 0o777 == 0o600
        for f in (state / "daemon" / "azs-usaged.conf", state / "daemon" / "azs-usaged.log"):
            assert c["secret"] not in f.read_text()
        assert c["secret"] not in out
    assert (state / "sim" / "scenario.json").stat().st_mode & 0o777 == 0o600


def test_demo_keep_running_leaves_both_up_until_stop(build, tmp_path):
    state = tmp_path / "run"
    r = run_demo(build, "--dir", state, "--wait", 1, "--keep-running")
    pids = {}
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        for name in ("azs-sim", "azs-usaged"):
            pids[name] = int((state / f"{name}.pid").read_text())
        assert sorted(processes_using(state)) == sorted(pids.values())
        out = r.stdout
        assert re.search(r"health +http://127\.0\.0\.1:\d+/healthz", out)
        assert f"--store {state}/daemon/usage.db status" in out
        assert f"Stop both with: {state}/stop" in out

        # a separate call: the expected events summed here, per charged subscription and meter
        world = json.loads((state / "sim" / "world.json").read_text())
        names = meter_names(state)
        st, events = sim_call(state, "GET", "/_sim/expected/events")
        assert st == 200
        expected = {}
        for e in events:
            k = (e["subscriptionId"], names[e["meterId"].lower().replace("-", "")])
            expected[k] = expected.get(k, Decimal(0)) + Decimal(e["quantity"])
        blocks, match = parse_table(out)
        check_blocks(blocks, world, expected)
        assert match in ("yes", "no")

        stop = subprocess.run([str(state / "stop")], capture_output=True, text=True,
                              timeout=limit(60))
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "stopped azs-usaged" in stop.stdout and "stopped azs-sim" in stop.stdout
        assert processes_using(state) == []
        assert not (state / "azs-sim.pid").exists() and not (state / "azs-usaged.pid").exists()
    finally:
        for pid in processes_using(state):
            os.kill(pid, signal.SIGKILL)


def test_demo_matches_when_the_ledger_receives_the_charges(build, tmp_path):
    state = tmp_path / "run"
    # The demo waits for the ledger to match for --wait seconds, and this test gives up on it
    # much earlier: a demo that ended by itself did so because the ledger matched, not because
    # its --wait ran out, on any machine.
    give_up = limit(60)
    p = subprocess.Popen([sys.executable, str(DEMO_PY), "--build-dir", str(build), "--dir",
                          str(state), "--wait", str(int(10 * give_up))], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=demo_env(build))
    try:
        try:
            wait_until(lambda: ((state / "sim" / "world.json").exists()
                                and (state / "azs-usaged.pid").exists()),
                       "the demo to start the simulator and the daemon", 30, interval=0.05,
                       alive=p)
        except AssertionError as e:
            pytest.fail(f"{e}\n{p.stdout.read() if p.poll() is not None else ''}")
        assert forward_expected_events(state) > 0
        try:
            out, _ = p.communicate(timeout=give_up)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within {give_up:.0f} s once the ledger matched")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
            for pid in processes_using(state):  # the killed demo's simulator and daemon
                os.kill(pid, signal.SIGKILL)
    assert p.returncode == 0, out
    blocks, match = parse_table(out)
    assert match == "yes", out
    for sub, b in blocks.items():
        assert b["records"][0] == b["records"][1] > 0
        for name, (e, a) in b["meters"].items():
            assert e == a, (sub, name)
    assert processes_using(state) == []


def test_demo_without_a_build_or_with_a_used_directory_fails(tmp_path):
    r = subprocess.run([sys.executable, str(DEMO_PY), "--build-dir", str(tmp_path / "none"),
                        "--dir", str(tmp_path / "a"), "--wait", "0"],
                       capture_output=True, text=True, timeout=limit(60))
    assert r.returncode == 1
    assert "azs-sim is not built" in r.stdout
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    r = subprocess.run([sys.executable, str(DEMO_PY), "--dir", str(used)], capture_output=True,
                       text=True, timeout=limit(60))
    assert r.returncode == 1
    assert "is not empty" in r.stdout


def fake_build(tmp_path, build, daemon_script):
    """A build directory with the real azs-sim and azs-usagectl and a shell script standing in
    for azs-usaged."""
    fake = tmp_path / "build"
    (fake / "daemon").mkdir(parents=True)
    (fake / "tests" / "sim").mkdir(parents=True)
    (fake / "tests" / "sim" / "azs-sim").symlink_to(Path(build) / "tests" / "sim" / "azs-sim")
    (fake / "daemon" / "azs-usagectl").symlink_to(Path(build) / "daemon" / "azs-usagectl")
    daemon = fake / "daemon" / "azs-usaged"
    daemon.write_text("#!/bin/sh\n" + daemon_script)
    daemon.chmod(0o755)
    return fake


@pytest.mark.parametrize("script,message", [
    ('echo "$3:7: stack.client_id: not a GUID" >&2; exit 1\n',
     "azs-usaged --check-config failed (exit 1)"),
    ('[ "$1" = --check-config ] && { echo "configuration OK"; exit 0; }\n'
     'echo "cannot open the store" >&2; exit 1\n',
     "azs-usaged exited with status 1"),
], ids=["check-config fails", "daemon does not start"])
def test_demo_with_a_broken_daemon_fails_and_stops_the_simulator(build, tmp_path, script,
                                                                 message):
    state = tmp_path / "run"
    r = subprocess.run([sys.executable, str(DEMO_PY), "--build-dir",
                        str(fake_build(tmp_path, build, script)), "--dir", str(state),
                        "--wait", "1"], capture_output=True, text=True, timeout=limit(60))
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stdout
    assert "matches expected charges" not in r.stdout
    assert processes_using(state) == []
    assert not (state / "azs-sim.pid").exists()
