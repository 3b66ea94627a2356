/*
 * The durable store: one SQLite file in WAL mode holding the usage records and their state
 * machine, the collection schedule, the subscription and registration caches and the record
 * history (ARCHITECTURE.md section 7). lib/store*.c are the only files that include sqlite3.h.
 *
 * This file opens and checks the file, runs the migrations, and holds what the other store files
 * share: transactions, statements, errors, the meta table and the counts. The layout is explained
 * in store-private.h, the SQL is in store-sql.c; store-record.c writes and reads single records,
 * store-collect.c writes collected pages, store-claim.c claims batches, store-forward.c applies
 * their outcomes and prunes, store-cache.c keeps the subscription and registration caches,
 * store-admin.c answers azs-usagectl.
 *
 * Every public operation is one transaction; write transactions start with BEGIN IMMEDIATE and
 * roll back on any error, so a failed operation changes nothing. Counts by state live in a small
 * table and are changed by the same transaction that moves records, from deltas collected while
 * it runs (no trigger per row, no COUNT(*) scan). Statements are prepared once and cached. The
 * one thing done off the caller's thread is copying the WAL into the file: a checkpointer thread
 * with its own connection (below), so that the daemon's loop never waits for it.
 *
 * Why the layout (records written once, a batch row for the state of a claimed run, narrow state
 * rows for the exceptions): the earlier layout kept the state in the record row, so a record's
 * life wrote its ~700-byte row three times and touched six indexes; measured with bench-store,
 * 200,000 records, it cost 2.8 times a bare insert loop of the same bytes. Now a record is
 * written once (its row and one unique index entry), claimed and acknowledged by one batch row
 * per 500 records; see scripts/bench store for today's figures.
 */
#define LOG_MODULE "store"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "decimal.h"
#include "hash.h"
#include "log.h"
#include "macro.h"
#include "store-private.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define STORE_APPLICATION_ID  1096438613 /* 0x415a5355, "AZSU" */
#define STRINGIFY_(x)         #x
#define STRINGIFY(x)          STRINGIFY_(x)
#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_PAGE_SIZE       16384 /* for new files */
#define STORE_CHECKPOINT      4000  /* WAL pages (64 MB) that start a checkpoint */
/* the checkpointer's passes at most before the loop copies the rest, and the pages committed
 * during a pass below which it stops early (4 MiB: what the loop copies is about as little) */
#define CHECKPOINT_PASSES 6
#define CHECKPOINT_LITTLE 256
/* a WAL this many times the checkpoint size is checkpointed by the loop itself */
#define CHECKPOINT_HARD 4
/* the newest bytes of the file whose kernel cache the checkpointer keeps, and the records not
 * yet claimed up to which it gives back the rest (their rows fit in those bytes) */
#define CHECKPOINT_KEEP_CACHE   ((off_t)64 << 20)
#define CHECKPOINT_DROP_BACKLOG 40000
/* while the checkpointer's rounds fail, a failure is logged at most this often */
#define CHECKPOINT_LOG_EVERY_USEC (60 * USEC_PER_SEC)

/* migrations[v] takes a file from version v to v + 1 */
static const char *const *const migrations[] = {store_schema_v1};
_Static_assert(ARRAY_SIZE(migrations) == STORE_SCHEMA_VERSION, "one migration per version");

static const char *const state_names[_STORE_STATE_MAX] = {
        [STORE_PENDING] = "pending",     [STORE_HELD] = "held", [STORE_INFLIGHT] = "inflight",
        [STORE_FORWARDED] = "forwarded", [STORE_DEAD] = "dead", [STORE_QUARANTINED] = "quarantined",
        [STORE_CONFLICT] = "conflict",
};

static int tx_close(struct store *s, int r);
static void decimal_sum_step(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static void decimal_sum_final(sqlite3_context *ctx);

DEFINE_TRIVIAL_CLEANUP_FUNC(struct store *, store_free)

/* The value of a lower-case hex digit; above 15 for any other byte (every key passes here). */
static inline unsigned
hex_value(char c)
{
	unsigned u = (unsigned char)c;

	return u <= '9' ? u - '0' : u - 'a' + 10;
}

/* Name of a state. */
const char *
store_state_to_string(enum store_state s)
{
	if (s < 0 || s >= _STORE_STATE_MAX)
		return NULL;
	return state_names[s];
}

/* State of a name, or _STORE_STATE_INVALID. */
enum store_state
store_state_from_string(const char *s)
{
	if (!s)
		return _STORE_STATE_INVALID;
	for (int i = 0; i < _STORE_STATE_MAX; i++)
		if (streq(s, state_names[i]))
			return (enum store_state)i;
	return _STORE_STATE_INVALID;
}

/* Set *ret_error to a formatted message when the caller asked for one. */
static _printf_(2, 3) void open_error(char **ret_error, const char *format, ...)
{
	va_list ap;

	if (!ret_error)
		return;
	va_start(ap, format);
	*ret_error = xvasprintf(format, ap);
	va_end(ap);
}

/* Run one pragma that returns a single integer. */
static int
pragma_int(struct store *s, const char *sql, int64_t *ret)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return store_fail(s, rc);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		int r = rc == SQLITE_DONE ? -EIO : store_fail(s, rc);
		sqlite3_finalize(st);
		return r;
	}
	*ret = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return 0;
}

/* Run one quick_check statement: 0 when it answers "ok", -EBADMSG with the first problem. */
static int
run_quick_check(struct store *s, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int rc, r = 0;

	rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return store_fail(s, rc);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *t = (const char *)sqlite3_column_text(st, 0);
		if (!t || !streq(t, "ok")) {
			free(s->errmsg);
			s->errmsg = xstrdup(t ? t : "quick_check failed");
			r = -EBADMSG;
		}
	} else
		r = rc == SQLITE_DONE ? -EIO : store_fail(s, rc);
	sqlite3_finalize(st);
	return r;
}

/*
 * The start check reads the records table at its two working edges: its newest rows (where the
 * next collected page goes) and the first ones after the claim head (what the next claims read).
 * max() of every text column reads each row whole, overflow pages included, so that SQLite walks
 * to every page of the rows and parses their cells. The newest rows are then looked up in their
 * index as the next page's uniqueness check will (keys are random within an hour: each lookup
 * reads another leaf page, so fewer of them). Each query answers the number of problems found.
 */
