#!/usr/bin/python3
"""What does /_sim/ledger/summary cost with a full ledger?

Starts a simulator with a scenario (default scenarios/bench.json: 168 hours of 5,000 records),
posts every expected Commerce event hour by hour in batches of 1,000 over one keep-alive HTTPS
connection, then asks for the summary a few times and prints the wall time of each call, the
simulator's peak and current resident memory (VmHWM, VmRSS from /proc) and its CPU figures.
AZS_SIM or AZS_BUILD_DIR names the binary, so an older build can be measured the same way.

    AZS_BUILD_DIR=build /usr/bin/python3 tests/sim/bench_summary.py [--calls 3] [--hours N]
"""
import argparse
import calendar
import http.client
import json
import os
import ssl
import sys
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from azsim import Sim, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET  # noqa: E402


def proc_kib(pid, field):
    """A VmXXX figure of /proc/PID/status in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=os.path.join(HERE, "scenarios", "bench.json"))
    ap.add_argument("--hours", type=int, help="override the scenario's hour count")
    ap.add_argument("--calls", type=int, default=3, help="summaries to ask for")
    a = ap.parse_args()

    with open(a.scenario) as f:
        sc = json.load(f)
    if a.hours:
        sc["hours"] = dict(sc.get("hours", {}), count=a.hours)
    with Sim(sc, now="2027-01-01T00:00:00Z", timeout=60) as sim:
        w = sim.world()
        tok = sim.token(w["audiences"]["commerce"], AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)
        ctx = ssl.create_default_context(cafile=sim.ca_file)
        conn = http.client.HTTPSConnection("127.0.0.1", sim.port, context=ctx, timeout=600)

        def call(method, path, body=None, headers=None):
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise SystemExit("%s %s: %d %s" % (method, path, r.status, data[:300]))
            return json.loads(data)

        start = sim.summary()["sim"]
        t0 = time.monotonic()
        posted = 0
        first = calendar.timegm(time.strptime(w["hours"]["from"], "%Y-%m-%dT%H:%M:%SZ"))
        for h in range(w["hours"]["count"]):
            q = urllib.parse.urlencode({
                "from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first + 3600 * h)),
                "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first + 3600 * h + 3600))})
            events = call("GET", "/_sim/expected/events?" + q)
            for i in range(0, len(events), 1000):
                body = json.dumps({"request": events[i:i + 1000]}).encode()
                doc = call("POST", w["commercePath"], body,
                           {"Authorization": "Bearer " + tok, "Content-Type": "application/json",
                            "x-ms-requestid": str(uuid.uuid4()),
                            "x-ms-correlationid": str(uuid.uuid4())})
                posted += sum(1 for x in doc["result"] if x["status"] == "Accepted")
        t_fill = time.monotonic() - t0
        pid = sim.proc.pid
        print("ledger: %d events accepted in %.1f s; simulator VmHWM %d MiB, VmRSS %d MiB"
              % (posted, t_fill, proc_kib(pid, "VmHWM") // 1024, proc_kib(pid, "VmRSS") // 1024))
        print("before the summaries: cpuUsPerRecord %s" % start.get("cpuUsPerRecord"))
        for i in range(a.calls):
            t0 = time.monotonic()
            s = call("GET", "/_sim/ledger/summary")
            dt = time.monotonic() - t0
            print("summary %d: %.3f s, ok %s, accepted %d, VmHWM %d MiB, VmRSS %d MiB, "
                  "cpuUsPerRecord %s, summaryCpuUs %s"
                  % (i + 1, dt, s["comparison"]["ok"], s["accepted"],
                     proc_kib(pid, "VmHWM") // 1024, proc_kib(pid, "VmRSS") // 1024,
                     s["sim"].get("cpuUsPerRecord"), s["sim"].get("summaryCpuUs", "-")))
        conn.close()


if __name__ == "__main__":
    main()
