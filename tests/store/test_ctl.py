"""azs-usagectl against a seeded store (ARCHITECTURE.md section 9).

`store-torture seed` builds a store (two reported hours, three subscriptions charged as
registered / default / unknown-subscription; forwarded, dead, pending, quarantined and conflict
records; quantities with many digits) and prints a manifest of what it decided for every record.
Every verb runs against it: table, --json (the exact member list) and --csv shapes, exit codes
(0 / 1 / 2), the write verbs and their history entries, report totals (checked against sums
computed here with decimal.Decimal), recollect, status with and without the daemon's health
endpoint.
"""
import csv
import http.server
import io
import json
import os
import subprocess
import threading
from collections import defaultdict
from decimal import Decimal, getcontext

import pytest
from waiting import limit, wait_until

getcontext().prec = 200  # exact: no sum here has that many digits

BUILD = os.environ.get("AZS_BUILD_DIR", "")
CTL = os.path.join(BUILD, "daemon", "azs-usagectl")
TORTURE = os.path.join(BUILD, "tests", "store", "store-torture")

MEMBERS = ["key", "state", "reportedHour", "sourceSubscriptionId", "tenantId", "meterId",
           "quantity", "usageStartTime", "usageEndTime", "resourceUri", "chargedSubscription",
           "chargeReason", "attempts", "batchId", "errorCode", "errorMessage"]
SUB_REGISTERED = "aaaaaaaa-0000-4000-8000-000000000001"
CUSTOMER = "cccccccc-0000-4000-8000-000000000001"
TENANT_REGISTERED = "bbbbbbbb-0000-4000-8000-000000000001"
DEFAULT = "11111111-1111-1111-1111-111111111111"

pytestmark = pytest.mark.skipif(not (os.access(CTL, os.X_OK) and os.access(TORTURE, os.X_OK)),
                                reason="azs-usagectl or store-torture not built")


def ctl(*args, store=None, input=None):
    cmd = [CTL] + (["--store", str(store)] if store else []) + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=limit(60), input=input)


def ok(*args, store):
    r = ctl(*args, store=store)
    assert r.returncode == 0, f"{args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def records_json(store, *args):
    return json.loads(ok("--json", *args, store=store))


def history(store, key, state=None):
    r = subprocess.run([TORTURE, "history", str(store), key] + ([state] if state else []),
                       capture_output=True, text=True, timeout=limit(60))
    assert r.returncode == 0, r.stdout
    return [line.split("\t") for line in r.stdout.splitlines()]


@pytest.fixture
def seeded(tmp_path):
    db = tmp_path / "usage.db"
    r = subprocess.run([TORTURE, "seed", str(db)], capture_output=True, text=True,
                       timeout=limit(60))
    assert r.returncode == 0, r.stdout + r.stderr
    return db, json.loads(r.stdout)


def by_state(manifest, state):
    return [m for m in manifest if m["state"] == state]


# --- the command line: usage errors before anything is opened ---------------------------------