#define EDGE_ROWS   "1000"
#define EDGE_LOOKUP "100"
#define EDGE_READ                                                                          \
	"SELECT 0, max(key), max(subscription_id), max(meter_id), max(quantity),"          \
	" max(resource_uri), max(location), max(tags), max(additional_info), max(reason)," \
	" max(raw) FROM "

static const struct {
	const char *sql;
	const char *problem; /* what a count above 0 means */
} edge_queries[] = {
        {EDGE_READ "(SELECT * FROM records ORDER BY id DESC LIMIT " EDGE_ROWS ")", NULL},
        {EDGE_READ "(SELECT * FROM records WHERE id > COALESCE((SELECT value FROM meta"
                   " WHERE key = 'claimed_through'), 0) ORDER BY id LIMIT " EDGE_ROWS ")",
         NULL},
        {"SELECT count(*) FROM (SELECT id, reported_hour, key, kind FROM records"
         " ORDER BY id DESC LIMIT " EDGE_LOOKUP ") n WHERE NOT EXISTS (SELECT 1 FROM records r"
         " INDEXED BY records_key WHERE n.kind < 2 AND r.reported_hour = n.reported_hour"
         " AND r.key = n.key AND r.kind < 2 AND r.id = n.id) AND NOT EXISTS (SELECT 1"
         " FROM records r INDEXED BY records_aside WHERE n.kind >= 2"
         " AND r.reported_hour = n.reported_hour AND r.key = n.key AND r.kind >= 2"
         " AND r.id = n.id)",
         "of the newest records are missing from their index"},
};

/* Run an edge query (above). */
static int
edge_check(struct store *s, const char *sql, const char *problem)
{
	sqlite3_stmt *st = NULL;
	int64_t n;
	int rc, r = 0;

	rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return store_fail(s, rc);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW)
		r = rc == SQLITE_DONE ? -EIO : store_fail(s, rc);
	else if ((n = sqlite3_column_int64(st, 0)) > 0)
		r = store_fail_msg(s, -EBADMSG, "%" PRId64 " %s", n, problem);
	sqlite3_finalize(st);
	return r;
}

/*
 * The check at every open, which reads of the records only their edges (issue 13: ready in under a
 * second with 10,000,000 records; a whole-file quick_check reads every page, about 1 s per million
 * records from the page cache and 8 s per million from the disk). PRAGMA quick_check of the schema
 * with the freelist and of every table but records with its indexes (the schedule, batches, state
 * rows, caches, history: rows per batch of 500 records, per exception or per operator action), then
 * the edges of the records table (above). The batches grow with the records kept, a five-hundredth
 * as many rows: 14,000 batches took 8 ms from the page cache and 30-60 ms from the disk, so some
 * 200,000 (100,000,000 records kept) would take about 0.1 and up to 0.9 s. Damage elsewhere in the
 * records table or in the index pages of older hours is found when an operation reads those pages
 * (it fails with -EBADMSG and changes nothing), or by the whole check, store_quick_check(), which
 * an operator runs.
 */
static int
bounded_check(struct store *s, int64_t version)
{
	sqlite3_stmt *st = NULL;
	int rc, r;

	r = run_quick_check(s, "PRAGMA quick_check(sqlite_schema)"); /* with the freelist */
	if (r < 0)
		return r;
	rc = sqlite3_prepare_v2(s->db,
	                        "SELECT name FROM sqlite_schema WHERE type = 'table'"
	                        " AND name <> 'records' AND name NOT LIKE 'sqlite%' ORDER BY name",
	                        -1, &st, NULL);
	if (rc != SQLITE_OK)
		return store_fail(s, rc);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		char *sql = sqlite3_mprintf("PRAGMA quick_check(\"%w\")",
		                            (const char *)sqlite3_column_text(st, 0));

		r = sql ? run_quick_check(s, sql) : -ENOMEM;
		sqlite3_free(sql);
		if (r < 0)
			break;
	}
	if (r >= 0 && rc != SQLITE_DONE)
		r = store_fail(s, rc);
	sqlite3_finalize(st);
	/* an older layout's records are read by its migration */
	for (size_t i = 0;
	     r >= 0 && version == STORE_SCHEMA_VERSION && i < ARRAY_SIZE(edge_queries); i++)
		r = edge_check(s, edge_queries[i].sql, edge_queries[i].problem);
	return r;
}

/* The whole-file check (see store.h). */
int
store_quick_check(struct store *s)
{
	return run_quick_check(s, "PRAGMA quick_check");
}

