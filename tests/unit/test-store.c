/*
 * Unit tests for lib/store.c on a real file in a temporary directory: every record state
 * transition, duplicates and conflicts, page and cursor atomicity, claim limits, the operator
 * verbs and their history, counts checked against COUNT(*) from a second read-only connection
 * after every operation, pruning, the migration from schema version 1, refusal of corrupt,
 * foreign and newer files (byte-compared before and after), read-only opens, the full-disk path,
 * exact report sums, and the query plans of every statement the daemon's loop runs.
 */
#include <ctype.h>
#include <errno.h>
#include <sys/resource.h>
#include <signal.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "hash.h"
#include "macro.h"
#include "store.h"
#include "xmalloc.h"

#define HOUR        INT64_C(3600)
#define T0          INT64_C(1793523600) /* 2026-11-01T09:00:00Z */
#define NOW         (T0 + 2 * HOUR)
#define SUB_A       "c79389af-7d1e-4f0b-9c51-2f1f8c7a1e01"
#define SUB_B       "0c4b2a11-5e6f-4a3b-8c9d-1e2f3a4b5c6d"
#define TENANT_A    "dbab3982-1111-4c3b-9a1e-0a1b2c3d4e5f"
#define CUSTOMER_A  "e09a4e93-29a7-4b1c-8f3e-0d1c2b3a4f5e"
#define DEFAULT_SUB "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
#define REGISTRATION                                                                               \
	"/subscriptions/" DEFAULT_SUB "/resourcegroups/azurestack/providers/microsoft.azurestack/" \
	"registrations/azurestack-1"
#define METER "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5"
#define REGISTRATION_ID \
	"/subscriptions/x/resourcegroups/azurestack/providers/microsoft.azurestack/registrations/r"

/* Version-1 DDL exactly as the first release wrote it (kept here, independent of store.c). */
static const char v1_ddl[] =
        "PRAGMA application_id = 1096438613;"
        "CREATE TABLE records (id INTEGER PRIMARY KEY, state INTEGER NOT NULL, key TEXT NOT NULL,"
        " reported_hour INTEGER NOT NULL, subscription_id TEXT, meter_id TEXT, quantity TEXT,"
        " usage_start INTEGER NOT NULL DEFAULT 0, usage_end INTEGER NOT NULL DEFAULT 0,"
        " resource_uri TEXT, location TEXT, tags TEXT, additional_info TEXT, raw TEXT,"
        " event_size INTEGER NOT NULL, tenant_id TEXT, charged_subscription TEXT,"
        " charge_reason TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt_at INTEGER NOT NULL, batch_id TEXT, error_code TEXT, error_message TEXT,"
        " forward_status TEXT, collected_at INTEGER NOT NULL, forwarded_at INTEGER,"
        " conflict_of INTEGER REFERENCES records(id) ON DELETE CASCADE,"
        " adjustment_of INTEGER REFERENCES records(id) ON DELETE SET NULL);"
        "CREATE UNIQUE INDEX records_hour_key ON records(reported_hour, key)"
        " WHERE conflict_of IS NULL;"
        "CREATE INDEX records_due ON records(state, next_attempt_at) WHERE state <> 3;"
        "CREATE INDEX records_batch ON records(batch_id) WHERE batch_id IS NOT NULL;"
        "CREATE INDEX records_pending_age ON records(state, collected_at) WHERE state = 0;"
        "CREATE INDEX records_forwarded ON records(state, forwarded_at) WHERE state = 3;"
        "CREATE INDEX records_conflict_of ON records(conflict_of) WHERE conflict_of IS NOT NULL;"
        "CREATE INDEX records_adjustment_of ON records(adjustment_of)"
        " WHERE adjustment_of IS NOT NULL;"
        "CREATE TABLE counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
        "INSERT INTO counts(state, n) VALUES (0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0),"
        " (6, 0);"
        "CREATE TABLE hours (hour INTEGER NOT NULL, scope TEXT NOT NULL, pass INTEGER NOT NULL,"
        " next_link TEXT, due_at INTEGER NOT NULL, PRIMARY KEY (hour, scope)) WITHOUT ROWID;"
        "CREATE INDEX hours_due ON hours(due_at);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
        "CREATE TABLE subscriptions (subscription_id TEXT PRIMARY KEY, tenant_id TEXT,"
        " display_name TEXT, owner TEXT, state TEXT) WITHOUT ROWID;"
        "CREATE TABLE registration (id TEXT NOT NULL, default_subscription TEXT NOT NULL,"
        " raw TEXT, refreshed_at INTEGER NOT NULL);"
        "CREATE TABLE customer_subscriptions (subscription_id TEXT PRIMARY KEY,"
        " tenant_id TEXT NOT NULL) WITHOUT ROWID;"
        "CREATE INDEX customer_subscriptions_tenant ON customer_subscriptions(tenant_id);"
        "CREATE TABLE facts (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
        "PRAGMA user_version = 1;";

struct fixture {
	char dir[64];
	char path[128];
	struct store *store;
};

/* Test data for records: owned strings built per test. */
struct rec_data {
	char key[HASH_SHA256_HEX_LEN + 1];
	char quantity[32];
	char uri[128];
	char raw[256];
	struct store_record rec;
};

/* Mapping callback state. */
struct map_state {
	unsigned calls;
	bool hold_b;              /* hold records of SUB_B as ambiguous */
	const char *registration; /* of the records not of SUB_A; NULL: REGISTRATION */
};

/* Make a record with a key derived from seed. */
static void
rec_init(struct rec_data *d, unsigned seed, const char *subscription, const char *quantity)
{
	char in[64];

	snprintf(in, sizeof(in), "record-%u", seed);
	hash_sha256_hex(in, strlen(in), d->key);
	snprintf(d->quantity, sizeof(d->quantity), "%s", quantity);
	snprintf(d->uri, sizeof(d->uri), "/subscriptions/%s/virtualmachines/vm%u", subscription,
	         seed);
	snprintf(d->raw, sizeof(d->raw), "{\"name\":\"rec%u\",\"quantity\":%s}", seed, quantity);
	d->rec = (struct store_record){
	        .state = STORE_PENDING,
	        .key = d->key,
	        .reported_hour = T0,
	        .subscription_id = (char *)subscription,
	        .meter_id = (char *)METER,
	        .quantity = d->quantity,
	        .usage_start = T0 - HOUR,
	        .usage_end = T0,
	        .resource_uri = d->uri,
	        .location = (char *)"local",
	        .raw = d->raw,
	};
}

/* Put records as one final page of hour T0 (leaving the schedule). */
static int
put(struct store *s, struct rec_data *d, size_t n, struct store_page_result *res)
{
	struct store_record recs[64];
	struct store_page page = {
	        .reported_hour = T0,
	        .scope = "",
	        .records = recs,
	        .n_records = n,
	        .now = NOW,
	};

	assert_true(n <= ARRAY_SIZE(recs));
	for (size_t i = 0; i < n; i++)
		recs[i] = d[i].rec;
	return store_put_page(s, &page, res);
}

/* Charge mapping for tests: SUB_A is registered to CUSTOMER_A, everything else default. */
static int
map_cb(void *userdata, const struct store_record *r, struct store_charge *ret)
{
	struct map_state *m = userdata;

	m->calls++;
	if (m->hold_b && streq(r->subscription_id, SUB_B)) {
		*ret = (struct store_charge){.reason = "ambiguous", .hold = true};
		return 0;
	}
	if (streq(r->subscription_id, SUB_A))
		*ret = (struct store_charge){.charged_subscription = CUSTOMER_A,
		                             .tenant_id = TENANT_A,
		                             .reason = "registered",
		                             .registration = REGISTRATION};
	else
		*ret = (struct store_charge){.charged_subscription = DEFAULT_SUB,
		                             .reason = "default",
		                             .registration = m->registration ? m->registration
		                                                             : REGISTRATION};
	return 0;
}

/* Claim with the test mapping. */
static void
claim(struct store *s, struct map_state *m, size_t max_records, uint64_t max_bytes, int64_t now,
      struct store_batch *b)
{
	struct store_claim c = {
	        .max_records = max_records,
	        .max_bytes = max_bytes,
	        .now = now,
	        .map = map_cb,
	        .userdata = m,
	};

	assert_int_equal(store_claim_batch(s, &c, b), 0);
}

/* Open the test's own read-only connection. */
static sqlite3 *
side_open(const char *path)
{
	sqlite3 *db = NULL;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	return db;
}

/* One integer from a query on the side connection. */
static int64_t
side_int(const char *path, const char *sql)
{
	sqlite3 *db = side_open(path);
	sqlite3_stmt *st = NULL;
	int64_t v;

	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* Assert that quick_check on the side connection answers exactly "ok". */
static void
side_quick_check_ok(const char *path)
{
	sqlite3 *db = side_open(path);
	sqlite3_stmt *st = NULL;

	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	sqlite3_close(db);
}

/* Compare the store's counts with COUNT(*) by state on the side connection. */
static void
check_counts(struct fixture *f)
{
	struct store_counts c;
	uint64_t expect[_STORE_STATE_MAX] = {0};
	sqlite3 *db = side_open(f->path);
	sqlite3_stmt *st = NULL;

	assert_int_equal(
	        sqlite3_prepare_v2(db,
	                           "SELECT state, count(*) FROM records WHERE discarded = 0"
	                           " GROUP BY state",
	                           -1, &st, NULL),
	        SQLITE_OK);
	while (sqlite3_step(st) == SQLITE_ROW) {
		int state = sqlite3_column_int(st, 0);

		assert_in_range(state, 0, _STORE_STATE_MAX - 1);
		expect[state] = (uint64_t)sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	assert_int_equal(store_counts(f->store, &c), 0);
	for (int i = 0; i < _STORE_STATE_MAX; i++)
		if (c.by_state[i] != expect[i])
			fail_msg("count of %s: store %" PRIu64 ", COUNT(*) %" PRIu64,
			         store_state_to_string(i), c.by_state[i], expect[i]);
}

/* Assert one count. */
static void
assert_count(struct store *s, enum store_state state, uint64_t n)
{
	struct store_counts c;

	assert_int_equal(store_counts(s, &c), 0);
	assert_int_equal(c.by_state[state], n);
}

/* Read a whole file into a new buffer. */
static char *
slurp(const char *path, size_t *ret_size)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n >= 0);
	rewind(f);
	buf = xmalloc((size_t)n + 1);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*ret_size = (size_t)n;
	return buf;
}

/* Write a buffer as a whole file. */
static void
spill(const char *path, const void *data, size_t size)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, size, f), size);
	assert_int_equal(fclose(f), 0);
}

/* Open f->path read-write into f->store. */
static void
reopen(struct fixture *f)
{
	struct store_options o = {.path = f->path};
	_cleanup_free_ char *err = NULL;

	f->store = store_free(f->store);
	if (store_open(&o, &f->store, &err) < 0)
		fail_msg("store_open: %s", err);
}

/* Set up a fresh store in a temporary directory. */
static int
setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));

	snprintf(f->dir, sizeof(f->dir), "/tmp/test-store-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/usage.db", f->dir);
	reopen(f);
	*state = f;
	return 0;
}

/* Close the store and remove its directory. */
static int
teardown(void **state)
{
	struct fixture *f = *state;
	const char *suffix[] = {"", "-wal", "-shm", ".copy"};
	char p[160];

	store_free(f->store);
	for (size_t i = 0; i < ARRAY_SIZE(suffix); i++) {
		snprintf(p, sizeof(p), "%s%s", f->path, suffix[i]);
		unlink(p);
	}
	rmdir(f->dir);
	free(f);
	return 0;
}

/* A fresh store is at the current schema version, in WAL mode. */
static void
test_store_open_creates_current_schema(void **state)
{
	struct fixture *f = *state;
	int v = 0;
	sqlite3 *db;
	sqlite3_stmt *st = NULL;

	assert_int_equal(store_schema_version(f->store, &v), 0);
	assert_int_equal(v, STORE_SCHEMA_VERSION);
	assert_int_equal(v, 3);
	db = side_open(f->path);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	sqlite3_close(db);
	check_counts(f);
}

/* New keys are inserted; the same keys again are duplicates, by value. */
static void
test_store_put_page_counts_duplicates(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[3];
	struct store_page_result res;

	rec_init(&d[0], 1, SUB_A, "2.4000000000");
	rec_init(&d[1], 2, SUB_A, "1");
	rec_init(&d[2], 3, SUB_B, "0.5");
	assert_int_equal(put(f->store, d, 3, &res), 0);
	assert_int_equal(res.inserted, 3);
	assert_int_equal(res.duplicates, 0);
	assert_count(f->store, STORE_PENDING, 3);
	check_counts(f);

	snprintf(d[0].quantity, sizeof(d[0].quantity), "2.4"); /* equal by value */
	snprintf(d[1].quantity, sizeof(d[1].quantity), "1.000");
	assert_int_equal(put(f->store, d, 3, &res), 0);
	assert_int_equal(res.inserted, 0);
	assert_int_equal(res.duplicates, 3);
	assert_int_equal(res.conflicts, 0);
	assert_count(f->store, STORE_PENDING, 3);
	check_counts(f);
}

