#!/usr/bin/python3
"""Small load client for azs-sim: how cheap is the simulator itself?

Starts a simulator (through tests/e2e/azsim.py; AZS_BUILD_DIR or AZS_SIM names the binary),
reads every usage page of N reported hours over one keep-alive HTTPS connection, then posts the
expected Commerce events in batches (by default as the daemon sends them: 500 per batch, compact
UTF-8 JSON, gzip), and prints pages served/s, records/s, events accepted/s and the simulator's own CPU time
per record and per event: inside the request handlers (from /_sim/ledger/summary, measured with
CLOCK_THREAD_CPUTIME_ID around each request) and the whole process's while it served the pages
and while it took the batches (from /proc/PID/stat: TLS, HTTP and the ledger's writes included).

    AZS_BUILD_DIR=build /usr/bin/python3 tests/sim/sim_load.py --hours 20 --records-per-hour 5000
"""
import argparse
import gzip
import http.client
import json
import os
import ssl
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from azsim import Sim, scenario, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET  # noqa: E402


def process_cpu(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat fields 14 and 15)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=int, default=20)
    ap.add_argument("--records-per-hour", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--gzip", action="store_true", default=True,
                    help="gzip the Commerce bodies, as the daemon does by default (the default)")
    ap.add_argument("--identity", dest="gzip", action="store_false",
                    help="send the Commerce bodies without Content-Encoding")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args()

    sc = scenario(tenants=20, registeredTenants=15, subscriptionsPerTenant=5,
                  resourcesPerSubscription=10, recordsPerHour=a.records_per_hour,
                  hours={"from": "2026-11-01T00:00:00Z", "count": a.hours})
    with Sim(sc, now="2026-12-01T00:00:00Z") as sim:
        pid = sim.proc.pid
        w = sim.world()
        stack = sim.token(w["audiences"]["stack"])
        commerce = sim.token(w["audiences"]["commerce"], AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)
        ctx = ssl.create_default_context(cafile=sim.ca_file)
        conn = http.client.HTTPSConnection("127.0.0.1", sim.port, context=ctx, timeout=60)

        # usage pages
        pages = records = 0
        c0 = process_cpu(pid)
        t0 = time.monotonic()
        for h in range(a.hours):
            hour = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1793491200 + 3600 * h))
            path = sim.usage_path(hour)
            while path:
                conn.request("GET", path, headers={"Authorization": "Bearer " + stack})
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    raise SystemExit("usage: %d %s" % (r.status, body[:300]))
                pages += 1
                records += body.count(b'"quantity":')
                tail = body[-2000:]
                i = tail.find(b'"nextLink":"')
                path = None
                if i >= 0:
                    link = tail[i + 12:tail.index(b'"', i + 12)].decode()
                    path = link[link.index("/subscriptions/"):]
        t_usage = time.monotonic() - t0
        c_usage = process_cpu(pid) - c0

        # commerce batches
        events = sim.expected_events()
        bodies = []
        for i in range(0, len(events), a.batch):
            b = json.dumps({"request": events[i:i + a.batch]}, separators=(",", ":"),
                           ensure_ascii=False).encode()
            bodies.append(gzip.compress(b, 1) if a.gzip else b)
        accepted = 0
        c0 = process_cpu(pid)
        t0 = time.monotonic()
        for b in bodies:
            h = {"Authorization": "Bearer " + commerce, "Content-Type": "application/json",
                 "x-ms-requestid": str(uuid.uuid4()), "x-ms-correlationid": str(uuid.uuid4())}
            if a.gzip:
                h["Content-Encoding"] = "gzip"
            conn.request("POST", w["commercePath"], body=b, headers=h)
            r = conn.getresponse()
            doc = json.loads(r.read())
            if r.status != 200:
                raise SystemExit("commerce: %d %s" % (r.status, doc))
            accepted += sum(1 for x in doc["result"] if x["status"] == "Accepted")
        t_commerce = time.monotonic() - t0
        c_commerce = process_cpu(pid) - c0
        conn.close()

        s = sim.summary()
        assert s["comparison"]["ok"], s["comparison"]
        fig = {
            "records": records,
            "pages": pages,
            "pagesPerSecond": round(pages / t_usage, 1),
            "recordsPerSecond": round(records / t_usage),
            "eventsAccepted": accepted,
            "eventsAcceptedPerSecond": round(accepted / t_commerce),
            "simUsageCpuUsPerRecord": s["sim"]["usageCpuUsPerRecord"],
            "simCommerceCpuUsPerEvent": s["sim"]["commerceCpuUsPerEvent"],
            "simProcessCpuUsPerRecord": round(c_usage * 1e6 / max(records, 1), 3),
            "simProcessCpuUsPerEvent": round(c_commerce * 1e6 / max(accepted, 1), 3),
            "simCpuUsTotal": s["sim"]["cpuUs"],
            "gzip": a.gzip,
            "batch": a.batch,
        }
    if a.json:
        print(json.dumps(fig))
    else:
        for k, v in fig.items():
            print("%-26s %s" % (k, v))


if __name__ == "__main__":
    main()
