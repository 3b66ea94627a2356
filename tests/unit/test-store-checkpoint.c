/*
 * The store's checkpointer thread (lib/store.c) on a real file whose writes fail: a VFS that
 * wraps SQLite's own (registered as the default, so both of the store's connections use it) makes
 * every write into the database file fail with SQLITE_IOERR_WRITE while the fault is on, which is
 * what a dying disk does to checkpoints (the commits, into the WAL, still pass). The log's
 * journal seam collects what the thread logs, and the clock seam's monotonic clock stands still
 * unless the test moves it. Asserted: the first failed round is logged at once, from the thread,
 * as a warning with ERRNO and the file's name; the rounds failing after it within the minute log
 * nothing more; a round failing a minute after the last line logs one again; rounds that succeed
 * within a minute of the last warning log nothing, the first one after it one notice; a failure
 * after the notice is logged at once. The test commits to make the thread run (each commit past the
 * mark asks for a round) until the thread's write fails, then waits for the entry; the waits end
 * in a failure after a generous limit.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "log.h"
#include "macro.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define HOUR        INT64_C(3600)
#define T0          INT64_C(1793523600) /* 2026-11-01T09:00:00Z */
#define MAX_COMMITS 20000               /* a bound, should the thread never run */
#define WAIT_SEC    120                 /* a bound, should an entry never come */

/* What the fault VFS and the journal seam saw; under lock. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t changed;
	pthread_t test_thread;
	bool fault;             /* fail every write into the database file */
	unsigned thread_failed; /* writes of another thread (the checkpointer's) failed */
	unsigned thread_wrote;  /* writes of another thread that went through */
	char **entries;         /* "PRIORITY=n|ERRNO=n|AZS_MODULE=m|MESSAGE=..." */
	size_t n_entries;
} seen = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .changed = PTHREAD_COND_INITIALIZER,
};

/* A file of the fault VFS: SQLite's file follows it. */
struct fault_file {
	sqlite3_file base;
	sqlite3_file *real;
	bool main_db;
};

/* The monotonic clock of the seam: read by the checkpointer thread, moved by the test. */
static _Atomic uint64_t fake_monotonic = 1000 * USEC_PER_SEC;

static uint64_t
clock_realtime(void *userdata)
{
	struct timespec ts;

	(void)userdata;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t
clock_monotonic(void *userdata)
{
	(void)userdata;
	return atomic_load(&fake_monotonic);
}

static const struct timeutil_clock test_clock = {
        .realtime_usec = clock_realtime,
        .monotonic_usec = clock_monotonic,
};

static sqlite3_vfs *real_vfs;
static sqlite3_vfs fault_vfs;

static sqlite3_file *
real_of(sqlite3_file *f)
{
	return ((struct fault_file *)f)->real;
}

static int
f_close(sqlite3_file *f)
{
	return real_of(f)->pMethods->xClose(real_of(f));
}

static int
f_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
	return real_of(f)->pMethods->xRead(real_of(f), buf, n, off);
}

static int
f_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
	struct fault_file *ff = (struct fault_file *)f;

	if (ff->main_db) {
		pthread_mutex_lock(&seen.lock);
		if (seen.fault) {
			if (!pthread_equal(pthread_self(), seen.test_thread))
				seen.thread_failed++;
			pthread_cond_broadcast(&seen.changed);
			pthread_mutex_unlock(&seen.lock);
			return SQLITE_IOERR_WRITE;
		}
		if (!pthread_equal(pthread_self(), seen.test_thread))
			seen.thread_wrote++;
		pthread_mutex_unlock(&seen.lock);
	}
	return ff->real->pMethods->xWrite(ff->real, buf, n, off);
}

static int
f_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	return real_of(f)->pMethods->xTruncate(real_of(f), size);
}

static int
f_sync(sqlite3_file *f, int flags)
{
	return real_of(f)->pMethods->xSync(real_of(f), flags);
}

static int
f_file_size(sqlite3_file *f, sqlite3_int64 *ret)
{
	return real_of(f)->pMethods->xFileSize(real_of(f), ret);
}

static int
f_lock(sqlite3_file *f, int level)
{
	return real_of(f)->pMethods->xLock(real_of(f), level);
}