/* A changed quantity is one conflict row beside the original, however often it is seen. */
static void
test_store_put_page_conflict_once(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_page_result res;
	struct store_record r = {0};

	rec_init(&d, 1, SUB_A, "2.4");
	assert_int_equal(put(f->store, &d, 1, &res), 0);
	snprintf(d.quantity, sizeof(d.quantity), "3.0");
	assert_int_equal(put(f->store, &d, 1, &res), 0);
	assert_int_equal(res.conflicts, 1);
	assert_int_equal(res.inserted, 0);
	check_counts(f);

	snprintf(d.quantity, sizeof(d.quantity), "3"); /* the same change, seen again */
	assert_int_equal(put(f->store, &d, 1, &res), 0);
	assert_int_equal(res.conflicts, 0);
	assert_int_equal(res.duplicates, 1);
	assert_count(f->store, STORE_CONFLICT, 1);
	assert_count(f->store, STORE_PENDING, 1);
	check_counts(f);

	assert_int_equal(store_record_find(f->store, d.key, STORE_CONFLICT, &r), 0);
	assert_string_equal(r.quantity, "3.0");
	assert_true(r.conflict_of > 0);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records"), 2);
	store_record_done(&r);
	/* both rows carry the key */
	assert_int_equal(store_record_find(f->store, d.key, -1, &r), -ENOTUNIQ);
}

/* A page that fails part-way stores neither records nor cursor. */
static void
test_store_put_page_failure_changes_nothing(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[3];
	struct store_record recs[3];
	struct store_page_result res = {.inserted = 77};
	struct store_hour *hours = NULL;
	size_t n = 99;
	int64_t cursor;
	struct store_page page = {
	        .reported_hour = T0,
	        .scope = "",
	        .next_link = "https://stack/next?continuationToken=abc%3d",
	        .records = recs,
	        .n_records = 3,
	        .now = NOW,
	};

	for (unsigned i = 0; i < 3; i++) {
		rec_init(&d[i], i, SUB_A, "1.5");
		recs[i] = d[i].rec;
	}
	recs[2].key = NULL;
	assert_int_equal(store_put_page(f->store, &page, &res), -EINVAL);
	assert_int_equal(res.inserted, 77); /* not written on failure */
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records"), 0);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM hours"), 0);
	assert_int_equal(store_cursor_hour(f->store, &cursor), -ENOENT);
	assert_int_equal(store_hours_due(f->store, NOW, 10, &hours, &n), 0);
	assert_int_equal(n, 0);
	free(hours);
	check_counts(f);

	/* the same page without the bad record goes through, cursor and all */
	page.n_records = 2;
	assert_int_equal(store_put_page(f->store, &page, &res), 0);
	assert_int_equal(res.inserted, 2);
	assert_int_equal(store_cursor_hour(f->store, &cursor), 0);
	assert_int_equal(cursor, T0);
	check_counts(f);
}

/* Put one record changed by edit; the page must be refused and leave nothing behind. */
static void
put_refused(struct fixture *f, void (*edit)(struct store_record *r, struct store_page *p))
{
	struct rec_data d;
	struct store_page_result res = {0};
	struct store_page page = {.reported_hour = T0, .scope = "", .n_records = 1, .now = NOW};

	rec_init(&d, 7, SUB_A, "1.5");
	page.records = &d.rec;
	edit(&d.rec, &page);
	assert_int_equal(store_put_page(f->store, &page, &res), -EINVAL);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records"), 0);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM hours"), 0);
	check_counts(f);
}

static void
edit_state_dead(struct store_record *r, struct store_page *p)
{
	r->state = STORE_DEAD;
}
static void
edit_state_forwarded(struct store_record *r, struct store_page *p)
{
	r->state = STORE_FORWARDED;
}
static void
edit_key_upper(struct store_record *r, struct store_page *p)
{
	static char key[HASH_SHA256_HEX_LEN + 1];

	for (size_t i = 0; i <= HASH_SHA256_HEX_LEN; i++)
		key[i] = (char)toupper((unsigned char)r->key[i]);
	r->key = key;
}
static void
edit_key_short(struct store_record *r, struct store_page *p)
{
	r->key = "abc123";
}
static void
edit_hour_off(struct store_record *r, struct store_page *p)
{
	p->reported_hour = T0 + 60;
}
static void
edit_scope_null(struct store_record *r, struct store_page *p)
{
	p->scope = NULL;
}
static void
edit_quantity_bad(struct store_record *r, struct store_page *p)
{
	r->quantity = "2,4";
}
static void
edit_quantity_negative(struct store_record *r, struct store_page *p)
{
	r->quantity = "-0.5";
}
static void
edit_quantity_null(struct store_record *r, struct store_page *p)
{
	r->quantity = NULL;
}
static void
edit_subscription_empty(struct store_record *r, struct store_page *p)
{
	r->subscription_id = "";
}
static void
edit_meter_null(struct store_record *r, struct store_page *p)
{
	r->meter_id = NULL;
}

/* Every kind of bad record or page is refused whole. */
static void
test_store_put_page_refuses_bad_input(void **state)
{
	struct fixture *f = *state;

	put_refused(f, edit_state_dead);
	put_refused(f, edit_state_forwarded);
	put_refused(f, edit_key_upper);
	put_refused(f, edit_key_short);
	put_refused(f, edit_hour_off);
	put_refused(f, edit_scope_null);
	put_refused(f, edit_quantity_bad);
	put_refused(f, edit_quantity_negative);
	put_refused(f, edit_quantity_null);
	put_refused(f, edit_subscription_empty);
	put_refused(f, edit_meter_null);
}

/* A quantity in exponent or other non-plain notation is stored as plain decimal text. */
static void
test_store_put_page_normalises_quantity(void **state)
{
	static const struct {
		const char *in, *stored;
	} cases[] = {
	        {"2.4000000000", "2.4000000000"},
	        {"1e3", "1000"},
	        {"1.5E-3", "0.0015"},
	        {".5", "0.5"},
	        {"+7", "7"},
	        {"0", "0"},
	        {"12345678901234567.8", "12345678901234567.8"},
	};
	struct fixture *f = *state;
	struct store_page_result res;

	for (unsigned i = 0; i < ARRAY_SIZE(cases); i++) {
		struct rec_data d;
		struct store_record r = {0};

		rec_init(&d, 100 + i, SUB_A, cases[i].in);
		assert_int_equal(put(f->store, &d, 1, &res), 0);
		assert_int_equal(res.inserted, 1);
		assert_int_equal(store_record_find(f->store, d.key, STORE_PENDING, &r), 0);
		assert_string_equal(r.quantity, cases[i].stored);
		store_record_done(&r);
		/* the literal seen again is the same value: a duplicate, not a conflict */
		assert_int_equal(put(f->store, &d, 1, &res), 0);
		assert_int_equal(res.duplicates, 1);
		assert_int_equal(res.conflicts, 0);
	}
	check_counts(f);
}