/* Bring the schema from version `from` to STORE_SCHEMA_VERSION in one transaction. */
static int
migrate(struct store *s, int64_t from)
{
	char *err = NULL;
	int64_t v = from;
	int rc, r;

	r = store_exec(s, STMT_BEGIN);
	if (r < 0)
		return r;
	/* another process may have migrated between our check and the lock */
	r = pragma_int(s, "PRAGMA user_version", &v);
	if (r < 0)
		goto rollback;
	if (v >= STORE_SCHEMA_VERSION) {
		(void)store_exec(s, STMT_ROLLBACK);
		return v > STORE_SCHEMA_VERSION
		               ? store_fail_msg(s, -EPROTO, "migrated by a newer build")
		               : 0;
	}
	if (v == 0) {
		rc = sqlite3_exec(s->db, "PRAGMA application_id = " STRINGIFY(STORE_APPLICATION_ID),
		                  NULL, NULL, &err);
		if (rc != SQLITE_OK)
			goto sql_error;
	}
	for (; v < STORE_SCHEMA_VERSION; v++)
		for (const char *const *sql = migrations[v]; *sql; sql++) {
			rc = sqlite3_exec(s->db, *sql, NULL, NULL, &err);
			if (rc != SQLITE_OK)
				goto sql_error;
		}
	rc = sqlite3_exec(s->db, "PRAGMA user_version = " STRINGIFY(STORE_SCHEMA_VERSION), NULL,
	                  NULL, &err);
	if (rc != SQLITE_OK)
		goto sql_error;
	r = store_exec(s, STMT_COMMIT);
	if (r < 0)
		goto rollback;
	return 0;

sql_error:
	r = store_translate(rc, sqlite3_system_errno(s->db));
	free(s->errmsg);
	s->errmsg = xstrdup(err ? err : sqlite3_errstr(rc));
	sqlite3_free(err);
rollback:
	if (!sqlite3_get_autocommit(s->db))
		(void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	return r;
}

/* Check that an opened file is ours and sound, and bring it to the current schema. */
static int
open_check(struct store *s, char **ret_error)
{
	int64_t version = 0, app_id = 0, n_objects = 0;
	int r;

	/* reads only the header: a text file or garbage fails here with NOTADB */
	r = pragma_int(s, "PRAGMA user_version", &version);
	if (r < 0)
		goto bad_file;
	r = pragma_int(s, "PRAGMA application_id", &app_id);
	if (r < 0)
		goto bad_file;
	r = pragma_int(s, "SELECT count(*) FROM sqlite_schema", &n_objects);
	if (r < 0)
		goto bad_file;
	if (app_id != STORE_APPLICATION_ID && (app_id != 0 || version != 0 || n_objects != 0)) {
		open_error(ret_error,
		           "%s: not an azs-usaged database (application id %" PRId64
		           ", schema version %" PRId64 "); refusing to touch it",
		           s->path, app_id, version);
		return -EBADMSG;
	}
	if (version > STORE_SCHEMA_VERSION) {
		open_error(ret_error,
		           "%s: schema version %" PRId64 " was written by a newer azs-usaged (this "
		           "build knows version %d); refusing to touch it",
		           s->path, version, STORE_SCHEMA_VERSION);
		return -EPROTO;
	}
	r = s->skip_quick_check ? 0 : bounded_check(s, version);
	if (r < 0)
		goto bad_file;

	if (version < STORE_SCHEMA_VERSION && s->readonly) {
		open_error(
		        ret_error,
		        version == 0
		                ? "%s: the database is not initialised yet; start azs-usaged "
		                  "once to create it"
		                : "%s: the database has an older schema; start azs-usaged once to "
		                  "migrate it",
		        s->path);
		return -ESTALE;
	}
	if (s->readonly)
		return 0;

	if (version == 0 && n_objects == 0) {
		/* rows are over 1 KiB: bigger pages split less (measured: ~30 % faster puts) */
		int rc = sqlite3_exec(s->db, "PRAGMA page_size = " STRINGIFY(STORE_PAGE_SIZE), NULL,
		                      NULL, NULL);
		if (rc != SQLITE_OK) {
			r = store_fail(s, rc);
			goto bad_file;
		}
	}
	{
		sqlite3_stmt *st = NULL;
		int rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
		const char *mode;

		if (rc == SQLITE_OK)
			rc = sqlite3_step(st);
		mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
		if (!mode || strcasecmp(mode, "wal") != 0) {
			r = rc == SQLITE_ROW ? -EIO : store_fail(s, rc);
			sqlite3_finalize(st);
			open_error(ret_error, "%s: cannot switch to WAL mode: %s", s->path,
			           s->errmsg ? s->errmsg : "journal mode unchanged");
			return r;
		}
		sqlite3_finalize(st);
	}
	if (version < STORE_SCHEMA_VERSION) {
		r = migrate(s, version);
		if (r < 0) {
			open_error(ret_error,
			           "%s: migration from schema version %" PRId64 " failed: %s",
			           s->path, version, s->errmsg);
			return r;
		}
	}
	return 0;

bad_file:
	if (r == -EBADMSG)
		open_error(ret_error,
		           "%s: corrupt or not an SQLite database (%s); refusing to touch it",
		           s->path, s->errmsg);
	else
		open_error(ret_error, "%s: %s", s->path, s->errmsg);
	return r;
}

/*
 * Refuse a non-empty file that does not start with SQLite's header. SQLite itself would treat a
 * file shorter than one page as an empty database and write over it.
 */
static int
check_header(const char *path, char **ret_error)
{
	static const char magic[16] = "SQLite format 3";
	char buf[sizeof(magic)];
	_cleanup_fclose_ FILE *f = NULL;
	struct stat st;
	size_t n;

	if (stat(path, &st) < 0 || st.st_size == 0)
		return 0; /* absent or empty: a new database, or SQLite's error on open */
	f = fopen(path, "rbe");
	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf), f);
	if (n == sizeof(magic) && memcmp(buf, magic, sizeof(magic)) == 0)
		return 0;
	open_error(ret_error, "%s: not an SQLite database; refusing to touch it", path);
	return -EBADMSG;
}

/*
 * The checkpointer. Copying the WAL into the database file (64 MB of it every 4,000 pages, then an
 * fdatasync of each file) took 100-450 ms when SQLite did it at the end of the commit that crossed
 * the mark, on the daemon's loop: the slowest /healthz answer while collecting was that long
 * (bench-h6-backlog.py; issue 13 asks for under 50 ms). A thread with a connection of its own does
 * the bulk of it: the WAL hook of the store's connection wakes it after a commit that leaves
 * checkpoint_pages or more in the WAL, and it runs PASSIVE checkpoints, which never block a writer
 * (the loop goes on committing into the same WAL meanwhile). A pass copies the WAL as it was when
 * it began, the next pass what the loop committed during the one before, until that was little (on
 * a busy disk a pass of 64 MB lasts long enough for the loop to commit tens of MB meanwhile; a pass
 * of those, a few MB; the next, less). SQLite starts the WAL over at the first commit after a
 * checkpoint that copied all of it, which the thread cannot be sure of while the loop commits, so
 * what is left after its passes (the commits of the last few tens of milliseconds) the loop copies
 * itself at its next commit: nothing else writes then, so that checkpoint reaches the end of the
 * WAL, and both its fdatasyncs find little to write. Should the thread fall behind, the loop
 * checkpoints everything itself once the WAL holds CHECKPOINT_HARD times checkpoint_pages, as
 * SQLite would. The guarantees are SQLite's: a checkpoint is the same operation on either
 * connection, and a kill in the middle of one leaves a WAL that the next open recovers (the crash
 * test kills inside checkpoints).
 */
enum checkpointer_state {
	CHECKPOINT_IDLE,
	CHECKPOINT_REQUESTED,
	CHECKPOINT_RUNNING,
	CHECKPOINT_TAIL, /* the thread is done: the loop copies the rest */
};

