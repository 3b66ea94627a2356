/*
 * The simulated Commerce ingestion endpoint (ARCHITECTURE.md section 6) and its ledger. A batch
 * is checked as a whole (size limits → 413, not JSON → 400, a poison event of the fault plan →
 * 400), then every event is validated and either answered with a per-event status or written to
 * the ledger, a SQLite file in the state directory with usageEventId as primary key, in one
 * transaction per batch: a key already there is answered Duplicate. The summary compares every
 * member of every ledger row with the event the scenario implies for its key, and the totals
 * exactly (quantities as scaled 128-bit integers, and any other quantity the contract allows --
 * 38 significant digits at any scale -- added as decimal text; never floating point), one
 * reported hour at a time so that its memory does not grow with the ledger (see
 * commerce_summary). Fault rules may leave results out of an answer or reorder them.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <zlib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "sim.h"
#include "timeutil.h"
#include "xmalloc.h"

#define QTY_DIGITS       38   /* the most significant digits a quantity may have (section 6) */
#define QTY_FAST_DIGITS  9    /* totals add quantities below 10^9 as integers, others as text */
#define LIST_MAX         1000 /* entries per list in the summary (the lists it always had) */
#define SAMPLE_MAX       20   /* samples of the other mismatch kinds */
#define INFLATE_FACTOR   16
#define KEY_BYTES        32         /* a record key's SHA-256 digest */
#define KEYTAB_CACHE     4          /* expected hours whose keys the dedupe keeps */
#define ZBUF_KEEP        (4u << 20) /* an inflate buffer larger than this is not kept */

#define sbuf_lit(b, lit) sbuf_add((b), (lit), sizeof(lit) - 1)

/* A small string → index map (open addressing). */
struct smap {
	char **keys;
	size_t *vals;
	size_t cap;
	size_t n;
};

/*
 * One Commerce event as the batch parser leaves it: the members of section 6 by their place
 * (others are skipped; the first of a repeated member counts), string values pointing into the
 * (decoded in place) request body; other values keep their type and their JSON text as received
 * (for tags and additionalInfo). Parsing the flat events by hand instead of building jansson
 * trees halves the simulator's cost per event.
 */
enum jtype {
	JT_NONE, /* member absent */
	JT_STRING,
	JT_NULL,
	JT_NUMBER,
	JT_BOOL,
	JT_OBJECT,
	JT_ARRAY,
};

/* The members of an event, in the order of the ledger's insert statement. */
enum member {
	M_ID,
	M_SUBSCRIPTION,
	M_REASON,
	M_TENANT,
	M_SOURCE,
	M_REGISTRATION,
	M_METER,
	M_QUANTITY,
	M_USAGE_START,
	M_USAGE_END,
	M_REPORTED_START,
	M_RESOURCE,
	M_LOCATION,
	M_TAGS,
	M_INFO,
	M_MAX,
};

#define MEMBER(name)                   \
	{                              \
		name, sizeof(name) - 1 \
	}
static const struct {
	const char *name;
	size_t len;
} members[M_MAX] = {
        [M_ID] = MEMBER("usageEventId"),
        [M_SUBSCRIPTION] = MEMBER("subscriptionId"),
        [M_REASON] = MEMBER("chargeReason"),
        [M_TENANT] = MEMBER("tenantId"),
        [M_SOURCE] = MEMBER("sourceSubscriptionId"),
        [M_REGISTRATION] = MEMBER("registration"),
        [M_METER] = MEMBER("meterId"),
        [M_QUANTITY] = MEMBER("quantity"),
        [M_USAGE_START] = MEMBER("usageStartTime"),
        [M_USAGE_END] = MEMBER("usageEndTime"),
        [M_REPORTED_START] = MEMBER("reportedStartTime"),
        [M_RESOURCE] = MEMBER("resourceUri"),
        [M_LOCATION] = MEMBER("location"),
        [M_TAGS] = MEMBER("tags"),
        [M_INFO] = MEMBER("additionalInfo"),
};

struct jevent {
	const char *strs[M_MAX]; /* a string member's decoded text, else NULL */
	size_t lens[M_MAX];      /* its length (set when the member is there) */
	enum jtype types[M_MAX];
	const char *raw[M_MAX]; /* the value's JSON text, as received (set when it is there) */
	size_t raw_len[M_MAX];
	bool object; /* false: the array element was not an object */
};

/*
 * Totals of one (subscription, meter) by their text, as the summary reports them: integers of
 * 10^-SIM_QTY_DECIMALS, and for the actual total the rows whose quantity does not fit them (any
 * decimal of up to 38 significant digits is valid) summed exactly as decimal text.
 */
struct total {
	char *sub;
	char *meter;
	sim_u128 expected;
	sim_u128 actual;
	char *actual_text; /* NULL: nothing outside the integer range */
	uint64_t n_expected;
	uint64_t n_actual;
};

/*
 * Quantities and counts per (user subscription, meter index), the compact form of charges: the
 * size is bounded by the world (subscriptions × meters), never by the number of records. Sums
 * wrap modulo 2^128, so taking an hour out again is exact.
 */
struct agg_slot {
	uint64_t key; /* usersub * n_meters + meter + 1; 0: free */
	sim_u128 qty;
	uint64_t n;
};

struct agg {
	struct agg_slot *slots;
	size_t cap;
	size_t n;
};

/*
 * The ledger's rows per reportedStartTime (its text is always YYYY-MM-DDTHH:MM:SSZ, validated,
 * so text order is time order), counted in memory as rows are inserted. A group the summary
 * found to match its expected hour exactly is marked clean with its row count and the
 * registration generation: until either changes, the next summary takes it as it is. So is a
 * group whose every row was, when it arrived, byte for byte the expected event of a distinct
 * record of the hour (verified, under the registration generation verified_gen).
 */
struct group {
	char text[TIME_RFC3339_LEN + 1];
	int64_t t;
	uint64_t rows;
	uint64_t clean_rows; /* 0: not known to be clean */
	uint64_t clean_gen;
	uint64_t verified;
	uint64_t verified_gen;
	uint32_t ordinal;  /* a clustered ledger's rowids of the group: ordinal << 32 | seq */
	uint32_t next_seq; /* the seq of its next row */
};

/* A growing text buffer, kept from batch to batch. */
struct sbuf {
	char *p;
	size_t n;
	size_t cap;
};

/* The keys of the records of one expected hour, and a key → index table (the dedupe's). */
struct keytab {
	int64_t hour;
	size_t n;
	struct sim_record *recs;
	uint8_t (*keys)[KEY_BYTES]; /* NULL: an unused entry */
	uint32_t *slots;            /* index + 1; 0: free */
	size_t mask;
	uint64_t used;
	size_t next; /* the record after the last one looked up (see record_bit) */
};

/* A valid time text (TIME_RFC3339_LEN bytes, no NUL; all NUL: none yet) and its value. */
struct parsed_time {
	char text[TIME_RFC3339_LEN];
	int64_t t;
};

/* A bit of the accepted bitmaps set by the batch being written (undone if it fails). */
struct bitref {
	uint32_t hour;
	uint32_t rec;
};

/* What the Commerce side keeps besides the ledger itself. */
struct commerce {
	/*
	 * The dedupe (store_event): a fresh ledger has no index on usage_event_id; a bit per
	 * expected record of the scenario's hours says which are in the ledger (per hour,
	 * allocated when one is), until the first event that is no expected record of its
	 * reported hour makes the unique index (indexed), which then dedupes every event.
	 */
	bool indexed;
	bool clustered;        /* rowids by group (see commerce_open), else an index finds them */
	uint32_t next_ordinal; /* of the next new group of a clustered ledger */
	uint8_t **accepted;    /* per scenario hour; NULL until a record of the hour is accepted */
	struct keytab tabs[KEYTAB_CACHE];
	uint64_t tab_tick;
	struct bitref *undo;
	size_t n_undo;
	size_t undo_cap;
	struct parsed_time last_times[3]; /* the last valid usage start, end, reported start */
	/* buffers of the batch being handled */
	struct jevent *events;
	size_t events_cap;
	unsigned char *zbuf; /* the inflated body */
	size_t zcap;
	struct sbuf res;      /* the results, one after the other */
	size_t *starts;       /* where each result starts in res */
	bool *omit;           /* results the answer leaves out */
	size_t marks_cap;     /* size of starts and omit */
	struct group *groups; /* sorted by text */
	size_t n_groups;
	/* expected totals of the scenario's hours [exp_first, exp_end), made once and extended */
	bool exp_valid;
	int64_t exp_first;
	int64_t exp_end;
	struct agg exp;
	uint64_t exp_events;
	/* one expected hour: its records, their keys and a key → index table */
	struct sim_record *recs;
	char (*keys)[SIM_KEY_LEN + 1];
	uint8_t *seen;
	uint32_t *slots; /* index + 1; 0: free */
	size_t slot_mask;
	sqlite3_stmt *rows;  /* the rows of one reportedStartTime (by the index) */
	sqlite3_stmt *range; /* the rows of one group of a clustered ledger */
	uint64_t summary_ns; /* process CPU spent in summaries */
	uint64_t summaries;
};

/* The kinds of disagreement between the ledger and the expected events. */
enum kind {
	K_MISSING, /* an expected event not in the ledger */
	K_EXTRA,   /* a ledger row no expected event has */
	K_SUBSCRIPTION,
	K_REASON,
	K_TENANT,
	K_SOURCE,
	K_QUANTITY, /* another value */
	K_FIELD,    /* any of the fields below */
	K_LITERAL,  /* the same value written otherwise: reported, not a mismatch */
	K_MAX,
};

enum field {
	F_REGISTRATION,
	F_METER,
	F_USAGE_START,
	F_USAGE_END,
	F_REPORTED_START,
	F_RESOURCE,
	F_LOCATION,
	F_TAGS,
	F_INFO,
	F_MAX,
};

/* The columns the summary reads, in this order. */
enum column {
	C_ID,
	C_SUBSCRIPTION,
	C_REASON,
	C_TENANT,
	C_SOURCE,
	C_REGISTRATION,
	C_METER,
	C_QUANTITY,
	C_USAGE_START,
	C_USAGE_END,
	C_REPORTED_START,
	C_RESOURCE,
	C_LOCATION,
	C_TAGS,
	C_INFO,
};

/* One summary being made. */
struct run {
	struct sim *s;
	struct commerce *c;
	size_t counts[K_MAX];
	struct evbuffer *lists[K_MAX];
	size_t field_counts[F_MAX];
	size_t accepted;
	size_t unparsable;
	size_t hours_compared; /* reported hours compared row by row (not taken as clean) */
	struct agg base;       /* expected totals of the hours whose rows match exactly */
	struct agg actual;     /* rows charged to their record's subscription and meter */
	struct smap tmap;      /* every other row, and the output, by (subscription, meter) text */
	struct total *totals;
	size_t n_totals;
};

static void batch(struct sim *s, struct evhttp_request *req, struct sim_response *r);
static int store_event(struct sim *s, const struct jevent *e, const char *corr, sqlite3_int64 now,
                       const int64_t times[static 3]);
static int record_bit(struct sim *s, const char *id, int64_t reported, uint32_t *ret_hour,
                      uint32_t *ret_rec, const struct keytab **ret_tab);
static bool event_is_record(struct sim *s, const struct jevent *e, const struct sim_record *rec,
                            const int64_t times[static 3]);
static struct keytab *keytab_get(struct sim *s, int64_t hour);
static int key_decode(const char *id, uint8_t out[static KEY_BYTES]);
static size_t key_slot(const uint8_t key[static KEY_BYTES]);
static int ledger_mode(struct sim *s);
static void dedupe_clear(struct commerce *c, size_t hours);
static void write_results(struct sim *s, struct sim_response *r, size_t count);
static void sbuf_add(struct sbuf *b, const char *p, size_t n);
static void sbuf_json_str(struct sbuf *b, const char *str);
static int validate_event(struct sim *s, const struct jevent *e, const char **ret_status,
                          const char **ret_message, int64_t ret_times[static 3]);