/* The hour's next link, its finishing with a look-back due, and leaving the schedule. */
static void
test_store_put_page_moves_cursor(void **state)
{
	struct fixture *f = *state;
	struct store_hour *hours = NULL;
	size_t n = 0;
	int64_t cursor = 0;
	struct store_page page = {.reported_hour = T0, .scope = "", .now = NOW};

	assert_int_equal(store_hour_schedule(f->store, T0, "", NOW - 60), 0);
	assert_int_equal(store_hour_schedule(f->store, T0 + HOUR, "", NOW + HOUR), 0);
	assert_int_equal(store_hour_schedule(f->store, T0, "", NOW + 999), 0); /* there already */
	assert_int_equal(store_cursor_hour(f->store, &cursor), 0);
	assert_int_equal(cursor, T0 + HOUR);

	assert_int_equal(store_hours_due(f->store, NOW, 10, &hours, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(hours[0].hour, T0);
	assert_int_equal(hours[0].due_at, NOW - 60);
	assert_null(hours[0].next_link);
	store_hour_done(&hours[0]);
	free(hours);

	page.next_link = "https://stack/page2";
	assert_int_equal(store_put_page(f->store, &page, NULL), 0);
	assert_int_equal(store_hours_due(f->store, NOW, 10, &hours, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(hours[0].next_link, "https://stack/page2");
	assert_int_equal(hours[0].pass, 0);
	store_hour_done(&hours[0]);
	free(hours);

	page.next_link = NULL;
	page.next_due_at = NOW + 6 * HOUR;
	assert_int_equal(store_put_page(f->store, &page, NULL), 0);
	assert_int_equal(store_hours_due(f->store, NOW, 10, &hours, &n), 0);
	assert_int_equal(n, 0);
	free(hours);
	assert_int_equal(store_hours_due(f->store, NOW + 6 * HOUR, 10, &hours, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(hours[0].hour, T0);
	assert_int_equal(hours[0].pass, 1);
	assert_null(hours[0].next_link);
	for (size_t i = 0; i < n; i++)
		store_hour_done(&hours[i]);
	free(hours);

	page.pass = 1;
	page.next_due_at = 0;
	assert_int_equal(store_put_page(f->store, &page, NULL), 0);
	assert_int_equal(store_hours_due(f->store, NOW + 6 * HOUR, 1, &hours, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(hours[0].hour, T0 + HOUR);
	store_hour_done(&hours[0]);
	free(hours);
	assert_int_equal(store_cursor_hour(f->store, &cursor), 0);
	assert_int_equal(cursor, T0 + HOUR);
}

/* Quarantined records keep reason and raw text and are never claimed. */
static void
test_store_put_page_quarantine(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[2];
	struct store_page_result res;
	struct store_record r = {0};
	struct store_batch b;
	struct map_state m = {0};

	rec_init(&d[0], 1, SUB_A, "1");
	rec_init(&d[1], 2, SUB_A, "NaN");
	d[1].rec.state = STORE_QUARANTINED;
	d[1].rec.error_message = (char *)"quantity: not a finite decimal";
	assert_int_equal(put(f->store, d, 2, &res), 0);
	assert_int_equal(res.inserted, 1);
	assert_int_equal(res.quarantined, 1);
	assert_count(f->store, STORE_QUARANTINED, 1);
	check_counts(f);

	assert_int_equal(store_record_find(f->store, d[1].key, STORE_QUARANTINED, &r), 0);
	assert_string_equal(r.error_code, "invalid-record");
	assert_string_equal(r.error_message, "quantity: not a finite decimal");
	assert_string_equal(r.raw, d[1].raw);
	store_record_done(&r);

	/* seen again: counted as a duplicate, not a conflict */
	assert_int_equal(put(f->store, d, 2, &res), 0);
	assert_int_equal(res.duplicates, 2);

	/* too broken for a key: stored under the hash of what was received, once */
	d[1].rec.key = NULL;
	d[1].rec.error_message = (char *)"subscriptionId: not a GUID";
	assert_int_equal(put(f->store, &d[1], 1, &res), 0);
	assert_int_equal(res.quarantined, 1);
	assert_int_equal(put(f->store, &d[1], 1, &res), 0);
	assert_int_equal(res.duplicates, 1);
	assert_count(f->store, STORE_QUARANTINED, 2);
	check_counts(f);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records WHERE error_message ="
	                                   " 'subscriptionId: not a GUID' AND length(key) = 64"),
	                 1);

	claim(f->store, &m, 100, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	assert_string_equal(b.records[0].key, d[0].key);
	store_batch_done(&b);
	claim(f->store, &m, 100, 0, NOW, &b);
	assert_int_equal(b.n_records, 0);
	assert_count(f->store, STORE_QUARANTINED, 2);
	check_counts(f);
}

/* pending -> inflight -> forwarded, with the charge frozen on the record. */
static void
test_store_claim_batch_forwarded(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[3];
	struct store_batch b;
	struct map_state m = {0};
	struct store_outcome o[3];
	struct store_record r = {0};
	size_t applied = 0;
	int64_t t;

	rec_init(&d[0], 1, SUB_A, "1");
	rec_init(&d[1], 2, SUB_B, "2");
	rec_init(&d[2], 3, SUB_A, "3");
	assert_int_equal(put(f->store, d, 3, NULL), 0);
	assert_int_equal(store_next_due(f->store, &t), 0);
	assert_int_equal(t, NOW);
	assert_int_equal(store_oldest_pending(f->store, &t), 0);
	assert_int_equal(t, NOW);

	claim(f->store, &m, 500, 4 << 20, NOW, &b);
	assert_int_equal(b.n_records, 3);
	assert_int_equal(m.calls, 3);
	assert_int_equal(strlen(b.batch_id), STORE_BATCH_ID_LEN);
	assert_int_equal(b.attempts, 0);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(b.records[i].state, STORE_INFLIGHT);
		assert_string_equal(b.records[i].batch_id, b.batch_id);
	}
	assert_string_equal(b.records[0].charged_subscription, CUSTOMER_A);
	assert_string_equal(b.records[0].charge_reason, "registered");
	assert_string_equal(b.records[0].tenant_id, TENANT_A);
	assert_string_equal(b.records[1].charged_subscription, DEFAULT_SUB);
	assert_null(b.records[1].tenant_id);
	assert_count(f->store, STORE_INFLIGHT, 3);
	assert_int_equal(store_next_due(f->store, &t), -ENOENT);
	assert_int_equal(store_oldest_pending(f->store, &t), -ENOENT);
	check_counts(f);

	for (size_t i = 0; i < 3; i++)
		o[i] = (struct store_outcome){.id = b.records[i].id,
		                              .kind = STORE_OUTCOME_FORWARDED,
		                              .status = i == 1 ? "Duplicate" : "Accepted"};
	/* a wrong batch id applies nothing */
	assert_int_equal(store_apply_outcomes(f->store, "00000000-0000-4000-8000-000000000000", o,
	                                      3, NOW + 5, &applied),
	                 0);
	assert_int_equal(applied, 0);
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, o, 3, NOW + 5, &applied), 0);
	assert_int_equal(applied, 3);
	assert_count(f->store, STORE_FORWARDED, 3);
	assert_count(f->store, STORE_INFLIGHT, 0);
	check_counts(f);
	/* applying again skips records no longer inflight */
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, o, 3, NOW + 6, &applied), 0);
	assert_int_equal(applied, 0);
	check_counts(f);

	assert_int_equal(store_record_find(f->store, d[1].key, STORE_FORWARDED, &r), 0);
	assert_string_equal(r.forward_status, "Duplicate");
	assert_int_equal(r.forwarded_at, NOW + 5);
	assert_int_equal(r.attempts, 1);
	assert_string_equal(r.batch_id, b.batch_id);
	store_record_done(&r);
	store_batch_done(&b);
}

/* inflight -> dead with Commerce's code and message. */
static void
test_store_apply_outcomes_dead(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_batch b;
	struct map_state m = {0};
	struct store_record r = {0};
	size_t applied = 0;

	rec_init(&d, 1, SUB_A, "1");
	assert_int_equal(put(f->store, &d, 1, NULL), 0);
	claim(f->store, &m, 500, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id,
	                                      &(struct store_outcome){
	                                              .id = b.records[0].id,
	                                              .kind = STORE_OUTCOME_DEAD,
	                                              .error_code = "ResourceNotFound",
	                                              .error_message = "no such resource",
	                                      },
	                                      1, NOW, &applied),
	                 0);
	assert_int_equal(applied, 1);
	assert_count(f->store, STORE_DEAD, 1);
	check_counts(f);
	assert_int_equal(store_record_find(f->store, d.key, STORE_DEAD, &r), 0);
	assert_string_equal(r.error_code, "ResourceNotFound");
	assert_string_equal(r.error_message, "no such resource");
	store_record_done(&r);
	store_batch_done(&b);
}

/* A retried batch goes back to pending, attempts + 1, and is re-claimed under the same id. */
static void
test_store_apply_outcomes_retry_keeps_batch(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[4];
	struct store_batch b, b2;
	struct map_state m = {0};
	struct store_outcome o[2];
	size_t applied = 0;
	int64_t t;
	char split_id[STORE_BATCH_ID_LEN + 1];

	for (unsigned i = 0; i < 4; i++)
		rec_init(&d[i], i, SUB_A, "1");
	assert_int_equal(put(f->store, d, 2, NULL), 0);
	claim(f->store, &m, 500, 0, NOW, &b);
	assert_int_equal(b.n_records, 2);
	for (size_t i = 0; i < 2; i++)
		o[i] = (struct store_outcome){.id = b.records[i].id,
		                              .kind = STORE_OUTCOME_RETRY,
		                              .next_attempt_at = NOW + 60,
		                              .error_code = "Error"};
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, o, 2, NOW, &applied), 0);
	assert_int_equal(applied, 2);
	assert_count(f->store, STORE_PENDING, 2);
	check_counts(f);
	assert_int_equal(store_next_due(f->store, &t), 0);
	assert_int_equal(t, NOW + 60);

	/* new records arrive; the retried batch is not due yet, so they form a new batch */
	assert_int_equal(put(f->store, &d[2], 2, NULL), 0);
	claim(f->store, &m, 500, 0, NOW + 1, &b2);
	assert_int_equal(b2.n_records, 2);
	assert_string_not_equal(b2.batch_id, b.batch_id);
	assert_string_equal(b2.records[0].key, d[2].key);
	store_batch_done(&b2);

	claim(f->store, &m, 500, 0, NOW + 30, &b2);
	assert_int_equal(b2.n_records, 0);
	m.calls = 0;
	claim(f->store, &m, 1, 0, NOW + 60, &b2); /* a retried batch is re-sent whole */
	assert_int_equal(b2.n_records, 2);
	assert_string_equal(b2.batch_id, b.batch_id);
	assert_int_equal(b2.attempts, 1);
	assert_int_equal(b2.records[0].attempts, 1);
	assert_int_equal(m.calls, 0); /* the frozen charge is reused */
	assert_string_equal(b2.records[0].charged_subscription, CUSTOMER_A);
	check_counts(f);

	/* a split: one half gets a new batch id */
	assert_int_equal(hash_uuid4(split_id), 0);
	o[0] = (struct store_outcome){.id = b2.records[0].id,
	                              .kind = STORE_OUTCOME_RETRY,
	                              .next_attempt_at = NOW + 61,
	                              .new_batch_id = split_id};
	o[1] = (struct store_outcome){
	        .id = b2.records[1].id, .kind = STORE_OUTCOME_RETRY, .next_attempt_at = NOW + 62};
	assert_int_equal(store_apply_outcomes(f->store, b2.batch_id, o, 2, NOW + 60, &applied), 0);
	store_batch_done(&b2);
	claim(f->store, &m, 500, 0, NOW + 100, &b2);
	assert_int_equal(b2.n_records, 1);
	assert_string_equal(b2.batch_id, split_id);
	assert_int_equal(b2.attempts, 2);
	store_batch_done(&b2);
	claim(f->store, &m, 500, 0, NOW + 100, &b2);
	assert_int_equal(b2.n_records, 1);
	assert_string_equal(b2.batch_id, b.batch_id);
	store_batch_done(&b2);
	check_counts(f);
	store_batch_done(&b);
}

/* At start, inflight records return to pending with their batch id; the re-claim reuses it. */
static void
test_store_reset_inflight_keeps_batch_id(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[3];
	struct store_batch b, b2;
	struct map_state m = {0};
	size_t n = 0;

	for (unsigned i = 0; i < 3; i++)
		rec_init(&d[i], i, i == 1 ? SUB_B : SUB_A, "4.25");
	assert_int_equal(put(f->store, d, 3, NULL), 0);
	claim(f->store, &m, 500, 0, NOW, &b);
	assert_int_equal(b.n_records, 3);
	reopen(f); /* a restart */
	assert_int_equal(store_reset_inflight(f->store, &n), 0);
	assert_int_equal(n, 3);
	assert_count(f->store, STORE_PENDING, 3);
	assert_count(f->store, STORE_INFLIGHT, 0);
	check_counts(f);

	m.calls = 0;
	claim(f->store, &m, 2, 0, NOW + 1, &b2);
	assert_int_equal(b2.n_records, 3);
	assert_string_equal(b2.batch_id, b.batch_id);
	assert_int_equal(m.calls, 0);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(b2.records[i].id, b.records[i].id);
		assert_string_equal(b2.records[i].charged_subscription,
		                    b.records[i].charged_subscription);
	}
	check_counts(f);
	store_batch_done(&b2);
	store_batch_done(&b);
}

/* Held records (ambiguous mapping) wait until unheld, then are mapped again. */
static void
test_store_claim_batch_holds_and_unhold(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[3];
	struct store_batch b;
	struct map_state m = {.hold_b = true};
	struct store_record r = {0};
	uint64_t backlog = 0;
	size_t n = 0;

	rec_init(&d[0], 1, SUB_B, "1");
	rec_init(&d[1], 2, SUB_A, "1");
	rec_init(&d[2], 3, SUB_B, "1");
	assert_int_equal(put(f->store, d, 3, NULL), 0);
	claim(f->store, &m, 1, 0, NOW, &b);
	assert_int_equal(b.n_records, 1); /* held records do not use up the batch */
	assert_string_equal(b.records[0].key, d[1].key);
	assert_count(f->store, STORE_HELD, 1);
	check_counts(f);
	store_batch_done(&b);
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(b.n_records, 0);
	assert_count(f->store, STORE_HELD, 2);
	assert_int_equal(store_backlog(f->store, &backlog), 0);
	assert_int_equal(backlog, 3);
	check_counts(f);

	assert_int_equal(store_record_find(f->store, d[0].key, STORE_HELD, &r), 0);
	assert_string_equal(r.error_code, "ambiguous");
	assert_null(r.charged_subscription);
	store_record_done(&r);

	assert_int_equal(store_unhold_all(f->store, NOW + 10, &n), 0);
	assert_int_equal(n, 2);
	{
		_cleanup_free_ char *q = xasprintf("SELECT count(*) FROM history WHERE action ="
		                                   " 'unhold' AND at = %" PRId64,
		                                   NOW + 10);

		assert_int_equal(side_int(f->path, q), 1);
	}
	assert_count(f->store, STORE_HELD, 0);
	assert_count(f->store, STORE_PENDING, 2);
	check_counts(f);
	assert_int_equal(store_record_find(f->store, d[0].key, STORE_PENDING, &r), 0);
	assert_null(r.error_code);
	store_record_done(&r);

	m.hold_b = false;
	m.calls = 0;
	claim(f->store, &m, 10, 0, NOW + 10, &b);
	assert_int_equal(b.n_records, 2);
	assert_int_equal(m.calls, 2);
	assert_string_equal(b.records[0].charge_reason, "default");
	store_batch_done(&b);
	check_counts(f);
}

/* max_records and max_bytes bound a new batch; one record always goes. */
static void
test_store_claim_batch_limits(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[10];
	struct store_batch b;
	struct map_state m = {0};
	int64_t size;

	for (unsigned i = 0; i < 10; i++)
		rec_init(&d[i], i, SUB_A, "1.25");
	assert_int_equal(put(f->store, d, 10, NULL), 0);
	size = side_int(f->path, "SELECT max(event_size) FROM records");
	assert_int_equal(size, side_int(f->path, "SELECT min(event_size) FROM records"));
	assert_true(size > 640);

	claim(f->store, &m, 3, 0, NOW, &b);
	assert_int_equal(b.n_records, 3);
	assert_string_equal(b.records[0].key, d[0].key); /* oldest first */
	store_batch_done(&b);
	claim(f->store, &m, 100, (uint64_t)(2 * size + size / 2), NOW, &b);
	assert_int_equal(b.n_records, 2);
	store_batch_done(&b);
	claim(f->store, &m, 100, 1, NOW, &b);
	assert_int_equal(b.n_records, 1);
	store_batch_done(&b);
	claim(f->store, &m, 100, (uint64_t)(4 * size), NOW, &b);
	assert_int_equal(b.n_records, 4);
	store_batch_done(&b);
	claim(f->store, &m, 100, 0, NOW, &b);
	assert_int_equal(b.n_records, 0);
	assert_count(f->store, STORE_INFLIGHT, 10);
	check_counts(f);
}