struct store_checkpointer {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	sqlite3 *db;
	int fd;                        /* the database file, to sync what the passes copied */
	enum checkpointer_state state; /* under lock */
	bool stop;                     /* under lock */
	unsigned next_at;       /* the loop's: WAL pages before it asks again, after a tail that did
	                           not start the WAL over (a reader holds it) */
	bool drop_cache;        /* under lock: after this round, give back the file's cache */
	unsigned failures;      /* the thread's: rounds failed in a row */
	unsigned failed_since;  /* the thread's: rounds failed since the warning that began it */
	bool failures_logged;   /* the thread's: a warning said so, no notice yet */
	uint64_t failed_logged; /* the thread's: monotonic usec of the last failure logged; 0 */
};

/*
 * Give back the kernel's cache of the file's synced pages, but for its last
 * CHECKPOINT_KEEP_CACHE bytes. The file is written once and read back rarely (the claim reads
 * the newest records, which the WAL, SQLite's own cache or the kept tail hold; index pages of
 * the hour being collected live in SQLite's cache): kept cached, every page copied into the file
 * is a new page of the kernel's memory, and a catch-up of 2,000,000 records grows the cache by
 * 2.3 GB. Dropped, the next pages reuse the memory just freed, which costs less than memory never
 * touched or given back to the host, as on this VM with free page reporting (a bare pwrite loop
 * of 6 GB: 0.16-0.18 s of CPU per 512 MB for the first 3 GB, then 1.7-1.8 s; dropping all but
 * the last 64 MB after each 64 MB synced, 0.20-0.23 s throughout). Advice only: errors are
 * ignored.
 *
 * Only while the forwarder keeps up (checkpointer_hook(): at most CHECKPOINT_DROP_BACKLOG records
 * collected and not yet claimed, whose rows lie in the kept tail): a backlog stored while
 * Commerce was away is read again by the claims, which would then read it from the disk
 * (scripts/bench backlog, 1,000,000 records forwarded after the restart: 7.5 s, 6.09 us of CPU a
 * record with the cache kept, 9.3 s and 7.50 us with it given back).
 */
static void
checkpointer_drop_cache(int fd)
{
	struct stat st;

	if (fstat(fd, &st) == 0 && st.st_size > CHECKPOINT_KEEP_CACHE)
		(void)posix_fadvise(fd, 0, st.st_size - CHECKPOINT_KEEP_CACHE, POSIX_FADV_DONTNEED);
}

/*
 * Log how a round ended (rc: SQLite's; sync_error: -errno of the file's fdatasync()). Busy is no
 * failure: the loop was checkpointing itself, and copies what is left. Any other error (a full
 * disk, an I/O error) leaves the copying to the loop, whose checkpoints meet it too, and the WAL
 * grows: the operator must hear of it. A failed round is logged when no warning was in the last
 * minute (the first one, then at most one line a minute, whether the rounds fail in a row or
 * now and then), and the first round that succeeds a minute or more after the last warning says
 * so once. The thread logs itself (log.c takes entries from any thread), so that a failure is
 * seen when it happens, not at the loop's next commit.
 */
static void
checkpointer_report(struct store_checkpointer *c, int rc, int sync_error)
{
	const char *path = sqlite3_db_filename(c->db, "main");
	uint64_t now;

	if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED)
		return;
	now = now_monotonic_usec();
	if (rc == SQLITE_OK && sync_error == 0) {
		c->failures = 0;
		/*
		 * The notice waits until a minute after the last warning: a failure after it is
		 * then logged at once, and a disk that fails now and then gives at most a warning
		 * and a notice a minute, the journal's last word always the true one.
		 */
		if (c->failures_logged && now - c->failed_logged >= CHECKPOINT_LOG_EVERY_USEC) {
			log_notice("checkpoints of %s succeed again, after %u failed", path,
			           c->failed_since);
			c->failures_logged = false;
			c->failed_since = 0;
		}
		return;
	}
	c->failures++;
	c->failed_since++;
	if (c->failed_logged != 0 && now - c->failed_logged < CHECKPOINT_LOG_EVERY_USEC)
		return;
	c->failed_logged = now;
	c->failures_logged = true;
	if (rc != SQLITE_OK)
		log_warning_errno(store_translate(rc, sqlite3_system_errno(c->db)),
		                  "checkpoint of %s failed (%u in a row): %s; the WAL grows until "
		                  "the store's own connection copies it (logged at most once a "
		                  "minute while this lasts)",
		                  path, c->failures, sqlite3_errmsg(c->db));
	else
		log_warning_errno(
		        sync_error,
		        "checkpoint of %s failed (%u in a row): fdatasync(): %m; the WAL "
		        "grows until the store's own connection copies it (logged at most "
		        "once a minute while this lasts)",
		        path, c->failures);
}

static void *
checkpointer_main(void *userdata)
{
	struct store_checkpointer *c = userdata;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		int rc = SQLITE_OK, last = -1;
		bool drop;

		while (c->state != CHECKPOINT_REQUESTED && !c->stop)
			pthread_cond_wait(&c->wake, &c->lock);
		if (c->stop)
			break;
		c->state = CHECKPOINT_RUNNING;
		drop = c->drop_cache;
		pthread_mutex_unlock(&c->lock);
		/* a pass copies the WAL up to where it ended when the pass began, the next one what
		 * was committed meanwhile: passes get shorter until one had little to copy, and
		 * what was committed during it is about as little */
		for (unsigned pass = 0; pass < CHECKPOINT_PASSES; pass++) {
			int in_log = 0;

			rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE,
			                               &in_log, NULL);
			if (rc != SQLITE_OK || (last >= 0 && in_log - last <= CHECKPOINT_LITTLE))
				break;
			last = in_log;
		}
		/* a pass that stops short of the WAL's end copies without syncing the file; SQLite
		 * syncs it when a checkpoint reaches the end, which is the loop's tail: sync here,
		 * so that the loop's sync finds little left to write (an extra sync is always safe)
		 */
		if (rc == SQLITE_OK && c->fd >= 0 && fdatasync(c->fd) < 0)
			checkpointer_report(c, rc, -errno);
		else {
			checkpointer_report(c, rc, 0);
			if (rc == SQLITE_OK && c->fd >= 0 && drop)
				checkpointer_drop_cache(c->fd);
		}
		pthread_mutex_lock(&c->lock);
		/* an error (busy: the loop checkpoints itself): the loop's own checkpoint meets it
		 * again, as it did when it did them all */
		c->state = rc == SQLITE_OK ? CHECKPOINT_TAIL : CHECKPOINT_IDLE;
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* The WAL hook of the store's connection: after every commit, with the WAL's size in pages. */
static int
checkpointer_hook(void *userdata, sqlite3 *db, const char *name, int pages)
{
	struct store *s = userdata;
	struct store_checkpointer *c = s->checkpointer;
	bool tail = false;

	pthread_mutex_lock(&c->lock);
	if (pages < 0 || (unsigned)pages < s->checkpoint_pages) {
		/* the WAL started over, with the tail or before it */
		if (c->state == CHECKPOINT_TAIL)
			c->state = CHECKPOINT_IDLE;
		c->next_at = 0;
	} else if (c->state == CHECKPOINT_TAIL) {
		c->state = CHECKPOINT_IDLE;
		tail = true;
	} else if (c->state == CHECKPOINT_IDLE && (unsigned)pages >= c->next_at) {
		c->state = CHECKPOINT_REQUESTED;
		c->next_at = (unsigned)pages + s->checkpoint_pages / 4;
		c->drop_cache = s->newest_record_id > 0 && s->claim_head > 0 &&
		                s->newest_record_id - s->claim_head <= CHECKPOINT_DROP_BACKLOG;
		pthread_cond_signal(&c->wake);
	}
	pthread_mutex_unlock(&c->lock);
	if (tail || (unsigned)pages >= CHECKPOINT_HARD * s->checkpoint_pages)
		/* PASSIVE gives up at once while the thread runs a pass: then the next commit */
		(void)sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	return SQLITE_OK;
}