static int parse_batch(char *p, char *end, struct jevent **events, size_t *cap, size_t *ret_n);
static enum member member_of(const char *key, size_t len);
static int parse_event(char **pp, char *end, struct jevent *e);
static const char *plain_end(const char *p, const char *end);
static int parse_string(char **pp, char *end, char **ret, size_t *ret_len, bool decode);
static inline void put(char **out, bool decode, char c);
static int skip_value(char **pp, char *end, enum jtype *ret_type);
static void skip_ws(char **pp, char *end);
static int qty_check(const char *text);
static int qty_parse(const char *text, sim_u128 *ret);
static void qty_format(sim_u128 v, char out[static 64]);
static char *dec_add(const char *a, const char *b);
static bool is_utc_time(const char *s);
static int inflate_body(struct commerce *c, const unsigned char *in, size_t n, size_t limit,
                        size_t *ret_size);
static void message_time(char out[static 40]);
static int db_exec(sqlite3 *db, const char *sql);
static int add_columns(sqlite3 *db);
static void smap_free(struct smap *m);
static size_t *smap_get(struct smap *m, const char *key, bool create);
static void window_texts(int64_t from, int64_t until, char tf[static 32], char tu[static 32]);
static void expected_hours(const struct sim *s, int64_t from, int64_t until, int64_t *ret_first,
                           int64_t *ret_end);
static int64_t next_expected_hour(const struct sim_world *w, int64_t h, int64_t end);
static void expected_totals(struct sim *s, int64_t first, int64_t end);
static void hour_buffers(struct sim *s);
static void compare_hour(struct run *run, int64_t h, struct group *gr);
static void compare_rows(struct run *run, struct group *gr, int64_t h,
                         const struct sim_record *recs);
static void compare_row(struct run *run, sqlite3_stmt *q, const struct sim_record *rec,
                        const char *th, sim_u128 v, bool big);
static const char *column(sqlite3_stmt *q, enum column col);
static void total_add(struct run *run, const char *sub, const char *meter, sim_u128 v,
                      const char *text);
static void make_totals(struct run *run);
static void list_key(struct evbuffer *list, size_t n, const char *id);
static void list_pair(struct run *run, enum kind k, const char *id, const char *expected,
                      const char *actual);
static void list_fields(struct run *run, const char *id, const bool wrong[static F_MAX]);
static bool json_text_equal(const char *a, const char *b);
static bool json_text_same(const char *a, size_t n, const char *b);
static uint64_t agg_key(const struct sim_world *w, const struct sim_record *rec);
static void agg_add(struct agg *a, uint64_t key, sim_u128 qty, uint64_t n);
static void agg_copy(struct agg *dst, const struct agg *src);
static void agg_free(struct agg *a);
static uint64_t key_hash(const char *key);
static long key_find(const struct commerce *c, const char *id);
static struct group *group_get(struct commerce *c, const char *text, bool create);
static int groups_load(struct sim *s);
static uint64_t process_cpu_ns(void);
static size_t total_slot(struct smap *m, struct total **totals, size_t *n, const char *sub,
                         const char *meter);

/* Open (or create) the ledger in the state directory. */
int
commerce_open(struct sim *s)
{
	_cleanup_free_ char *path = xasprintf("%s/ledger.db", s->state_dir);

	s->commerce = xcalloc(1, sizeof(*s->commerce));
	/*
	 * One thread: SQLite need not lock its structures on every call, nor count its memory
	 * under a mutex on every allocation (before anything else of SQLite's runs; a second call
	 * is refused and changes nothing).
	 */
	sqlite3_config(SQLITE_CONFIG_SINGLETHREAD);
	sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
	if (sqlite3_open_v2(path, &s->db,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	                    NULL) != SQLITE_OK) {
		fprintf(stderr, "azs-sim: %s: %s\n", path, sqlite3_errmsg(s->db));
		return -EIO;
	}
	/*
	 * The ledger is test infrastructure sharing the benchmark machine: no fsync and the
	 * rollback journal in memory (a crash of the simulator ends the test anyway; a write-ahead
	 * log would write every page twice), a page cache of 4 MiB (rows are appended: what is
	 * read again is the tree's right edge; a larger cache only made the RSS grow with the
	 * ledger, by up to 16 MiB, at no gain in speed), and no index to maintain while
	 * events arrive: the random usageEventId is in none while the dedupe can do without one
	 * (see store_event), and a group's rows (one reportedStartTime) are found by their rowids,
	 * ordinal << 32 | seq, the group's ordinal (in the order groups first appeared) and the
	 * row's place in it: rows arriving hour after hour are appended. A ledger made by an older
	 * simulator (it has the index events_reported, and usage_event_id UNIQUE in the table)
	 * keeps its indexes and rowids. Every member of an event is kept (tags and additionalInfo
	 * as the JSON text received); the columns after accepted_at came later and are added to a
	 * ledger made before them.
	 */
	sqlite3_busy_timeout(s->db, 10000); /* a test reading the ledger meanwhile */
	if (db_exec(s->db,
	            "PRAGMA page_size=16384; PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF;"
	            "PRAGMA cache_size=-4096; PRAGMA temp_store=MEMORY;"
	            "CREATE TABLE IF NOT EXISTS events ("
	            " usage_event_id TEXT NOT NULL, subscription_id TEXT NOT NULL,"
	            " charge_reason TEXT NOT NULL, tenant_id TEXT,"
	            " source_subscription_id TEXT NOT NULL, meter_id TEXT NOT NULL,"
	            " quantity TEXT NOT NULL, usage_start TEXT NOT NULL,"
	            " usage_end TEXT NOT NULL, reported_start TEXT NOT NULL,"
	            " resource_uri TEXT NOT NULL, correlation_id TEXT,"
	            " accepted_at INTEGER NOT NULL, registration TEXT, location TEXT,"
	            " tags TEXT, additional_info TEXT);") < 0 ||
	    add_columns(s->db) < 0 || ledger_mode(s) < 0)
		return -EIO;
	if (sqlite3_prepare_v2(s->db,
	                       "INSERT OR IGNORE INTO events (rowid, usage_event_id,"
	                       " subscription_id, charge_reason, tenant_id,"
	                       " source_subscription_id, registration, meter_id, quantity,"
	                       " usage_start, usage_end, reported_start, resource_uri, location,"
	                       " tags, additional_info, correlation_id, accepted_at)"
	                       " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
	                       -1, &s->insert, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db,
	                       "SELECT usage_event_id, subscription_id, charge_reason, tenant_id,"
	                       " source_subscription_id, registration, meter_id, quantity,"
	                       " usage_start, usage_end, reported_start, resource_uri, location,"
	                       " tags, additional_info FROM events WHERE reported_start = ?",
	                       -1, &s->commerce->rows, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db,
	                       "SELECT usage_event_id, subscription_id, charge_reason, tenant_id,"
	                       " source_subscription_id, registration, meter_id, quantity,"
	                       " usage_start, usage_end, reported_start, resource_uri, location,"
	                       " tags, additional_info FROM events WHERE rowid BETWEEN ? AND ?",
	                       -1, &s->commerce->range, NULL) != SQLITE_OK ||
	    groups_load(s) < 0) {
		fprintf(stderr, "azs-sim: ledger: %s\n", sqlite3_errmsg(s->db));
		return -EIO;
	}
	return 0;
}

/* Close the ledger. */
void
commerce_close(struct sim *s)
{
	struct commerce *c = s->commerce;

	if (c) {
		dedupe_clear(c, s->world.hour_count);
		free(c->accepted);
		for (size_t i = 0; i < KEYTAB_CACHE; i++) {
			free(c->tabs[i].recs);
			free(c->tabs[i].keys);
			free(c->tabs[i].slots);
		}
		free(c->undo);
		free(c->events);
		free(c->zbuf);
		free(c->res.p);
		free(c->starts);
		free(c->omit);
		sqlite3_finalize(c->rows);
		sqlite3_finalize(c->range);
		free(c->groups);
		agg_free(&c->exp);
		free(c->recs);
		free(c->keys);
		free(c->seen);
		free(c->slots);
		free(c);
		s->commerce = NULL;
	}
	sqlite3_finalize(s->insert);
	sqlite3_close(s->db);
	s->insert = NULL;
	s->db = NULL;
}

/* Empty the ledger and the counters (POST /_sim/reset). */
int
commerce_reset(struct sim *s)
{
	s->duplicates = s->rejected = s->batches = s->events_seen = 0;
	s->commerce->n_groups = 0;
	if (db_exec(s->db, "DELETE FROM events;") < 0 || ledger_mode(s) < 0)
		return -EIO;
	return 0;
}

/*
 * Choose how the ledger dedupes and finds a group's rows (at start and after a reset): an empty
 * ledger without indexes, with empty bitmaps and clustered rowids; one that holds rows (made by
 * an earlier run) with the unique index on usage_event_id, clustered unless an older simulator
 * made it (then it has the index events_reported).
 */
static int
ledger_mode(struct sim *s)
{
	struct commerce *c = s->commerce;
	sqlite3_stmt *q;
	bool rows, old;

	if (sqlite3_prepare_v2(s->db,
	                       "SELECT EXISTS (SELECT 1 FROM events), EXISTS (SELECT 1 FROM"
	                       " sqlite_master WHERE type = 'index' AND name = 'events_reported')",
	                       -1, &q, NULL) != SQLITE_OK)
		return -EIO;
	rows = sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0);
	old = sqlite3_column_int(q, 1);
	sqlite3_finalize(q);
	dedupe_clear(c, s->world.hour_count);
	c->indexed = rows;
	c->clustered = !rows || !old;
	c->next_ordinal = 1;
	if (rows)
		return db_exec(s->db, "CREATE UNIQUE INDEX IF NOT EXISTS events_id"
		                      " ON events(usage_event_id)");
	return db_exec(s->db, "DROP INDEX IF EXISTS events_id;"
	                      "DROP INDEX IF EXISTS events_reported");
}

/* Forget which expected records are in the ledger. */
static void
dedupe_clear(struct commerce *c, size_t hours)
{
	for (size_t i = 0; c->accepted && i < hours; i++) {
		free(c->accepted[i]);
		c->accepted[i] = NULL;
	}
}

/* Handle one batch POST. */
void
commerce_batch(struct sim *s, struct evhttp_request *req, struct sim_response *r)
{
	struct commerce *c = s->commerce;

	batch(s, req, r);
	if (c->zcap > ZBUF_KEEP) { /* a rare large body: its buffer is not kept */
		free(c->zbuf);
		c->zbuf = NULL;
		c->zcap = 0;
	}
}