USAGE_ERRORS = [
    [],
    ["frobnicate"],
    ["--bogus", "status"],
    ["status", "--bogus"],
    ["status", "extra"],
    ["status", "--all"],
    ["records", "--state"],
    ["records", "--state", "sleeping"],
    ["records", "--limit", "0"],
    ["records", "--limit", "ten"],
    ["records", "--since", "yesterday"],
    ["dead", "bogus"],
    ["dead", "retry"],
    ["dead", "retry", "abc1234"],
    ["dead", "retry", "xyzxyzxyzxyz"],
    ["dead", "retry", "0123456789", "--all"],
    ["dead", "discard", "0123456789"],
    ["dead", "discard", "--reason", "r"],
    ["conflicts", "accept"],
    ["conflicts", "reject", "01234567", "89abcdef"],
    ["report", "--from", "2026-11-01T00:00:00Z"],
    ["report", "--to", "2026-11-01T00:00:00Z"],
    ["report", "--from", "2026-11-02", "--to", "2026-11-01"],
    ["report", "--from", "2026-11-01", "--to", "2026-11-02", "--by", "colour"],
    ["report", "--from", "2026-11-01", "--to", "2026-11-02", "--csv", "--json"],
    ["recollect", "--from", "2026-11-01T10:30:00Z", "--to", "2026-11-01T11:00:00Z"],
    ["recollect", "--from", "2026-11-01T12:00:00Z", "--to", "2026-11-01T11:00:00Z"],
    ["recollect", "--from", "2026-11-01T10:00:00Z"],
    ["tenant"],
    ["tenant", "add", "x"],
    ["-c"],
    ["records", "--state", "dead", "--state", "pending"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda a: " ".join(a) or "no-verb")
def test_usage_errors_exit_2_even_without_store_or_config(tmp_path, args):
    # neither the store nor the default configuration exists: parsing comes first
    r = ctl(*args, store=tmp_path / "absent.db")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert "azs-usagectl: " in r.stderr and "--help" in r.stderr
    assert not (tmp_path / "absent.db").exists()
    r = subprocess.run([CTL, "-c", str(tmp_path / "absent.conf")] + args, capture_output=True,
                       text=True)
    assert r.returncode == 2, (r.stdout, r.stderr)


def test_help_names_every_verb_option_and_exit_status():
    r = ctl("--help")
    assert r.returncode == 0 and r.stderr == ""
    for word in ["status", "records", "dead [list]", "dead retry", "dead discard", "conflicts",
                 "conflicts accept", "conflicts reject", "quarantine", "quarantine show", "report",
                 "recollect",
                 "lookup", "tenants", "tenant add", "tenant remove", "registration",
                 "--state", "--tenant", "--subscription", "--since", "--limit", "--all",
                 "--reason", "--from", "--to", "--by", "--csv", "--json", "--store", "-c FILE",
                 "--version", "EXIT STATUS"]:
        assert word in r.stdout, word
    # --help wins over everything else on the line
    assert ctl("frobnicate", "--help").returncode == 0
    assert ctl("records", "--help").returncode == 0


def test_version_prints_name_and_version():
    r = ctl("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("azs-usagectl ") and r.stdout.strip().split()[1][0].isdigit()


@pytest.mark.parametrize("args", [["lookup", "aaaaaaaa-0000-4000-8000-000000000001"],
                                  ["tenants"], ["tenants", "--unregistered"], ["registration"]])
def test_registry_read_verbs_need_a_store(tmp_path, args):
    r = ctl(*args, store=tmp_path / "absent.db")
    assert r.returncode == 1
    assert str(tmp_path / "absent.db") in r.stderr
    assert not (tmp_path / "absent.db").exists()


def test_missing_store_is_a_failure_not_created(tmp_path):
    r = ctl("status", store=tmp_path / "absent.db")
    assert r.returncode == 1
    assert str(tmp_path / "absent.db") in r.stderr
    assert not (tmp_path / "absent.db").exists()


def test_missing_config_is_a_failure(tmp_path):
    r = subprocess.run([CTL, "-c", str(tmp_path / "absent.conf"), "status"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "absent.conf" in r.stderr


# --- listings ----------------------------------------------------------------------------------

def test_records_json_has_exactly_the_members_and_exact_quantities(seeded):
    db, manifest = seeded
    rows = records_json(db, "records")
    assert len(rows) == len(manifest)
    want = {(m["key"], m["state"]): m for m in manifest}
    for row in rows:
        assert list(row) == MEMBERS
        m = want[(row["key"], row["state"])]
        assert isinstance(row["quantity"], str)
        assert row["quantity"] == m["quantity"]
        assert row["reportedHour"] == m["reportedHour"]
        assert row["usageStartTime"] == m["usageStartTime"]
        assert row["meterId"] == m["meterId"]
        assert row["sourceSubscriptionId"] == m["sourceSubscriptionId"]
        assert row["chargedSubscription"] == m["chargedSubscription"]
        assert row["tenantId"] == m["tenantId"]
        assert row["usageEndTime"].endswith("Z") and len(row["usageEndTime"]) == 20
        assert isinstance(row["attempts"], int)
        if row["state"] in ("forwarded", "dead"):
            assert len(row["batchId"]) == 36
        if row["state"] != "dead" and row["state"] != "quarantined":
            assert row["errorCode"] is None and row["errorMessage"] is None


def test_records_table_has_a_header_and_one_line_per_record(seeded):
    db, manifest = seeded
    lines = ok("records", store=db).splitlines()
    assert lines[0].split()[:3] == ["KEY", "STATE", "REPORTED"]
    assert len(lines) == len(manifest) + 1
    keys = {m["key"][:16] for m in manifest}
    assert {line.split()[0] for line in lines[1:]} == keys
    # the columns line up: STATE starts at the same offset on every line
    offset = lines[0].index("STATE")
    assert all(line[offset - 2:offset] == "  " and line[offset] != " " for line in lines[1:])


def test_records_filters(seeded):
    db, manifest = seeded
    assert len(records_json(db, "records", "--state", "dead")) == len(by_state(manifest, "dead"))
    assert len(records_json(db, "records", "--limit", "3")) == 3
    # GUIDs are compared lower-case whatever the operator types
    rows = records_json(db, "records", "--subscription", SUB_REGISTERED.upper())
    want = [m for m in manifest if SUB_REGISTERED in (m["sourceSubscriptionId"],
                                                      m["chargedSubscription"])]
    assert sorted(r["key"] for r in rows) == sorted(m["key"] for m in want)
    rows = records_json(db, "records", "--subscription", CUSTOMER)
    assert {r["chargedSubscription"] for r in rows} == {CUSTOMER}
    rows = records_json(db, "records", "--tenant", TENANT_REGISTERED, "--state", "forwarded")
    assert len(rows) == len([m for m in by_state(manifest, "forwarded")
                             if m["tenantId"] == TENANT_REGISTERED])
    assert records_json(db, "records", "--since", "2099-01-01") == []
    assert ok("records", "--since", "2099-01-01T00:00:00Z", store=db).count("\n") == 1


@pytest.mark.parametrize("verb,state", [("dead", "dead"), ("conflicts", "conflict"),
                                        ("quarantine", "quarantined")])
def test_state_listings_json_and_table(seeded, verb, state):
    db, manifest = seeded
    want = by_state(manifest, state)
    rows = records_json(db, verb)
    assert sorted(r["key"] for r in rows) == sorted(m["key"] for m in want)
    # a conflict row also carries its own id: several conflicts of one record share the key
    members = MEMBERS + (["id"] if verb == "conflicts" else [])
    assert all(list(r) == members and r["state"] == state for r in rows)
    lines = ok(verb, store=db).splitlines()
    assert len(lines) == len(want) + 1
    if state == "dead":
        assert all(r["errorCode"] == "InvalidQuantity" for r in rows)
        assert all("InvalidQuantity: The quantity is not valid" in l for l in lines[1:])
    if state == "quarantined":
        assert all(r["errorMessage"] == "quantity: not a finite decimal" for r in rows)
        assert all(r["quantity"] == "NaN" for r in rows)
    assert records_json(db, verb, "--limit", "1")[:1] == rows[:1]


def test_quarantine_show_prints_the_reason_and_the_raw_text(seeded):
    db, manifest = seeded
    q = by_state(manifest, "quarantined")[0]
    out = ok("quarantine", "show", q["key"][:10], store=db)
    assert q["key"] in out
    assert "reason:   quantity: not a finite decimal" in out
    row = json.loads(ok("--json", "quarantine", "show", q["key"][:10], store=db))
    assert list(row) == MEMBERS + ["raw"]
    assert row["key"] == q["key"] and row["state"] == "quarantined"
    assert row["raw"] and row["raw"] in out
    # only quarantined records: a forwarded key is not found
    f = by_state(manifest, "forwarded")[0]
    r = ctl("quarantine", "show", f["key"], store=db)
    assert r.returncode == 1 and "no quarantined record" in r.stderr


# --- keys --------------------------------------------------------------------------------------

def test_ambiguous_and_unknown_prefixes_fail_with_1_and_change_nothing(seeded):
    db, manifest = seeded
    dead = by_state(manifest, "dead")
    assert all(m["key"].startswith("deadbeef") for m in dead) and len(dead) == 4
    r = ctl("dead", "retry", "deadbeef", store=db)
    assert r.returncode == 1 and "several" in r.stderr
    r = ctl("dead", "retry", dead[0]["key"][:12], "0000000000", store=db)
    assert r.returncode == 1 and "0000000000" in r.stderr
    assert len(records_json(db, "dead")) == 4  # the first, valid key was not retried either


def test_dead_retry_by_prefix_moves_to_pending_and_records_history(seeded):
    db, manifest = seeded
    dead = by_state(manifest, "dead")
    key = dead[0]["key"]
    out = ok("dead", "retry", key[:14].upper(), "--reason", "meter fixed upstream", store=db)
    assert "back to pending" in out
    pending = {r["key"] for r in records_json(db, "records", "--state", "pending")}
    assert key in pending
    assert key not in {r["key"] for r in records_json(db, "dead")}
    h = history(db, key)
    entry = [e for e in h if e[0].startswith("azs-usagectl:")]
    assert entry, h
    assert "retry" in entry[-1][1]
    assert "meter fixed upstream" in entry[-1][2]


def test_dead_retry_all(seeded):
    db, manifest = seeded
    r = json.loads(ok("--json", "dead", "retry", "--all", store=db))
    assert r["records"] == len(by_state(manifest, "dead"))
    assert records_json(db, "dead") == []
    assert ok("dead", "retry", "--all", store=db).startswith("0 dead records")


def test_dead_discard_needs_reason_and_keeps_the_record_for_audit(seeded):
    db, manifest = seeded
    key = by_state(manifest, "dead")[1]["key"]
    out = ok("dead", "discard", key, "--reason", "billed by hand, ticket 4711", store=db)
    assert "discarded" in out
    assert key not in {r["key"] for r in records_json(db, "dead")}
    # kept for audit in the whole list; --state lists what status counts
    assert key in {r["key"] for r in records_json(db, "records")}
    dead_listed = records_json(db, "records", "--state", "dead")
    assert key not in {r["key"] for r in dead_listed}
    status = json.loads(ok("--json", "status", store=db))
    assert len(dead_listed) == status["records"]["dead"], status
    h = history(db, key)
    assert any(e[0].startswith("azs-usagectl:") and "discard" in e[1]
               and "billed by hand, ticket 4711" in e[2] for e in h), h
    # not dead-listed any more, so it cannot be discarded twice
    assert ctl("dead", "discard", key, "--reason", "again", store=db).returncode == 1


# --- conflicts ---------------------------------------------------------------------------------

def test_conflict_accept_larger_forwards_the_difference(seeded):
    db, manifest = seeded
    conflict = [m for m in by_state(manifest, "conflict") if m["quantity"] == "0.35"][0]
    original = [m for m in manifest if m["key"] == conflict["key"] and m["state"] == "forwarded"]
    assert original and original[0]["quantity"] == "0.1"
    before = {r["key"] for r in records_json(db, "records")}
    ok("conflicts", "accept", conflict["key"][:10], store=db)
    assert conflict["key"] not in {r["key"] for r in records_json(db, "conflicts")}
    added = [r for r in records_json(db, "records", "--state", "pending")
             if r["key"] not in before]
    assert len(added) == 1
    assert Decimal(added[0]["quantity"]) == Decimal("0.35") - Decimal("0.1")
    h = history(db, conflict["key"], "forwarded")  # the original's history says who and why
    assert any(e[0].startswith("azs-usagectl:") and e[1] == "conflict-accept" for e in h), h


def test_conflict_accept_smaller_needs_a_credit(seeded):
    db, manifest = seeded
    conflict = [m for m in by_state(manifest, "conflict") if m["quantity"] == "1.5"][0]
    ok("conflicts", "accept", conflict["key"], store=db)
    dead = [r for r in records_json(db, "dead") if r["errorCode"] == "credit-required"]
    assert len(dead) == 1 and dead[0]["key"] == conflict["key"]


def test_conflict_reject_keeps_the_original(seeded):
    db, manifest = seeded
    conflict = by_state(manifest, "conflict")[0]
    before = records_json(db, "records", "--state", "forwarded")
    out = json.loads(ok("--json", "conflicts", "reject", conflict["key"][:8], store=db))
    assert out["action"] == "conflict-reject" and out["key"] == conflict["key"]
    assert conflict["key"] not in {r["key"] for r in records_json(db, "conflicts")}
    assert records_json(db, "records", "--state", "forwarded") == before
    h = history(db, conflict["key"], "forwarded")
    assert any(e[0].startswith("azs-usagectl:") and e[1] == "conflict-reject"
               and "operator" in e[2] for e in h), h
    assert ctl("conflicts", "reject", conflict["key"], store=db).returncode == 1


# --- report ------------------------------------------------------------------------------------

def expected_totals(manifest, by, start, end):
    totals = defaultdict(lambda: [0, Decimal(0)])
    for m in by_state(manifest, "forwarded"):
        if not (start <= m["usageStartTime"] < end):
            continue
        group = {"subscription": (m["chargedSubscription"], m["meterId"]),
                 "tenant": (m["tenantId"], m["meterId"]),
                 "meter": (None, m["meterId"])}[by]
        totals[group][0] += 1
        totals[group][1] += Decimal(m["quantity"])
    return dict(totals)


@pytest.mark.parametrize("by", ["subscription", "tenant", "meter"])
@pytest.mark.parametrize("window", [("2026-11-01", "2026-11-02"),
                                    ("2026-11-01T09:00:00Z", "2026-11-01T10:00:00Z")])
def test_report_totals_are_exact(seeded, by, window):
    db, manifest = seeded
    start, end = window
    s = start if "T" in start else start + "T00:00:00Z"
    e = end if "T" in end else end + "T00:00:00Z"
    want = expected_totals(manifest, by, s, e)
    assert want, "the seed has forwarded records in the window"

    rows = json.loads(ok("--json", "report", "--from", start, "--to", end, "--by", by, store=db))
    group_member = {"subscription": "chargedSubscription", "tenant": "tenantId",
                    "meter": None}[by]
    got = {}
    for row in rows:
        assert isinstance(row["total"], str)
        assert list(row) == ([group_member] if group_member else []) + \
            ["meterId", "records", "total"]
        got[(row.get(group_member) if group_member else None, row["meterId"])] = \
            [row["records"], Decimal(row["total"])]
    assert got == {k: v for k, v in want.items()}

    text = ok("report", "--from", start, "--to", end, "--by", by, "--csv", store=db)
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ([group_member] if group_member else []) + ["meterId", "records", "total"]
    assert len(table) == len(want) + 1
    for line in table[1:]:
        key = (line[0] or None, line[1]) if group_member else (None, line[0])
        assert [int(line[-2]), Decimal(line[-1])] == want[key]

    lines = ok("report", "--from", start, "--to", end, "--by", by, store=db).splitlines()
    assert "TOTAL" in lines[0] and len(lines) == len(want) + 1


def test_report_totals_survive_digits_a_double_would_lose(seeded):
    db, manifest = seeded
    rows = json.loads(ok("--json", "report", "--from", "2026-11-01", "--to", "2026-11-02",
                         "--by", "meter", store=db))
    total = sum(Decimal(r["total"]) for r in rows)
    want = sum(Decimal(m["quantity"]) for m in by_state(manifest, "forwarded"))
    assert total == want
    assert float(want) != want  # the check means something: floats would not be exact here


def test_report_empty_window(seeded):
    db, _ = seeded
    assert json.loads(ok("--json", "report", "--from", "2030-01-01", "--to", "2030-01-02",
                         store=db)) == []


# --- recollect and status ----------------------------------------------------------------------

def hours(db):
    r = subprocess.run([TORTURE, "hours", str(db)], capture_output=True, text=True,
                       timeout=limit(60))
    assert r.returncode == 0, r.stdout
    return [line.split() for line in r.stdout.splitlines()]


def test_recollect_schedules_the_hours_again(seeded):
    db, _ = seeded
    out = ok("recollect", "--from", "2026-11-01T10:00:00Z", "--to", "2026-11-01T11:00:00Z",
             "--reason", "stamp replayed usage", store=db)
    assert out.startswith("2 reported hours")
    sched = {h[0]: int(h[2]) for h in hours(db)}
    assert sched["2026-11-01T10:00:00Z"] >= 2
    assert sched["2026-11-01T11:00:00Z"] >= 2
    out = json.loads(ok("--json", "recollect", "--from", "2026-11-01T10:00:00Z", "--to",
                        "2026-11-01T10:00:00Z", store=db))
    assert out == {"action": "recollect", "from": "2026-11-01T10:00:00Z",
                   "to": "2026-11-01T10:00:00Z", "hours": 1}
    assert {h[0]: int(h[2]) for h in hours(db)}["2026-11-01T10:00:00Z"] >= 3


def test_recollect_of_hours_never_collected_fails(seeded):
    db, _ = seeded
    before = hours(db)
    r = ctl("recollect", "--from", "2026-11-02T10:00:00Z", "--to", "2026-11-02T10:00:00Z",
            store=db)
    assert r.returncode == 1 and "recollect" in r.stderr
    assert hours(db) == before


def test_status_counts_match_the_seed(seeded):
    db, manifest = seeded
    st = json.loads(ok("--json", "status", store=db))
    for state in ("forwarded", "dead", "pending", "quarantined", "conflict"):
        assert st["records"][state] == len(by_state(manifest, state)), state
    assert st["records"]["inflight"] == 0
    assert st["backlog"] == len(by_state(manifest, "pending"))
    assert st["daemon"] is None
    assert st["oldestPending"].endswith("Z")
    text = ok("status", store=db)
    assert f"forwarded {len(by_state(manifest, 'forwarded'))}," in text
    assert "daemon:" in text


class _Readyz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"version": "test", "uptime_seconds": 5, "ready": False,
                           "reasons": ["registration cache stale"], "records": {}}).encode()
        self.send_response(200 if self.path == "/v1/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


CONFIG = """[stack]
arm_endpoint = https://adminmanagement.local.azurestack.external
provider_subscription = 6e26b5b6-7a9e-4b0e-a4a1-2c3b2d6c1f10
tenant = contoso.onmicrosoft.com
client_id = 2b8f3e55-4a4e-4c55-9d3b-7a1f0f3e9c21
client_secret_file = secret
[registration]
subscription_id = 9a1c6f7e-3b2d-4e8f-a1b2-c3d4e5f60718
resource_group = azurestack
name = azurestack-0b6a9e1c
[azure]
tenant = fabrikam-csp.onmicrosoft.com
client_id = 5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e1f
client_secret_file = secret
[commerce]
url = https://commerce.example/api/usageEvents/batch
audience = https://commerce.example/
[store]
path = {db}
[health]
listen = 127.0.0.1:{port}
"""


def test_status_through_the_config_asks_the_daemon(seeded, tmp_path):
    db, manifest = seeded
    server = http.server.HTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "secret").write_text("Not-A-Real-Secret-123\n")
        conf = tmp_path / "azs-usaged.conf"
        conf.write_text(CONFIG.format(db=db, port=server.server_address[1]))
        r = subprocess.run([CTL, "-c", str(conf), "--json", "status"], capture_output=True,
                           text=True, timeout=limit(60))
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["store"] == str(db)
        assert st["daemon"]["reachable"] is True
        assert st["daemon"]["ready"] is False
        assert st["daemon"]["reasons"] == ["registration cache stale"]
        assert "Not-A-Real-Secret" not in r.stdout + r.stderr
        r = subprocess.run([CTL, "-c", str(conf), "status"], capture_output=True, text=True,
                           timeout=limit(60))
        assert "not ready: registration cache stale" in r.stdout
    finally:
        server.shutdown()
        server.server_close()
    # nobody listening now
    r = subprocess.run([CTL, "-c", str(conf), "--json", "status"], capture_output=True,
                       text=True, timeout=limit(60))
    assert json.loads(r.stdout)["daemon"]["reachable"] is False


def test_config_secrets_are_not_needed(seeded, tmp_path):
    # Under systemd the secret files reach only the unit (LoadCredential=): an operator's
    # azs-usagectl must work with the same configuration although it cannot read them.
    db, manifest = seeded
    conf = tmp_path / "azs-usaged.conf"
    conf.write_text(CONFIG.format(db=db, port=1))
    assert not (tmp_path / "secret").exists()
    r = subprocess.run([CTL, "-c", str(conf), "--json", "records", "--limit", "1"],
                       capture_output=True, text=True, timeout=limit(60))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 1


# --- streaming ---------------------------------------------------------------------------------

# Run in a fresh interpreter: a child's peak RSS includes the image it was started from, and
# this process has just parsed megabytes of JSON.
_MEASURE = """
import os, subprocess, sys
with open(os.devnull, "w") as devnull:
    p = subprocess.Popen(sys.argv[1:], stdout=devnull, stderr=devnull)
    _, status, usage = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _peak_rss_kib(args, store):
    """Run azs-usagectl, discard its output; (exit status, its peak RSS in KiB)."""
    r = subprocess.run(["/usr/bin/python3", "-c", _MEASURE, CTL, "--store", str(store)] + args,
                       capture_output=True, text=True, timeout=limit(120))
    rc, rss = r.stdout.split()
    return int(rc), int(rss)


def _sanitized():
    with open(CTL, "rb") as f:
        return b"__asan_init" in f.read()


def test_listings_stream_memory_does_not_grow_with_the_records(tmp_path):
    if _sanitized():
        pytest.skip("AddressSanitizer's quarantine keeps freed memory: RSS says nothing here")
    # both stores are larger than SQLite's page cache (32 MiB), which is the one bounded cost
    sizes = {}
    rss = {}
    for pages in (600, 1800):
        db = tmp_path / f"usage-{pages}.db"
        r = subprocess.run([TORTURE, "run", str(db), "--records", "50", "--pages", str(pages)],
                           capture_output=True, text=True, timeout=limit(300))
        assert r.returncode == 0, r.stdout[-500:]
        out = ok("--json", "records", store=db)
        assert out.count('"key":') == pages * 50
        sizes[pages] = len(out)
        for args in (("--json", "records"), ("records",), ("dead",), ("status",)):
            code, rss[(pages, args)] = _peak_rss_kib(list(args), db)
            assert code == 0
    # some 38 MB more JSON: collecting it would show; streaming stays flat once SQLite's page
    # cache (bounded by the store) is full, which a full scan of either store fills. The bounds
    # are fractions of the output, not fixed sizes: what is measured is whether memory follows
    # the records, whatever the machine's allocator and page sizes add.
    grown = sizes[1800] - sizes[600]
    assert grown > 30 * 1024 * 1024
    for args in (("--json", "records"), ("records",)):
        assert rss[(1800, args)] - rss[(600, args)] < grown / 4 / 1024, (grown, rss)
    # and no listing holds its output: beyond what status needs, less than three quarters of it
    for args in (("--json", "records"), ("records",), ("dead",)):
        assert rss[(1800, args)] - rss[(1800, ("status",))] < sizes[1800] * 3 / 4 / 1024, (
            sizes, rss)


# --- beside the daemon -------------------------------------------------------------------------

def _files_digest(db):
    import hashlib
    h = hashlib.sha256()
    for suffix in ("", "-wal"):
        path = f"{db}{suffix}"
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_read_verbs_do_not_write(seeded):
    db, _ = seeded
    before = _files_digest(db)
    for args in (["status"], ["records"], ["--json", "records"], ["dead"], ["conflicts"],
                 ["quarantine"], ["report", "--from", "2026-11-01", "--to", "2026-11-02"]):
        ok(*args, store=db)
    assert _files_digest(db) == before


def _asleep(pid):
    """True while the process sleeps in nanosleep (SQLite's busy handler between attempts)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            if "nanosleep" in f.read():
                return True
        with open(f"/proc/{pid}/syscall") as f:
            nr = f.read().split()[0]
    except (OSError, IndexError):
        return False
    # nanosleep and clock_nanosleep on x86_64 and on aarch64, where wchan says nothing
    return nr in {"x86_64": ("35", "230"), "aarch64": ("101", "115")}.get(os.uname().machine, ())


def _sleeps(pid):
    """How often the process has given up the CPU by itself so far (its main thread)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def test_write_verb_waits_for_a_busy_writer(seeded):
    import sqlite3
    db, manifest = seeded
    key = by_state(manifest, "dead")[0]["key"]
    writer = sqlite3.connect(str(db), timeout=0, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    p = subprocess.Popen([CTL, "--store", str(db), "dead", "retry", key],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # it reaches the lock and waits for it; then it tries again and again (SQLite's busy
        # handler sleeps 1, 2, 5, ... 100 ms: fifteen tries are some 0.6 s of its 5 s patience)
        # and is still waiting, however slowly this machine runs it
        first = wait_until(lambda: _asleep(p.pid) and _sleeps(p.pid), "azs-usagectl to wait "
                           "for the lock (did it give up?)", 30, alive=p)
        wait_until(lambda: (_sleeps(p.pid) or 0) >= first + 15, "azs-usagectl to try the lock "
                   "15 times (did it give up?)", 30, alive=p)
        assert p.poll() is None, "gave up instead of waiting for the lock"
    finally:
        writer.execute("COMMIT")
        writer.close()
    out, err = p.communicate(timeout=limit(30))
    assert p.returncode == 0, err
    assert key in {r["key"] for r in records_json(db, "records", "--state", "pending")}