/* Free a checkpointer whose thread is not running (never started, or joined). */
static void
checkpointer_free(struct store_checkpointer *c)
{
	pthread_cond_destroy(&c->wake);
	pthread_mutex_destroy(&c->lock);
	sqlite3_close_v2(c->db);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}

/* Start the checkpointer; on any failure SQLite's own checkpoints stay, as set by the open. */
static void
checkpointer_start(struct store *s)
{
	struct store_checkpointer *c;
	sigset_t all, old;
	int rc;

	if (!sqlite3_threadsafe())
		return;
	c = xcalloc(1, sizeof(*c));
	c->fd = open(s->path, O_RDONLY | O_CLOEXEC);
	rc = sqlite3_open_v2(s->path, &c->db,
	                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
	                     NULL);
	if (rc == SQLITE_OK)
		/* the store's own connection closes last and checkpoints then */
		rc = sqlite3_db_config(c->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	if (rc == SQLITE_OK)
		/* a checkpoint syncs the WAL before it copies and the file after, as on the store's
		 * connection; reading the header opens the WAL (a checkpoint copies frames, it
		 * needs neither the schema nor a page cache) */
		rc = sqlite3_exec(c->db, "PRAGMA synchronous = NORMAL; PRAGMA schema_version", NULL,
		                  NULL, NULL);
	if (rc != SQLITE_OK) {
		sqlite3_close_v2(c->db);
		if (c->fd >= 0)
			close(c->fd);
		free(c);
		return;
	}
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->wake, NULL);
	/* signals stay with the loop thread: the thread starts with all of them blocked */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&c->thread, NULL, checkpointer_main, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		checkpointer_free(c);
		return;
	}
	s->checkpointer = c;
	(void)sqlite3_wal_hook(s->db, checkpointer_hook, s);
}

/* Stop the checkpointer (waits for a pass in progress) and close its connection. */
static void
checkpointer_stop(struct store *s)
{
	struct store_checkpointer *c = s->checkpointer;

	if (!c)
		return;
	(void)sqlite3_wal_hook(s->db, NULL, NULL);
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	pthread_cond_signal(&c->wake);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	checkpointer_free(c);
	s->checkpointer = NULL;
}