/* Check, store and answer one batch. */
static void
batch(struct sim *s, struct evhttp_request *req, struct sim_response *r)
{
	struct commerce *c = s->commerce;
	struct evkeyvalq *hdr = evhttp_request_get_input_headers(req);
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	const char *enc = evhttp_find_header(hdr, "Content-Encoding");
	const char *corr = evhttp_find_header(hdr, "x-ms-correlationid");
	size_t n = evbuffer_get_length(in), size = n;
	const unsigned char *body;
	struct jevent *events;
	bool indexed = c->indexed;
	char now_text[40];
	sqlite3_int64 now = (sqlite3_int64)time(NULL);
	size_t count = 0;

	if (n > s->world.max_bytes) {
		sim_arm_error(r, 413, "RequestEntityTooLarge",
		              "The request body is larger than the batch limit.");
		return;
	}
	body = evbuffer_pullup(in, -1);
	if (enc && strcasecmp(enc, "gzip") == 0) {
		int k = inflate_body(c, body, n, s->world.max_bytes * INFLATE_FACTOR, &size);

		if (k == -EFBIG) {
			sim_arm_error(r, 413, "RequestEntityTooLarge",
			              "The decompressed request body is too large.");
			return;
		}
		if (k < 0) {
			sim_arm_error(r, 400, "BadRequest",
			              "The gzip body cannot be decompressed.");
			return;
		}
		body = c->zbuf;
	} else if (enc && strcasecmp(enc, "identity") != 0) {
		sim_arm_error(r, 415, "UnsupportedMediaType",
		              "Only gzip and identity content encodings are supported.");
		return;
	}
	if (parse_batch((char *)body, (char *)body + size, &c->events, &c->events_cap, &count) <
	            0 ||
	    count == 0) {
		sim_arm_error(r, 400, "BadRequest",
		              "The request body must be a JSON object with a non-empty 'request' "
		              "array.");
		return;
	}
	events = c->events;
	r->events = (unsigned)count;
	if (count > s->world.max_events) {
		sim_arm_error(r, 413, "RequestEntityTooLarge",
		              "The batch holds more usage events than allowed.");
		return;
	}
	for (size_t i = 0; i < count; i++) {
		const char *id = events[i].strs[M_ID];

		if (id && sim_fault_take(s, SIM_EP_COMMERCE, SIM_ACT_POISON, id, -1)) {
			sim_arm_error(r, 400, "BadArgument",
			              "The request contains an invalid usage event.");
			return;
		}
	}

	s->batches++;
	s->events_seen += count;
	message_time(now_text);
	if (db_exec(s->db, "BEGIN") < 0) {
		sim_arm_error(r, 500, "InternalServerError", "The ledger cannot be written.");
		return;
	}
	/* each event's result goes to c->res (c->starts[i] is where it begins): faults may leave
	 * some out of the answer or reorder them */
	if (count + 1 > c->marks_cap) {
		c->marks_cap = MAX(count + 1, c->marks_cap * 2);
		c->starts = xreallocarray(c->starts, c->marks_cap, sizeof(*c->starts));
		c->omit = xreallocarray(c->omit, c->marks_cap, sizeof(*c->omit));
	}
	c->res.n = 0;
	c->n_undo = 0;
	for (size_t i = 0; i < count; i++) {
		const struct jevent *e = &events[i];
		const char *id = e->strs[M_ID];
		const char *status = NULL, *message = NULL;
		struct sim_rule *rule;
		int64_t times[3] = {0};

		c->starts[i] = c->res.n;
		c->omit[i] = id && sim_fault_take(s, SIM_EP_COMMERCE, SIM_ACT_OMIT_RESULTS, id, -1);
		sbuf_lit(&c->res, "{\"usageEventId\":");
		if (id)
			sbuf_json_str(&c->res, id);
		else
			sbuf_lit(&c->res, "null");
		if (validate_event(s, e, &status, &message, times) < 0) {
			s->rejected++;
		} else if ((rule = sim_fault_take(s, SIM_EP_COMMERCE, SIM_ACT_EVENTS, id, -1))) {
			status = rule->code ? rule->code : "Error";
			message = rule->message            ? rule->message
			          : streq(status, "Error") ? "Try again."
			                                   : "Simulated per-event fault.";
			s->rejected++;
		} else {
			int k = store_event(s, e, corr, now, times);

			if (k == -EEXIST) {
				s->duplicates++;
				sbuf_lit(&c->res, ",\"status\":\"Duplicate\",\"messageTime\":"
				                  "\"0001-01-01T00:00:00\",\"error\":{\"code\":"
				                  "\"Conflict\",\"message\":\"This usage event "
				                  "already exist.\"}}");
				continue;
			}
			if (k == 0) {
				sbuf_lit(&c->res, ",\"status\":\"Accepted\",\"messageTime\":\"");
				sbuf_add(&c->res, now_text, strlen(now_text));
				sbuf_lit(&c->res, "\"}");
				continue;
			}
			status = "Error";
			message = "The ledger cannot be written.";
		}
		sbuf_lit(&c->res, ",\"status\":");
		sbuf_json_str(&c->res, status);
		/* a transient Error carries the code InternalError (commerce-batch-response.json)
		 */
		sbuf_lit(&c->res, ",\"error\":{\"code\":");
		sbuf_json_str(&c->res, streq(status, "Error") ? "InternalError" : status);
		sbuf_lit(&c->res, ",\"message\":");
		sbuf_json_str(&c->res, message);
		sbuf_lit(&c->res, "}}");
	}
	c->starts[count] = c->res.n;
	if (db_exec(s->db, "COMMIT") < 0) {
		db_exec(s->db, "ROLLBACK");
		groups_load(s); /* the rows counted above are not there */
		for (size_t i = 0; i < c->n_undo; i++)
			c->accepted[c->undo[i].hour][c->undo[i].rec / 8] &=
			        (uint8_t) ~(1u << (c->undo[i].rec % 8));
		c->indexed = indexed; /* an index made by this batch is gone with it */
		sim_arm_error(r, 500, "InternalServerError", "The ledger cannot be written.");
		return;
	}
	write_results(s, r, count);
}

/*
 * Write one valid event to the ledger (in the batch's transaction): 0, or -EEXIST when its
 * usageEventId is there already, or -EIO. A fresh ledger dedupes with a bit per expected
 * record, for an event whose id is the key of a record of the hour its reportedStartTime names
 * (what a correct forwarder sends); the first event that is not makes the unique index on
 * usage_event_id, which dedupes every event from then on. Either way an id is accepted once:
 * two different ids never share a bit, and ids with a bit set are in the index when it is made.
 */
static int
store_event(struct sim *s, const struct jevent *e, const char *corr, sqlite3_int64 now,
            const int64_t times[static 3])
{
	struct commerce *c = s->commerce;
	sqlite3_stmt *q = s->insert;
	const struct keytab *t = NULL;
	uint32_t hour = 0, rec = 0;
	bool bit = !c->indexed && record_bit(s, e->strs[M_ID], times[2], &hour, &rec, &t) == 0;
	struct group *gr;
	int k;

	if (bit && c->accepted[hour] && (c->accepted[hour][rec / 8] & (1u << (rec % 8))))
		return -EEXIST;
	if (!bit && !c->indexed) {
		if (db_exec(s->db, "CREATE UNIQUE INDEX IF NOT EXISTS events_id"
		                   " ON events(usage_event_id)") < 0)
			return -EIO;
		c->indexed = true;
	}
	gr = group_get(c, e->strs[M_REPORTED_START], true); /* validated: never NULL */
	sqlite3_reset(q);
	if (c->clustered)
		sqlite3_bind_int64(q, 1, (sqlite3_int64)gr->ordinal << 32 | gr->next_seq++);
	else
		sqlite3_bind_null(q, 1);
	for (int m = M_ID; m < M_TAGS; m++)
		sqlite3_bind_text(q, m + 2, e->strs[m], (int)e->lens[m], SQLITE_STATIC);
	/* tags and additionalInfo: their JSON text as received */
	for (int m = M_TAGS; m <= M_INFO; m++)
		sqlite3_bind_text(q, m + 2, e->raw[m], (int)e->raw_len[m], SQLITE_STATIC);
	sqlite3_bind_text(q, M_MAX + 2, corr, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, M_MAX + 3, now);
	k = sqlite3_step(q);
	sqlite3_reset(q);
	if (k != SQLITE_DONE)
		return -EIO;
	if (sqlite3_changes(s->db) == 0)
		return -EEXIST;
	gr->rows++;
	if (bit && event_is_record(s, e, &t->recs[rec], times)) {
		if (gr->verified_gen != s->world.reg_gen) { /* rows verified before do not count */
			gr->verified = 0;
			gr->verified_gen = s->world.reg_gen;
		}
		gr->verified++;
	}
	if (bit) {
		if (!c->accepted[hour])
			c->accepted[hour] = xcalloc(s->world.records_per_hour / 8 + 1, 1);
		c->accepted[hour][rec / 8] |= (uint8_t)(1u << (rec % 8));
		if (c->n_undo == c->undo_cap) {
			c->undo_cap = MAX(c->undo_cap * 2, (size_t)256);
			c->undo = xreallocarray(c->undo, c->undo_cap, sizeof(*c->undo));
		}
		c->undo[c->n_undo].hour = hour;
		c->undo[c->n_undo++].rec = rec;
	}
	return 0;
}

/*
 * The bit of the expected record whose key an id is, when it is one of the scenario hour that
 * reported names: *ret_hour (the hour's place in the scenario) and *ret_rec (the record's
 * place in the hour); -ENOENT otherwise.
 */
static int
record_bit(struct sim *s, const char *id, int64_t reported, uint32_t *ret_hour, uint32_t *ret_rec,
           const struct keytab **ret_tab)
{
	struct commerce *c = s->commerce;
	const struct sim_world *w = &s->world;
	struct keytab *t;
	uint8_t key[KEY_BYTES];
	int64_t hour = (reported - w->hour_from) / 3600;
	size_t rec = SIZE_MAX;

	if (reported < w->hour_from || (reported - w->hour_from) % 3600 != 0 ||
	    hour >= (int64_t)w->hour_count || !world_hour_has_usage(w, reported) ||
	    key_decode(id, key) < 0)
		return -ENOENT;
	t = keytab_get(s, reported);
	/*
	 * A forwarder sends the records of an hour mostly in the order the usage API listed them:
	 * the one after the last found is tried first, before the table (whose slot and key, at
	 * random places in a large table, are two cache misses).
	 */
	if (t->next < t->n && memcmp(t->keys[t->next], key, KEY_BYTES) == 0)
		rec = t->next;
	for (size_t j = key_slot(key) & t->mask; rec == SIZE_MAX && t->slots[j];
	     j = (j + 1) & t->mask)
		if (memcmp(t->keys[t->slots[j] - 1], key, KEY_BYTES) == 0)
			rec = t->slots[j] - 1;
	if (rec == SIZE_MAX)
		return -ENOENT;
	if (!c->accepted)
		c->accepted = xcalloc(w->hour_count, sizeof(*c->accepted));
	t->next = rec + 1;
	*ret_hour = (uint32_t)hour;
	*ret_rec = (uint32_t)rec;
	*ret_tab = t;
	return 0;
}

/* The keys of an expected hour, from the cache or made (replacing the least recently used). */
static struct keytab *
keytab_get(struct sim *s, int64_t hour)
{
	struct commerce *c = s->commerce;
	const struct sim_world *w = &s->world;
	struct keytab *t = &c->tabs[0];
	size_t cap = 2;

	for (size_t i = 0; i < KEYTAB_CACHE; i++) {
		if (c->tabs[i].keys && c->tabs[i].hour == hour) {
			c->tabs[i].used = ++c->tab_tick;
			return &c->tabs[i];
		}
		if (!c->tabs[i].keys || c->tabs[i].used < t->used)
			t = &c->tabs[i];
	}
	while (cap < 2 * (size_t)w->records_per_hour)
		cap *= 2;
	if (!t->keys) {
		t->recs = xcalloc(w->records_per_hour + 1, sizeof(*t->recs));
		t->keys = xcalloc(w->records_per_hour + 1, sizeof(*t->keys));
		t->slots = xcalloc(cap, sizeof(*t->slots));
		t->mask = cap - 1;
	}
	t->hour = hour;
	t->used = ++c->tab_tick;
	t->n = world_hour_records(w, hour, t->recs);
	t->next = 0;
	memset(t->slots, 0, cap * sizeof(*t->slots));
	for (size_t i = 0; i < t->n; i++) {
		char hex[SIM_KEY_LEN + 1];
		size_t j;

		world_record_key(w, hour, &t->recs[i], hex);
		if (key_decode(hex, t->keys[i]) < 0)
			abort();
		for (j = key_slot(t->keys[i]) & t->mask; t->slots[j]; j = (j + 1) & t->mask)
			;
		t->slots[j] = (uint32_t)i + 1;
	}
	return t;
}

/*
 * Tell whether an event is, byte for byte (but for white space between the tokens of tags and
 * additionalInfo), the one the expected record rec of the hour its reportedStartTime names
 * implies, charged as the registration stands now: then the summary's comparison of its row
 * could find nothing (see compare_row, which is less strict: it compares subscriptions without
 * case and JSON texts as values). The three times are compared as the times validate_event
 * read: it let through only the one text each time has (YYYY-MM-DDTHH:MM:SSZ), and the hour
 * of rec is the one reportedStartTime names (record_bit found it there).
 */
static bool
event_is_record(struct sim *s, const struct jevent *e, const struct sim_record *rec,
                const int64_t times[static 3])
{
	const struct sim_world *w = &s->world;
	const struct sim_resource *res = &w->res[rec->resource];
	const struct sim_instance *in = &res->inst[rec->variant];
	const struct sim_usersub *u = &w->subs[res->usersub];
	const struct sim_tenant *t = &w->tenants[u->tenant];
	const char *reason, *charged = world_charged(w, res->usersub, &reason);
	char lit[SIM_QTY_TEXT];
	size_t n;

	if (times[0] != rec->usage_start || times[1] != rec->usage_start + 3600 ||
	    !streq_ptr(e->strs[M_SUBSCRIPTION], charged) || !streq_ptr(e->strs[M_REASON], reason) ||
	    !(t->unlisted ? e->types[M_TENANT] == JT_NULL : streq_ptr(e->strs[M_TENANT], t->id)) ||
	    !streq_ptr(e->strs[M_SOURCE], u->id) ||
	    !streq_ptr(e->strs[M_REGISTRATION], w->reg_id_lower) ||
	    !streq_ptr(e->strs[M_METER], w->meters[rec->meter]) ||
	    !streq_ptr(e->strs[M_RESOURCE], res->uri) || !streq_ptr(e->strs[M_LOCATION], "local") ||
	    !json_text_same(e->raw[M_TAGS], e->raw_len[M_TAGS], in->tags) ||
	    !json_text_same(e->raw[M_INFO], e->raw_len[M_INFO], in->info))
		return false;
	n = world_quantity_text(rec->quantity, rec->decimals, lit);
	return e->lens[M_QUANTITY] == n && memcmp(e->strs[M_QUANTITY], lit, n) == 0;
}