static int
f_unlock(sqlite3_file *f, int level)
{
	return real_of(f)->pMethods->xUnlock(real_of(f), level);
}

static int
f_check_reserved_lock(sqlite3_file *f, int *ret)
{
	return real_of(f)->pMethods->xCheckReservedLock(real_of(f), ret);
}

static int
f_file_control(sqlite3_file *f, int op, void *arg)
{
	return real_of(f)->pMethods->xFileControl(real_of(f), op, arg);
}

static int
f_sector_size(sqlite3_file *f)
{
	return real_of(f)->pMethods->xSectorSize(real_of(f));
}

static int
f_device_characteristics(sqlite3_file *f)
{
	return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}

static int
f_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **ret)
{
	return real_of(f)->pMethods->xShmMap(real_of(f), region, size, extend, ret);
}

static int
f_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
	return real_of(f)->pMethods->xShmLock(real_of(f), offset, n, flags);
}

static void
f_shm_barrier(sqlite3_file *f)
{
	real_of(f)->pMethods->xShmBarrier(real_of(f));
}

static int
f_shm_unmap(sqlite3_file *f, int delete_flag)
{
	return real_of(f)->pMethods->xShmUnmap(real_of(f), delete_flag);
}

static int
f_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **ret)
{
	return real_of(f)->pMethods->xFetch(real_of(f), off, n, ret);
}

static int
f_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
	return real_of(f)->pMethods->xUnfetch(real_of(f), off, p);
}

static const sqlite3_io_methods fault_methods = {
        .iVersion = 3,
        .xClose = f_close,
        .xRead = f_read,
        .xWrite = f_write,
        .xTruncate = f_truncate,
        .xSync = f_sync,
        .xFileSize = f_file_size,
        .xLock = f_lock,
        .xUnlock = f_unlock,
        .xCheckReservedLock = f_check_reserved_lock,
        .xFileControl = f_file_control,
        .xSectorSize = f_sector_size,
        .xDeviceCharacteristics = f_device_characteristics,
        .xShmMap = f_shm_map,
        .xShmLock = f_shm_lock,
        .xShmBarrier = f_shm_barrier,
        .xShmUnmap = f_shm_unmap,
        .xFetch = f_fetch,
        .xUnfetch = f_unfetch,
};

static int
v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *ret_flags)
{
	struct fault_file *ff = (struct fault_file *)f;
	int rc;

	(void)vfs;
	ff->real = (sqlite3_file *)(ff + 1);
	ff->main_db = flags & SQLITE_OPEN_MAIN_DB;
	rc = real_vfs->xOpen(real_vfs, name, ff->real, flags, ret_flags);
	/* SQLite calls xClose only when pMethods is set: only on success, as the real file */
	ff->base.pMethods = ff->real->pMethods ? &fault_methods : NULL;
	return rc;
}

static int
v_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
	(void)vfs;
	return real_vfs->xDelete(real_vfs, name, sync_dir);
}

static int
v_access(sqlite3_vfs *vfs, const char *name, int flags, int *ret)
{
	(void)vfs;
	return real_vfs->xAccess(real_vfs, name, flags, ret);
}

static int
v_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
	(void)vfs;
	return real_vfs->xFullPathname(real_vfs, name, n, out);
}

static int
v_randomness(sqlite3_vfs *vfs, int n, char *out)
{
	(void)vfs;
	return real_vfs->xRandomness(real_vfs, n, out);
}

static int
v_sleep(sqlite3_vfs *vfs, int usec)
{
	(void)vfs;
	return real_vfs->xSleep(real_vfs, usec);
}

static int
v_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *ret)
{
	(void)vfs;
	return real_vfs->xCurrentTimeInt64(real_vfs, ret);
}

static int
v_get_last_error(sqlite3_vfs *vfs, int n, char *out)
{
	(void)vfs;
	return real_vfs->xGetLastError(real_vfs, n, out);
}