/* Send a record through claim to forwarded or dead; returns its id. */
static int64_t
drive(struct store *s, struct rec_data *d, enum store_outcome_kind kind)
{
	struct store_batch b;
	struct map_state m = {0};
	int64_t id;

	assert_int_equal(put(s, d, 1, NULL), 0);
	claim(s, &m, 1, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	assert_string_equal(b.records[0].key, d->key);
	id = b.records[0].id;
	assert_int_equal(store_apply_outcomes(s, b.batch_id,
	                                      &(struct store_outcome){.id = id,
	                                                              .kind = kind,
	                                                              .status = "Accepted",
	                                                              .error_code = "Expired",
	                                                              .error_message = "too old"},
	                                      1, NOW, NULL),
	                 0);
	store_batch_done(&b);
	return id;
}

/* A malformed outcome refuses the whole batch's outcomes: nothing of them is applied. */
static void
test_store_apply_outcomes_refuses_bad_input(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[2];
	struct store_batch b;
	struct map_state m = {0};
	struct store_outcome o[2];

	rec_init(&d[0], 1, SUB_A, "1");
	rec_init(&d[1], 2, SUB_A, "1");
	assert_int_equal(put(f->store, d, 2, NULL), 0);
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(b.n_records, 2);
	o[0] = (struct store_outcome){
	        .id = b.records[0].id, .kind = STORE_OUTCOME_FORWARDED, .status = "Accepted"};

	o[1] = (struct store_outcome){.id = b.records[1].id, .kind = STORE_OUTCOME_FORWARDED};
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, o, 2, NOW, NULL), -EINVAL);
	o[1] = (struct store_outcome){
	        .id = b.records[1].id, .kind = STORE_OUTCOME_RETRY, .new_batch_id = "short"};
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, o, 2, NOW, NULL), -EINVAL);
	o[1] = (struct store_outcome){.id = b.records[1].id, .kind = (enum store_outcome_kind)99};
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, o, 2, NOW, NULL), -EINVAL);
	assert_int_equal(store_apply_outcomes(f->store, NULL, o, 1, NOW, NULL), -EINVAL);
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, NULL, 1, NOW, NULL), -EINVAL);

	assert_count(f->store, STORE_INFLIGHT, 2); /* the good first outcome was rolled back */
	assert_count(f->store, STORE_FORWARDED, 0);
	assert_int_equal(side_int(f->path, "SELECT max(attempts) FROM records"), 0);
	check_counts(f);
	store_batch_done(&b);
}

/* Dead letters: retry back to pending with history, discard only with a reason. */
static void
test_store_dead_retry_and_discard(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[3];
	struct store_record r = {0};
	struct store_history *h = NULL;
	size_t n = 0;
	int64_t id0, id1;

	for (unsigned i = 0; i < 3; i++)
		rec_init(&d[i], i, SUB_A, "1");
	id0 = drive(f->store, &d[0], STORE_OUTCOME_DEAD);
	id1 = drive(f->store, &d[1], STORE_OUTCOME_DEAD);
	(void)drive(f->store, &d[2], STORE_OUTCOME_FORWARDED);
	assert_count(f->store, STORE_DEAD, 2);
	check_counts(f);

	assert_int_equal(
	        store_dead_retry(f->store, id0, "azs-usagectl:ops", "resource restored", NOW + 100),
	        0);
	assert_count(f->store, STORE_DEAD, 1);
	assert_count(f->store, STORE_PENDING, 1);
	check_counts(f);
	assert_int_equal(store_record_find(f->store, d[0].key, -1, &r), 0);
	assert_int_equal(r.state, STORE_PENDING);
	assert_int_equal(r.next_attempt_at, NOW + 100);
	assert_null(r.batch_id);
	assert_null(r.error_code);
	assert_null(r.charged_subscription);
	store_record_done(&r);
	assert_int_equal(store_record_history(f->store, id0, &h, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(h[0].actor, "azs-usagectl:ops");
	assert_string_equal(h[0].action, "dead-retry");
	assert_non_null(strstr(h[0].detail, "resource restored"));
	assert_non_null(strstr(h[0].detail, "Expired"));
	assert_int_equal(h[0].at, NOW + 100);
	store_history_done(&h[0]);
	free(h);
	/* a record that is not dead */
	assert_int_equal(store_dead_retry(f->store, id0, "x", NULL, NOW), -ENOENT);

	assert_int_equal(store_dead_discard(f->store, id1, "azs-usagectl:ops", NULL, NOW), -EINVAL);
	assert_int_equal(store_dead_discard(f->store, id1, "azs-usagectl:ops", "", NOW), -EINVAL);
	assert_count(f->store, STORE_DEAD, 1);
	assert_int_equal(
	        store_dead_discard(f->store, id1, "azs-usagectl:ops", "meter retired", NOW + 200),
	        0);
	assert_count(f->store, STORE_DEAD, 0);
	check_counts(f);
	assert_int_equal(store_record_history(f->store, id1, &h, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(h[0].action, "dead-discard");
	assert_non_null(strstr(h[0].detail, "meter retired"));
	store_history_done(&h[0]);
	free(h);
	assert_int_equal(store_dead_discard(f->store, id1, "x", "again", NOW), -ENOENT);
	assert_int_equal(store_dead_retry_all(f->store, "x", "all", NOW, &n), 0);
	assert_int_equal(n, 0); /* discarded letters stay discarded */
	check_counts(f);
}

/* dead retry --all takes every usage dead letter back. */
static void
test_store_dead_retry_all_moves_every_dead_letter(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[4];
	size_t n = 0;

	for (unsigned i = 0; i < 4; i++) {
		rec_init(&d[i], i, SUB_B, "2");
		(void)drive(f->store, &d[i], STORE_OUTCOME_DEAD);
	}
	assert_count(f->store, STORE_DEAD, 4);
	assert_int_equal(store_dead_retry_all(f->store, "azs-usagectl:ops", "fixed", NOW, &n), 0);
	assert_int_equal(n, 4);
	assert_count(f->store, STORE_DEAD, 0);
	assert_count(f->store, STORE_PENDING, 4);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM history WHERE action ="
	                                   " 'dead-retry' AND actor = 'azs-usagectl:ops'"),
	                 4);
	check_counts(f);
}

/*
 * The registration is frozen with the charge: a re-sent batch names the one it was mapped on, a
 * record mapped later the new one; a dead letter retried is mapped again.
 */
static void
test_store_claim_batch_freezes_registration(void **state)
{
	static const char other[] = "/subscriptions/" DEFAULT_SUB "/resourcegroups/azurestack/"
	                            "providers/microsoft.azurestack/registrations/azurestack-2";
	struct fixture *f = *state;
	struct rec_data d[2];
	struct store_batch b;
	struct map_state m = {0};
	struct store_record r = {0};
	size_t n = 0;
	char batch_id[STORE_BATCH_ID_LEN + 1];

	rec_init(&d[0], 1, SUB_B, "1");
	rec_init(&d[1], 2, SUB_B, "2");
	assert_int_equal(put(f->store, d, 1, NULL), 0);
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	assert_string_equal(b.records[0].registration, REGISTRATION);
	memcpy(batch_id, b.batch_id, sizeof(batch_id));
	store_batch_done(&b);

	/* the registration changes; the batch in flight is re-sent as it was mapped */
	m.registration = other;
	assert_int_equal(store_reset_inflight(f->store, &n), 0);
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_string_equal(b.batch_id, batch_id);
	assert_string_equal(b.records[0].registration, REGISTRATION);
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id,
	                                      &(struct store_outcome){.id = b.records[0].id,
	                                                              .kind = STORE_OUTCOME_DEAD,
	                                                              .error_code = "BadArgument"},
	                                      1, NOW, NULL),
	                 0);
	store_batch_done(&b);
	assert_int_equal(store_record_find(f->store, d[0].key, STORE_DEAD, &r), 0);
	assert_string_equal(r.registration, REGISTRATION);
	store_record_done(&r);

	/* a record mapped now, and the dead letter retried, take the new one */
	assert_int_equal(put(f->store, &d[1], 1, NULL), 0);
	assert_int_equal(store_record_find(f->store, d[0].key, STORE_DEAD, &r), 0);
	assert_int_equal(store_dead_retry(f->store, r.id, "ops", NULL, NOW), 0);
	store_record_done(&r);
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(b.n_records, 2);
	assert_string_equal(b.records[0].registration, other);
	assert_string_equal(b.records[1].registration, other);
	store_batch_done(&b);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM registrations"), 2);
	check_counts(f);
}

/*
 * A claim whose COMMIT fails (the WAL cannot grow) rolls back the registration row it added: the
 * next claim must not reuse the number it had cached for it.
 */
static void
test_store_claim_commit_failure_forgets_registration(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *wal = xasprintf("%s-wal", f->path);
	struct rec_data d;
	struct store_batch b;
	struct map_state m = {0};
	struct store_claim c = {.max_records = 10, .now = NOW, .map = map_cb, .userdata = &m};
	struct rlimit old, lim;
	struct stat st;
	void (*old_handler)(int);
	int r;

	rec_init(&d, 1, SUB_B, "1");
	assert_int_equal(put(f->store, &d, 1, NULL), 0);
	assert_int_equal(stat(wal, &st), 0);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = (struct rlimit){.rlim_cur = (rlim_t)st.st_size, .rlim_max = old.rlim_max};
	old_handler = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	r = store_claim_batch(f->store, &c, &b);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, old_handler);
	assert_true(r < 0);
	assert_count(f->store, STORE_PENDING, 1);

	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	assert_string_equal(b.records[0].registration, REGISTRATION);
	store_batch_done(&b);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records WHERE registration IS NOT"
	                                   " NULL AND registration NOT IN (SELECT id FROM"
	                                   " registrations)"),
	                 0);
	check_counts(f);
}

/* A mapping without a registration is refused, and the claim leaves the records pending. */
static int
map_no_registration(void *userdata, const struct store_record *r, struct store_charge *ret)
{
	*ret = (struct store_charge){.charged_subscription = DEFAULT_SUB, .reason = "default"};
	return 0;
}

static void
test_store_claim_batch_needs_registration(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_batch b;
	struct store_claim c = {.max_records = 10, .now = NOW, .map = map_no_registration};

	rec_init(&d, 1, SUB_B, "1");
	assert_int_equal(put(f->store, &d, 1, NULL), 0);
	assert_int_equal(store_claim_batch(f->store, &c, &b), -EINVAL);
	assert_count(f->store, STORE_PENDING, 1);
	assert_count(f->store, STORE_INFLIGHT, 0);
	check_counts(f);
}

/* Put a conflicting quantity for d and return the conflict row's id. */
static int64_t
make_conflict(struct store *s, struct rec_data *d, const char *quantity)
{
	struct store_page_result res;
	struct store_record r = {0};
	int64_t id;

	snprintf(d->quantity, sizeof(d->quantity), "%s", quantity);
	assert_int_equal(put(s, d, 1, &res), 0);
	assert_int_equal(res.conflicts, 1);
	assert_int_equal(store_record_find(s, d->key, STORE_CONFLICT, &r), 0);
	id = r.id;
	store_record_done(&r);
	return id;
}

