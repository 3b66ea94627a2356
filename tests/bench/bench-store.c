/*
 * bench-store: the store's throughput on the daemon's hot path (ARCHITECTURE.md sections 7, 11),
 * run by `scripts/bench store`.
 *
 * N records (their raw text is made but, as by the store, not kept for a usage record; keys are
 * SHA-256 as in section 4, reported hours in time order, --per-hour records each) go in through
 * store_put_page in pages of 1,000, are claimed with store_claim_batch (a trivial map callback)
 * and acknowledged with store_apply_outcomes (forwarded) in batches of 500: one record's life.
 * The same rows are then inserted by a bare prepared-statement loop on an own SQLite connection
 * into the store's own records table, which the store created (its unique index on the reported
 * hour and key is what uniqueness costs; 1,000-row transactions, WAL, synchronous=NORMAL, the
 * store's page, cache and checkpoint sizes): the bare insert loop of the same bytes, as the
 * store hardening issue measured it. For comparison the same loop also runs into a table of the
 * same columns and no index at all. Only the store calls (and, for the references, the
 * bind/step/commit loop) are timed, not making up the records; checkpoints happen inside the
 * timed calls on every side.
 *
 * Prints records/s per phase, one record's whole life in microseconds and as a multiple of the
 * bare loop, the peak RSS, and PASS/FAIL for the targets of the store hardening issue: each
 * phase >= 200,000 records/s, the whole life <= 1.5 x the bare loop. Exit 0 when all pass.
 *
 *   bench-store [--records N] [--per-hour N] [--dir DIR]
 *
 * The one file besides lib/store*.c that includes sqlite3.h: the reference needs a bare
 * connection.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "hash.h"
#include "macro.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define BENCH_PAGE        1000
#define BENCH_BATCH       500
#define BENCH_FIRST_HOUR  INT64_C(1793491200) /* 2026-11-01T00:00:00Z */
#define BENCH_TARGET_RATE 200000.0
#define BENCH_TARGET_LIFE 1.5 /* one record's life, as a multiple of the bare insert */
#define BENCH_CHARGED     "9a1c6f7e-3b2d-4e8f-a1b2-c3d4e5f60718"

/* Room for one record's strings; a page's records point into an array of these. */
struct bench_slot {
	char key[HASH_SHA256_HEX_LEN + 1];
	unsigned char key_bytes[32]; /* for the bare loop, made outside its timing */
	char subscription[40];
	char meter[40];
	char quantity[32];
	char resource_uri[192];
	char raw[640];
};

struct bench_page {
	struct bench_slot *slots;
	struct store_record *records;
	size_t n;
	int64_t hour;
};

static uint64_t bench_per_hour = 10000; /* records per reported hour */

static void bench_page_make(struct bench_page *p, uint64_t first, size_t n);
static double bench_seconds(void);
static int bench_map(void *userdata, const struct store_record *r, struct store_charge *ret);
static int bench_store(const char *path, uint64_t n, double *ret_put, double *ret_claim,
                       double *ret_ack, size_t *ret_bytes);
static int bench_raw(const char *path, uint64_t n, bool store_schema, double *ret);
static bool bench_check(const char *what, double rate);