/* Collect an entry the log hands to the journal. */
static int
capture_sendv(void *userdata, const char *code_file, const char *code_line, const char *code_func,
              const struct iovec *iov, int n)
{
	const char *keys[] = {"PRIORITY=", "ERRNO=", "AZS_MODULE=", "MESSAGE="};
	char *entry = xstrdup("");

	(void)userdata, (void)code_file, (void)code_line, (void)code_func;
	for (size_t k = 0; k < ARRAY_SIZE(keys); k++)
		for (int i = 0; i < n; i++)
			if (strncmp(iov[i].iov_base, keys[k], strlen(keys[k])) == 0) {
				char *next =
				        xasprintf("%s%s%.*s", entry, *entry ? "|" : "",
				                  (int)iov[i].iov_len, (char *)iov[i].iov_base);
				free(entry);
				entry = next;
			}
	pthread_mutex_lock(&seen.lock);
	seen.entries = xreallocarray(seen.entries, seen.n_entries + 1, sizeof(*seen.entries));
	seen.entries[seen.n_entries++] = entry;
	pthread_cond_broadcast(&seen.changed);
	pthread_mutex_unlock(&seen.lock);
	return 0;
}

static const struct log_journal capture = {.sendv = capture_sendv};

/* Entries holding needle; under seen.lock. */
static size_t
entries_with_locked(const char *needle)
{
	size_t n = 0;

	for (size_t i = 0; i < seen.n_entries; i++)
		if (strstr(seen.entries[i], needle))
			n++;
	return n;
}

/* Wait for n entries holding needle; fails after WAIT_SEC. */
static void
wait_for_entries(const char *needle, size_t n)
{
	struct timespec deadline;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += WAIT_SEC;
	pthread_mutex_lock(&seen.lock);
	while (entries_with_locked(needle) < n)
		if (pthread_cond_timedwait(&seen.changed, &seen.lock, &deadline) == ETIMEDOUT) {
			pthread_mutex_unlock(&seen.lock);
			fail_msg("not %zu entries with \"%s\" after %d s", n, needle, WAIT_SEC);
		}
	pthread_mutex_unlock(&seen.lock);
}

static unsigned
seen_count(const unsigned *counter)
{
	unsigned n;

	pthread_mutex_lock(&seen.lock);
	n = *counter;
	pthread_mutex_unlock(&seen.lock);
	return n;
}

static void
set_fault(bool on)
{
	pthread_mutex_lock(&seen.lock);
	seen.fault = on;
	pthread_mutex_unlock(&seen.lock);
}

static size_t
entries_with(const char *needle)
{
	size_t n;

	pthread_mutex_lock(&seen.lock);
	n = entries_with_locked(needle);
	pthread_mutex_unlock(&seen.lock);
	return n;
}

/* One commit into the WAL: with the WAL at checkpoint_pages or more, it asks for a round. */
static void
commit(struct store *s, int64_t *hour, unsigned i)
{
	if (i == MAX_COMMITS)
		fail_msg("%u commits and the checkpointer did not get there", i);
	assert_int_equal(store_hour_schedule(s, (*hour)++ * HOUR, "", T0), 0);
}

/* Commit until the thread's writes failed target times in all. */
static void
commit_until_failed(struct store *s, int64_t *hour, unsigned target)
{
	for (unsigned i = 0; seen_count(&seen.thread_failed) < target; i++)
		commit(s, hour, i);
}

/* Commit until the thread's writes went through target times in all. */
static void
commit_until_wrote(struct store *s, int64_t *hour, unsigned target)
{
	for (unsigned i = 0; seen_count(&seen.thread_wrote) < target; i++)
		commit(s, hour, i);
}

/* Commit until n entries hold needle. */
static void
commit_until_entries(struct store *s, int64_t *hour, const char *needle, size_t n)
{
	for (unsigned i = 0; entries_with(needle) < n; i++)
		commit(s, hour, i);
}