/* Accept, original not forwarded: its quantity is replaced. */
static void
test_store_conflict_accept_replaces_unforwarded(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_record r = {0};
	struct store_page_result res;
	struct store_history *h = NULL;
	size_t n = 0;
	int64_t cid;

	rec_init(&d, 1, SUB_A, "2.4");
	assert_int_equal(put(f->store, &d, 1, NULL), 0);
	cid = make_conflict(f->store, &d, "2.5");
	assert_count(f->store, STORE_CONFLICT, 1);
	check_counts(f);
	assert_int_equal(
	        store_conflict_accept(f->store, cid, "azs-usagectl:ops", "source fixed", NOW + 5),
	        0);
	assert_count(f->store, STORE_CONFLICT, 0);
	assert_count(f->store, STORE_DEAD, 0);
	assert_count(f->store, STORE_PENDING, 1);
	check_counts(f);
	assert_int_equal(store_record_find(f->store, d.key, STORE_PENDING, &r), 0);
	assert_string_equal(r.quantity, "2.5");
	assert_int_equal(store_record_history(f->store, r.id, &h, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(h[0].action, "conflict-accept");
	assert_non_null(strstr(h[0].detail, "source fixed"));
	store_history_done(&h[0]);
	free(h);
	store_record_done(&r);
	/* the accepted quantity is now the record's: seen again it is a duplicate */
	assert_int_equal(put(f->store, &d, 1, &res), 0);
	assert_int_equal(res.duplicates, 1);
	assert_int_equal(store_conflict_accept(f->store, cid, "x", NULL, NOW), -ENOENT);
}

/* Accept waits while the original is being forwarded, then takes the forwarded path. */
static void
test_store_conflict_accept_busy_while_forwarding(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_batch b;
	struct map_state m = {0};
	size_t n = 0;
	int64_t cid;

	rec_init(&d, 1, SUB_A, "1");
	assert_int_equal(put(f->store, &d, 1, NULL), 0);
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	cid = make_conflict(f->store, &d, "2");
	assert_int_equal(store_conflict_accept(f->store, cid, "ops", NULL, NOW), -EBUSY);
	assert_int_equal(store_reset_inflight(f->store, &n), 0); /* pending, batch id kept */
	assert_int_equal(store_conflict_accept(f->store, cid, "ops", NULL, NOW), -EBUSY);
	assert_count(f->store, STORE_CONFLICT, 1);
	check_counts(f);
	store_batch_done(&b);
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(
	        store_apply_outcomes(f->store, b.batch_id,
	                             &(struct store_outcome){.id = b.records[0].id,
	                                                     .kind = STORE_OUTCOME_FORWARDED,
	                                                     .status = "Accepted"},
	                             1, NOW, NULL),
	        0);
	store_batch_done(&b);
	assert_int_equal(store_conflict_accept(f->store, cid, "ops", NULL, NOW), 0);
	assert_count(f->store, STORE_PENDING, 1); /* the adjustment of 1 */
	check_counts(f);
}

/* Accept, original forwarded, larger: an adjustment for the difference is queued. */
static void
test_store_conflict_accept_forwarded_larger_adjusts(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_record r = {0};
	char input[128], key[HASH_SHA256_HEX_LEN + 1];
	int64_t oid, cid;

	rec_init(&d, 1, SUB_A, "2.4000000000");
	oid = drive(f->store, &d, STORE_OUTCOME_FORWARDED);
	cid = make_conflict(f->store, &d, "3.1");
	assert_int_equal(store_conflict_accept(f->store, cid, "azs-usagectl:ops", NULL, NOW + 5),
	                 0);
	assert_count(f->store, STORE_CONFLICT, 0);
	assert_count(f->store, STORE_PENDING, 1);
	check_counts(f);

	snprintf(input, sizeof(input), "%s\nadjustment\n1", d.key);
	hash_sha256_hex(input, strlen(input), key);
	assert_int_equal(store_record_find(f->store, key, STORE_PENDING, &r), 0);
	assert_string_equal(r.quantity, "0.7000000000");
	assert_int_equal(r.adjustment_of, oid);
	assert_int_equal(r.usage_start, T0 - HOUR);
	assert_string_equal(r.charged_subscription, CUSTOMER_A); /* the original's charge */
	assert_string_equal(r.charge_reason, "registered");
	assert_string_equal(r.registration, REGISTRATION);
	store_record_done(&r);

	/* a second change on top: charged is now 3.1, so 3.5 adjusts by 0.4 under sequence 2 */
	cid = make_conflict(f->store, &d, "3.5");
	assert_int_equal(store_conflict_accept(f->store, cid, "azs-usagectl:ops", NULL, NOW + 6),
	                 0);
	snprintf(input, sizeof(input), "%s\nadjustment\n2", d.key);
	hash_sha256_hex(input, strlen(input), key);
	assert_int_equal(store_record_find(f->store, key, STORE_PENDING, &r), 0);
	assert_string_equal(r.quantity, "0.4000000000");
	store_record_done(&r);
	check_counts(f);
}

/*
 * A dead adjustment that a later accept counted as not charged is superseded: retrying it would
 * charge its amount a second time beside the later adjustment that already covers it.
 */
static void
test_store_conflict_accept_supersedes_dead_adjustment(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_record r = {0};
	struct store_batch b;
	struct map_state m = {0};
	char input[128], key[HASH_SHA256_HEX_LEN + 1];
	int64_t cid, adj1;
	size_t n = 0;

	rec_init(&d, 1, SUB_A, "1");
	(void)drive(f->store, &d, STORE_OUTCOME_FORWARDED);
	cid = make_conflict(f->store, &d, "2");
	assert_int_equal(store_conflict_accept(f->store, cid, "ops", NULL, NOW), 0);
	/* Commerce refuses the adjustment of 1 for good */
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	adj1 = b.records[0].id;
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id,
	                                      &(struct store_outcome){.id = adj1,
	                                                              .kind = STORE_OUTCOME_DEAD,
	                                                              .error_code = "Expired",
	                                                              .error_message = "too old"},
	                                      1, NOW, NULL),
	                 0);
	store_batch_done(&b);
	assert_count(f->store, STORE_DEAD, 1);

	/* 3 accepted: only 1 is charged, so the new adjustment is 2 and covers the dead one */
	cid = make_conflict(f->store, &d, "3");
	assert_int_equal(store_conflict_accept(f->store, cid, "ops", NULL, NOW + 1), 0);
	snprintf(input, sizeof(input), "%s\nadjustment\n2", d.key);
	hash_sha256_hex(input, strlen(input), key);
	assert_int_equal(store_record_find(f->store, key, STORE_PENDING, &r), 0);
	assert_string_equal(r.quantity, "2");
	store_record_done(&r);
	assert_count(f->store, STORE_DEAD, 0);
	check_counts(f);
	assert_int_equal(store_dead_retry(f->store, adj1, "ops", NULL, NOW + 2), -ENOENT);
	assert_int_equal(store_dead_retry_all(f->store, "ops", NULL, NOW + 2, &n), 0);
	assert_int_equal(n, 0);
	assert_count(f->store, STORE_PENDING, 1);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM history WHERE action ="
	                                   " 'superseded'"),
	                 1);
	check_counts(f);
}

/* Accept, original forwarded, smaller: the conflict becomes dead, credit-required. */
static void
test_store_conflict_accept_forwarded_smaller_credit_required(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_record r = {0};
	int64_t cid;

	rec_init(&d, 1, SUB_A, "2.4");
	(void)drive(f->store, &d, STORE_OUTCOME_FORWARDED);
	cid = make_conflict(f->store, &d, "1.9");
	assert_int_equal(store_conflict_accept(f->store, cid, "azs-usagectl:ops", NULL, NOW), 0);
	assert_count(f->store, STORE_CONFLICT, 0);
	assert_count(f->store, STORE_DEAD, 1);
	assert_count(f->store, STORE_PENDING, 0);
	check_counts(f);
	assert_int_equal(store_record_find(f->store, d.key, STORE_DEAD, &r), 0);
	assert_int_equal(r.id, cid);
	assert_string_equal(r.error_code, "credit-required");
	store_record_done(&r);
	/* it must never be forwarded */
	assert_int_equal(store_dead_retry(f->store, cid, "x", NULL, NOW), -EPERM);
	assert_int_equal(store_dead_discard(f->store, cid, "x", "credit issued", NOW), 0);
	check_counts(f);
}

/* Reject: the original stands, and the same change seen again is a duplicate. */
static void
test_store_conflict_reject_keeps_original(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_record r = {0};
	struct store_page_result res;
	int64_t cid;

	rec_init(&d, 1, SUB_A, "2.4");
	assert_int_equal(put(f->store, &d, 1, NULL), 0);
	cid = make_conflict(f->store, &d, "7");
	assert_int_equal(store_conflict_reject(f->store, cid, "azs-usagectl:ops", "noise", NOW), 0);
	assert_count(f->store, STORE_CONFLICT, 0);
	assert_count(f->store, STORE_DEAD, 0);
	check_counts(f);
	assert_int_equal(store_record_find(f->store, d.key, -1, &r), 0); /* the live one wins */
	assert_string_equal(r.quantity, "2.4");
	assert_int_equal(r.state, STORE_PENDING);
	store_record_done(&r);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM history WHERE action ="
	                                   " 'conflict-reject'"),
	                 2);
	assert_int_equal(put(f->store, &d, 1, &res), 0);
	assert_int_equal(res.duplicates, 1);
	assert_int_equal(res.conflicts, 0);
	assert_int_equal(store_conflict_reject(f->store, cid, "x", NULL, NOW), -ENOENT);
	check_counts(f);
}