/* Run the phases and print the results. */
int
main(int argc, char **argv)
{
	const char *dir = "/var/tmp";
	uint64_t n = 200000;
	double put = 0, claim = 0, ack = 0, raw = 0, bare = 0, life;
	size_t bytes = 0;
	struct rusage ru;
	bool ok = true;
	int r;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (streq(argv[i], "--records"))
			n = strtoull(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--per-hour"))
			bench_per_hour = strtoull(argv[i + 1], NULL, 10);
		else if (streq(argv[i], "--dir"))
			dir = argv[i + 1];
	}
	if (n == 0 || n % BENCH_PAGE != 0 || bench_per_hour == 0 ||
	    bench_per_hour % BENCH_PAGE != 0) {
		fprintf(stderr,
		        "bench-store: --records and --per-hour must be positive multiples of %d\n",
		        BENCH_PAGE);
		return 2;
	}

	_cleanup_free_ char *store_path = xasprintf("%s/bench-store-%d.db", dir, (int)getpid());
	_cleanup_free_ char *raw_path = xasprintf("%s/bench-raw-%d.db", dir, (int)getpid());
	_cleanup_free_ char *bare_path = xasprintf("%s/bench-bare-%d.db", dir, (int)getpid());

	r = bench_store(store_path, n, &put, &claim, &ack, &bytes);
	if (r >= 0)
		r = bench_raw(raw_path, n, true, &raw);
	if (r >= 0)
		r = bench_raw(bare_path, n, false, &bare);
	for (const char *const *p = (const char *const[]){store_path, raw_path, bare_path, NULL};
	     *p; p++) {
		_cleanup_free_ char *wal = xasprintf("%s-wal", *p);
		_cleanup_free_ char *shm = xasprintf("%s-shm", *p);

		unlink(*p);
		unlink(wal);
		unlink(shm);
	}
	if (r < 0)
		return 1;
	getrusage(RUSAGE_SELF, &ru);

	life = put + claim + ack;
	printf("bench-store: %" PRIu64 " records of about %zu bytes, %" PRIu64
	       " per reported hour, pages of %d, batches of %d\n",
	       n, bytes, bench_per_hour, BENCH_PAGE, BENCH_BATCH);
	printf("  %-34s %10.0f records/s  %7.2f s\n", "insert (store_put_page)", n / put, put);
	printf("  %-34s %10.0f records/s  %7.2f s\n", "claim (store_claim_batch)", n / claim,
	       claim);
	printf("  %-34s %10.0f records/s  %7.2f s\n", "ack (store_apply_outcomes)", n / ack, ack);
	printf("  %-34s %10.0f records/s  %7.2f s\n", "bare insert loop (same bytes)", n / raw,
	       raw);
	printf("  %-34s %10.0f records/s  %7.2f s\n", "  the same, no index at all", n / bare,
	       bare);
	printf("  one record's life: %.2f us (bare insert %.2f us), %.2f x the bare insert\n",
	       life / n * 1e6, raw / n * 1e6, life / raw);
	printf("  peak RSS: %ld KiB\n", ru.ru_maxrss);

	ok &= bench_check("insert", n / put);
	ok &= bench_check("claim", n / claim);
	ok &= bench_check("ack", n / ack);
	printf("  %s life <= %.1f x the bare insert: %.2f\n",
	       life / raw <= BENCH_TARGET_LIFE ? "PASS" : "FAIL", BENCH_TARGET_LIFE, life / raw);
	ok &= life / raw <= BENCH_TARGET_LIFE;
	printf("%s\n", ok ? "PASS" : "FAIL");
	return ok ? 0 : 1;
}

/* Print PASS/FAIL for the rate of one phase. */
static bool
bench_check(const char *what, double rate)
{
	bool fast = rate >= BENCH_TARGET_RATE;

	printf("  %s %-6s >= %.0f records/s: %.0f\n", fast ? "PASS" : "FAIL", what,
	       BENCH_TARGET_RATE, rate);
	return fast;
}

