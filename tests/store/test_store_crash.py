"""Crash safety of the store (ARCHITECTURE.md section 7).

store-torture writes pages (records and the hour's next_link together) and applies batch outcomes
in a loop; this test has it killed with SIGKILL 120 times, and after each kill checks with
`store-torture verify` that the store opens (quick_check), that every page the program reported
committed is complete, that the cursor is never behind a page whose records are present nor ahead
of records, that the per-state counters equal a count by state, and that no key is stored twice
(so no record is in two states), and that each record's additionalInfo (the bulk of its row)
came with it. The runs checkpoint the WAL every few pages instead of every 64 MB, so that many
kills land inside a checkpoint, not only inside a transaction.

The kills are placed by the program's progress, not by this test's clock, so that a slow or busy
machine changes how long the test takes, not what it tests. store-torture kills itself:
  - working rounds: once it has committed 1 to 3 pages, plus a random delay of up to a
    checkpoint's worth of pages. Every one of them hits a program that is putting pages and
    applying outcomes: their number is fixed by construction.
  - start-up rounds (a fixed share: the first two runs on each new database, which create it,
    and one run in the middle, which re-opens a store with a hot WAL): after a random delay from
    the start of main of up to 1.5 times the start-up the previous runs took. How many of them
    landed inside the start-up (before "started") is counted separately.

`verify` opens the store read-write, which checkpoints the WAL away when it closes, so it runs on
a copy of the database and its WAL (without the shared-memory index, which SQLite rebuilds: a
power cut). The original keeps the WAL the kill left, and the next run starts from it, as the
daemon does after a crash; the test checks that the WAL is untouched when the next run starts
and that this run resumes exactly at the cursor the copy showed.

The random seed is printed; AZS_TORTURE_SEED=<n> repeats a run.
"""
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import time

import pytest
from waiting import limit

BUILD = os.environ.get("AZS_BUILD_DIR", "")
TORTURE = os.path.join(BUILD, "tests", "store", "store-torture")
RECORDS = 10  # records per page, passed to both modes
ROUNDS = 120
FRESH_EVERY = 20  # start a new database this often
STARTUP_ROUNDS = (0, 1, 10)  # round % FRESH_EVERY of the start-up rounds: creation, re-opening
CHECKPOINT_PAGES = 8  # a page of 10 records writes several database pages: a checkpoint or so
WAL_HEADER = 32  # bytes; a WAL with a frame is longer


def _run(db, out, *args):
    """Run store-torture run on db with args, its output to the file out; its exit status."""
    with open(out, "w") as f:
        p = subprocess.Popen([TORTURE, "run", str(db), "--records", str(RECORDS),
                              "--checkpoint-pages", str(CHECKPOINT_PAGES), *map(str, args)],
                             stdout=f, stderr=subprocess.STDOUT)
        try:
            return p.wait(timeout=limit(60))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def _parse(path):
    """What a run printed: committed pages, failure lines, the start-up time in microseconds
    (None when it was killed before), and (page, microseconds) where it armed its kill."""
    pages, failures, started, armed = [], [], None, None
    with open(path) as f:
        for line in f:
            if m := re.fullmatch(r"page (\d+) committed\n", line):
                pages.append(int(m.group(1)))
            elif m := re.fullmatch(r"started (\d+)\n", line):
                started = int(m.group(1))
            elif m := re.fullmatch(r"armed after page (\d+) (\d+)\n", line):
                armed = (int(m.group(1)), int(m.group(2)))
            elif line.startswith("FAIL") or line.startswith("enospc"):
                failures.append(line.strip())
    return pages, failures, started, armed


def _wal(db):
    """(size, sha256) of the database's WAL file, or None when there is none."""
    path = f"{db}-wal"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return len(data), hashlib.sha256(data).hexdigest()


