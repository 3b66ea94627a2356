"""Crash safety of the store (ARCHITECTURE.md section 7).

store-torture writes pages (records and the hour's next_link together) and applies batch outcomes
in a loop; this test kills it with SIGKILL at random moments, more than a hundred times, and after
each kill checks with `store-torture verify` that the store opens (quick_check), that every page
the program reported committed is complete, that the cursor is never behind a page whose records
are present nor ahead of records, that the per-state counters equal a count by state, and that no
key is stored twice (so no record is in two states), and that each record's raw text (kept in a
table of its own) came with it. The runs checkpoint the WAL every few pages instead of every
64 MB, so that many kills land inside a checkpoint, not only inside a transaction.

The random seed is printed; AZS_TORTURE_SEED=<n> repeats a run.
"""
import os
import random
import re
import signal
import subprocess
import time

import pytest

BUILD = os.environ.get("AZS_BUILD_DIR", "")
TORTURE = os.path.join(BUILD, "tests", "store", "store-torture")
RECORDS = 10  # records per page, passed to both modes
KILLS = 120
FRESH_EVERY = 20  # start a new database this often, so kills also land in creation
BUDGET_SECONDS = 50
CHECKPOINT_PAGES = 8  # a page of 10 records writes several database pages: a checkpoint or so


def _verify(db):
    p = subprocess.run([TORTURE, "verify", str(db), "--records", str(RECORDS)],
                       capture_output=True, text=True, timeout=60)
    return p


def _committed(path):
    """The page numbers a run printed as committed, and any failure line it printed."""
    pages = []
    failures = []
    with open(path) as f:
        for line in f:
            m = re.fullmatch(r"page (\d+) committed\n", line)
            if m:
                pages.append(int(m.group(1)))
            elif line.startswith("FAIL") or line.startswith("enospc"):
                failures.append(line.strip())
    return pages, failures


@pytest.mark.skipif(not os.access(TORTURE, os.X_OK), reason="store-torture not built")
def test_store_survives_sigkill_at_random_moments(tmp_path):
    seed = int(os.environ.get("AZS_TORTURE_SEED", str(time.time_ns() % 1000000007)))
    print(f"AZS_TORTURE_SEED={seed}")
    rng = random.Random(seed)
    started = time.monotonic()
    kills = 0
    kills_mid_run = 0
    db = None
    last = -1  # the last page reported committed on this database

    for round_ in range(KILLS):
        if round_ % FRESH_EVERY == 0:
            db = tmp_path / f"usage-{round_}.db"
            last = -1
        out = tmp_path / f"run-{round_}.out"
        with open(out, "w") as f:
            p = subprocess.Popen([TORTURE, "run", str(db), "--records", str(RECORDS),
                                  "--checkpoint-pages", str(CHECKPOINT_PAGES)],
                                 stdout=f, stderr=subprocess.STDOUT)
            # mostly some tens of milliseconds; sometimes almost at once (open, migration)
            delay = rng.uniform(0, 0.004) if rng.random() < 0.15 else rng.uniform(0.005, 0.06)
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            rc = p.wait(timeout=30)
        pages, failures = _committed(out)
        assert not failures, f"round {round_}: the run reported {failures}"
        assert rc == -signal.SIGKILL, f"round {round_}: exited by itself with {rc}: {out.read_text()}"
        kills += 1
        if pages:
            kills_mid_run += 1
            assert pages[0] <= last + 2, f"round {round_}: resumed at {pages[0]} after {last}"
            assert pages == list(range(pages[0], pages[0] + len(pages))), "pages out of order"
            last = pages[-1]

        v = _verify(db)
        assert v.returncode == 0, f"round {round_} (delay {delay:.4f}s): {v.stdout}{v.stderr}"
        m = re.search(r"^cursor (\d+) records (\d+)$", v.stdout, re.M)
        assert m, v.stdout
        cursor, records = int(m.group(1)), int(m.group(2))
        # every page reported committed is before the cursor; at most one more page committed
        # between the store call returning and the line being printed
        assert last + 1 <= cursor <= last + 2, (
            f"round {round_}: cursor at page {cursor}, last page reported committed {last}")
        assert records == cursor * RECORDS
        last = cursor - 1
        assert time.monotonic() - started < BUDGET_SECONDS + 30, "torture too slow"

    print(f"{kills} kills, {kills_mid_run} after at least one page, last page {last}, "
          f"{time.monotonic() - started:.1f}s")
    assert kills >= 100
    # the kills must have hit a working program, not only start-up
    assert kills_mid_run >= KILLS // 2