/* Prune deletes old forwarded records in chunks. */
static void
test_store_prune_in_chunks(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[10];
	struct store_batch b;
	struct map_state m = {0};
	struct store_outcome o[10];
	size_t n = 0;

	for (unsigned i = 0; i < 10; i++)
		rec_init(&d[i], i, SUB_A, "1");
	assert_int_equal(put(f->store, d, 10, NULL), 0);
	claim(f->store, &m, 10, 0, NOW, &b);
	assert_int_equal(b.n_records, 10);
	for (size_t i = 0; i < 10; i++)
		o[i] = (struct store_outcome){.id = b.records[i].id,
		                              .kind = STORE_OUTCOME_FORWARDED,
		                              .status = "Accepted"};
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, o, 7, NOW, NULL), 0);
	assert_int_equal(store_apply_outcomes(f->store, b.batch_id, o + 7, 3, NOW + 1000, NULL), 0);
	store_batch_done(&b);

	assert_int_equal(store_prune(f->store, NOW, 100, &n), 0);
	assert_int_equal(n, 0); /* not before NOW */
	assert_int_equal(store_prune(f->store, NOW + 1, 3, &n), 0);
	assert_int_equal(n, 3);
	check_counts(f);
	assert_int_equal(store_prune(f->store, NOW + 1, 3, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(store_prune(f->store, NOW + 1, 3, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(store_prune(f->store, NOW + 1, 3, &n), 0);
	assert_int_equal(n, 0);
	assert_count(f->store, STORE_FORWARDED, 3);
	check_counts(f);
	assert_int_equal(store_prune(f->store, NOW + 1001, 100, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records"), 0);
	check_counts(f);
}

/* An original with an undecided conflict is kept; resolved conflict rows go with it. */
static void
test_store_prune_keeps_open_conflicts(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	size_t n = 0;
	int64_t cid;

	rec_init(&d, 1, SUB_A, "2");
	(void)drive(f->store, &d, STORE_OUTCOME_FORWARDED);
	cid = make_conflict(f->store, &d, "1");
	assert_int_equal(store_prune(f->store, NOW + 1, 100, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(store_conflict_reject(f->store, cid, "x", NULL, NOW), 0);
	assert_int_equal(store_prune(f->store, NOW + 1, 100, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records"), 0);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM history"), 0);
	check_counts(f);
}

/* A version-1 file is migrated forward with its data. */
static void
test_store_open_migrates_version_1(void **state)
{
	struct fixture *f = *state;
	struct store_record r = {0};
	struct store_history *h = NULL;
	sqlite3 *db = NULL;
	size_t n = 0;
	int v = 0;

	f->store = store_free(f->store);
	unlink(f->path);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, v1_ddl, NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(
	        sqlite3_exec(
	                db,
	                "INSERT INTO records (state, key, reported_hour, subscription_id,"
	                " meter_id, quantity, event_size, next_attempt_at, collected_at,"
	                " batch_id) VALUES (4, 'aabbccdd00112233aabbccdd00112233aabbccdd0011"
	                "2233aabbccdd00112233', 1793523600, 'sub', 'meter', '1.50', 700, 10, 10,"
	                " 'b'), (0, 'ffeeddcc00112233aabbccdd00112233aabbccdd00112233aabbccdd001"
	                "12233', 1793523600, 'sub', 'meter', '2', 700, 10, 10, NULL);"
	                " UPDATE counts SET n = 1 WHERE state IN (0, 4);"
	                " INSERT INTO facts VALUES ('first_start', '2026-11-01');",
	                NULL, NULL, NULL),
	        SQLITE_OK);
	sqlite3_close(db);

	/* read-only cannot migrate */
	{
		struct store_options o = {.path = f->path, .readonly = true};
		struct store *ro = NULL;
		_cleanup_free_ char *err = NULL;

		assert_int_equal(store_open(&o, &ro, &err), -ESTALE);
		assert_non_null(strstr(err, "start azs-usaged"));
		assert_null(ro);
	}
	reopen(f);
	assert_int_equal(store_schema_version(f->store, &v), 0);
	assert_int_equal(v, 3);
	assert_int_equal(side_int(f->path, "PRAGMA user_version"), 3);
	assert_int_equal(store_record_find(f->store, "AABBCCDD", STORE_DEAD, &r), 0);
	assert_string_equal(r.quantity, "1.50");
	assert_false(r.discarded);
	check_counts(f);
	/* what version 2 added works on the old rows */
	assert_int_equal(store_dead_discard(f->store, r.id, "ops", "old", NOW), 0);
	assert_int_equal(store_record_history(f->store, r.id, &h, &n), 0);
	assert_int_equal(n, 1);
	store_history_done(&h[0]);
	free(h);
	store_record_done(&r);
	check_counts(f);
	{
		_cleanup_free_ char *v1 = NULL;

		assert_int_equal(store_fact_get(f->store, "first_start", &v1), 0);
		assert_string_equal(v1, "2026-11-01");
	}
}

/* Try to open path; assert err and the file unchanged. */
static void
assert_refused(const char *path, bool readonly, int expect)
{
	struct store_options o = {.path = path, .readonly = readonly};
	struct store *s = NULL;
	_cleanup_free_ char *before = NULL, *after = NULL, *err = NULL;
	size_t nb = 0, na = 0;

	before = slurp(path, &nb);
	assert_int_equal(store_open(&o, &s, &err), expect);
	assert_null(s);
	assert_non_null(err);
	after = slurp(path, &na);
	assert_int_equal(na, nb);
	assert_memory_equal(before, after, nb);
}

/* Fill the store with enough records to span many pages. */
static void
fill(struct store *s, unsigned n)
{
	struct rec_data d[50];
	struct store_page_result res;

	for (unsigned i = 0; i < n; i += 50) {
		for (unsigned j = 0; j < 50; j++)
			rec_init(&d[j], 1000 + i + j, SUB_A, "1.5");
		assert_int_equal(put(s, d, 50, &res), 0);
		assert_int_equal(res.inserted, 50);
	}
}

/* Text files, garbled and truncated databases are refused and left as they are. */
static void
test_store_open_corrupt_refused_unmodified(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *good = NULL;
	char *bad;
	size_t n = 0;

	spill(f->path, "not a database\n", 15);
	assert_refused(f->path, false, -EBADMSG);
	assert_refused(f->path, true, -EBADMSG);
	bad = xmalloc(8192);
	for (size_t i = 0; i < 8192; i++)
		bad[i] = (char)('a' + i % 26);
	spill(f->path, bad, 8192);
	free(bad);
	assert_refused(f->path, false, -EBADMSG);

	unlink(f->path);
	reopen(f);
	fill(f->store, 500);
	f->store = store_free(f->store); /* checkpoints: the -wal file is gone */
	good = slurp(f->path, &n);
	assert_true(n > 8 * 16384);

	bad = xmemdup(good, n);
	for (size_t i = 2 * 16384; i < 6 * 16384; i++)
		bad[i] = (char)(i * 7 + 3);
	spill(f->path, bad, n);
	assert_refused(f->path, false, -EBADMSG);
	assert_refused(f->path, true, -EBADMSG);

	spill(f->path, good, n / 2); /* truncated */
	assert_refused(f->path, false, -EBADMSG);
	free(bad);

	/* a foreign SQLite database */
	unlink(f->path);
	{
		sqlite3 *db = NULL;

		assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
		assert_int_equal(sqlite3_exec(db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);",
		                              NULL, NULL, NULL),
		                 SQLITE_OK);
		sqlite3_close(db);
	}
	assert_refused(f->path, false, -EBADMSG);
}

/*
 * skip_quick_check (azs-usagectl's read verbs) still refuses what is not an azs-usaged database
 * by its header, and leaves whole-file damage to the daemon's quick_check at its start.
 */
static void
test_store_open_skip_quick_check(void **state)
{
	struct fixture *f = *state;
	struct store_options o = {.path = f->path, .readonly = true, .skip_quick_check = true};
	_cleanup_free_ char *good = NULL, *err = NULL;
	struct store *s = NULL;
	char *bad;
	size_t n = 0;

	fill(f->store, 500);
	f->store = store_free(f->store);
	good = slurp(f->path, &n);
	bad = xmemdup(good, n);
	for (size_t i = 2 * 16384; i < 6 * 16384; i++)
		bad[i] = (char)(i * 7 + 3);
	spill(f->path, bad, n);
	free(bad);
	assert_refused(f->path, true, -EBADMSG); /* with quick_check */
	assert_int_equal(store_open(&o, &s, &err), 0);
	s = store_free(s);

	spill(f->path, "not a database\n", 15);
	assert_int_equal(store_open(&o, &s, &err), -EBADMSG);
	assert_null(s);
	spill(f->path, good, n);
}

/* A file from a newer build is refused and untouched. */
static void
test_store_open_newer_version_refused(void **state)
{
	struct fixture *f = *state;
	sqlite3 *db = NULL;

	fill(f->store, 50);
	f->store = store_free(f->store);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 4", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_refused(f->path, false, -EPROTO);
	assert_refused(f->path, true, -EPROTO);
}

/* Read-only opens read, never write, and refuse writes. */
static void
test_store_open_readonly(void **state)
{
	struct fixture *f = *state;
	struct store_options o = {.readonly = true};
	struct store *ro = NULL;
	_cleanup_free_ char *err = NULL, *before = NULL, *after = NULL, *missing = NULL;
	struct store_counts c;
	struct rec_data d;
	size_t nb = 0, na = 0;

	missing = xasprintf("%s/none.db", f->dir);
	o.path = missing;
	assert_int_equal(store_open(&o, &ro, &err), -ENOENT);
	assert_int_equal(access(missing, F_OK), -1);
	free(TAKE_PTR(err));

	fill(f->store, 100);
	f->store = store_free(f->store);
	before = slurp(f->path, &nb);
	o.path = f->path;
	assert_int_equal(store_open(&o, &ro, &err), 0);
	assert_int_equal(store_counts(ro, &c), 0);
	assert_int_equal(c.by_state[STORE_PENDING], 100);
	rec_init(&d, 1, SUB_A, "1");
	assert_int_equal(put(ro, &d, 1, NULL), -EROFS);
	assert_int_equal(store_fact_set(ro, "k", "v"), -EROFS);
	assert_int_equal(store_record_find(ro, "00000000", -1, &d.rec), -ENOENT);
	ro = store_free(ro);
	after = slurp(f->path, &na);
	assert_int_equal(na, nb);
	assert_memory_equal(before, after, nb);

	/* a file this user may only read is refused for writing at open, not at the first write */
	if (geteuid() != 0) {
		struct store_options rw = {.path = f->path};

		assert_int_equal(chmod(f->path, 0444), 0);
		free(TAKE_PTR(err));
		assert_int_equal(store_open(&rw, &ro, &err), -EACCES);
		assert_non_null(strstr(err, "not writable"));
		assert_int_equal(chmod(f->path, 0644), 0);
	}
	reopen(f);
}

/* Running out of space is -ENOSPC with nothing half-written; writing works again after. */
static void
test_store_put_page_full_disk(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[50];
	struct store_page_result res;
	int64_t cursor = 0, pages, page_size;
	uint64_t before_pending;
	struct store_counts c;
	int r = 0;
	unsigned i;

	fill(f->store, 50);
	pages = side_int(f->path, "PRAGMA page_count");
	page_size = side_int(f->path, "PRAGMA page_size");
	assert_int_equal(page_size, 16384);
	assert_int_equal(
	        store_set_size_limit(f->store, (uint64_t)(pages + 8) * (uint64_t)page_size), 0);
	for (i = 0; i < 100 && r == 0; i++) {
		struct store_record recs[50];
		struct store_page page = {
		        .reported_hour = T0 + HOUR * (i + 1),
		        .scope = "",
		        .records = recs,
		        .n_records = 50,
		        .now = NOW,
		};

		for (unsigned j = 0; j < 50; j++) {
			rec_init(&d[j], 5000 + i * 50 + j, SUB_A, "2");
			recs[j] = d[j].rec;
		}
		assert_int_equal(store_counts(f->store, &c), 0);
		before_pending = c.by_state[STORE_PENDING];
		r = store_put_page(f->store, &page, &res);
	}
	assert_int_equal(r, -ENOSPC);
	assert_true(i > 1);
	/* the failed page left nothing: counts, rows and the cursor are as before it */
	assert_int_equal(store_counts(f->store, &c), 0);
	assert_int_equal(c.by_state[STORE_PENDING], before_pending);
	check_counts(f);
	assert_int_equal(store_cursor_hour(f->store, &cursor), 0);
	assert_int_equal(cursor, T0 + HOUR * (i - 1));
	side_quick_check_ok(f->path);

	assert_int_equal(store_set_size_limit(f->store, 0), 0);
	assert_int_equal(put(f->store, d, 50, &res), 0);
	assert_int_equal(res.inserted, 50);
	check_counts(f);
}

/* Key prefixes: at least 8 hex digits, any case, unique. */
static void
test_store_record_find_prefix(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_record r = {0};
	char upper[HASH_SHA256_HEX_LEN + 1];

	rec_init(&d, 42, SUB_A, "1");
	assert_int_equal(put(f->store, &d, 1, NULL), 0);
	for (size_t i = 0; i <= 12; i++)
		upper[i] = (char)(d.key[i] >= 'a' ? d.key[i] - 32 : d.key[i]);
	upper[12] = '\0';
	assert_int_equal(store_record_find(f->store, upper, -1, &r), 0);
	assert_string_equal(r.key, d.key);
	store_record_done(&r);
	assert_int_equal(store_record_find(f->store, d.key, STORE_PENDING, &r), 0);
	store_record_done(&r);
	assert_int_equal(store_record_find(f->store, d.key, STORE_DEAD, &r), -ENOENT);
	upper[7] = '\0';
	assert_int_equal(store_record_find(f->store, upper, -1, &r), -EINVAL);
	assert_int_equal(store_record_find(f->store, "0123456g", -1, &r), -EINVAL);
}

/* Report rows collected by report_collect(). */
struct report {
	size_t n;
	char group[8][64], meter[8][64], total[8][64];
	uint64_t records[8];
};

/* Collect one report row. */
static int
report_collect(void *userdata, const struct store_report_row *row)
{
	struct report *rep = userdata;

	if (rep->n >= ARRAY_SIZE(rep->total))
		return -E2BIG;
	snprintf(rep->group[rep->n], 64, "%s", row->group ? row->group : "(null)");
	snprintf(rep->meter[rep->n], 64, "%s", row->meter_id);
	snprintf(rep->total[rep->n], 64, "%s", row->total);
	rep->records[rep->n] = row->records;
	rep->n++;
	return 0;
}

/* Reports sum exactly (0.1 + 0.2 is 0.3), grouped by charge, tenant or meter. */
static void
test_store_report_sums_exactly(void **state)
{
	struct fixture *f = *state;
	const char *q[] = {"0.1", "0.2", "0.0000000001", "5", "7"};
	struct rec_data d[5];
	struct report rep = {0};

	for (unsigned i = 0; i < 5; i++) {
		rec_init(&d[i], i, i == 3 ? SUB_B : SUB_A, q[i]);
		if (i < 4)
			(void)drive(f->store, &d[i], STORE_OUTCOME_FORWARDED);
		else
			(void)drive(f->store, &d[i], STORE_OUTCOME_DEAD); /* not charged */
	}
	assert_int_equal(store_report(f->store, T0 - HOUR, T0, STORE_REPORT_BY_SUBSCRIPTION,
	                              report_collect, &rep),
	                 0);
	assert_int_equal(rep.n, 2);
	assert_string_equal(rep.group[0], DEFAULT_SUB);
	assert_string_equal(rep.total[0], "5");
	assert_int_equal(rep.records[0], 1);
	assert_string_equal(rep.group[1], CUSTOMER_A);
	assert_string_equal(rep.meter[1], METER);
	assert_string_equal(rep.total[1], "0.3000000001");
	assert_int_equal(rep.records[1], 3);

	rep = (struct report){0};
	assert_int_equal(
	        store_report(f->store, T0 - HOUR, T0, STORE_REPORT_BY_TENANT, report_collect, &rep),
	        0);
	assert_int_equal(rep.n, 2);
	assert_string_equal(rep.group[0], ""); /* default charge: no tenant known */
	assert_string_equal(rep.group[1], TENANT_A);

	rep = (struct report){0};
	assert_int_equal(
	        store_report(f->store, T0 - HOUR, T0, STORE_REPORT_BY_METER, report_collect, &rep),
	        0);
	assert_int_equal(rep.n, 1);
	assert_string_equal(rep.group[0], "(null)");
	assert_string_equal(rep.total[0], "5.3000000001");
	assert_int_equal(rep.records[0], 4);

	rep = (struct report){0};
	assert_int_equal(
	        store_report(f->store, T0, T0 + HOUR, STORE_REPORT_BY_METER, report_collect, &rep),
	        0);
	assert_int_equal(rep.n, 0);
}

/* Collect record keys from a query. */
static int
query_collect(void *userdata, const struct store_record *r)
{
	struct report *rep = userdata;

	if (rep->n >= ARRAY_SIZE(rep->group))
		return -E2BIG;
	snprintf(rep->group[rep->n++], 64, "%.16s", r->key);
	return 0;
}

/* Record queries filter by state, tenant, subscription, time and limit, newest first. */
static void
test_store_records_query_filters(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[4];
	struct report rep = {0};
	struct store_query q = {.state = -1};

	for (unsigned i = 0; i < 4; i++)
		rec_init(&d[i], i, i % 2 ? SUB_B : SUB_A, "1");
	(void)drive(f->store, &d[0], STORE_OUTCOME_FORWARDED);
	(void)drive(f->store, &d[1], STORE_OUTCOME_DEAD);
	assert_int_equal(put(f->store, &d[2], 2, NULL), 0);

	assert_int_equal(store_records_query(f->store, &q, query_collect, &rep), 0);
	assert_int_equal(rep.n, 4);
	assert_memory_equal(rep.group[0], d[3].key, 16); /* newest first */
	assert_memory_equal(rep.group[3], d[0].key, 16);

	rep = (struct report){0};
	q = (struct store_query){.state = STORE_PENDING};
	assert_int_equal(store_records_query(f->store, &q, query_collect, &rep), 0);
	assert_int_equal(rep.n, 2);

	rep = (struct report){0};
	q = (struct store_query){.state = -1, .tenant_id = TENANT_A};
	assert_int_equal(store_records_query(f->store, &q, query_collect, &rep), 0);
	assert_int_equal(rep.n, 1);
	assert_memory_equal(rep.group[0], d[0].key, 16);

	rep = (struct report){0};
	q = (struct store_query){.state = -1, .subscription_id = CUSTOMER_A};
	assert_int_equal(store_records_query(f->store, &q, query_collect, &rep), 0);
	assert_int_equal(rep.n, 1);

	rep = (struct report){0};
	q = (struct store_query){.state = -1, .subscription_id = SUB_B, .limit = 1};
	assert_int_equal(store_records_query(f->store, &q, query_collect, &rep), 0);
	assert_int_equal(rep.n, 1);
	assert_memory_equal(rep.group[0], d[3].key, 16);

	rep = (struct report){0};
	q = (struct store_query){.state = -1, .since = NOW + 1};
	assert_int_equal(store_records_query(f->store, &q, query_collect, &rep), 0);
	assert_int_equal(rep.n, 0);
}

/* The caches: subscriptions, registration and customer subscriptions; facts. */
static void
test_store_caches_round_trip(void **state)
{
	struct fixture *f = *state;
	struct store_subscription subs[2] = {
	        {.subscription_id = (char *)SUB_A,
	         .tenant_id = (char *)TENANT_A,
	         .display_name = (char *)"web",
	         .owner = (char *)"a@contoso",
	         .state = (char *)"Enabled"},
	        {.subscription_id = (char *)SUB_B, .tenant_id = (char *)TENANT_A},
	};
	struct store_customer_subscription cs[2] = {
	        {.subscription_id = (char *)CUSTOMER_A, .tenant_id = (char *)TENANT_A},
	        {.subscription_id = (char *)"11111111-2222-3333-4444-555555555555",
	         .tenant_id = (char *)TENANT_A},
	};
	struct store_registration reg =
	                                  {
	                                          .id = (char *)REGISTRATION_ID,
	                                          .default_subscription = (char *)DEFAULT_SUB,
	                                          .raw = (char *)"{}",
	                                          .refreshed_at = NOW,
	                                  },
	                          got = {0};
	struct store_subscription s = {0};
	struct store_customer_subscription *list = NULL;
	char **names = NULL, *value = NULL;
	size_t n = 0;
	int64_t t = 0;

	assert_int_equal(store_subscriptions_refreshed_at(f->store, &t), -ENOENT);
	assert_int_equal(store_subscriptions_replace(f->store, subs, 2, NOW), 0);
	assert_int_equal(store_subscriptions_refreshed_at(f->store, &t), 0);
	assert_int_equal(t, NOW);
	assert_int_equal(store_subscription_get(f->store, SUB_A, &s), 0);
	assert_string_equal(s.tenant_id, TENANT_A);
	assert_string_equal(s.display_name, "web");
	store_subscription_done(&s);
	assert_int_equal(store_subscriptions_replace(f->store, subs + 1, 1, NOW + 1), 0);
	assert_int_equal(store_subscription_get(f->store, SUB_A, &s), -ENOENT);

	assert_int_equal(store_registration_get(f->store, &got), -ENOENT);
	assert_int_equal(store_registration_replace(f->store, &reg, cs, 1), 0);
	assert_int_equal(store_registration_get(f->store, &got), 0);
	assert_string_equal(got.default_subscription, DEFAULT_SUB);
	assert_int_equal(got.refreshed_at, NOW);
	store_registration_done(&got);
	assert_int_equal(store_customer_subscriptions_for_tenant(f->store, TENANT_A, &names, &n),
	                 0);
	assert_int_equal(n, 1);
	assert_string_equal(names[0], CUSTOMER_A);
	free(names[0]);
	free(names);
	/* two entries for one tenant: the caller sees both (ambiguous) */
	assert_int_equal(store_registration_replace(f->store, &reg, cs, 2), 0);
	assert_int_equal(store_customer_subscriptions_for_tenant(f->store, TENANT_A, &names, &n),
	                 0);
	assert_int_equal(n, 2);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	assert_int_equal(store_customer_subscriptions(f->store, &list, &n), 0);
	assert_int_equal(n, 2);
	for (size_t i = 0; i < n; i++)
		store_customer_subscription_done(&list[i]);
	free(list);

	assert_int_equal(store_fact_get(f->store, "k", &value), -ENOENT);
	assert_int_equal(store_fact_set(f->store, "k", "1"), 0);
	assert_int_equal(store_fact_set(f->store, "k", "2"), 0);
	assert_int_equal(store_fact_get(f->store, "k", &value), 0);
	assert_string_equal(value, "2");
	free(value);
}

/* Recollect schedules collected hours again and records who asked. */
static void
test_store_recollect_schedules_hours(void **state)
{
	struct fixture *f = *state;
	struct store_hour *hours = NULL;
	struct store_page page = {.reported_hour = T0, .scope = "", .now = NOW};
	size_t n = 0;

	assert_int_equal(store_recollect(f->store, T0, T0, "ops", "check", NOW, &n), -EINVAL);
	assert_int_equal(store_hour_schedule(f->store, T0 + HOUR, "", NOW), 0);
	assert_int_equal(store_put_page(f->store, &page, NULL), 0); /* T0 finished, left */
	assert_int_equal(store_recollect(f->store, T0 - HOUR, T0 + HOUR, "azs-usagectl:ops",
	                                 "meter fix", NOW + 10, &n),
	                 0);
	assert_int_equal(n, 3);
	assert_int_equal(store_hours_due(f->store, NOW + 10, 10, &hours, &n), 0);
	assert_int_equal(n, 3);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(hours[i].hour, T0 + HOUR * ((int64_t)i - 1));
		assert_int_equal(hours[i].pass, 2);
		assert_int_equal(hours[i].due_at, NOW + 10);
		store_hour_done(&hours[i]);
	}
	free(hours);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM history WHERE action ="
	                                   " 'recollect' AND actor = 'azs-usagectl:ops' AND detail"
	                                   " LIKE '%meter fix%' AND record_id IS NULL"),
	                 1);
	assert_int_equal(store_recollect(f->store, T0, T0 + 2 * HOUR, "ops", NULL, NOW, &n),
	                 -EINVAL); /* beyond the cursor */
	assert_int_equal(store_recollect(f->store, T0 + 1, T0 + HOUR, "ops", NULL, NOW, &n),
	                 -EINVAL); /* not on the hour */
}

/* A mapping that writes a fact through the store, and fails for SUB_B when asked to. */
struct nested_map {
	struct store *store;
	bool fail_b;
};

/* map() that calls back into the store. */
static int
nested_map_cb(void *userdata, const struct store_record *r, struct store_charge *ret)
{
	struct nested_map *nm = userdata;
	_cleanup_free_ char *key = xasprintf("seen:%s", r->subscription_id);
	int k;

	k = store_fact_set(nm->store, key, "1");
	if (k < 0)
		return k;
	if (nm->fail_b && streq(r->subscription_id, SUB_B))
		return -ENOMEDIUM;
	*ret = (struct store_charge){.charged_subscription = DEFAULT_SUB,
	                             .reason = "default",
	                             .registration = REGISTRATION};
	return 0;
}

/* A map() callback may write through the store; a failing one leaves nothing behind. */
static void
test_store_claim_batch_map_may_write(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[2];
	struct store_batch b = {0};
	struct nested_map nm = {.store = f->store, .fail_b = true};
	struct store_claim c = {
	        .max_records = 10, .now = NOW, .map = nested_map_cb, .userdata = &nm};
	char *v = NULL;

	rec_init(&d[0], 1, SUB_A, "1");
	rec_init(&d[1], 2, SUB_B, "1");
	assert_int_equal(put(f->store, d, 2, NULL), 0);
	assert_int_equal(store_claim_batch(f->store, &c, &b), -ENOMEDIUM);
	assert_int_equal(store_fact_get(f->store, "seen:" SUB_A, &v), -ENOENT);
	assert_count(f->store, STORE_PENDING, 2);
	check_counts(f);

	nm.fail_b = false;
	assert_int_equal(store_claim_batch(f->store, &c, &b), 0);
	assert_int_equal(b.n_records, 2);
	assert_int_equal(store_fact_get(f->store, "seen:" SUB_B, &v), 0);
	free(v);
	store_batch_done(&b);
	assert_count(f->store, STORE_INFLIGHT, 2);
	check_counts(f);
}

/* Retry each dead record from inside a query callback (what an operator tool may do). */
static int
retry_cb(void *userdata, const struct store_record *r)
{
	return store_dead_retry(userdata, r->id, "azs-usagectl:ops", "from query", NOW);
}

/* Write verbs work from inside a query callback. */
static void
test_store_records_query_callback_may_write(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[3];
	struct store_query q = {.state = STORE_DEAD};

	for (unsigned i = 0; i < 3; i++) {
		rec_init(&d[i], i, SUB_A, "1");
		(void)drive(f->store, &d[i], STORE_OUTCOME_DEAD);
	}
	assert_int_equal(store_records_query(f->store, &q, retry_cb, f->store), 0);
	assert_count(f->store, STORE_DEAD, 0);
	assert_count(f->store, STORE_PENDING, 3);
	check_counts(f);
}

/* SQLite's errors arrive translated: a held lock is -EBUSY, a constraint -EEXIST; nothing
 * half-done. */
static void
test_store_errors_translated(void **state)
{
	struct fixture *f = *state;
	struct store_options o = {.path = f->path, .busy_timeout_ms = 50};
	struct store_customer_subscription cs[2] = {
	        {.subscription_id = (char *)CUSTOMER_A, .tenant_id = (char *)TENANT_A},
	        {.subscription_id = (char *)CUSTOMER_A, .tenant_id = (char *)TENANT_A},
	};
	struct store_registration reg = {.id = (char *)REGISTRATION_ID,
	                                 .default_subscription = (char *)DEFAULT_SUB};
	struct store_registration got = {0};
	_cleanup_free_ char *err = NULL;
	char *v = NULL;
	sqlite3 *db = NULL;

	f->store = store_free(f->store);
	assert_int_equal(store_open(&o, &f->store, &err), 0);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(store_fact_set(f->store, "k", "v"), -EBUSY);
	assert_non_null(strstr(store_errmsg(f->store), "locked"));
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(store_fact_set(f->store, "k", "v"), 0);

	assert_int_equal(store_registration_replace(f->store, &reg, cs, 1), 0);
	reg.default_subscription = (char *)SUB_B;
	assert_int_equal(store_registration_replace(f->store, &reg, cs, 2), -EEXIST);
	assert_non_null(strstr(store_errmsg(f->store), "UNIQUE"));
	assert_int_equal(store_registration_get(f->store, &got), 0);
	assert_string_equal(got.default_subscription, DEFAULT_SUB); /* rolled back */
	store_registration_done(&got);
	assert_int_equal(store_fact_get(f->store, "k", &v), 0);
	free(v);
}

/* Every statement of the daemon's loop uses an index and never scans the records table. */
static void
test_store_loop_queries_use_indexes(void **state)
{
	struct fixture *f = *state;
	const char *const *sql;
	size_t n = 0, checked_records = 0;
	sqlite3 *db = side_open(f->path);

	sql = store_loop_queries(&n);
	assert_true(n >= 20);
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *eqp = xasprintf("EXPLAIN QUERY PLAN %s", sql[i]);
		sqlite3_stmt *st = NULL;
		bool uses_records = strstr(sql[i], "records") != NULL, indexed = false;

		if (sqlite3_prepare_v2(db, eqp, -1, &st, NULL) != SQLITE_OK)
			fail_msg("cannot prepare \"%s\": %s", sql[i], sqlite3_errmsg(db));
		while (sqlite3_step(st) == SQLITE_ROW) {
			const char *detail = (const char *)sqlite3_column_text(st, 3);

			/* only the tables of a few rows may be scanned: counts (7), registration
			 * (1) */
			if (strncmp(detail, "SCAN ", 5) == 0 &&
			    strcmp(detail, "SCAN counts") != 0 &&
			    strcmp(detail, "SCAN registration") != 0)
				fail_msg("\"%s\" scans: %s", sql[i], detail);
			if (strstr(detail, "USING INDEX") ||
			    strstr(detail, "USING COVERING INDEX") ||
			    strstr(detail, "USING INTEGER PRIMARY KEY") ||
			    strstr(detail, "USING PRIMARY KEY"))
				indexed = true;
		}
		sqlite3_finalize(st);
		/* INSERT ... VALUES has no plan; everything else on records must name an index */
		if (uses_records && strncmp(sql[i], "INSERT INTO records", 19) != 0) {
			if (!indexed)
				fail_msg("\"%s\" uses no index", sql[i]);
			checked_records++;
		}
	}
	assert_true(checked_records >= 12);
	sqlite3_close(db);
}

/* A version-1 file keeps its raw texts and batch ids: a retried batch is re-sent under its id. */
static void
test_store_open_migrates_version_1_raw_and_batches(void **state)
{
	static const char uuid[] = "5f0c2d1e-8a7b-4c3d-9e2f-1a0b3c4d5e6f";
	struct fixture *f = *state;
	struct store_record r = {0};
	struct store_batch b;
	struct map_state m = {0};
	sqlite3 *db = NULL;
	size_t applied = 0;

	f->store = store_free(f->store);
	unlink(f->path);
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, v1_ddl, NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(
	        sqlite3_exec(
	                db,
	                "INSERT INTO records (state, key, reported_hour, subscription_id, meter_id,"
	                " quantity, event_size, next_attempt_at, collected_at, batch_id, attempts,"
	                " charged_subscription, charge_reason, raw) VALUES"
	                " (0, 'aabbccdd00112233aabbccdd00112233aabbccdd00112233aabbccdd00112233',"
	                " 1793523600, 'sub', 'meter', '1.50', 700, 20, 10,"
	                " '5f0c2d1e-8a7b-4c3d-9e2f-1a0b3c4d5e6f', 1, 'charged', 'default',"
	                " '{\"raw\":1}'),"
	                " (0, 'ffeeddcc00112233aabbccdd00112233aabbccdd00112233aabbccdd00112233',"
	                " 1793523600, 'sub', 'meter', '2', 700, 10, 10, NULL, 0, NULL, NULL,"
	                " '{\"raw\":2}');"
	                " UPDATE counts SET n = 2 WHERE state = 0;",
	                NULL, NULL, NULL),
	        SQLITE_OK);
	sqlite3_close(db);
	reopen(f);

	/* the old columns are gone, their values kept */
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM pragma_table_info('records')"
	                                   " WHERE name IN ('raw', 'batch_id')"),
	                 0);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records_raw"), 2);
	assert_int_equal(store_record_find(f->store, "aabbccdd", -1, &r), 0);
	assert_string_equal(r.raw, "{\"raw\":1}");
	assert_string_equal(r.batch_id, uuid);
	assert_int_equal(r.attempts, 1);
	store_record_done(&r);
	assert_int_equal(store_record_find(f->store, "ffeeddcc", -1, &r), 0);
	assert_string_equal(r.raw, "{\"raw\":2}");
	assert_null(r.batch_id);
	store_record_done(&r);
	check_counts(f);

	/* the oldest due record (next attempt 10) is not batched: a new batch takes only it */
	claim(f->store, &m, 500, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	assert_string_equal(b.records[0].key,
	                    "ffeeddcc00112233aabbccdd00112233aabbccdd00112233aabbccdd00112233");
	assert_string_not_equal(b.batch_id, uuid);
	assert_null(b.records[0].raw);
	store_batch_done(&b);
	/* then the migrated batch, under its old id */
	claim(f->store, &m, 500, 0, NOW, &b);
	assert_int_equal(b.n_records, 1);
	assert_string_equal(b.batch_id, uuid);
	assert_string_equal(b.records[0].batch_id, uuid);
	assert_int_equal(b.attempts, 1);
	assert_int_equal(
	        store_apply_outcomes(f->store, uuid,
	                             &(struct store_outcome){.id = b.records[0].id,
	                                                     .kind = STORE_OUTCOME_FORWARDED,
	                                                     .status = "Accepted"},
	                             1, NOW, &applied),
	        0);
	assert_int_equal(applied, 1);
	store_batch_done(&b);
	check_counts(f);
}

/* A split batch's halves get their own batch ids, each re-sent whole under its id. */
static void
test_store_apply_outcomes_retry_new_batch_id(void **state)
{
	static const char split[] = "0d9c8b7a-6f5e-4d3c-8b2a-190817263544";
	struct fixture *f = *state;
	struct rec_data d[4];
	struct store_batch b;
	struct map_state m = {0};
	struct store_outcome o[4];
	char first[STORE_BATCH_ID_LEN + 1];
	size_t applied = 0;

	for (unsigned i = 0; i < 4; i++)
		rec_init(&d[i], 40 + i, SUB_A, "1");
	assert_int_equal(put(f->store, d, 4, NULL), 0);
	claim(f->store, &m, 4, 0, NOW, &b);
	assert_int_equal(b.n_records, 4);
	memcpy(first, b.batch_id, sizeof(first));
	for (size_t i = 0; i < 4; i++)
		o[i] = (struct store_outcome){.id = b.records[i].id,
		                              .kind = STORE_OUTCOME_RETRY,
		                              .next_attempt_at = NOW + 10,
		                              .new_batch_id = i < 2 ? split : NULL};
	assert_int_equal(store_apply_outcomes(f->store, first, o, 4, NOW, &applied), 0);
	assert_int_equal(applied, 4);
	store_batch_done(&b);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM batches"), 2);
	check_counts(f);

	/* the first two records lead, now under the new id */
	claim(f->store, &m, 4, 0, NOW + 10, &b);
	assert_int_equal(b.n_records, 2);
	assert_string_equal(b.batch_id, split);
	assert_string_equal(b.records[0].key, d[0].key);
	assert_string_equal(b.records[1].key, d[1].key);
	/* the old id no longer names them */
	assert_int_equal(store_apply_outcomes(f->store, first, o, 2, NOW, &applied), 0);
	assert_int_equal(applied, 0);
	store_batch_done(&b);
	claim(f->store, &m, 4, 0, NOW + 10, &b);
	assert_int_equal(b.n_records, 2);
	assert_string_equal(b.batch_id, first);
	assert_string_equal(b.records[0].key, d[2].key);
	store_batch_done(&b);
	check_counts(f);
}

/* Pruning takes the raw texts and the batches nobody names any more along, also of conflict rows
 * deleted with their original. */
static void
test_store_prune_removes_raw_and_batches(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[2];
	size_t n = 0;
	int64_t cid;

	rec_init(&d[0], 1, SUB_A, "2");
	rec_init(&d[1], 2, SUB_A, "3");
	(void)drive(f->store, &d[0], STORE_OUTCOME_FORWARDED);
	(void)drive(f->store, &d[1], STORE_OUTCOME_DEAD);
	cid = make_conflict(f->store, &d[0], "1");
	assert_int_equal(store_conflict_reject(f->store, cid, "x", NULL, NOW), 0);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records_raw"), 3);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM batches"), 2);

	assert_int_equal(store_prune(f->store, NOW + 1, 100, &n), 0);
	assert_int_equal(n, 1);
	/* the dead letter stays with its raw text and its batch */
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records"), 1);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM records_raw"), 1);
	assert_int_equal(
	        side_int(f->path, "SELECT count(*) FROM records_raw r JOIN records USING (id)"), 1);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM batches"), 1);
	assert_int_equal(side_int(f->path, "SELECT count(*) FROM batches b JOIN records r"
	                                   " ON r.batch = b.id"),
	                 1);
	check_counts(f);
}