/* A key written as 64 lower-case hex digits (a SHA-256 digest) as its bytes; -EINVAL if not. */
static int
key_decode(const char *id, uint8_t out[static KEY_BYTES])
{
	/* a digit's value + 1; 0 for anything else (the end of a shorter id too) */
	static const uint8_t value[256] = {
	        ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,
	        ['6'] = 7,  ['7'] = 8,  ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12,
	        ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
	};

	for (size_t i = 0; i < KEY_BYTES; i++) {
		unsigned hi = value[(unsigned char)id[2 * i]], lo;

		if (!hi)
			return -EINVAL;
		lo = value[(unsigned char)id[2 * i + 1]];
		if (!lo)
			return -EINVAL;
		out[i] = (uint8_t)((hi - 1) << 4 | (lo - 1));
	}
	return id[2 * KEY_BYTES] == '\0' ? 0 : -EINVAL;
}

/* Where a key starts looking in a key table (the digest's first bytes are uniform already). */
static size_t
key_slot(const uint8_t key[static KEY_BYTES])
{
	uint64_t v;

	memcpy(&v, key, sizeof(v));
	return (size_t)v;
}

/*
 * Write the answer {"count":N,"result":[…]}: every event's result in order, unless an
 * omitResults rule leaves some out (those naming them, or the last `count` of the batch) or a
 * reorderResults rule answers them in reverse order. count is the number of results written.
 */
static void
write_results(struct sim *s, struct sim_response *r, size_t count)
{
	struct commerce *c = s->commerce;
	struct sim_rule *drop = sim_fault_take(s, SIM_EP_COMMERCE, SIM_ACT_OMIT_RESULTS, NULL, -1);
	bool reverse = sim_fault_take(s, SIM_EP_COMMERCE, SIM_ACT_REORDER_RESULTS, NULL, -1);
	const size_t *starts = c->starts;
	bool *omit = c->omit;
	size_t n = 0;

	for (size_t i = 0; drop && i < count; i++)
		omit[i] = omit[i] || i + drop->count >= count;
	for (size_t i = 0; i < count; i++)
		n += !omit[i];
	r->status = 200;
	evbuffer_add_printf(r->body, "{\"count\":%zu,\"result\":[", n);
	for (size_t k = 0, first = 1; k < count; k++) {
		size_t i = reverse ? count - 1 - k : k;

		if (omit[i])
			continue;
		if (!first)
			evbuffer_add(r->body, ",", 1);
		first = 0;
		evbuffer_add(r->body, c->res.p + starts[i], starts[i + 1] - starts[i]);
	}
	evbuffer_add(r->body, "]}", 2);
}

