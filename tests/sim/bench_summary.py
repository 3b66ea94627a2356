#!/usr/bin/python3
"""What does /_sim/ledger/summary cost with a full ledger?

Starts a simulator with a scenario (default scenarios/bench.json: 168 hours of 5,000 records),
posts every expected Commerce event hour by hour in batches of 1,000 over one keep-alive HTTPS
connection, written as the daemon writes them (compact UTF-8 JSON; --escaped: Python's default
spaced, ASCII-escaped JSON, which the simulator cannot take as the records on arrival), then asks
for the summary a few times, changes the registration (the same tenant put again: every row is
compared again, the full comparison) and asks twice more. Prints the wall and CPU time of each
call, the simulator's peak and current resident memory (VmHWM, VmRSS from /proc) and its CPU
figures, then checks two targets, PASS or FAIL each (exit 0 when both pass):
  - an unchanged ledger is cheap to summarise again: each repeat costs under a third of the CPU
    time of the full comparison;
  - summaries stay out of cpuUsPerRecord: over the repeats and the full comparison after the
    registration change, the CPU that figure gains is under half the summaries' CPU time.
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
    """A memory figure of /proc/PID/status (VmRSS, VmHWM, ...) in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=os.path.join(HERE, "scenarios", "bench.json"))
    ap.add_argument("--hours", type=int, help="override the scenario's hour count")
    ap.add_argument("--calls", type=int, default=3,
                    help="summaries to ask for before the registration change (at least 2)")
    ap.add_argument("--escaped", action="store_true",
                    help="post events as Python writes them by default (spaced, \\u escapes)")
    a = ap.parse_args()
    if a.calls < 2:
        ap.error("--calls must be at least 2: the first summary and a repeat")

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
                if a.escaped:
                    body = json.dumps({"request": events[i:i + 1000]}).encode()
                else:
                    body = json.dumps({"request": events[i:i + 1000]}, separators=(",", ":"),
                                      ensure_ascii=False).encode()
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
        runs = []
        prev_cpu = start["summaryCpuUs"]

        def summary(label):
            nonlocal prev_cpu
            t0 = time.monotonic()
            s = call("GET", "/_sim/ledger/summary")
            dt = time.monotonic() - t0
            m = s["sim"]
            cpu = m["summaryCpuUs"] - prev_cpu
            prev_cpu = m["summaryCpuUs"]
            print("%s: %.3f s, CPU %.1f ms, hours compared %s, ok %s, accepted %d, VmHWM %d MiB, "
                  "VmRSS %d MiB, cpuUsPerRecord %s, summaryCpuUs %s"
                  % (label, dt, cpu / 1000, m.get("hoursCompared", "-"), s["comparison"]["ok"],
                     s["accepted"], proc_kib(pid, "VmHWM") // 1024,
                     proc_kib(pid, "VmRSS") // 1024, m["cpuUsPerRecord"], m["summaryCpuUs"]))
            runs.append((cpu, m))

        for i in range(a.calls):
            summary("summary %d" % (i + 1))
        t = next(t for t in w["tenants"] if t.get("customerSubscription"))
        reg = (w["registration"]["id"] + "/customerSubscriptions/%s?api-version=2017-06-01"
               % t["customerSubscription"])
        r = sim.request("PUT", reg, body={"properties": {"tenantId": t["tenantId"]}},
                        token=sim.token(w["audiences"]["arm"]), timeout=60)
        if r.status not in (200, 201):
            raise SystemExit("PUT %s: %d %s" % (reg, r.status, r.body[:300]))
        summary("summary %d, after a registration change" % (a.calls + 1))
        summary("summary %d, a repeat" % (a.calls + 2))

        status = 0
        full = runs[a.calls][0]
        repeat = max(cpu for cpu, _ in runs[1:a.calls] + runs[a.calls + 1:])
        verdict = "PASS" if repeat * 3 < full else "FAIL"
        status |= verdict == "FAIL"
        print("%s repeat summaries: at most %.1f ms CPU each, the full comparison %.1f ms (%.0fx)"
              % (verdict, repeat / 1000, full / 1000, full / max(repeat, 1)))
        after_first, last = runs[0][1], runs[-1][1]
        n = last["eventsReceived"] + last["recordsServed"]
        work = (last["cpuUsPerRecord"] - after_first["cpuUsPerRecord"]) * n
        spent = last["summaryCpuUs"] - after_first["summaryCpuUs"]
        verdict = "PASS" if work < spent / 2 else "FAIL"
        status |= verdict == "FAIL"
        print("%s cpuUsPerRecord gained %.1f ms over %d records and events while the summaries "
              "after the first took %.1f ms" % (verdict, work / 1000, n, spent / 1000))
        print("bench summary: %s" % ("FAIL" if status else "PASS"))
        conn.close()
        return status


if __name__ == "__main__":
    sys.exit(main())