/* Make records first .. first + n - 1 (all in one reported hour: pages divide hours). */
static void
bench_page_make(struct bench_page *p, uint64_t first, size_t n)
{
	char start[TIME_RFC3339_LEN + 1], end[TIME_RFC3339_LEN + 1], hour[TIME_RFC3339_LEN + 1];

	p->n = n;
	p->hour = BENCH_FIRST_HOUR + (int64_t)(first / bench_per_hour) * 3600;
	time_format_rfc3339(p->hour, hour);
	time_format_rfc3339(p->hour - 3600, start);
	time_format_rfc3339(p->hour, end);
	for (size_t i = 0; i < n; i++) {
		struct bench_slot *s = &p->slots[i];
		uint64_t k = first + i;
		char identity[512];
		char uri_lower[sizeof(((struct bench_slot *)0)->resource_uri)];
		int len;

		snprintf(s->subscription, sizeof(s->subscription),
		         "c79389af-%04x-4b1e-9d0c-%012" PRIx64, (unsigned)(k % 200), k % 200);
		snprintf(s->meter, sizeof(s->meter), "FAB6EB84-500B-4A09-A8CA-7358F8BBAE%02u",
		         (unsigned)(k % 20));
		snprintf(s->quantity, sizeof(s->quantity), "%" PRIu64 ".%010" PRIu64, k % 97,
		         (k * 7919) % 10000000000u);
		snprintf(s->resource_uri, sizeof(s->resource_uri),
		         "/subscriptions/%s/resourceGroups/rg-%u/providers/Microsoft.Storage/"
		         "storageAccounts/sa%" PRIu64,
		         s->subscription, (unsigned)(k % 13), k % bench_per_hour);
		/* the record key of ARCHITECTURE.md section 4: the subscription and meter are lower
		 * case already, the resource URI is lower-cased for the key only */
		for (size_t c = 0; c < sizeof(uri_lower); c++) {
			uri_lower[c] = (char)tolower((unsigned char)s->resource_uri[c]);
			if (!s->resource_uri[c])
				break;
		}
		len = snprintf(identity, sizeof(identity),
		               "%s\n%s\nfab6eb84500b4a09a8ca7358f8bbae%02u\n%s\n%s\n%s", hour,
		               s->subscription, (unsigned)(k % 20), start, end, uri_lower);
		hash_sha256_hex(identity, (size_t)len, s->key);
		for (size_t b = 0; b < sizeof(s->key_bytes); b++) {
			unsigned v = 0;

			sscanf(s->key + 2 * b, "%2x", &v);
			s->key_bytes[b] = (unsigned char)v;
		}
		/* the record as the stamp sends it, less the id, name and times that repeat the
		 * rest */
		snprintf(s->raw, sizeof(s->raw),
		         "{\"properties\":{\"subscriptionId\":\"%s\",\"instanceData\":\""
		         "{\\\"Microsoft.Resources\\\":{\\\"resourceUri\\\":\\\"%s\\\","
		         "\\\"location\\\":\\\"local\\\"}}\",\"quantity\":%s,\"meterId\":\"%s\"}}",
		         s->subscription, s->resource_uri, s->quantity, s->meter);
		p->records[i] = (struct store_record){
		        .state = STORE_PENDING,
		        .key = s->key,
		        .reported_hour = p->hour,
		        .subscription_id = s->subscription,
		        .meter_id = s->meter,
		        .quantity = s->quantity,
		        .usage_start = p->hour - 3600,
		        .usage_end = p->hour,
		        .resource_uri = s->resource_uri,
		        .location = (char *)"local",
		        .raw = s->raw,
		};
	}
}

/* Monotonic seconds. */
static double
bench_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The trivial charge: everything to one subscription. */
static int
bench_map(void *userdata, const struct store_record *r, struct store_charge *ret)
{
	(void)userdata;
	(void)r;
	*ret = (struct store_charge){
	        .charged_subscription = BENCH_CHARGED,
	        .reason = "default",
	        .registration =
	                "/subscriptions/" BENCH_CHARGED "/resourcegroups/azurestack/providers/"
	                "microsoft.azurestack/registrations/azurestack-bench",
	};
	return 0;
}