/* Append bytes to a text buffer. */
static void
sbuf_add(struct sbuf *b, const char *p, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = MAX(b->n + n, MAX(b->cap * 2, (size_t)4096));
		b->p = xrealloc(b->p, b->cap);
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

/* Append a string as a JSON string literal. */
static void
sbuf_json_str(struct sbuf *b, const char *str)
{
	const char *p = str, *end = str + strlen(str);

	sbuf_add(b, "\"", 1);
	for (;;) {
		const char *run = p;
		char esc[8];
		unsigned char ch;

		p = plain_end(p, end);
		sbuf_add(b, run, (size_t)(p - run));
		if (p == end)
			break;
		ch = (unsigned char)*p++;
		if (ch == '"' || ch == '\\')
			snprintf(esc, sizeof(esc), "\\%c", ch);
		else
			snprintf(esc, sizeof(esc), "\\u%04x", ch);
		sbuf_add(b, esc, strlen(esc));
	}
	sbuf_add(b, "\"", 1);
}

/*
 * Write the ledger summary and its comparison with the expected charges. The expected totals
 * are made once (and extended as hours end); the ledger is compared hour by hour, each hour's
 * rows (an indexed query) against that hour's records generated again, so memory follows the
 * size of an hour and of the world, not the number of records. An hour whose rows matched
 * exactly is not compared again until its rows or the registration change.
 */
void
commerce_summary(struct sim *s, int64_t from, int64_t until, struct evbuffer *out)
{
	static const char *const kinds[K_MAX] = {
	        [K_MISSING] = "missing",
	        [K_EXTRA] = "extra",
	        [K_SUBSCRIPTION] = "wrongSubscription",
	        [K_REASON] = "wrongReason",
	        [K_TENANT] = "wrongTenant",
	        [K_SOURCE] = "wrongSource",
	        [K_QUANTITY] = "wrongQuantity",
	        [K_FIELD] = "wrongField",
	        [K_LITERAL] = "quantityLiteral",
	};
	static const char *const fields[F_MAX] = {
	        [F_REGISTRATION] = "registration",
	        [F_METER] = "meterId",
	        [F_USAGE_START] = "usageStartTime",
	        [F_USAGE_END] = "usageEndTime",
	        [F_REPORTED_START] = "reportedStartTime",
	        [F_RESOURCE] = "resourceUri",
	        [F_LOCATION] = "location",
	        [F_TAGS] = "tags",
	        [F_INFO] = "additionalInfo",
	};
	struct commerce *c = s->commerce;
	struct sim_world *w = &s->world;
	struct run run = {.s = s, .c = c};
	uint64_t t0 = process_cpu_ns(), now_ns, control_ns, summary_ns, total_ns, work;
	int64_t first, end, h;
	size_t g = 0, n_tmis = 0, problems = 0;
	char tf[32], tu[32];

	window_texts(from, until, tf, tu);
	expected_hours(s, from, until, &first, &end);
	expected_totals(s, first, end);
	agg_copy(&run.base, &c->exp);
	for (int k = 0; k < K_MAX; k++)
		if (!(run.lists[k] = evbuffer_new()))
			abort();

	/* the expected hours and the ledger's groups in the window, in time order */
	while (g < c->n_groups && strcmp(c->groups[g].text, tf) < 0)
		g++;
	h = next_expected_hour(w, first, end);
	for (;;) {
		struct group *gr =
		        g < c->n_groups && strcmp(c->groups[g].text, tu) < 0 ? &c->groups[g] : NULL;

		if (h < end && (!gr || h <= gr->t)) {
			bool same = gr && gr->t == h;

			compare_hour(&run, h, same ? gr : NULL);
			g += same;
			h = next_expected_hour(w, h + 3600, end);
		} else if (gr) {
			run.hours_compared++;
			compare_rows(&run, gr, 0, NULL);
			g++;
		} else {
			break;
		}
	}
	make_totals(&run);

	evbuffer_add_printf(out,
	                    "{\"from\":\"%s\",\"until\":\"%s\",\"accepted\":%zu,"
	                    "\"duplicates\":%llu,\"rejected\":%llu,\"batches\":%llu,"
	                    "\"eventsReceived\":%llu,\"unparsableQuantities\":%zu,\"totals\":[",
	                    tf, tu, run.accepted, (unsigned long long)s->duplicates,
	                    (unsigned long long)s->rejected, (unsigned long long)s->batches,
	                    (unsigned long long)s->events_seen, run.unparsable);
	for (size_t i = 0; i < run.n_totals; i++) {
		const struct total *t = &run.totals[i];
		char e[64], a[64];
		_cleanup_free_ char *sum = NULL;

		qty_format(t->expected, e);
		qty_format(t->actual, a);
		if (t->actual_text)
			sum = dec_add(a, t->actual_text);
		evbuffer_add_printf(out,
		                    "%s{\"subscriptionId\":\"%s\",\"meterId\":\"%s\","
		                    "\"expected\":\"%s\",\"actual\":\"%s\",\"expectedEvents\":%llu,"
		                    "\"actualEvents\":%llu}",
		                    i ? "," : "", t->sub, t->meter, e, sum ? sum : a,
		                    (unsigned long long)t->n_expected,
		                    (unsigned long long)t->n_actual);
		if (!streq(e, sum ? sum : a)) /* both canonical: equal texts are equal values */
			n_tmis++;
	}
	evbuffer_add_printf(out, "],\"expected\":{\"events\":%llu},\"comparison\":{",
	                    (unsigned long long)c->exp_events);
	for (int k = 0; k < K_MAX; k++) {
		evbuffer_add_printf(out, "\"%s\":[", kinds[k]);
		evbuffer_add_buffer(out, run.lists[k]);
		evbuffer_add_printf(out, "],\"%sCount\":%zu,", kinds[k], run.counts[k]);
		if (k == K_FIELD) {
			evbuffer_add_printf(out, "\"wrongFields\":{");
			for (int f = 0; f < F_MAX; f++)
				evbuffer_add_printf(out, "%s\"%s\":%zu", f ? "," : "", fields[f],
				                    run.field_counts[f]);
			evbuffer_add_printf(out, "},");
		}
		if (k != K_LITERAL) /* the same value written otherwise is reported, not wrong */
			problems += run.counts[k];
	}
	problems += n_tmis + run.unparsable;
	evbuffer_add_printf(out, "\"totalMismatches\":%zu,\"ok\":%s},", n_tmis,
	                    problems == 0 ? "true" : "false");

	/*
	 * The simulator's own cost. The control API (the summary above all: it reads the whole
	 * ledger) is test plumbing, so its CPU time is reported apart and kept out of the CPU per
	 * record and event; otherwise polling the summary would inflate that figure.
	 */
	now_ns = process_cpu_ns();
	summary_ns = c->summary_ns + (now_ns - t0);
	control_ns = s->cpu_ns[SIM_EP_CONTROL] + (now_ns - t0);
	total_ns = now_ns - s->cpu_start_ns;
	work = total_ns > control_ns ? total_ns - control_ns : 0;
	evbuffer_add_printf(
	        out,
	        "\"sim\":{\"pagesServed\":%llu,\"recordsServed\":%llu,\"eventsReceived\":%llu,"
	        "\"cpuUs\":%llu,\"usageCpuUs\":%llu,\"commerceCpuUs\":%llu,"
	        "\"summaryCpuUs\":%llu,\"summaries\":%llu,\"hoursCompared\":%zu,"
	        "\"controlCpuUs\":%llu,"
	        "\"usageCpuUsPerRecord\":%.3f,\"commerceCpuUsPerEvent\":%.3f,"
	        "\"cpuUsPerRecord\":%.3f}}",
	        (unsigned long long)s->pages_served, (unsigned long long)s->records_served,
	        (unsigned long long)s->events_seen, (unsigned long long)(total_ns / 1000),
	        (unsigned long long)(s->cpu_ns[SIM_EP_USAGE] / 1000),
	        (unsigned long long)(s->cpu_ns[SIM_EP_COMMERCE] / 1000),
	        (unsigned long long)(summary_ns / 1000), (unsigned long long)(c->summaries + 1),
	        run.hours_compared, (unsigned long long)(control_ns / 1000),
	        s->records_served
	                ? (double)s->cpu_ns[SIM_EP_USAGE] / 1000.0 / (double)s->records_served
	                : 0.0,
	        s->events_seen
	                ? (double)s->cpu_ns[SIM_EP_COMMERCE] / 1000.0 / (double)s->events_seen
	                : 0.0,
	        s->records_served + s->events_seen
	                ? (double)work / 1000.0 / (double)(s->records_served + s->events_seen)
	                : 0.0);
	for (size_t i = 0; i < run.n_totals; i++) {
		free(run.totals[i].sub);
		free(run.totals[i].meter);
		free(run.totals[i].actual_text);
	}
	free(run.totals);
	smap_free(&run.tmap);
	agg_free(&run.base);
	agg_free(&run.actual);
	for (int k = 0; k < K_MAX; k++)
		evbuffer_free(run.lists[k]);
	c->summary_ns += process_cpu_ns() - t0;
	c->summaries++;
}

/* Write the events a correct forwarder would send for the expected records (a JSON array). */
void
commerce_expected_events(struct sim *s, int64_t from, int64_t until, size_t limit,
                         struct evbuffer *out)
{
	struct sim_world *w = &s->world;
	_cleanup_free_ struct sim_record *recs = xcalloc(w->records_per_hour + 1, sizeof(*recs));
	int64_t first, end;
	size_t n = 0;

	expected_hours(s, from, until, &first, &end);
	evbuffer_add(out, "[", 1);
	for (int64_t h = first; h < end && n < limit; h += 3600) {
		size_t n_recs = world_hour_records(w, h, recs); /* not the page cache's hours */
		char th[32];

		time_format_rfc3339(h, th);
		for (size_t i = 0; i < n_recs && n < limit; i++, n++) {
			const struct sim_record *rec = &recs[i];
			const struct sim_resource *res = &w->res[rec->resource];
			const struct sim_usersub *u = &w->subs[res->usersub];
			const struct sim_instance *in = &res->inst[rec->variant];
			char key[SIM_KEY_LEN + 1], q[SIM_QTY_TEXT], ts[32], te[32];
			const char *reason, *charged = world_charged(w, res->usersub, &reason);

			world_record_key(w, h, rec, key);
			world_quantity_text(rec->quantity, rec->decimals, q);
			time_format_rfc3339(rec->usage_start, ts);
			time_format_rfc3339(rec->usage_start + 3600, te);
			evbuffer_add_printf(
			        out,
			        "%s{\"usageEventId\":\"%s\",\"subscriptionId\":\"%s\","
			        "\"chargeReason\":\"%s\",\"tenantId\":%s%s%s,"
			        "\"sourceSubscriptionId\":\"%s\",\"registration\":",
			        n ? "," : "", key, charged, reason,
			        w->tenants[u->tenant].unlisted ? "" : "\"",
			        w->tenants[u->tenant].unlisted ? "null" : w->tenants[u->tenant].id,
			        w->tenants[u->tenant].unlisted ? "" : "\"", u->id);
			sim_json_str(out, w->reg_id_lower);
			evbuffer_add_printf(out,
			                    ",\"meterId\":\"%s\",\"quantity\":\"%s\","
			                    "\"usageStartTime\":\"%s\",\"usageEndTime\":\"%s\","
			                    "\"reportedStartTime\":\"%s\",\"resourceUri\":",
			                    w->meters[rec->meter], q, ts, te, th);
			sim_json_str(out, res->uri);
			evbuffer_add_printf(out,
			                    ",\"location\":\"local\",\"tags\":%s,"
			                    "\"additionalInfo\":%s}",
			                    in->tags, in->info);
		}
	}
	evbuffer_add(out, "]", 1);
}

/*
 * Check one event against the contract; the per-event status and message when it fails, its
 * usageStartTime, usageEndTime and reportedStartTime when it passes.
 */
static int
validate_event(struct sim *s, const struct jevent *e, const char **ret_status,
               const char **ret_message, int64_t ret_times[static 3])
{
	static const enum member times[] = {M_USAGE_START, M_USAGE_END, M_REPORTED_START};
	static const enum member strings[] = {M_RESOURCE, M_LOCATION, M_METER};
	const struct sim_world *w = &s->world;
	const char *id = e->strs[M_ID];
	const char *sub = e->strs[M_SUBSCRIPTION];
	const char *reason = e->strs[M_REASON];
	const char *src = e->strs[M_SOURCE];
	const char *reg = e->strs[M_REGISTRATION];
	const char *qty = e->strs[M_QUANTITY];
	enum jtype tenant = e->types[M_TENANT];
	int64_t t[3];
	bool known = false;
	int k;

	*ret_status = "BadArgument";
	if (!e->object || isempty(id) || e->lens[M_ID] > 128) {
		*ret_message = "usageEventId is missing or malformed.";
		return -EINVAL;
	}
	if (!world_is_guid(sub, true) || !world_is_guid(src, true)) {
		*ret_message = "subscriptionId and sourceSubscriptionId must be lower-case GUIDs.";
		return -EINVAL;
	}
	if (!reason || (!streq(reason, "registered") && !streq(reason, "default") &&
	                !streq(reason, "unknown-subscription"))) {
		*ret_message = "chargeReason must be registered, default or unknown-subscription.";
		return -EINVAL;
	}
	if (tenant != JT_NULL && !(tenant == JT_STRING && world_is_guid(e->strs[M_TENANT], true))) {
		*ret_message = "tenantId must be a lower-case GUID or null.";
		return -EINVAL;
	}
	/* the lower-case form (what expected events name) compares faster */
	if (!reg || (strcmp(reg, w->reg_id_lower) != 0 && strcasecmp(reg, w->reg_id) != 0)) {
		*ret_message = "registration does not name this registration.";
		return -EINVAL;
	}
	for (size_t i = 0; i < ARRAY_SIZE(strings); i++)
		if (isempty(e->strs[strings[i]])) {
			*ret_message =
			        "resourceUri, location and meterId must be non-empty strings.";
			return -EINVAL;
		}
	for (size_t i = 0; i < ARRAY_SIZE(times); i++) {
		const char *tx = e->strs[times[i]];
		struct parsed_time *last = &s->commerce->last_times[i];

		/* the events of a batch mostly repeat the times of the one before */
		if (tx && e->lens[times[i]] == TIME_RFC3339_LEN &&
		    memcmp(tx, last->text, TIME_RFC3339_LEN) == 0) {
			t[i] = last->t;
			continue;
		}
		if (!tx || !is_utc_time(tx) || time_parse_rfc3339(tx, &t[i]) < 0) {
			*ret_message = "usageStartTime, usageEndTime and reportedStartTime must be "
			               "YYYY-MM-DDTHH:MM:SSZ.";
			return -EINVAL;
		}
		memcpy(last->text, tx, TIME_RFC3339_LEN);
		last->t = t[i];
	}
	if (t[1] <= t[0]) {
		*ret_message = "usageEndTime must be after usageStartTime.";
		return -EINVAL;
	}
	for (enum member m = M_TAGS; m <= M_INFO; m++) {
		enum jtype o = e->types[m];

		if (o != JT_NULL && o != JT_OBJECT) {
			*ret_message = "tags and additionalInfo must be objects or null.";
			return -EINVAL;
		}
	}
	*ret_status = "InvalidQuantity";
	if (!qty) {
		*ret_message = "The quantity must be a decimal string.";
		return -EINVAL;
	}
	k = qty_check(qty);
	if (k == -EDOM) {
		*ret_message = "The quantity passed is lower than 0.";
		return -EINVAL;
	}
	if (k < 0) {
		*ret_message = "The quantity passed is not a decimal number (digits, an optional "
		               "point, no exponent) with at most 38 significant digits.";
		return -EINVAL;
	}
	known = strcmp(sub, w->reg_sub) == 0;
	for (size_t i = 0; i < w->n_tenants && !known; i++)
		known = strcasecmp(sub, w->tenants[i].customer) == 0;
	if (!known) {
		*ret_status = "ResourceNotFound";
		*ret_message =
		        "The subscription is neither the default subscription nor a customer "
		        "subscription of the registration.";
		return -ENOENT;
	}
	memcpy(ret_times, t, sizeof(t));
	return 0;
}

/*
 * Parse {"request":[event, ...]} (other top-level members are skipped) into *events (grown as
 * needed, kept for the next batch; *cap is its size).
 */
static int
parse_batch(char *p, char *end, struct jevent **events, size_t *cap, size_t *ret_n)
{
	size_t n = 0;
	bool seen = false;

	skip_ws(&p, end);
	if (p >= end || *p++ != '{')
		return -EINVAL;
	skip_ws(&p, end);
	if (p < end && *p == '}')
		p++;
	else
		for (;;) {
			char *key;

			skip_ws(&p, end);
			if (parse_string(&p, end, &key, NULL, true) < 0)
				return -EINVAL;
			skip_ws(&p, end);
			if (p >= end || *p++ != ':')
				return -EINVAL;
			skip_ws(&p, end);
			if (streq(key, "request") && !seen) {
				seen = true;
				if (p >= end || *p++ != '[')
					return -EINVAL;
				skip_ws(&p, end);
				if (p < end && *p == ']')
					p++;
				else
					for (;;) {
						if (n == *cap) {
							*cap = MAX(*cap * 2, (size_t)64);
							*events = xreallocarray(*events, *cap,
							                        sizeof(**events));
						}
						skip_ws(&p, end);
						if (parse_event(&p, end, &(*events)[n++]) < 0)
							return -EINVAL;
						skip_ws(&p, end);
						if (p < end && *p == ',') {
							p++;
							continue;
						}
						if (p >= end || *p++ != ']')
							return -EINVAL;
						break;
					}
			} else {
				enum jtype t;

				if (skip_value(&p, end, &t) < 0)
					return -EINVAL;
			}
			skip_ws(&p, end);
			if (p < end && *p == ',') {
				p++;
				continue;
			}
			if (p >= end || *p++ != '}')
				return -EINVAL;
			break;
		}
	skip_ws(&p, end);
	if (p != end || !seen)
		return -EINVAL;
	*ret_n = n;
	return 0;
}

/* The member of section 6 a (decoded) member name of len bytes is, or M_MAX for another one. */
static enum member
member_of(const char *key, size_t len)
{
	for (int m = 0; m < M_MAX; m++)
		if (members[m].len == len && memcmp(members[m].name, key, len) == 0)
			return (enum member)m;
	return M_MAX;
}

/* Parse one array element; an object keeps its members, anything else is skipped. */
static int
parse_event(char **pp, char *end, struct jevent *e)
{
	char *p = *pp;

	/* an absent member has no text and no type; lengths and raw texts are set with them */
	memset(e->strs, 0, sizeof(e->strs));
	memset(e->types, 0, sizeof(e->types));
	e->object = false;
	if (p >= end || *p != '{') {
		enum jtype t;
		int r = skip_value(pp, end, &t);

		return r;
	}
	e->object = true;
	p++;
	skip_ws(&p, end);
	if (p < end && *p == '}') {
		*pp = p + 1;
		return 0;
	}
	for (;;) {
		char *key, *str = NULL, *value;
		size_t klen, len;
		enum member m;
		enum jtype t;

		skip_ws(&p, end);
		if (parse_string(&p, end, &key, &klen, true) < 0)
			return -EINVAL;
		skip_ws(&p, end);
		if (p >= end || *p++ != ':')
			return -EINVAL;
		skip_ws(&p, end);
		value = p;
		if (p < end && *p == '"') {
			if (parse_string(&p, end, &str, &len, true) < 0)
				return -EINVAL;
			t = JT_STRING;
		} else if (skip_value(&p, end, &t) < 0) {
			return -EINVAL;
		}
		m = member_of(key, klen);
		if (m < M_MAX && e->types[m] == JT_NONE) {
			e->strs[m] = str;
			e->lens[m] = str ? len : 0;
			e->types[m] = t;
			e->raw[m] = value;
			e->raw_len[m] = (size_t)(p - value);
		}
		skip_ws(&p, end);
		if (p < end && *p == ',') {
			p++;
			continue;
		}
		if (p >= end || *p++ != '}')
			return -EINVAL;
		*pp = p;
		return 0;
	}
}

/*
 * The end of the run of plain string bytes at p (before end): the first '"', '\\' or control
 * character, else end. Sixteen bytes at a time with SSE2, then eight: a word holds one when a
 * byte of it, XORed with '"' or '\\', is zero, or is itself below 0x20 (the borrow tricks of
 * "has a zero byte" and "has a byte less than n": exact about whether there is one; the byte
 * is then found one by one).
 */
static const char *
plain_end(const char *p, const char *end)
{
	/* the bytes that end a plain run: control characters, the quote and the backslash */
	static const bool stop[256] = {
	        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x00 to 0x1f */
	        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, ['"'] = 1, ['\\'] = 1,
	};
	const uint64_t ones = UINT64_C(0x0101010101010101), high = UINT64_C(0x8080808080808080);
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
	const __m128i control = _mm_set1_epi8(0x1f);

	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		/* a control character: max(v, 0x1f) == 0x1f, unsigned */
		__m128i m = _mm_or_si128(
		        _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
		        _mm_cmpeq_epi8(_mm_max_epu8(v, control), control));
		unsigned mask = (unsigned)_mm_movemask_epi8(m);

		if (mask)
			return p + __builtin_ctz(mask);
		p += 16;
	}
#endif
	while (end - p >= 8) {
		uint64_t v, q, b;

		memcpy(&v, p, sizeof(v));
		q = v ^ (ones * '"');
		b = v ^ (ones * '\\');
		if ((((q - ones) & ~q) | ((b - ones) & ~b) | ((v - ones * 0x20) & ~v)) & high)
			break;
		p += 8;
	}
	while (p < end && !stop[(unsigned char)*p])
		p++;
	return p;
}

