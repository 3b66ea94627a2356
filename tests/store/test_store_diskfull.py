"""A full disk (ARCHITECTURE.md section 7: SQLITE_FULL pauses collection, the cursor does not move).

As root, mount a 2 MiB tmpfs, put a filler file on it, then let `store-torture fill` put pages
through the store until a write fails. The failure must be a clean -ENOSPC (reported as
"enospc page N", no crash); the store must then verify (quick_check, counters, every committed
page complete, the cursor exactly after the last committed page). Deleting the filler frees
space, and the same process must then put the same page successfully. Skipped, with the reason
printed, when not root or when tmpfs cannot be mounted.
"""
import os
import re
import subprocess

import pytest
from waiting import limit

BUILD = os.environ.get("AZS_BUILD_DIR", "")
TORTURE = os.path.join(BUILD, "tests", "store", "store-torture")
RECORDS = 10
RAW_BYTES = 2000  # the same for every mode: verify recomputes each record's padded additionalInfo


def _verify(db):
    p = subprocess.run([TORTURE, "verify", str(db), "--records", str(RECORDS),
                        "--raw-bytes", str(RAW_BYTES)],
                       capture_output=True, text=True, timeout=limit(60))
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"^cursor (\d+) records (\d+)$", p.stdout, re.M)
    assert m, p.stdout
    return int(m.group(1)), int(m.group(2))


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        print("skipped: needs root to mount a tmpfs")
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"skipped: mount tmpfs failed: {r.stderr.strip()}")
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.skipif(not os.access(TORTURE, os.X_OK), reason="store-torture not built")
def test_store_full_disk_fails_cleanly_and_recovers(small_tmpfs):
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (384 * 1024))
    db = small_tmpfs / "usage.db"

    p = subprocess.Popen([TORTURE, "fill", str(db), "--records", str(RECORDS),
                          "--raw-bytes", str(RAW_BYTES)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if not line.startswith("page "):
                break
        assert lines, "fill printed nothing"
        m = re.fullmatch(r"enospc page (\d+)", lines[-1])
        assert m, f"expected a clean -ENOSPC, got: {lines[-3:]}"
        failed = int(m.group(1))
        committed = [int(l.split()[1]) for l in lines[:-1]]
        assert committed == list(range(failed)), "pages before the failure not all committed"
        assert failed >= 3, "the disk filled before anything could be committed"

        # nothing committed is lost, the failed page left no trace and did not move the cursor
        cursor, records = _verify(db)
        assert cursor == failed
        assert records == failed * RECORDS

        # free space; the same process (like the daemon, which pauses and retries) goes on
        filler.unlink()
        p.stdin.write("retry\n")
        p.stdin.flush()
        rest = p.stdout.read().splitlines()
        assert p.wait(timeout=limit(60)) == 0, rest
        assert rest == [f"page {failed} committed"], rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()

    cursor, records = _verify(db)
    assert cursor == failed + 1
    assert records == (failed + 1) * RECORDS

    # and a later process writes more after growing the file system
    r = subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([TORTURE, "run", str(db), "--records", str(RECORDS), "--raw-bytes",
                        str(RAW_BYTES), "--pages", str(failed + 3)],
                       capture_output=True, text=True, timeout=limit(60))
    assert r.returncode == 0, r.stdout
    cursor, records = _verify(db)
    assert cursor == failed + 3