/* The store phases: put all pages, then claim and acknowledge every batch. */
static int
bench_store(const char *path, uint64_t n, double *ret_put, double *ret_claim, double *ret_ack,
            size_t *ret_bytes)
{
	struct store_options options = {.path = path};
	_cleanup_free_ char *error = NULL;
	struct bench_page page = {
	        .slots = xcalloc(BENCH_PAGE, sizeof(struct bench_slot)),
	        .records = xcalloc(BENCH_PAGE, sizeof(struct store_record)),
	};
	struct store_outcome *out = xcalloc(BENCH_BATCH, sizeof(*out));
	struct store *s = NULL;
	double put = 0, claim = 0, ack = 0, t;
	uint64_t done = 0;
	int64_t now = now_seconds();
	int r;

	r = store_open(&options, &s, &error);
	if (r < 0) {
		fprintf(stderr, "bench-store: open %s: %s: %s\n", path, strerror(-r),
		        error ? error : "");
		goto out;
	}

	for (uint64_t first = 0; first < n; first += BENCH_PAGE) {
		struct store_page_result result = {0};
		struct store_page sp;

		bench_page_make(&page, first, BENCH_PAGE);
		if (first == 0) {
			*ret_bytes = 0;
			/* the stored text and eight integers */
			for (size_t i = 0; i < page.n; i++)
				*ret_bytes += strlen(page.slots[i].key) +
				              strlen(page.slots[i].subscription) +
				              strlen(page.slots[i].meter) +
				              strlen(page.slots[i].quantity) +
				              strlen(page.slots[i].resource_uri) + strlen("local") +
				              8 * sizeof(int64_t);
			*ret_bytes /= page.n;
		}
		sp = (struct store_page){
		        .reported_hour = page.hour,
		        .scope = "",
		        /* the hour's last page finishes it */
		        .next_link = (first + BENCH_PAGE) % bench_per_hour != 0 ? "next" : NULL,
		        .records = page.records,
		        .n_records = page.n,
		        .now = now,
		};
		t = bench_seconds();
		r = store_put_page(s, &sp, &result);
		put += bench_seconds() - t;
		if (r < 0 || result.inserted != page.n) {
			fprintf(stderr, "bench-store: put page at %" PRIu64 ": %s (%zu inserted)\n",
			        first, r < 0 ? strerror(-r) : "short", result.inserted);
			r = r < 0 ? r : -EIO;
			goto out;
		}
	}

	for (;;) {
		struct store_claim c = {
		        .max_records = BENCH_BATCH,
		        .max_bytes = 64 * 1024 * 1024,
		        .now = now,
		        .map = bench_map,
		};
		struct store_batch batch = {0};
		size_t applied = 0;

		t = bench_seconds();
		r = store_claim_batch(s, &c, &batch);
		claim += bench_seconds() - t;
		if (r < 0) {
			fprintf(stderr, "bench-store: claim: %s: %s\n", strerror(-r),
			        store_errmsg(s));
			goto out;
		}
		if (batch.n_records == 0) {
			store_batch_done(&batch);
			break;
		}
		for (size_t i = 0; i < batch.n_records; i++)
			out[i] = (struct store_outcome){
			        .id = batch.records[i].id,
			        .kind = STORE_OUTCOME_FORWARDED,
			        .status = "Accepted",
			};
		t = bench_seconds();
		r = store_apply_outcomes(s, batch.batch_id, out, batch.n_records, now, &applied);
		ack += bench_seconds() - t;
		done += applied;
		store_batch_done(&batch);
		if (r < 0) {
			fprintf(stderr, "bench-store: apply: %s: %s\n", strerror(-r),
			        store_errmsg(s));
			goto out;
		}
	}
	if (done != n) {
		fprintf(stderr, "bench-store: %" PRIu64 " of %" PRIu64 " records forwarded\n", done,
		        n);
		r = -EIO;
		goto out;
	}
	*ret_put = put;
	*ret_claim = claim;
	*ret_ack = ack;
	r = 0;
out:
	store_free(s);
	free(out);
	free(page.slots);
	free(page.records);
	return r;
}

/* The bare insert loop: the same rows into the store's records table, or into a table of the
 * same columns without an index. */