/*
 * Parse a JSON string at *pp and return its start (and with ret_len, its decoded length); with
 * decode, decode it in place (NUL-terminated), else only check it, leaving the text as it was
 * (the raw text of an object member is kept for the ledger).
 */
static int
parse_string(char **pp, char *end, char **ret, size_t *ret_len, bool decode)
{
	char *p = *pp, *out, *start;

	if (p >= end || *p != '"')
		return -EINVAL;
	start = ++p;
	/* up to the first escape the text stays where it is */
	p += plain_end(p, end) - p;
	out = p;
	while (p < end && *p != '"') {
		unsigned char ch = (unsigned char)*p;

		if (ch < 0x20)
			return -EINVAL;
		if (ch != '\\') {
			put(&out, decode, *p++);
			continue;
		}
		if (++p >= end)
			return -EINVAL;
		switch (*p) {
		case '"':
		case '\\':
		case '/':
			put(&out, decode, *p);
			break;
		case 'b':
			put(&out, decode, '\b');
			break;
		case 'f':
			put(&out, decode, '\f');
			break;
		case 'n':
			put(&out, decode, '\n');
			break;
		case 'r':
			put(&out, decode, '\r');
			break;
		case 't':
			put(&out, decode, '\t');
			break;
		case 'u': {
			unsigned cp = 0;

			if (end - p < 5)
				return -EINVAL;
			for (int i = 1; i <= 4; i++) {
				if (!isxdigit((unsigned char)p[i]))
					return -EINVAL;
				cp = cp * 16 + (unsigned)(isdigit((unsigned char)p[i])
				                                  ? p[i] - '0'
				                                  : (tolower((unsigned char)p[i]) -
				                                     'a' + 10));
			}
			p += 4;
			if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff))
				return -EINVAL; /* no NULs; surrogates are not used by the daemon */
			if (cp < 0x80) {
				put(&out, decode, (char)cp);
			} else if (cp < 0x800) {
				put(&out, decode, (char)(0xc0 | (cp >> 6)));
				put(&out, decode, (char)(0x80 | (cp & 0x3f)));
			} else {
				put(&out, decode, (char)(0xe0 | (cp >> 12)));
				put(&out, decode, (char)(0x80 | ((cp >> 6) & 0x3f)));
				put(&out, decode, (char)(0x80 | (cp & 0x3f)));
			}
			break;
		}
		default:
			return -EINVAL;
		}
		p++;
	}
	if (p >= end)
		return -EINVAL;
	if (decode)
		*out = '\0'; /* the decoded text is never longer than the escaped one */
	*pp = p + 1;
	*ret = start;
	if (ret_len)
		*ret_len = (size_t)(out - start);
	return 0;
}

/* Write one decoded byte (only when decoding). */
static inline void
put(char **out, bool decode, char c)
{
	if (decode)
		*(*out)++ = c;
}

/* Skip any JSON value at *pp (checking its syntax), reporting its type. */
static int
skip_value(char **pp, char *end, enum jtype *ret_type)
{
	char *p = *pp, *s;

	if (p >= end)
		return -EINVAL;
	switch (*p) {
	case '"':
		*ret_type = JT_STRING;
		return parse_string(pp, end, &s, NULL, false);
	case '{':
	case '[': {
		char close = *p == '{' ? '}' : ']';

		*ret_type = *p == '{' ? JT_OBJECT : JT_ARRAY;
		p++;
		skip_ws(&p, end);
		if (p < end && *p == close) {
			*pp = p + 1;
			return 0;
		}
		for (;;) {
			enum jtype t;

			skip_ws(&p, end);
			if (close == '}') {
				if (parse_string(&p, end, &s, NULL, false) < 0)
					return -EINVAL;
				skip_ws(&p, end);
				if (p >= end || *p++ != ':')
					return -EINVAL;
				skip_ws(&p, end);
			}
			if (skip_value(&p, end, &t) < 0)
				return -EINVAL;
			skip_ws(&p, end);
			if (p < end && *p == ',') {
				p++;
				continue;
			}
			if (p >= end || *p++ != close)
				return -EINVAL;
			*pp = p;
			return 0;
		}
	}
	case 'n':
		*ret_type = JT_NULL;
		if (end - p < 4 || memcmp(p, "null", 4) != 0)
			return -EINVAL;
		*pp = p + 4;
		return 0;
	case 't':
	case 'f': {
		size_t n = *p == 't' ? 4 : 5;

		*ret_type = JT_BOOL;
		if ((size_t)(end - p) < n || memcmp(p, *p == 't' ? "true" : "false", n) != 0)
			return -EINVAL;
		*pp = p + n;
		return 0;
	}
	default:
		*ret_type = JT_NUMBER;
		if (*p == '-')
			p++;
		if (p >= end || !isdigit((unsigned char)*p))
			return -EINVAL;
		while (p < end && (isdigit((unsigned char)*p) || strchr(".eE+-", *p)))
			p++;
		*pp = p;
		return 0;
	}
}

/* Skip JSON white space. */
static void
skip_ws(char **pp, char *end)
{
	char *p = *pp;

	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	*pp = p;
}

/*
 * Check a quantity against the contract (section 6): a plain decimal string (digits, optionally
 * a point and more digits; no sign, no exponent) of at most 38 significant digits, counted from
 * the first non-zero digit to the last digit written (trailing zeros are what the sender wrote).
 * -EDOM for a negative number, -ERANGE for too many digits, -EINVAL for anything else.
 */
static int
qty_check(const char *text)
{
	const char *p = text;
	unsigned sig = 0;
	int ip = 0, fp = 0;

	if (*p == '-')
		return qty_check(p + 1) == 0 && strspn(p + 1, "0.") != strlen(p + 1) ? -EDOM
		                                                                     : -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++, ip++)
		sig += sig > 0 || *p != '0';
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++, fp++)
			sig += sig > 0 || *p != '0';
		if (fp == 0)
			return -EINVAL;
	}
	if (*p || ip == 0)
		return -EINVAL;
	return sig > QTY_DIGITS ? -ERANGE : 0;
}

/*
 * The value of a valid quantity in integers of 10^-SIM_QTY_DECIMALS when it is below
 * 10^QTY_FAST_DIGITS and has no non-zero digit past that many decimals (every generated
 * quantity does, so one that does not cannot equal its record's); -ERANGE for another valid
 * quantity (the summary adds it as text), -EINVAL when it is not valid.
 */
static int
qty_parse(const char *text, sim_u128 *ret)
{
	const char *p = text;
	sim_u128 v = 0;
	int ip = 0, fp = 0;

	if (qty_check(text) < 0)
		return -EINVAL;
	p += strspn(p, "0");
	for (; *p >= '0' && *p <= '9'; p++) {
		if (++ip > QTY_FAST_DIGITS)
			return -ERANGE;
		v = v * 10 + (sim_u128)(*p - '0');
	}
	if (*p == '.')
		for (p++; *p >= '0' && *p <= '9'; p++, fp++) {
			if (fp >= SIM_QTY_DECIMALS) {
				if (*p != '0')
					return -ERANGE;
				continue;
			}
			v = v * 10 + (sim_u128)(*p - '0');
		}
	for (int i = MIN(fp, SIM_QTY_DECIMALS); i < SIM_QTY_DECIMALS; i++)
		v *= 10;
	*ret = v;
	return 0;
}

/* Write integers of 10^-SIM_QTY_DECIMALS as plain decimal text without trailing zeros. */
static void
qty_format(sim_u128 v, char out[static 64])
{
	char digits[48];
	int n = 0, k = 0;

	do {
		digits[n++] = (char)('0' + (int)(v % 10));
		v /= 10;
	} while (v > 0 || n <= SIM_QTY_DECIMALS);
	for (int i = n - 1; i >= SIM_QTY_DECIMALS; i--)
		out[k++] = digits[i];
	out[k++] = '.';
	for (int i = SIM_QTY_DECIMALS - 1; i >= 0; i--)
		out[k++] = digits[i];
	while (out[k - 1] == '0')
		k--;
	if (out[k - 1] == '.')
		k--;
	out[k] = '\0';
}

/*
 * Add two valid quantities (plain non-negative decimal texts) digit by digit, exactly, whatever
 * their length; the sum as a new text without leading or trailing zeros, like qty_format.
 */
static char *
dec_add(const char *a, const char *b)
{
	const char *ad = strchr(a, '.'), *bd = strchr(b, '.');
	size_t ai = ad ? (size_t)(ad - a) : strlen(a), bi = bd ? (size_t)(bd - b) : strlen(b);
	size_t af = ad ? strlen(ad + 1) : 0, bf = bd ? strlen(bd + 1) : 0;
	size_t ni = MAX(ai, bi) + 1, nf = MAX(af, bf), k = 0;
	char *sum = xmalloc(ni + nf + 2), *out = xmalloc(ni + nf + 3);
	unsigned carry = 0;

	/* sum holds ni integer digits then nf fraction digits, filled from the right */
	for (size_t i = nf; i-- > 0;) {
		unsigned d = (i < af ? (unsigned)(ad[1 + i] - '0') : 0) +
		             (i < bf ? (unsigned)(bd[1 + i] - '0') : 0) + carry;

		sum[ni + i] = (char)('0' + d % 10);
		carry = d / 10;
	}
	for (size_t i = 0; i < ni; i++) {
		unsigned d = (i < ai ? (unsigned)(a[ai - 1 - i] - '0') : 0) +
		             (i < bi ? (unsigned)(b[bi - 1 - i] - '0') : 0) + carry;

		sum[ni - 1 - i] = (char)('0' + d % 10);
		carry = d / 10;
	}
	while (nf > 0 && sum[ni + nf - 1] == '0')
		nf--;
	for (size_t i = 0; i < ni; i++)
		if (sum[i] != '0' || i == ni - 1) {
			memcpy(out, sum + i, ni - i);
			k = ni - i;
			break;
		}
	if (nf > 0) {
		out[k++] = '.';
		memcpy(out + k, sum + ni, nf);
		k += nf;
	}
	out[k] = '\0';
	free(sum);
	return out;
}

/* Tell whether s is written exactly as YYYY-MM-DDTHH:MM:SSZ. */
static bool
is_utc_time(const char *s)
{
	static const char pat[] = "dddd-dd-ddTdd:dd:ddZ";

	if (strlen(s) != sizeof(pat) - 1)
		return false;
	for (size_t i = 0; pat[i]; i++)
		if (pat[i] == 'd' ? (unsigned char)(s[i] - '0') > 9 : s[i] != pat[i])
			return false;
	return true;
}

/*
 * Inflate a gzip body into c->zbuf (kept for the next batch unless it grew large), refusing
 * more than limit bytes (-EFBIG).
 */
static int
inflate_body(struct commerce *c, const unsigned char *in, size_t n, size_t limit, size_t *ret_size)
{
	z_stream z = {0};
	size_t used = 0;
	int k;

	if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
		return -ENOMEM;
	if (c->zcap < MAX(n * 4, (size_t)4096)) {
		c->zcap = MAX(n * 4, (size_t)4096);
		free(c->zbuf);
		c->zbuf = xmalloc(c->zcap);
	}
	z.next_in = (unsigned char *)in;
	z.avail_in = (uInt)n;
	for (;;) {
		if (used == c->zcap) {
			if (c->zcap >= limit) {
				k = -EFBIG;
				goto out;
			}
			c->zcap = MIN(c->zcap * 2, limit);
			c->zbuf = xrealloc(c->zbuf, c->zcap);
		}
		z.next_out = c->zbuf + used;
		z.avail_out = (uInt)(c->zcap - used);
		k = inflate(&z, Z_NO_FLUSH);
		used = c->zcap - z.avail_out;
		if (k == Z_STREAM_END)
			break;
		if (k != Z_OK && !(k == Z_BUF_ERROR && used == c->zcap)) {
			k = -EBADMSG;
			goto out;
		}
	}
	k = 0;
	*ret_size = used;
out:
	inflateEnd(&z);
	return k;
}