def _verify_copy(db, scratch):
    """Verify a copy of db and its WAL in scratch; the CompletedProcess."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    copy = scratch / db.name
    if db.exists():
        shutil.copyfile(db, copy)
    if os.path.exists(f"{db}-wal"):
        shutil.copyfile(f"{db}-wal", f"{copy}-wal")
    return subprocess.run([TORTURE, "verify", str(copy), "--records", str(RECORDS)],
                          capture_output=True, text=True, timeout=limit(60))


def _calibrate(tmp_path):
    """Microseconds for start-up (creating a store, opening one) and for one page's cycle,
    as store-torture reports them here and now; only a starting point for the delays."""
    db = tmp_path / "calibrate.db"
    out = tmp_path / "calibrate.out"
    timing = {}
    for kind, pages in (("fresh", 0), ("existing", 0), ("cycle", 2 * CHECKPOINT_PAGES)):
        rc = _run(db, out, "--pages", pages)
        text = out.read_text()
        assert rc == 0, text
        started = int(re.search(r"^started (\d+)$", text, re.M).group(1))
        finished = int(re.search(r"^finished (\d+)$", text, re.M).group(1))
        timing[kind] = max(started, 1) if pages == 0 else max((finished - started) // pages, 1)
    return timing


@pytest.mark.skipif(not os.access(TORTURE, os.X_OK), reason="store-torture not built")
def test_store_survives_sigkill_at_random_moments(tmp_path):
    seed = int(os.environ.get("AZS_TORTURE_SEED", str(time.time_ns() % 1000000007)))
    print(f"AZS_TORTURE_SEED={seed}")
    rng = random.Random(seed)
    timing = _calibrate(tmp_path)
    print(f"calibration (us): {timing}")
    scratch = tmp_path / "verify"

    startup_rounds = working_rounds = 0
    startup_landed = 0  # start-up kills that came before "started"
    working_kills = 0  # kills after at least one page of this run, armed by the progress
    hot_starts = 0  # runs that started from a WAL a kill left
    db = None
    created = False  # a run on this database finished its start-up
    last = -1  # the last page committed on this database, as the last verify showed
    wal_left = None  # the WAL the last kill left on this database

    for round_ in range(ROUNDS):
        if round_ % FRESH_EVERY == 0:
            db = tmp_path / f"usage-{round_}.db"
            created = False
            last = -1
            wal_left = None
        out = tmp_path / f"run-{round_}.out"

        # the WAL the kill left is still there, untouched by verify, when the next run starts
        assert _wal(db) == wal_left, f"round {round_}: the WAL changed between kill and restart"
        if wal_left is not None and wal_left[0] > WAL_HEADER:
            hot_starts += 1

        startup = round_ % FRESH_EVERY in STARTUP_ROUNDS
        kind = "existing" if created else "fresh"
        if startup:
            startup_rounds += 1
            delay = int(rng.uniform(0, 1.5 * timing[kind]))
            what = f"kill {delay} us after main began ({kind} store)"
            rc = _run(db, out, "--kill-after-us", delay)
        else:
            working_rounds += 1
            after = rng.randint(1, 3)
            delay = 0 if rng.random() < 0.1 else int(
                rng.uniform(0, CHECKPOINT_PAGES * timing["cycle"]))
            what = f"kill {delay} us after {after} pages"
            rc = _run(db, out, "--kill-after-page", after, "--kill-delay-us", delay)

        pages, failures, started, armed = _parse(out)
        assert not failures, f"round {round_} ({what}): the run reported {failures}"
        assert rc == -signal.SIGKILL, (
            f"round {round_} ({what}): exited by itself with {rc}: {out.read_text()}")
        if started is not None:
            created = True
            timing[kind] = max(started, 1)
        if startup:
            if started is None:
                startup_landed += 1
        else:
            # armed by the program's progress: it had committed pages and was still working
            assert armed is not None and len(pages) >= after, (
                f"round {round_} ({what}): killed before it armed: {out.read_text()}")
            working_kills += 1
            timing["cycle"] = max((armed[1] - started) // after, 1)
        if pages:
            # it resumed exactly where the store (with the WAL the kill left) says it stopped
            assert pages[0] == last + 1, f"round {round_}: resumed at {pages[0]} after {last}"
            assert pages == list(range(pages[0], pages[0] + len(pages))), "pages out of order"
            last = pages[-1]

        wal_left = _wal(db)
        v = _verify_copy(db, scratch)
        assert v.returncode == 0, f"round {round_} ({what}): {v.stdout}{v.stderr}"
        m = re.search(r"^cursor (\d+) records (\d+)$", v.stdout, re.M)
        assert m, v.stdout
        cursor, records = int(m.group(1)), int(m.group(2))
        # every page reported committed is before the cursor; at most one more page committed
        # between the store call returning and the line being printed
        assert last + 1 <= cursor <= last + 2, (
            f"round {round_} ({what}): cursor at page {cursor}, last page reported committed "
            f"{last}")
        assert records == cursor * RECORDS
        last = cursor - 1

    print(f"{ROUNDS} kills: {working_rounds} while working, {startup_rounds} in start-up rounds "
          f"({startup_landed} of them before start-up ended); {hot_starts} runs started from a "
          f"hot WAL; last page {last}")
    assert working_kills == working_rounds == ROUNDS - startup_rounds
    # the start-up rounds' delays follow the measured start-up, so some land inside it
    assert startup_landed >= 1, "no kill landed inside the start-up"
    # most kills leave committed pages in the WAL, not yet checkpointed into the database
    assert hot_starts >= working_rounds // 2, f"only {hot_starts} runs started from a hot WAL"