/* Open the store (see store.h). */
int
store_open(const struct store_options *options, struct store **ret, char **ret_error)
{
	_cleanup_(store_freep) struct store *s = NULL;
	unsigned timeout;
	int flags, rc, r;

	if (!options || !options->path || !ret)
		return -EINVAL;

	s = xcalloc(1, sizeof(*s));
	s->charges_epoch = -1;
	s->readonly = options->readonly;
	s->skip_quick_check = options->skip_quick_check;
	s->path = xstrdup(options->path);
	r = check_header(s->path, ret_error);
	if (r < 0)
		return r;

	if (!s->readonly) {
		/* SQLite would create the file with 0644 less the umask, and its WAL and shared
		 * memory files take the file's mode: create it 0600 ourselves, whatever the umask
		 */
		_cleanup_close_ int fd =
		        open(s->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);

		if (fd < 0) {
			r = -errno;
			open_error(ret_error, "%s: cannot open: %s", s->path, strerror(-r));
			return r;
		}
	}
	store_sqlite_configure();
	flags = SQLITE_OPEN_EXRESCODE | SQLITE_OPEN_NOMUTEX |
	        (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
	rc = sqlite3_open_v2(s->path, &s->db, flags, NULL);
	if (rc != SQLITE_OK) {
		int sys = s->db ? sqlite3_system_errno(s->db) : 0;
		r = store_translate(rc, sys);
		open_error(ret_error, "%s: cannot open: %s", s->path,
		           s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
		return r;
	}
	/* a refused file must stay as it is: no checkpoint when we close it */
	(void)sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	if (!s->readonly && sqlite3_db_readonly(s->db, "main") == 1) {
		/* SQLite falls back to reading a file it may not write: say so now, not at a write
		 */
		open_error(ret_error, "%s: not writable by this user", s->path);
		return -EACCES;
	}
	timeout = options->busy_timeout_ms ? options->busy_timeout_ms : STORE_BUSY_TIMEOUT_MS;
	(void)sqlite3_busy_timeout(s->db, (int)MIN(timeout, (unsigned)INT32_MAX));

	r = open_check(s, ret_error);
	if (r < 0)
		return r;

	rc = sqlite3_exec(s->db,
	                  "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;"
	                  /* 8 MiB of cache: the records' newest leaves and the index pages of the
	                   * hour being collected (about 45 bytes a record) stay in it up to some
	                   * 100,000 records an hour. It is most of the daemon's memory (issue 13:
	                   * peak RSS under 48 MiB whatever the backlog): azs-usaged collecting with
	                   * Commerce down peaked at 59.8 MB with 32 MiB and 43.0 MB with 16 MiB,
	                   * flat from 100,000 to 600,000 records (bench-h6-backlog.py); bench-store
	                   * at 100,000 records an hour is as fast with 8 MiB (218,000 against
	                   * 214,000 records/s put), at 500,000 an hour 30 % slower; scripts/bench
	                   * catchup (1,000,000 records, about 6,000 an hour): 25.1 us of CPU per
	                   * record as with 16 MiB, peak RSS 43.7 -> 35.6 MiB. Tried and not kept
	                   * before: a 64 MiB cache (no faster). */
	                  " PRAGMA cache_size = -8192; PRAGMA temp_store = MEMORY;"
	                  " PRAGMA journal_size_limit = 67108864;"
	                  /* checkpoint every 64 MB of WAL, not every 16 MB: index pages written by
	                   * many transactions are copied into the file once (bench-store, 1,000,000
	                   * records, two runs each: put 174,000-182,000 -> 191,000-209,000
	                   * records/s); the WAL stays within journal_size_limit. Tried and not
	                   * kept: 4 and 8 KiB pages (put 150,000 and 156,000 against 166,000 in the
	                   * same hour, claim slower too). The checkpointer below takes over when it
	                   * can start. */
	                  " PRAGMA wal_autocheckpoint = " STRINGIFY(STORE_CHECKPOINT) ";",
	                  NULL, NULL, NULL);
	/* the crash test checkpoints often, so that its kills land inside checkpoints */
	s->checkpoint_pages =
	        options->checkpoint_pages ? options->checkpoint_pages : STORE_CHECKPOINT;
	if (rc == SQLITE_OK && options->checkpoint_pages) {
		char pragma[64];

		snprintf(pragma, sizeof(pragma), "PRAGMA wal_autocheckpoint = %u;",
		         options->checkpoint_pages);
		rc = sqlite3_exec(s->db, pragma, NULL, NULL, NULL);
	}
	if (rc != SQLITE_OK) {
		r = store_fail(s, rc);
		open_error(ret_error, "%s: %s", s->path, s->errmsg);
		return r;
	}
	rc = sqlite3_create_function_v2(s->db, "decimal_sum", 1,
	                                SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL,
	                                NULL, decimal_sum_step, decimal_sum_final, NULL);
	if (rc != SQLITE_OK) {
		r = store_fail(s, rc);
		open_error(ret_error, "%s: %s", s->path, s->errmsg);
		return r;
	}
	if (!s->readonly) {
		(void)sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);
		checkpointer_start(s); /* else SQLite's own checkpoints, set above */
	}

	*ret = TAKE_PTR(s);
	return 0;
}

/* Close the store. */
struct store *
store_free(struct store *s)
{
	if (!s)
		return NULL;
	/* before the store's own connection closes, the last one, which checkpoints the WAL */
	checkpointer_stop(s);
	for (size_t i = 0; i < _STMT_MAX; i++)
		sqlite3_finalize(s->stmts[i]);
	if (s->db && !sqlite3_get_autocommit(s->db))
		(void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close_v2(s->db);
	free(s->path);
	free(s->errmsg);
	free(s->registration_id);
	store_charges_forget(s);
	free(s->charges);
	free(s->claim_items);
	free(s);
	return NULL;
}

/* The text of the last error. */
const char *
store_errmsg(struct store *s)
{
	return s && s->errmsg ? s->errmsg : "no error";
}

/* The schema version of the open file. */
int
store_schema_version(struct store *s, int *ret)
{
	int64_t v = 0;
	int r;

	r = pragma_int(s, "PRAGMA user_version", &v);
	if (r < 0)
		return r;
	*ret = (int)v;
	return 0;
}

/* Cap the database size. */
int
store_set_size_limit(struct store *s, uint64_t max_bytes)
{
	int64_t page_size = 0, pages;
	char sql[64];
	int r;

	r = pragma_int(s, "PRAGMA page_size", &page_size);
	if (r < 0)
		return r;
	pages = max_bytes ? (int64_t)MIN(max_bytes / (uint64_t)page_size, (uint64_t)INT32_MAX)
	                  : INT32_MAX - 1;
	snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %" PRId64, MAX(pages, 1));
	return pragma_int(s, sql, &pages);
}

/* The loop's statements, for the query-plan test. */
const char *const *
store_loop_queries(size_t *ret_n)
{
	static const char *list[_STMT_MAX];
	static size_t n;

	if (n == 0)
		for (size_t i = 0; i < _STMT_MAX; i++)
			if (store_stmt_defs[i].loop)
				list[n++] = store_stmt_defs[i].sql;
	if (ret_n)
		*ret_n = n;
	return list;
}

/* Free a record's strings and zero it. */
void
store_record_done(struct store_record *r)
{
	if (!r)
		return;
	if (r->storage) {
		free(r->storage);
		*r = (struct store_record){0};
		return;
	}
	free(r->key);
	free(r->subscription_id);
	free(r->meter_id);
	free(r->quantity);
	free(r->resource_uri);
	free(r->location);
	free(r->tags);
	free(r->additional_info);
	free(r->raw);
	free(r->tenant_id);
	free(r->charged_subscription);
	free(r->charge_reason);
	free(r->registration);
	free(r->batch_id);
	free(r->error_code);
	free(r->error_message);
	free(r->forward_status);
	*r = (struct store_record){0};
}

/* Translate an SQLite result code into -errno. */
int
store_translate(int rc, int sys_errno)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_ROW:
	case SQLITE_DONE:
		return 0;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EBADMSG;
	case SQLITE_READONLY:
		return -EROFS;
	case SQLITE_CANTOPEN:
		return sys_errno == EACCES || sys_errno == EPERM ? -EACCES : -ENOENT;
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_NOMEM:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

/* Remember SQLite's message for rc and return its translation. */
int
store_fail(struct store *s, int rc)
{
	free(s->errmsg);
	s->errmsg = xstrdup(sqlite3_errcode(s->db) == rc || sqlite3_extended_errcode(s->db) == rc
	                            ? sqlite3_errmsg(s->db)
	                            : sqlite3_errstr(rc));
	return store_translate(rc, sqlite3_system_errno(s->db));
}

/* Remember a message of our own and return r. */
int
store_fail_msg(struct store *s, int r, const char *format, ...)
{
	va_list ap;

	free(s->errmsg);
	va_start(ap, format);
	s->errmsg = xvasprintf(format, ap);
	va_end(ap);
	return r;
}

/* The cached statement id, prepared on first use. */
int
store_stmt(struct store *s, enum stmt_id id, sqlite3_stmt **ret)
{
	int rc;

	if (!s->stmts[id]) {
		rc = sqlite3_prepare_v3(s->db, store_stmt_defs[id].sql, -1,
		                        SQLITE_PREPARE_PERSISTENT, &s->stmts[id], NULL);
		if (rc != SQLITE_OK)
			return store_fail(s, rc);
	}
	*ret = s->stmts[id];
	return 0;
}

/* Reset a statement when it goes out of scope (cleanup helper). */
void
store_stmt_resetp(sqlite3_stmt **st)
{
	if (*st)
		(void)sqlite3_reset(*st);
}

/* Step a statement that returns no rows. */
int
store_step_done(struct store *s, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	if (rc == SQLITE_DONE || rc == SQLITE_ROW)
		return 0;
	return store_fail(s, rc);
}

/* Step a query: 1 with a row, 0 at the end, -errno on failure. */
int
store_step_row(struct store *s, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	return store_fail(s, rc);
}

/* Bind a borrowed string (it outlives the step) or NULL. */
int
store_bind_text(sqlite3_stmt *st, int i, const char *v)
{
	return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Run a cached statement that takes no parameters and returns no rows. */
int
store_exec(struct store *s, enum stmt_id id)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, id, &st);
	if (r < 0)
		return r;
	return store_step_done(s, st);
}

/*
 * Start a write transaction. Called again inside one (a map() callback that writes, a query
 * callback), it opens a savepoint instead, so the inner operation can fail on its own.
 */
int
store_tx_begin(struct store *s)
{
	int r;

	if (s->readonly)
		return store_fail_msg(s, -EROFS, "the store is open read-only");
	if (s->tx_depth >= ARRAY_SIZE(s->saved_delta))
		return store_fail_msg(s, -EBUSY, "store operations nested too deeply");
	if (s->tx_depth > 0) {
		memcpy(s->saved_delta[s->tx_depth], s->delta, sizeof(s->delta));
		r = store_exec(s, STMT_SAVEPOINT);
	} else {
		memset(s->delta, 0, sizeof(s->delta));
		/* another writer may have added records since our last transaction */
		s->next_record_id = 0;
		s->tx_total_changes = sqlite3_total_changes(s->db);
		r = store_exec(s, STMT_BEGIN);
	}
	if (r >= 0)
		s->tx_depth++;
	else if (s->tx_depth == 0)
		store_write_note(s, r);
	return r;
}

/* Apply the transaction's count deltas. */
static int
counts_flush(struct store *s)
{
	for (int i = 0; i < _STORE_STATE_MAX; i++) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;
		int r;

		if (s->delta[i] == 0)
			continue;
		r = store_stmt(s, STMT_COUNTS_ADD, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, s->delta[i]);
		sqlite3_bind_int(st, 2, i);
		r = store_step_done(s, st);
		if (r >= 0 && sqlite3_changes(s->db) != 1)
			r = store_fail_msg(s, -EBADMSG, "no count of state %d", i);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Finish a write transaction: commit when r >= 0, else (or when committing fails) roll back. */
int
store_tx_end(struct store *s, int r)
{
	r = tx_close(s, r);
	/* an empty claim commits even on a disk that cannot be written: only a commit that changed
	 * rows clears a write error */
	if (s->tx_depth == 0 && (r < 0 || sqlite3_total_changes(s->db) != s->tx_total_changes))
		store_write_note(s, r);
	if (r < 0) {
		/* rolled back, also when only the commit failed: the cached registration number and
		 * charges may name rows that went with it */
		free(s->registration_id);
		s->registration_id = NULL;
		s->next_record_id = 0;
		store_charges_forget(s);
	}
	return r;
}

/* End a write transaction (store_tx_end) and, when it committed, tell how many it changed. */
int
store_tx_end_n(struct store *s, int r, size_t n, size_t *ret_n)
{
	r = store_tx_end(s, r);
	if (r >= 0 && ret_n)
		*ret_n = n;
	return r < 0 ? r : 0;
}

/* Commit or release, or roll back (to the savepoint); the result of the whole. */
static int
tx_close(struct store *s, int r)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;

	assert(s->tx_depth > 0);
	if (--s->tx_depth > 0) {
		/* a savepoint inside the caller's transaction */
		if (r < 0) {
			memcpy(s->delta, s->saved_delta[s->tx_depth], sizeof(s->delta));
			s->next_record_id = 0; /* known again from the file at the next insert */
			if (store_stmt(s, STMT_ROLLBACK_TO, &st) >= 0)
				(void)sqlite3_step(st);
		}
		if (r >= 0)
			return store_exec(s, STMT_RELEASE);
		(void)store_exec(s, STMT_RELEASE);
		return r;
	}
	if (r >= 0)
		r = counts_flush(s);
	if (r >= 0 && s->next_record_id_dirty)
		r = store_meta_set(s, "next_record_id", s->next_record_id);
	if (r >= 0)
		r = store_exec(s, STMT_COMMIT);
	s->next_record_id_dirty = false;
	if (r < 0 && !sqlite3_get_autocommit(s->db)) {
		/* keep the first error's message: ROLLBACK would overwrite SQLite's */
		if (store_stmt(s, STMT_ROLLBACK, &st) >= 0)
			(void)sqlite3_step(st);
	}
	memset(s->delta, 0, sizeof(s->delta));
	return r;
}

/* Prepare an uncached statement (off the loop). */
int
store_prepare(struct store *s, const char *sql, sqlite3_stmt **ret)
{
	int rc;

	rc = sqlite3_prepare_v2(s->db, sql, -1, ret, NULL);
	if (rc != SQLITE_OK)
		return store_fail(s, rc);
	return 0;
}

/* Finalize an uncached statement when it goes out of scope (cleanup helper). */
void
store_stmt_finalizep(sqlite3_stmt **st)
{
	if (*st)
		(void)sqlite3_finalize(*st);
	*st = NULL;
}

/* Bind a record key (64 hex digits) as its 32 bytes. */
int
store_bind_key(sqlite3_stmt *st, int i, const char *hex, unsigned char key[static STORE_KEY_BYTES])
{
	unsigned bad = 0;

	for (size_t k = 0; k < STORE_KEY_BYTES; k++) {
		unsigned hi = hex_value(hex[2 * k]), lo = hex_value(hex[2 * k + 1]);

		bad |= hi | lo;
		key[k] = (unsigned char)(hi << 4 | lo);
	}
	if (bad > 15)
		return SQLITE_MISUSE; /* keys are lower-case hex: a bug of the caller */
	return sqlite3_bind_blob(st, i, key, STORE_KEY_BYTES, SQLITE_STATIC);
}

/* A column as a new string, NULL for NULL. */
char *
store_col_dup(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);

	return t ? xstrndup((const char *)t, (size_t)sqlite3_column_bytes(st, i)) : NULL;
}