/* The current time as Commerce writes messageTime (seven decimals). */
static void
message_time(char out[static 40])
{
	struct timespec ts;
	char base[TIME_RFC3339_LEN + 1];

	clock_gettime(CLOCK_REALTIME, &ts);
	time_format_rfc3339(ts.tv_sec, base);
	base[TIME_RFC3339_LEN - 1] = '\0';
	snprintf(out, 40, "%.19s.%07dZ", base, (int)(ts.tv_nsec / 100) % 10000000);
}

/* Run SQL without results. */
static int
db_exec(sqlite3 *db, const char *sql)
{
	char *err = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
		fprintf(stderr, "azs-sim: ledger: %s\n", err ? err : "error");
		sqlite3_free(err);
		return -EIO;
	}
	return 0;
}

/* Add the columns a ledger made by an older simulator lacks (their rows keep NULL there). */
static int
add_columns(sqlite3 *db)
{
	static const char *const columns[] = {"registration", "location", "tags",
	                                      "additional_info"};
	bool have[ARRAY_SIZE(columns)] = {false};
	sqlite3_stmt *q;

	if (sqlite3_prepare_v2(db, "PRAGMA table_info(events)", -1, &q, NULL) != SQLITE_OK)
		return -EIO;
	while (sqlite3_step(q) == SQLITE_ROW)
		for (size_t i = 0; i < ARRAY_SIZE(columns); i++)
			if (streq_ptr((const char *)sqlite3_column_text(q, 1), columns[i]))
				have[i] = true;
	sqlite3_finalize(q);
	for (size_t i = 0; i < ARRAY_SIZE(columns); i++) {
		_cleanup_free_ char *sql = NULL;

		if (have[i])
			continue;
		sql = xasprintf("ALTER TABLE events ADD COLUMN %s TEXT", columns[i]);
		if (db_exec(db, sql) < 0)
			return -EIO;
	}
	return 0;
}

/* Free a map's keys and tables. */
static void
smap_free(struct smap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->keys[i]);
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

/* Find a key's value slot; with create, add it (value 0) when missing. NULL when absent. */
static size_t *
smap_get(struct smap *m, const char *key, bool create)
{
	uint64_t h = UINT64_C(14695981039346656037);
	size_t i;

	if (create && (m->n + 1) * 2 > m->cap) {
		struct smap bigger = {0};

		bigger.cap = m->cap ? m->cap * 2 : 64;
		bigger.keys = xcalloc(bigger.cap, sizeof(char *));
		bigger.vals = xcalloc(bigger.cap, sizeof(size_t));
		for (size_t j = 0; j < m->cap; j++)
			if (m->keys[j]) {
				*smap_get(&bigger, m->keys[j], true) = m->vals[j];
				free(m->keys[j]);
			}
		free(m->keys);
		free(m->vals);
		*m = bigger;
	}
	if (m->cap == 0)
		return NULL;
	for (const char *p = key; *p; p++)
		h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
	for (i = h & (m->cap - 1); m->keys[i]; i = (i + 1) & (m->cap - 1))
		if (streq(m->keys[i], key))
			return &m->vals[i];
	if (!create)
		return NULL;
	m->keys[i] = xstrdup(key);
	m->vals[i] = 0;
	m->n++;
	return &m->vals[i];
}