static int
bench_raw(const char *path, uint64_t n, bool store_schema, double *ret)
{
	static const char bare_schema[] =
	        "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
	        " PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = 4000;"
	        " CREATE TABLE bare (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL,"
	        " reported_hour INTEGER NOT NULL, key BLOB NOT NULL, of INTEGER,"
	        " subscription_id TEXT, meter_id TEXT, quantity TEXT, usage_start INTEGER NOT NULL,"
	        " usage_end INTEGER NOT NULL, resource_uri TEXT, location TEXT, tags TEXT,"
	        " additional_info TEXT, event_size INTEGER NOT NULL, collected_at INTEGER NOT NULL,"
	        " reason TEXT, raw TEXT);";
	static const char settings[] =
	        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
	        " PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = 4000;";
	static const char insert_store[] =
	        "INSERT INTO records (kind, reported_hour, key, of, subscription_id, meter_id,"
	        " quantity, usage_start, usage_end, resource_uri, location, tags, additional_info,"
	        " event_size, collected_at, reason, raw)"
	        " VALUES (0, ?1, ?2, NULL, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, NULL, ?10, ?11, NULL,"
	        " ?12)";
	static const char insert_bare[] =
	        "INSERT INTO bare (kind, reported_hour, key, of, subscription_id, meter_id,"
	        " quantity, usage_start, usage_end, resource_uri, location, tags, additional_info,"
	        " event_size, collected_at, reason, raw)"
	        " VALUES (0, ?1, ?2, NULL, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, NULL, ?10, ?11, NULL,"
	        " ?12)";
	struct bench_page page = {
	        .slots = xcalloc(BENCH_PAGE, sizeof(struct bench_slot)),
	        .records = xcalloc(BENCH_PAGE, sizeof(struct store_record)),
	};
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int64_t now = now_seconds();
	double total = 0, t;
	int rc, r = 0;

	if (store_schema) {
		/* the store makes the schema (same table, same indexes), then steps aside */
		struct store_options options = {.path = path};
		_cleanup_free_ char *error = NULL;
		struct store *s = NULL;

		r = store_open(&options, &s, &error);
		store_free(s);
		if (r < 0) {
			fprintf(stderr, "bench-store: create %s: %s: %s\n", path, strerror(-r),
			        error ? error : "");
			goto out;
		}
	}
	rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, store_schema ? settings : bare_schema, NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(db, store_schema ? insert_store : insert_bare, -1, &st,
		                        NULL);
	if (rc != SQLITE_OK)
		goto fail;

	for (uint64_t first = 0; first < n; first += BENCH_PAGE) {
		bench_page_make(&page, first, BENCH_PAGE);
		t = bench_seconds();
		rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
		for (size_t i = 0; rc == SQLITE_OK && i < page.n; i++) {
			const struct store_record *rec = &page.records[i];

			/* the store keeps the key's 32 bytes, not its hex text */
			sqlite3_bind_int64(st, 1, rec->reported_hour);
			sqlite3_bind_blob(st, 2, page.slots[i].key_bytes, 32, SQLITE_STATIC);
			sqlite3_bind_text(st, 3, rec->subscription_id, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 4, rec->meter_id, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 5, rec->quantity, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 6, rec->usage_start);
			sqlite3_bind_int64(st, 7, rec->usage_end);
			sqlite3_bind_text(st, 8, rec->resource_uri, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 9, rec->location, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 10, (sqlite3_int64)strlen(rec->raw));
			sqlite3_bind_int64(st, 11, now);
			/* what the store writes: a usage record stored as received keeps no raw
			 * text */
			sqlite3_bind_null(st, 12);
			rc = sqlite3_step(st);
			rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
			sqlite3_reset(st);
		}
		if (rc == SQLITE_OK)
			rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
		total += bench_seconds() - t;
		if (rc != SQLITE_OK)
			goto fail;
	}
	*ret = total;
	goto out;
fail:
	fprintf(stderr, "bench-store: bare insert loop: %s\n",
	        db ? sqlite3_errmsg(db) : "no memory");
	r = -EIO;
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	free(page.slots);
	free(page.records);
	return r;
}
