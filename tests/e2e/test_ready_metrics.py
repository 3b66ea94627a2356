"""/metrics of the running daemon (ARCHITECTURE.md section 8), after it has collected and
forwarded: the exposition passes `promtool check metrics` and holds the families an operator's
dashboard and alerts read, with the forwarded records counted. Skipped where promtool (Debian's
prometheus package) is not installed.
"""
import shutil
import subprocess
import urllib.request

import pytest
from collect_helpers import Sim, collect_scenario, health_url, start, stop, wait_ready
from forward_helpers import forward_conf, wait_charged
from waiting import limit


def test_metrics_of_the_running_daemon_pass_promtool(tmp_path, daemon_bin):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not found (apt-get install prometheus)")
    sc = collect_scenario(2)
    with Sim(sc) as sim:
        conf = forward_conf(sim, tmp_path / "d")
        d = start(daemon_bin, tmp_path / "d", conf)
        try:
            summary = wait_charged(sim, d)
            wait_ready(d, conf)
            with urllib.request.urlopen(health_url(conf, "/metrics"), timeout=limit(10)) as r:
                assert r.status == 200
                text = r.read().decode()
            check = subprocess.run([promtool, "check", "metrics"], input=text,
                                   capture_output=True, text=True, timeout=limit(60))
            assert check.returncode == 0, check.stdout + check.stderr + "\n" + text
            lines = text.splitlines()
            for family in ("azs_usaged_ready", "azs_usaged_records",
                           "azs_usaged_records_forwarded_total",
                           "azs_usaged_http_request_duration_seconds"):
                assert any(line.startswith("# TYPE %s " % family) for line in lines), family
            assert "azs_usaged_ready 1" in lines
            forwarded = sum(float(line.split()[-1]) for line in lines
                            if line.startswith("azs_usaged_records_forwarded_total{"))
            assert forwarded >= summary["accepted"] > 0, (forwarded, summary["accepted"])
            assert any(line.startswith('azs_usaged_http_request_duration_seconds_bucket'
                                       '{api="commerce"') for line in lines)
            stop(d)
        finally:
            d.stop()