/* The totals slot of (subscription, meter), both compared lower-case; created when new. */
static size_t
total_slot(struct smap *m, struct total **totals, size_t *n, const char *sub, const char *meter)
{
	_cleanup_free_ char *key = xasprintf("%s|%s", sub, meter);
	size_t *v;

	for (char *p = key; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	v = smap_get(m, key, false);
	if (v)
		return *v;
	*totals = xreallocarray(*totals, *n + 1, sizeof(**totals));
	memset(&(*totals)[*n], 0, sizeof(**totals));
	(*totals)[*n].sub = xstrdup(key);
	(*totals)[*n].sub[strlen(sub)] = '\0';
	(*totals)[*n].meter = xstrdup(key + strlen(sub) + 1);
	*smap_get(m, key, true) = *n;
	return (*n)++;
}

/* The summary's window as RFC 3339 texts; unbounded ends compare below and above every one. */
static void
window_texts(int64_t from, int64_t until, char tf[static 32], char tu[static 32])
{
	if (from > INT64_MIN / 4)
		time_format_rfc3339(from, tf);
	else
		snprintf(tf, 32, "0000-01-01T00:00:00Z");
	if (until < INT64_MAX / 4)
		time_format_rfc3339(until, tu);
	else
		snprintf(tu, 32, "9999-12-31T23:59:59Z");
}

/*
 * The expected reported hours [first, end) of a window, both on the scenario's hour grid: the
 * scenario's hours in [from, until) that have ended by the simulated clock.
 */
static void
expected_hours(const struct sim *s, int64_t from, int64_t until, int64_t *ret_first,
               int64_t *ret_end)
{
	const struct sim_world *w = &s->world;
	int64_t first = MAX(from, w->hour_from);
	int64_t end = MIN(until, w->hour_from + (int64_t)w->hour_count * 3600);

	end = MIN(end, sim_now(s) - 3600 + 1);
	first = w->hour_from + (first - w->hour_from + 3599) / 3600 * 3600;
	end = end > first ? first + (end - first + 3599) / 3600 * 3600 : first;
	*ret_first = first;
	*ret_end = end;
}

/* The first hour from h on (before end) that holds usage, or end. */
static int64_t
next_expected_hour(const struct sim_world *w, int64_t h, int64_t end)
{
	while (h < end && !world_hour_has_usage(w, h))
		h += 3600;
	return MIN(h, end);
}

/*
 * Make sure the expected totals cover the hours [first, end): kept from the last summary when it
 * started at the same hour and ended no later (then only the newly ended hours are added).
 */
static void
expected_totals(struct sim *s, int64_t first, int64_t end)
{
	struct commerce *c = s->commerce;
	const struct sim_world *w = &s->world;
	int64_t h;

	hour_buffers(s);
	if (!c->exp_valid || c->exp_first != first || c->exp_end > end) {
		agg_free(&c->exp);
		c->exp_valid = true;
		c->exp_first = c->exp_end = first;
		c->exp_events = 0;
	}
	for (h = c->exp_end; h < end; h += 3600) {
		size_t n = world_hour_records(w, h, c->recs);

		for (size_t i = 0; i < n; i++)
			agg_add(&c->exp, agg_key(w, &c->recs[i]), c->recs[i].quantity, 1);
		c->exp_events += n;
	}
	c->exp_end = MAX(c->exp_end, end);
}

/* Allocate the buffers of one expected hour (once: records_per_hour is fixed). */
static void
hour_buffers(struct sim *s)
{
	struct commerce *c = s->commerce;
	size_t n = s->world.records_per_hour, cap = 2;

	if (c->recs)
		return;
	while (cap < 2 * n)
		cap *= 2;
	c->recs = xcalloc(n + 1, sizeof(*c->recs));
	c->keys = xcalloc(n + 1, sizeof(*c->keys));
	c->seen = xcalloc(n + 1, 1);
	c->slots = xcalloc(cap, sizeof(*c->slots));
	c->slot_mask = cap - 1;
}

/*
 * Compare one expected hour with its rows (gr: its group, NULL when the ledger has none): a clean
 * group is taken as it is; otherwise the hour's records are made again, with their keys when
 * there are rows to look them up for.
 */
static void
compare_hour(struct run *run, int64_t h, struct group *gr)
{
	struct commerce *c = run->c;
	const struct sim_world *w = &run->s->world;
	size_t n, before = 0, after = 0;

	if (gr && gr->rows == w->records_per_hour &&
	    ((gr->clean_rows == gr->rows && gr->clean_gen == w->reg_gen) ||
	     (gr->verified == gr->rows && gr->verified_gen == w->reg_gen))) {
		run->accepted += gr->rows;
		return; /* its rows are its records: their totals stay in base */
	}
	run->hours_compared++;
	n = world_hour_records(w, h, c->recs);
	for (size_t i = 0; i < n; i++) /* the rows give this hour's actual totals instead */
		agg_add(&run->base, agg_key(w, &c->recs[i]), (sim_u128)0 - c->recs[i].quantity,
		        UINT64_MAX);
	if (!gr) {
		run->counts[K_MISSING] += n;
		for (size_t i = 0; i < n && run->counts[K_MISSING] - n + i < LIST_MAX; i++) {
			char key[SIM_KEY_LEN + 1];

			world_record_key(w, h, &c->recs[i], key);
			list_key(run->lists[K_MISSING], run->counts[K_MISSING] - n + i, key);
		}
		return;
	}
	memset(c->slots, 0, (c->slot_mask + 1) * sizeof(*c->slots));
	for (size_t i = 0; i < n; i++) {
		size_t j;

		world_record_key(w, h, &c->recs[i], c->keys[i]);
		c->seen[i] = 0;
		for (j = key_hash(c->keys[i]) & c->slot_mask; c->slots[j];
		     j = (j + 1) & c->slot_mask)
			;
		c->slots[j] = (uint32_t)i + 1;
	}
	for (int k = 0; k < K_MAX; k++)
		before += run->counts[k];
	before += run->unparsable;
	compare_rows(run, gr, h, c->recs);
	for (size_t i = 0; i < n; i++)
		if (!c->seen[i])
			list_key(run->lists[K_MISSING], run->counts[K_MISSING]++, c->keys[i]);
	for (int k = 0; k < K_MAX; k++)
		after += run->counts[k];
	after += run->unparsable;
	if (after == before && gr->rows == n) {
		gr->clean_rows = gr->rows;
		gr->clean_gen = w->reg_gen;
	}
}

/*
 * Compare the rows of one group with the records of its hour (recs NULL: no record is expected
 * there, every row is extra), counting each kind of disagreement.
 */
static void
compare_rows(struct run *run, struct group *gr, int64_t h, const struct sim_record *recs)
{
	struct commerce *c = run->c;
	sqlite3_stmt *q = c->clustered ? c->range : c->rows;
	char th[32];

	world_format_time(h, true, th);
	sqlite3_reset(q);
	if (c->clustered) {
		sqlite3_bind_int64(q, 1, (sqlite3_int64)gr->ordinal << 32);
		sqlite3_bind_int64(q, 2, (sqlite3_int64)gr->ordinal << 32 | UINT32_MAX);
	} else {
		sqlite3_bind_text(q, 1, gr->text, -1, SQLITE_STATIC);
	}
	while (sqlite3_step(q) == SQLITE_ROW) {
		const char *id = column(q, C_ID), *qty = column(q, C_QUANTITY);
		long idx = recs ? key_find(c, id) : -1;
		sim_u128 v = 0;
		int k = qty ? qty_parse(qty, &v) : -EINVAL;
		bool big = k == -ERANGE; /* valid, but added as text */

		run->accepted++;
		if (k < 0) {
			run->unparsable += !big;
			v = 0;
		}
		if (idx < 0) {
			list_key(run->lists[K_EXTRA], run->counts[K_EXTRA]++, id);
			total_add(run, column(q, C_SUBSCRIPTION), column(q, C_METER), v,
			          big ? qty : NULL);
			continue;
		}
		c->seen[idx] = 1;
		compare_row(run, q, &recs[idx], th, v, big);
	}
	sqlite3_reset(q);
}

/*
 * Compare one row with the record its key names (v: its quantity; big: a valid quantity outside
 * the integer range, which no generated quantity is).
 */
static void
compare_row(struct run *run, sqlite3_stmt *q, const struct sim_record *rec, const char *th,
            sim_u128 v, bool big)
{
	const struct sim_world *w = &run->s->world;
	const struct sim_resource *res = &w->res[rec->resource];
	const struct sim_instance *in = &res->inst[rec->variant];
	const struct sim_usersub *u = &w->subs[res->usersub];
	const struct sim_tenant *t = &w->tenants[u->tenant];
	const char *id = column(q, C_ID), *sub = column(q, C_SUBSCRIPTION);
	const char *meter = column(q, C_METER), *qty = column(q, C_QUANTITY), *reason;
	const char *charged = world_charged(w, res->usersub, &reason);
	const char *tenant = t->unlisted ? NULL : t->id;
	char lit[SIM_QTY_TEXT], ts[32], te[32];
	bool wrong[F_MAX] = {false}, any = false;

	world_quantity_text(rec->quantity, rec->decimals, lit);
	world_format_time(rec->usage_start, true, ts);
	world_format_time(rec->usage_start + 3600, true, te);
	if (!sub || strcasecmp(sub, charged) != 0)
		list_pair(run, K_SUBSCRIPTION, id, charged, sub);
	if (!streq_ptr(column(q, C_REASON), reason))
		list_pair(run, K_REASON, id, reason, column(q, C_REASON));
	if (!streq_ptr(column(q, C_TENANT), tenant))
		list_pair(run, K_TENANT, id, tenant, column(q, C_TENANT));
	if (!streq_ptr(column(q, C_SOURCE), u->id))
		list_pair(run, K_SOURCE, id, u->id, column(q, C_SOURCE));
	if (big || v != rec->quantity || !qty)
		list_pair(run, K_QUANTITY, id, lit, qty);
	else if (!streq(qty, lit))
		list_pair(run, K_LITERAL, id, lit, qty);
	wrong[F_REGISTRATION] = !streq_ptr(column(q, C_REGISTRATION), w->reg_id_lower);
	wrong[F_METER] = !streq_ptr(meter, w->meters[rec->meter]);
	wrong[F_USAGE_START] = !streq_ptr(column(q, C_USAGE_START), ts);
	wrong[F_USAGE_END] = !streq_ptr(column(q, C_USAGE_END), te);
	wrong[F_REPORTED_START] = !streq_ptr(column(q, C_REPORTED_START), th);
	wrong[F_RESOURCE] = !streq_ptr(column(q, C_RESOURCE), res->uri);
	wrong[F_LOCATION] = !streq_ptr(column(q, C_LOCATION), "local");
	wrong[F_TAGS] = !json_text_equal(column(q, C_TAGS), in->tags);
	wrong[F_INFO] = !json_text_equal(column(q, C_INFO), in->info);
	for (int f = 0; f < F_MAX; f++)
		if (wrong[f]) {
			run->field_counts[f]++;
			any = true;
		}
	if (any)
		list_fields(run, id, wrong);
	/* charged where the record says: its totals by index, else by the row's own text */
	if (!big && sub && meter && strcasecmp(sub, charged) == 0 &&
	    strcasecmp(meter, w->meters[rec->meter]) == 0)
		agg_add(&run->actual, agg_key(w, rec), v, 1);
	else
		total_add(run, sub, meter, v, big ? qty : NULL);
}

/* A text column of the current row (NULL for SQL NULL). */
static const char *
column(sqlite3_stmt *q, enum column col)
{
	return (const char *)sqlite3_column_text(q, (int)col);
}

/* Add a row's quantity (v, or text when it is outside the integer range) to its own totals. */
static void
total_add(struct run *run, const char *sub, const char *meter, sim_u128 v, const char *text)
{
	size_t t = total_slot(&run->tmap, &run->totals, &run->n_totals, sub ? sub : "",
	                      meter ? meter : "");
	struct total *tot = &run->totals[t];

	tot->actual += v;
	tot->n_actual++;
	if (text) {
		char *sum = dec_add(tot->actual_text ? tot->actual_text : "0", text);

		free(tot->actual_text);
		tot->actual_text = sum;
	}
}

/*
 * Turn the index totals into the reported ones, by (charged subscription, meter) as the
 * registration stands now: expected from the expected totals, actual from the hours taken as
 * clean plus the rows compared one by one (those charged elsewhere were added by text already).
 */
static void
make_totals(struct run *run)
{
	const struct sim_world *w = &run->s->world;
	const struct agg *sources[] = {&run->c->exp, &run->base, &run->actual};

	for (size_t k = 0; k < ARRAY_SIZE(sources); k++)
		for (size_t i = 0; sources[k]->slots && i < sources[k]->cap; i++) {
			const struct agg_slot *a = &sources[k]->slots[i];
			size_t usersub = (size_t)((a->key - 1) / w->n_meters), t;
			const char *reason;

			if (!a->key || (a->n == 0 && a->qty == 0))
				continue;
			t = total_slot(&run->tmap, &run->totals, &run->n_totals,
			               world_charged(w, usersub, &reason),
			               w->meters[(a->key - 1) % w->n_meters]);
			if (k == 0) {
				run->totals[t].expected += a->qty;
				run->totals[t].n_expected += a->n;
			} else {
				run->totals[t].actual += a->qty;
				run->totals[t].n_actual += a->n;
			}
		}
}

/* Append a usage event id to a list of ids, if the list has room for the n-th one. */
static void
list_key(struct evbuffer *list, size_t n, const char *id)
{
	if (n >= LIST_MAX)
		return;
	if (n > 0)
		evbuffer_add(list, ",", 1);
	if (id)
		sim_json_str(list, id);
	else
		evbuffer_add_printf(list, "null");
}

/* Count a disagreement in one value and keep it as a sample while the list has room. */
static void
list_pair(struct run *run, enum kind k, const char *id, const char *expected, const char *actual)
{
	size_t cap = k == K_SUBSCRIPTION || k == K_QUANTITY ? LIST_MAX : SAMPLE_MAX;
	struct evbuffer *b = run->lists[k];
	const char *v[] = {expected, actual};

	if (run->counts[k]++ >= cap)
		return;
	evbuffer_add_printf(b, "%s{\"usageEventId\":", run->counts[k] > 1 ? "," : "");
	sim_json_str(b, id);
	for (int i = 0; i < 2; i++) {
		evbuffer_add_printf(b, i ? ",\"actual\":" : ",\"expected\":");
		if (v[i])
			sim_json_str(b, v[i]);
		else
			evbuffer_add_printf(b, "null");
	}
	evbuffer_add(b, "}", 1);
}

/* Count a row with wrong fields and keep it, with their names, while the list has room. */
static void
list_fields(struct run *run, const char *id, const bool wrong[static F_MAX])
{
	static const char *const names[F_MAX] = {
	        "registration", "meterId",  "usageStartTime", "usageEndTime",   "reportedStartTime",
	        "resourceUri",  "location", "tags",           "additionalInfo",
	};
	struct evbuffer *b = run->lists[K_FIELD];
	bool first = true;

	if (run->counts[K_FIELD]++ >= SAMPLE_MAX)
		return;
	evbuffer_add_printf(b, "%s{\"usageEventId\":", run->counts[K_FIELD] > 1 ? "," : "");
	sim_json_str(b, id);
	evbuffer_add_printf(b, ",\"fields\":[");
	for (int f = 0; f < F_MAX; f++)
		if (wrong[f]) {
			evbuffer_add_printf(b, "%s\"%s\"", first ? "" : ",", names[f]);
			first = false;
		}
	evbuffer_add_printf(b, "]}");
}

/*
 * Compare two JSON texts: equal bytes, or equal but for white space between tokens (how JSON
 * encoders differ most), or else equal as JSON values (member order, escapes). NULL (a row of an
 * older ledger) equals nothing.
 */
static bool
json_text_equal(const char *a, const char *b)
{
	bool eq;
	json_t *x, *y;

	if (!a)
		return false;
	if (json_text_same(a, strlen(a), b))
		return true;
	x = json_loads(a, JSON_DECODE_ANY, NULL);
	y = json_loads(b, JSON_DECODE_ANY, NULL);
	eq = x && y && json_equal(x, y);
	json_decref(x);
	json_decref(y);
	return eq;
}

/* Tell whether a JSON text (a, n bytes, no NUL) is b but for white space between tokens. */
static bool
json_text_same(const char *a, size_t n, const char *b)
{
	const char *p = a, *end = a + n, *q = b;
	bool in = false;

	if (strncmp(a, b, n) == 0 && b[n] == '\0') /* mostly written just as b */
		return true;
	for (;;) {
		if (!in) {
			while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
				p++;
			while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
				q++;
		}
		if (p == end)
			return !*q;
		if (*p != *q)
			return false;
		if (in && *p == '\\') {
			p++;
			q++;
			if (p == end || *p != *q)
				return false;
		} else if (*p == '"') {
			in = !in;
		}
		p++;
		q++;
	}
}

/* The key of a record in the index totals. */
static uint64_t
agg_key(const struct sim_world *w, const struct sim_record *rec)
{
	return (uint64_t)w->res[rec->resource].usersub * w->n_meters + rec->meter + 1;
}

/* Add a quantity and a count (both modulo their width: adding 0 - x takes x away) to a key. */
static void
agg_add(struct agg *a, uint64_t key, sim_u128 qty, uint64_t n)
{
	size_t i;

	if ((a->n + 1) * 2 > a->cap) {
		struct agg bigger = {.cap = a->cap ? a->cap * 2 : 256};

		bigger.slots = xcalloc(bigger.cap, sizeof(*bigger.slots));
		for (size_t j = 0; j < a->cap; j++)
			if (a->slots[j].key)
				agg_add(&bigger, a->slots[j].key, a->slots[j].qty, a->slots[j].n);
		free(a->slots);
		*a = bigger;
	}
	for (i = (size_t)(key * UINT64_C(0x9E3779B97F4A7C15) >> 20) & (a->cap - 1);
	     a->slots[i].key && a->slots[i].key != key; i = (i + 1) & (a->cap - 1))
		;
	if (!a->slots[i].key) {
		a->slots[i].key = key;
		a->n++;
	}
	a->slots[i].qty += qty;
	a->slots[i].n += n;
}

/* Copy index totals. */
static void
agg_copy(struct agg *dst, const struct agg *src)
{
	dst->cap = src->cap;
	dst->n = src->n;
	dst->slots = src->cap ? xmemdup(src->slots, src->cap * sizeof(*src->slots)) : NULL;
}

/* Free index totals (and make them empty). */
static void
agg_free(struct agg *a)
{
	free(a->slots);
	memset(a, 0, sizeof(*a));
}

/* FNV-1a of a key. */
static uint64_t
key_hash(const char *key)
{
	uint64_t h = UINT64_C(14695981039346656037);

	for (const char *p = key; *p; p++)
		h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
	return h;
}

/* The index of the expected record of the hour being compared with this key, or -1. */
static long
key_find(const struct commerce *c, const char *id)
{
	if (!id)
		return -1;
	for (size_t j = key_hash(id) & c->slot_mask; c->slots[j]; j = (j + 1) & c->slot_mask)
		if (streq(c->keys[c->slots[j] - 1], id))
			return (long)c->slots[j] - 1;
	return -1;
}

/* The group of a reportedStartTime text; with create, a new empty one when missing. */
static struct group *
group_get(struct commerce *c, const char *text, bool create)
{
	size_t lo = 0, hi = c->n_groups;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int k = strcmp(c->groups[mid].text, text);

		if (k == 0)
			return &c->groups[mid];
		if (k < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (!create || strlen(text) != TIME_RFC3339_LEN)
		return NULL;
	c->groups = xreallocarray(c->groups, c->n_groups + 1, sizeof(*c->groups));
	memmove(&c->groups[lo + 1], &c->groups[lo], (c->n_groups - lo) * sizeof(*c->groups));
	c->n_groups++;
	memset(&c->groups[lo], 0, sizeof(*c->groups));
	memcpy(c->groups[lo].text, text, TIME_RFC3339_LEN + 1);
	c->groups[lo].ordinal = c->next_ordinal++;
	if (time_parse_rfc3339(text, &c->groups[lo].t) < 0)
		c->groups[lo].t = INT64_MIN / 2;
	return &c->groups[lo];
}

/* Count the ledger's rows per reportedStartTime again (at start, after a failed batch). */
static int
groups_load(struct sim *s)
{
	struct commerce *c = s->commerce;
	sqlite3_stmt *q;

	c->n_groups = 0;
	c->next_ordinal = 1;
	if (sqlite3_prepare_v2(s->db,
	                       "SELECT reported_start, count(*), max(rowid) FROM events"
	                       " GROUP BY reported_start",
	                       -1, &q, NULL) != SQLITE_OK)
		return -EIO;
	while (sqlite3_step(q) == SQLITE_ROW) {
		struct group *g = group_get(c, (const char *)sqlite3_column_text(q, 0), true);
		uint64_t last = (uint64_t)sqlite3_column_int64(q, 2);

		if (!g)
			continue;
		g->rows = (uint64_t)sqlite3_column_int64(q, 1);
		if (c->clustered) {
			g->ordinal = (uint32_t)(last >> 32);
			g->next_seq = (uint32_t)last + 1;
		}
	}
	sqlite3_finalize(q);
	for (size_t i = 0; c->clustered && i < c->n_groups; i++)
		c->next_ordinal = MAX(c->next_ordinal, c->groups[i].ordinal + 1);
	return 0;
}

/* CPU time of the process in nanoseconds. */
static uint64_t
process_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