static void
test_checkpoint_failure_logged_once_and_recovery(_unused_ void **state)
{
	struct store_options options = {.checkpoint_pages = 4};
	char dir[] = "/tmp/test-store-checkpoint-XXXXXX", path[128], file[160], expect[320];
	const char *suffix[] = {"", "-wal", "-shm"};
	_cleanup_free_ char *err = NULL;
	struct store *s = NULL;
	int64_t hour = T0 / HOUR;
	unsigned failed;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/usage.db", dir);
	options.path = path;
	if (store_open(&options, &s, &err) < 0)
		fail_msg("store_open: %s", err);

	set_fault(true);
	/* the first failed round: logged at once, by the thread */
	commit_until_failed(s, &hour, 1);
	wait_for_entries("failed (", 1);
	/* three rounds more fail within the minute: the clock has not moved */
	failed = seen_count(&seen.thread_failed);
	commit_until_failed(s, &hour, failed + 3);
	/* a minute later, the next failed round is logged again */
	atomic_fetch_add(&fake_monotonic, 60 * USEC_PER_SEC);
	failed = seen_count(&seen.thread_failed);
	commit_until_failed(s, &hour, failed + 1);
	wait_for_entries("failed (", 2);

	/*
	 * the disk is well again, but the last warning is less than a minute old: rounds succeed
	 * (64 writes of the thread span several of them, each reported before the next begins)
	 * and say nothing yet, so that a failure right after a notice could not go unlogged
	 */
	set_fault(false);
	commit_until_wrote(s, &hour, seen_count(&seen.thread_wrote) + 64);
	assert_int_equal(entries_with("succeed again"), 0);
	/* a minute after the last warning, the next good round says so */
	atomic_fetch_add(&fake_monotonic, 60 * USEC_PER_SEC);
	commit_until_entries(s, &hour, "succeed again", 1);
	/* and a failure after that notice is logged at once */
	set_fault(true);
	failed = seen_count(&seen.thread_failed);
	commit_until_failed(s, &hour, failed + 1);
	wait_for_entries("failed (", 3);
	set_fault(false);

	/* what the thread logged: entries are written in the order of its rounds, so the notice
	 * being there means every failed round before it was reported */
	pthread_mutex_lock(&seen.lock);
	for (size_t i = 0; i < seen.n_entries; i++)
		print_message("entry: %s\n", seen.entries[i]);
	assert_int_equal(entries_with_locked("failed ("), 3);
	assert_int_equal(entries_with_locked("succeed again"), 1);
	snprintf(
	        expect, sizeof(expect),
	        "PRIORITY=%d|ERRNO=%d|AZS_MODULE=store|MESSAGE=checkpoint of %s failed (1 in a row)",
	        LOG_WARNING, EIO, path);
	assert_int_equal(entries_with_locked(expect),
	                 2); /* the first, and the one after the notice */
	assert_int_equal(entries_with_locked("disk I/O error"), 3);
	snprintf(expect, sizeof(expect), "PRIORITY=%d|AZS_MODULE=store|MESSAGE=checkpoints of %s",
	         LOG_NOTICE, path);
	assert_int_equal(entries_with_locked(expect), 1);
	assert_int_equal(entries_with_locked("(1 in a row)"), 2);
	pthread_mutex_unlock(&seen.lock);

	store_free(s);
	for (size_t i = 0; i < ARRAY_SIZE(suffix); i++) {
		snprintf(file, sizeof(file), "%s%s", path, suffix[i]);
		unlink(file);
	}
	rmdir(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_checkpoint_failure_logged_once_and_recovery),
	};
	int r;

	seen.test_thread = pthread_self();
	real_vfs = sqlite3_vfs_find(NULL);
	if (!real_vfs)
		return EXIT_FAILURE;
	fault_vfs = (sqlite3_vfs){
	        .iVersion = 2,
	        .szOsFile = (int)sizeof(struct fault_file) + real_vfs->szOsFile,
	        .mxPathname = real_vfs->mxPathname,
	        .zName = "azs-fault",
	        .xOpen = v_open,
	        .xDelete = v_delete,
	        .xAccess = v_access,
	        .xFullPathname = v_full_pathname,
	        .xRandomness = v_randomness,
	        .xSleep = v_sleep,
	        .xCurrentTimeInt64 = v_current_time_int64,
	        .xGetLastError = v_get_last_error,
	};
	sqlite3_vfs_register(&fault_vfs, 1);
	timeutil_set_clock(&test_clock);
	log_open(LOG_TARGET_JOURNAL);
	log_set_journal(&capture);

	r = cmocka_run_group_tests(tests, NULL, NULL);

	log_set_journal(NULL);
	timeutil_set_clock(NULL);
	sqlite3_vfs_unregister(&fault_vfs);
	for (size_t i = 0; i < seen.n_entries; i++)
		free(seen.entries[i]);
	free(seen.entries);
	return r;
}