/* Accepting a changed quantity for an unforwarded original also takes the new raw text. */
static void
test_store_conflict_accept_replaces_raw(void **state)
{
	struct fixture *f = *state;
	struct rec_data d;
	struct store_record r = {0};
	int64_t cid;

	rec_init(&d, 7, SUB_A, "2.4");
	assert_int_equal(put(f->store, &d, 1, NULL), 0);
	snprintf(d.raw, sizeof(d.raw), "{\"changed\":true}");
	cid = make_conflict(f->store, &d, "2.5");
	assert_int_equal(store_conflict_accept(f->store, cid, "ops", NULL, NOW), 0);
	assert_int_equal(store_record_find(f->store, d.key, STORE_PENDING, &r), 0);
	assert_string_equal(r.quantity, "2.5");
	assert_string_equal(r.raw, "{\"changed\":true}");
	store_record_done(&r);
}

/* The oldest pending record is found by when it was collected, not by when it is due. */
static void
test_store_oldest_pending_after_retry(void **state)
{
	struct fixture *f = *state;
	struct rec_data d[2];
	struct store_record rec;
	struct store_batch b;
	struct map_state m = {0};
	struct store_page page = {.reported_hour = T0, .scope = "", .n_records = 1};
	int64_t t = 0;

	rec_init(&d[0], 1, SUB_A, "1");
	rec_init(&d[1], 2, SUB_A, "1");
	assert_int_equal(put(f->store, &d[0], 1, NULL), 0); /* collected at NOW */
	claim(f->store, &m, 1, 0, NOW, &b);
	assert_int_equal(
	        store_apply_outcomes(f->store, b.batch_id,
	                             &(struct store_outcome){.id = b.records[0].id,
	                                                     .kind = STORE_OUTCOME_RETRY,
	                                                     .next_attempt_at = NOW + 1000},
	                             1, NOW, NULL),
	        0);
	store_batch_done(&b);
	rec = d[1].rec;
	page.records = &rec;
	page.now = NOW + 10;
	assert_int_equal(store_put_page(f->store, &page, NULL), 0);

	assert_int_equal(store_next_due(f->store, &t), 0);
	assert_int_equal(t, NOW + 10);
	assert_int_equal(store_oldest_pending(f->store, &t), 0);
	assert_int_equal(t, NOW);
}

