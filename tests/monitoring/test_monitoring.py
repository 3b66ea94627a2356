"""monitoring/: the Grafana dashboard is importable JSON whose every query names only metrics that
/metrics exports and parses as PromQL; the alerting rules name only exported metrics too.

The exposition comes from `test-health --dump-metrics` (lib/health serving the daemon's registry);
PromQL is parsed by `promtool check rules` on a rule file made of the dashboard's queries (skipped
without promtool).
"""
import json
import os
import re
import shutil
import subprocess

import pytest

SOURCE = os.environ["AZS_SOURCE_DIR"]
TEST_HEALTH = os.environ["AZS_TEST_HEALTH"]
DASHBOARD = os.path.join(SOURCE, "monitoring", "azs-usaged.dashboard.json")
RULES = os.path.join(SOURCE, "monitoring", "azs-usaged.rules.yml")
NAME = re.compile(r"\bazs_usaged_[a-zA-Z0-9_]+")


def exported():
    """The metric names of the exposition, histogram series included."""
    text = subprocess.run([TEST_HEALTH, "--dump-metrics"], check=True, capture_output=True,
                          text=True).stdout
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    assert "azs_usaged_ready" in names
    return names


def dashboard_queries():
    with open(DASHBOARD) as f:
        d = json.load(f)
    queries = []
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        queries += [t["expr"] for t in p["targets"]]
    return d, queries


def test_dashboard_is_importable():
    d, queries = dashboard_queries()
    assert d["uid"] == "azs-usaged" and d["title"]
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    # the panels the operator issue asks for
    for m in ("azs_usaged_records{", "azs_usaged_records_collected_total",
              "azs_usaged_records_forwarded_total", "azs_usaged_forward_batches_total",
              "azs_usaged_registration_age_seconds", "azs_usaged_tenants_charged_default",
              "azs_usaged_oldest_pending_seconds"):
        assert any(m in q for q in queries), m


def test_dashboard_and_rules_use_exported_metrics():
    names = exported()
    _, queries = dashboard_queries()
    with open(RULES) as f:
        rules = f.read()
    for text in queries + [rules]:
        for m in NAME.findall(text):
            assert m in names, m


def test_dashboard_queries_parse(tmp_path):
    if not shutil.which("promtool"):
        pytest.skip("promtool not found (apt-get install prometheus)")
    _, queries = dashboard_queries()
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, q in enumerate(queries):
        q = q.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
        lines += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(q)}"]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text("\n".join(lines) + "\n")
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