/* An integer column, 0 for NULL. */
int64_t
store_col_int64_or0(sqlite3_stmt *st, int i)
{
	return sqlite3_column_type(st, i) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, i);
}

/* Read a single integer row from a cached statement; -ENOENT when there is none or NULL. */
int
store_single_int64(struct store *s, enum stmt_id id, int64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, id, &st);
	if (r < 0)
		return r;
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0 || sqlite3_column_type(st, 0) == SQLITE_NULL)
		return -ENOENT;
	*ret = sqlite3_column_int64(st, 0);
	return 0;
}

/* Collect every row of st into an array (see store-private.h). */
int
store_collect_rows(struct store *s, sqlite3_stmt *st, size_t size, store_row_load_fn load,
                   store_row_done_fn done, void *ret, size_t *ret_n)
{
	_cleanup_free_ char *list = NULL;
	size_t n = 0, cap = 0;
	int r;

	while ((r = store_step_row(s, st)) > 0) {
		list = store_grow(list, &cap, n + 1, size);
		load(st, list + n++ * size);
	}
	if (r < 0) {
		for (size_t i = 0; done && i < n; i++)
			done(list + i * size);
		return r;
	}
	*(void **)ret = TAKE_PTR(list);
	*ret_n = n;
	return 0;
}

/* The first column as an integer (a row loader). */
static void
load_id(sqlite3_stmt *st, void *elem)
{
	*(int64_t *)elem = sqlite3_column_int64(st, 0);
}