/* Run every store test on its own fresh database. */
int
main(void)
{
	const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
	        T(test_store_open_creates_current_schema),
	        T(test_store_put_page_counts_duplicates),
	        T(test_store_put_page_conflict_once),
	        T(test_store_put_page_failure_changes_nothing),
	        T(test_store_put_page_refuses_bad_input),
	        T(test_store_put_page_normalises_quantity),
	        T(test_store_put_page_moves_cursor),
	        T(test_store_put_page_quarantine),
	        T(test_store_claim_batch_forwarded),
	        T(test_store_claim_batch_freezes_registration),
	        T(test_store_claim_batch_needs_registration),
	        T(test_store_claim_commit_failure_forgets_registration),
	        T(test_store_apply_outcomes_dead),
	        T(test_store_apply_outcomes_retry_keeps_batch),
	        T(test_store_reset_inflight_keeps_batch_id),
	        T(test_store_claim_batch_holds_and_unhold),
	        T(test_store_claim_batch_limits),
	        T(test_store_apply_outcomes_refuses_bad_input),
	        T(test_store_dead_retry_and_discard),
	        T(test_store_dead_retry_all_moves_every_dead_letter),
	        T(test_store_conflict_accept_replaces_unforwarded),
	        T(test_store_conflict_accept_busy_while_forwarding),
	        T(test_store_conflict_accept_forwarded_larger_adjusts),
	        T(test_store_conflict_accept_supersedes_dead_adjustment),
	        T(test_store_conflict_accept_forwarded_smaller_credit_required),
	        T(test_store_conflict_reject_keeps_original),
	        T(test_store_prune_in_chunks),
	        T(test_store_prune_keeps_open_conflicts),
	        T(test_store_open_migrates_version_1),
	        T(test_store_open_corrupt_refused_unmodified),
	        T(test_store_open_skip_quick_check),
	        T(test_store_open_newer_version_refused),
	        T(test_store_open_readonly),
	        T(test_store_put_page_full_disk),
	        T(test_store_record_find_prefix),
	        T(test_store_report_sums_exactly),
	        T(test_store_records_query_filters),
	        T(test_store_caches_round_trip),
	        T(test_store_recollect_schedules_hours),
	        T(test_store_claim_batch_map_may_write),
	        T(test_store_records_query_callback_may_write),
	        T(test_store_errors_translated),
	        T(test_store_loop_queries_use_indexes),
	        T(test_store_open_migrates_version_1_raw_and_batches),
	        T(test_store_apply_outcomes_retry_new_batch_id),
	        T(test_store_prune_removes_raw_and_batches),
	        T(test_store_conflict_accept_replaces_raw),
	        T(test_store_oldest_pending_after_retry),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