/* Collect the first column of every row of st as integers. */
int
store_collect_ids(struct store *s, sqlite3_stmt *st, int64_t **ret, size_t *ret_n)
{
	return store_collect_rows(s, st, sizeof(int64_t), load_id, NULL, ret, ret_n);
}

/* Make room for n elements of size in p (capacity *cap), growing geometrically. */
void *
store_grow(void *p, size_t *cap, size_t n, size_t size)
{
	if (n <= *cap)
		return p;
	*cap = MAX(n, MAX(*cap * 2, (size_t)16));
	return xreallocarray(p, *cap, size);
}

/* Read an integer from the meta table; -ENOENT when absent. */
int
store_meta_get(struct store *s, const char *key, int64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_META_GET, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, key);
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0 || sqlite3_column_type(st, 0) == SQLITE_NULL)
		return -ENOENT;
	*ret = sqlite3_column_int64(st, 0);
	return 0;
}

/* Write an integer into the meta table (raise: keep the larger of the two). */
static int
meta_write(struct store *s, enum stmt_id id, const char *key, int64_t value)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, id, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, key);
	sqlite3_bind_int64(st, 2, value);
	return store_step_done(s, st);
}

int
store_meta_set(struct store *s, const char *key, int64_t value)
{
	return meta_write(s, STMT_META_SET, key, value);
}

int
store_meta_raise(struct store *s, const char *key, int64_t value)
{
	return meta_write(s, STMT_META_RAISE, key, value);
}

/* Counts by state, kept in the meta table. */
int
store_counts(struct store *s, struct store_counts *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	struct store_counts c = {0};
	int r;

	r = store_stmt(s, STMT_COUNTS_GET, &st);
	if (r < 0)
		return r;
	while ((r = store_step_row(s, st)) > 0) {
		int64_t state = sqlite3_column_int64(st, 0);
		int64_t n = sqlite3_column_int64(st, 1);

		if (state >= 0 && state < _STORE_STATE_MAX)
			c.by_state[state] = n > 0 ? (uint64_t)n : 0;
	}
	if (r < 0)
		return r;
	*ret = c;
	return 0;
}

/* Records waiting to be forwarded. */
int
store_backlog(struct store *s, uint64_t *ret)
{
	struct store_counts c;
	int r;

	r = store_counts(s, &c);
	if (r < 0)
		return r;
	*ret = c.by_state[STORE_PENDING] + c.by_state[STORE_HELD] + c.by_state[STORE_INFLIGHT];
	return 0;
}

/*
 * The running state of decimal_sum(). SQLite's aggregate context is only 8-byte aligned and a
 * struct decimal holds a 128-bit integer, so the total is kept as bytes and copied in and out.
 */
struct decimal_sum {
	unsigned char total[sizeof(struct decimal)];
	bool started;
	bool failed;
};

/* decimal_sum() step: add one quantity exactly. */
static void
decimal_sum_step(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	struct decimal_sum *sum = sqlite3_aggregate_context(ctx, sizeof(*sum));
	const unsigned char *text;
	struct decimal d, total;

	(void)argc; /* registered with one argument */
	if (!sum) {
		sqlite3_result_error_nomem(ctx);
		return;
	}
	if (sum->failed || sqlite3_value_type(argv[0]) == SQLITE_NULL)
		return;
	text = sqlite3_value_text(argv[0]);
	if (!text || decimal_parse_string((const char *)text, &d) < 0) {
		sum->failed = true;
		return;
	}
	if (sum->started) {
		memcpy(&total, sum->total, sizeof(total));
		if (decimal_add(&total, &d, &d) < 0) {
			sum->failed = true;
			return;
		}
	}
	memcpy(sum->total, &d, sizeof(d));
	sum->started = true;
}

/* decimal_sum() result: the exact total as text ("0" for no rows). */
static void
decimal_sum_final(sqlite3_context *ctx)
{
	struct decimal_sum *sum = sqlite3_aggregate_context(ctx, 0);
	char out[DECIMAL_STRING_MAX];
	struct decimal total;
	size_t n;

	if (sum && sum->failed) {
		sqlite3_result_error(ctx, "decimal_sum: quantity malformed or total out of range",
		                     -1);
		return;
	}
	if (!sum || !sum->started) {
		sqlite3_result_text(ctx, "0", 1, SQLITE_STATIC);
		return;
	}
	memcpy(&total, sum->total, sizeof(total));
	n = decimal_format(&total, out);
	sqlite3_result_text(ctx, out, (int)n, SQLITE_TRANSIENT);
}
