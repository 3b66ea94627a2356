/*
 * The simulated Commerce ingestion endpoint (ARCHITECTURE.md section 6) and its ledger. A batch
 * is checked as a whole (size limits → 413, not JSON → 400, a poison event of the fault plan →
 * 400), then every event is validated and either answered with a per-event status or written to
 * the ledger, a SQLite file in the state directory with usageEventId as primary key, in one
 * transaction per batch: a key already there is answered Duplicate. The summary compares the
 * ledger with the charges the scenario implies, exactly (quantities as scaled 128-bit integers,
 * never floating point).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <zlib.h>

#include "sim.h"
#include "timeutil.h"
#include "xmalloc.h"

#define QTY_DECIMALS   18   /* ledger totals: integers of 10^-18 */
#define LIST_MAX       1000 /* entries per list in the summary */
#define INFLATE_FACTOR 16

/* A small string → index map (open addressing). */
struct smap {
	char **keys;
	size_t *vals;
	size_t cap;
	size_t n;
};

/*
 * One Commerce event as the batch parser leaves it: member names and string values point into
 * the (decoded in place) request body; other values keep their type and their JSON text as
 * received (for tags and additionalInfo). Parsing the flat events by hand instead of building
 * jansson trees halves the simulator's cost per event.
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

#define EVENT_MEMBERS_MAX 32

struct jevent {
	const char *keys[EVENT_MEMBERS_MAX];
	const char *strs[EVENT_MEMBERS_MAX];
	enum jtype types[EVENT_MEMBERS_MAX];
	const char *raw[EVENT_MEMBERS_MAX]; /* the value's JSON text, as received (not a string) */
	size_t raw_len[EVENT_MEMBERS_MAX];
	size_t n;
	bool object; /* false: the array element was not an object */
};

struct expected {
	char key[SIM_KEY_LEN + 1];
	const char *charged;
	const char *meter;
	sim_u128 quantity;
	bool seen;
};

struct total {
	char *sub;
	char *meter;
	sim_u128 expected;
	sim_u128 actual;
	uint64_t n_expected;
	uint64_t n_actual;
};

static int validate_event(struct sim *s, const struct jevent *e, const char **ret_status,
                          const char **ret_message);
static int parse_batch(char *p, char *end, struct jevent **ret, size_t *ret_n);
static int parse_event(char **pp, char *end, struct jevent *e);
static int parse_string(char **pp, char *end, char **ret, bool decode);
static inline void put(char **out, bool decode, char c);
static int skip_value(char **pp, char *end, enum jtype *ret_type);
static void skip_ws(char **pp, char *end);
static const char *ev_str(const struct jevent *e, const char *key);
static enum jtype ev_type(const struct jevent *e, const char *key);
static const char *ev_raw(const struct jevent *e, const char *key, size_t *ret_len);
static int qty_parse(const char *text, sim_u128 *ret);
static void qty_format(sim_u128 v, char out[static 64]);
static bool is_utc_time(const char *s);
static int inflate_body(const unsigned char *in, size_t n, size_t limit, unsigned char **ret,
                        size_t *ret_size);
static void message_time(char out[static 40]);
static int db_exec(sqlite3 *db, const char *sql);
static int add_columns(sqlite3 *db);
static void smap_free(struct smap *m);
static size_t *smap_get(struct smap *m, const char *key, bool create);
static void collect_expected(struct sim *s, int64_t from, int64_t until, struct expected **ret,
                             size_t *ret_n);
static size_t total_slot(struct smap *m, struct total **totals, size_t *n, const char *sub,
                         const char *meter);

/* Open (or create) the ledger in the state directory. */
int
commerce_open(struct sim *s)
{
	_cleanup_free_ char *path = xasprintf("%s/ledger.db", s->state_dir);

	if (sqlite3_open(path, &s->db) != SQLITE_OK) {
		fprintf(stderr, "azs-sim: %s: %s\n", path, sqlite3_errmsg(s->db));
		return -EIO;
	}
	/*
	 * The ledger is test infrastructure sharing the benchmark machine: no fsync (a crash of the
	 * simulator ends the test anyway), a large page cache, and rows appended in rowid order
	 * with the random usageEventId only in the unique index (smaller random writes). Every
	 * member of an event is kept (tags and additionalInfo as the JSON text received); the
	 * columns after accepted_at came later and are added to a ledger made before them.
	 */
	if (db_exec(s->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;"
	                   "PRAGMA cache_size=-131072; PRAGMA temp_store=MEMORY;"
	                   "CREATE TABLE IF NOT EXISTS events ("
	                   " usage_event_id TEXT NOT NULL UNIQUE, subscription_id TEXT NOT NULL,"
	                   " charge_reason TEXT NOT NULL, tenant_id TEXT,"
	                   " source_subscription_id TEXT NOT NULL, meter_id TEXT NOT NULL,"
	                   " quantity TEXT NOT NULL, usage_start TEXT NOT NULL,"
	                   " usage_end TEXT NOT NULL, reported_start TEXT NOT NULL,"
	                   " resource_uri TEXT NOT NULL, correlation_id TEXT,"
	                   " accepted_at INTEGER NOT NULL, registration TEXT, location TEXT,"
	                   " tags TEXT, additional_info TEXT);") < 0 ||
	    add_columns(s->db) < 0)
		return -EIO;
	if (sqlite3_prepare_v2(s->db,
	                       "INSERT OR IGNORE INTO events (usage_event_id, subscription_id,"
	                       " charge_reason, tenant_id, source_subscription_id, registration,"
	                       " meter_id, quantity, usage_start, usage_end, reported_start,"
	                       " resource_uri, location, tags, additional_info, correlation_id,"
	                       " accepted_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
	                       -1, &s->insert, NULL) != SQLITE_OK) {
		fprintf(stderr, "azs-sim: ledger: %s\n", sqlite3_errmsg(s->db));
		return -EIO;
	}
	return 0;
}

/* Close the ledger. */
void
commerce_close(struct sim *s)
{
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
	return db_exec(s->db, "DELETE FROM events;");
}

/* Handle one batch POST. */
void
commerce_batch(struct sim *s, struct evhttp_request *req, struct sim_response *r)
{
	struct evkeyvalq *hdr = evhttp_request_get_input_headers(req);
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	const char *enc = evhttp_find_header(hdr, "Content-Encoding");
	const char *corr = evhttp_find_header(hdr, "x-ms-correlationid");
	size_t n = evbuffer_get_length(in), size = n;
	_cleanup_free_ unsigned char *inflated = NULL;
	const unsigned char *body;
	_cleanup_free_ struct jevent *events = NULL;
	char now_text[40];
	size_t count = 0;

	if (n > s->world.max_bytes) {
		sim_arm_error(r, 413, "RequestEntityTooLarge",
		              "The request body is larger than the batch limit.");
		return;
	}
	body = evbuffer_pullup(in, -1);
	if (enc && strcasecmp(enc, "gzip") == 0) {
		int k = inflate_body(body, n, s->world.max_bytes * INFLATE_FACTOR, &inflated,
		                     &size);

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
		body = inflated;
	} else if (enc && strcasecmp(enc, "identity") != 0) {
		sim_arm_error(r, 415, "UnsupportedMediaType",
		              "Only gzip and identity content encodings are supported.");
		return;
	}
	if (parse_batch((char *)body, (char *)body + size, &events, &count) < 0 || count == 0) {
		sim_arm_error(r, 400, "BadRequest",
		              "The request body must be a JSON object with a non-empty 'request' "
		              "array.");
		goto out;
	}
	r->events = (unsigned)count;
	if (count > s->world.max_events) {
		sim_arm_error(r, 413, "RequestEntityTooLarge",
		              "The batch holds more usage events than allowed.");
		goto out;
	}
	for (size_t i = 0; i < count; i++) {
		const char *id = ev_str(&events[i], "usageEventId");

		if (id && sim_fault_take(s, SIM_EP_COMMERCE, SIM_ACT_POISON, id, -1)) {
			sim_arm_error(r, 400, "BadArgument",
			              "The request contains an invalid usage event.");
			goto out;
		}
	}

	s->batches++;
	s->events_seen += count;
	message_time(now_text);
	if (db_exec(s->db, "BEGIN") < 0) {
		sim_arm_error(r, 500, "InternalServerError", "The ledger cannot be written.");
		goto out;
	}
	r->status = 200;
	evbuffer_add_printf(r->body, "{\"count\":%zu,\"result\":[", count);
	for (size_t i = 0; i < count; i++) {
		const struct jevent *e = &events[i];
		const char *id = ev_str(e, "usageEventId");
		const char *status = NULL, *message = NULL;
		struct sim_rule *rule;

		if (i > 0)
			evbuffer_add(r->body, ",", 1);
		evbuffer_add_printf(r->body, "{\"usageEventId\":");
		if (id)
			sim_json_str(r->body, id);
		else
			evbuffer_add_printf(r->body, "null");
		if (validate_event(s, e, &status, &message) < 0) {
			s->rejected++;
		} else if ((rule = sim_fault_take(s, SIM_EP_COMMERCE, SIM_ACT_EVENTS, id, -1))) {
			status = rule->code ? rule->code : "Error";
			message = rule->message            ? rule->message
			          : streq(status, "Error") ? "Try again."
			                                   : "Simulated per-event fault.";
			s->rejected++;
		} else {
			static const char *const keys[] = {
			        "usageEventId",
			        "subscriptionId",
			        "chargeReason",
			        "tenantId",
			        "sourceSubscriptionId",
			        "registration",
			        "meterId",
			        "quantity",
			        "usageStartTime",
			        "usageEndTime",
			        "reportedStartTime",
			        "resourceUri",
			        "location",
			};
			int k = (int)ARRAY_SIZE(keys);

			sqlite3_reset(s->insert);
			for (size_t j = 0; j < ARRAY_SIZE(keys); j++)
				sqlite3_bind_text(s->insert, (int)j + 1, ev_str(e, keys[j]), -1,
				                  SQLITE_STATIC);
			for (const char *m = "tags"; m;
			     m = streq(m, "tags") ? "additionalInfo" : NULL) {
				size_t len = 0;
				const char *raw = ev_raw(e, m, &len);

				sqlite3_bind_text(s->insert, ++k, raw, (int)len, SQLITE_STATIC);
			}
			sqlite3_bind_text(s->insert, ++k, corr, -1, SQLITE_TRANSIENT);
			sqlite3_bind_int64(s->insert, ++k, (sqlite3_int64)time(NULL));
			k = sqlite3_step(s->insert);
			sqlite3_reset(s->insert);
			if (k != SQLITE_DONE) {
				status = "Error";
				message = "The ledger cannot be written.";
			} else if (sqlite3_changes(s->db) == 0) {
				s->duplicates++;
				evbuffer_add_printf(r->body,
				                    ",\"status\":\"Duplicate\",\"messageTime\":"
				                    "\"0001-01-01T00:00:00\",\"error\":{\"code\":"
				                    "\"Conflict\",\"message\":\"This usage event "
				                    "already exist.\"}}");
				continue;
			} else {
				evbuffer_add_printf(
				        r->body, ",\"status\":\"Accepted\",\"messageTime\":\"%s\"}",
				        now_text);
				continue;
			}
		}
		evbuffer_add_printf(r->body, ",\"status\":");
		sim_json_str(r->body, status);
		/* a transient Error carries the code InternalError (commerce-batch-response.json)
		 */
		evbuffer_add_printf(r->body, ",\"error\":{\"code\":");
		sim_json_str(r->body, streq(status, "Error") ? "InternalError" : status);
		evbuffer_add_printf(r->body, ",\"message\":");
		sim_json_str(r->body, message);
		evbuffer_add_printf(r->body, "}}");
	}
	evbuffer_add_printf(r->body, "]}");
	if (db_exec(s->db, "COMMIT") < 0) {
		db_exec(s->db, "ROLLBACK");
		evbuffer_drain(r->body, evbuffer_get_length(r->body));
		sim_arm_error(r, 500, "InternalServerError", "The ledger cannot be written.");
	}
out:
	return;
}

/* Write the ledger summary and its comparison with the expected charges. */
void
commerce_summary(struct sim *s, int64_t from, int64_t until, struct evbuffer *out)
{
	_cleanup_free_ struct expected *exp = NULL;
	_cleanup_free_ struct total *totals = NULL;
	struct smap keys = {0}, tmap = {0};
	size_t n_exp = 0, n_tot = 0, n_missing = 0, n_extra = 0, n_wsub = 0, n_wqty = 0;
	size_t n_bad = 0, n_tmis = 0, accepted = 0, listed;
	struct evbuffer *extra = evbuffer_new(), *wsub = evbuffer_new(), *wqty = evbuffer_new();
	sqlite3_stmt *q = NULL;
	char tf[32], tu[32];
	uint64_t total_ns = 0;
	struct timespec ts;

	if (!extra || !wsub || !wqty)
		abort();
	collect_expected(s, from, until, &exp, &n_exp);
	for (size_t i = 0; i < n_exp; i++) {
		size_t t = total_slot(&tmap, &totals, &n_tot, exp[i].charged, exp[i].meter);

		*smap_get(&keys, exp[i].key, true) = i;
		totals[t].expected += exp[i].quantity;
		totals[t].n_expected++;
	}
	/* unbounded ends compare below and above every RFC 3339 text */
	if (from > INT64_MIN / 4)
		time_format_rfc3339(from, tf);
	else
		snprintf(tf, sizeof(tf), "0000-01-01T00:00:00Z");
	if (until < INT64_MAX / 4)
		time_format_rfc3339(until, tu);
	else
		snprintf(tu, sizeof(tu), "9999-12-31T23:59:59Z");
	if (sqlite3_prepare_v2(
	            s->db,
	            "SELECT usage_event_id, subscription_id, meter_id, quantity FROM events"
	            " WHERE reported_start >= ? AND reported_start < ?",
	            -1, &q, NULL) != SQLITE_OK)
		abort();
	sqlite3_bind_text(q, 1, tf, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, tu, -1, SQLITE_STATIC);
	while (sqlite3_step(q) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(q, 0);
		const char *sub = (const char *)sqlite3_column_text(q, 1);
		const char *meter = (const char *)sqlite3_column_text(q, 2);
		const char *qty = (const char *)sqlite3_column_text(q, 3);
		size_t *idx = smap_get(&keys, id, false), t;
		sim_u128 v = 0;

		accepted++;
		if (qty_parse(qty, &v) < 0)
			n_bad++;
		t = total_slot(&tmap, &totals, &n_tot, sub, meter);
		totals[t].actual += v;
		totals[t].n_actual++;
		if (!idx) {
			if (n_extra++ < LIST_MAX) {
				evbuffer_add_printf(extra, "%s", n_extra > 1 ? "," : "");
				sim_json_str(extra, id);
			}
			continue;
		}
		exp[*idx].seen = true;
		if (strcasecmp(exp[*idx].charged, sub) != 0 && n_wsub++ < LIST_MAX) {
			evbuffer_add_printf(wsub, "%s{\"usageEventId\":", n_wsub > 1 ? "," : "");
			sim_json_str(wsub, id);
			evbuffer_add_printf(wsub,
			                    ",\"expected\":\"%s\",\"actual\":", exp[*idx].charged);
			sim_json_str(wsub, sub);
			evbuffer_add_printf(wsub, "}");
		}
		if (v != exp[*idx].quantity && n_wqty++ < LIST_MAX) {
			char e[64];

			qty_format(exp[*idx].quantity, e);
			evbuffer_add_printf(wqty, "%s{\"usageEventId\":", n_wqty > 1 ? "," : "");
			sim_json_str(wqty, id);
			evbuffer_add_printf(wqty, ",\"expected\":\"%s\",\"actual\":", e);
			sim_json_str(wqty, qty);
			evbuffer_add_printf(wqty, "}");
		}
	}
	sqlite3_finalize(q);

	evbuffer_add_printf(out,
	                    "{\"from\":\"%s\",\"until\":\"%s\",\"accepted\":%zu,"
	                    "\"duplicates\":%llu,\"rejected\":%llu,\"batches\":%llu,"
	                    "\"eventsReceived\":%llu,\"unparsableQuantities\":%zu,\"totals\":[",
	                    tf, tu, accepted, (unsigned long long)s->duplicates,
	                    (unsigned long long)s->rejected, (unsigned long long)s->batches,
	                    (unsigned long long)s->events_seen, n_bad);
	for (size_t i = 0; i < n_tot; i++) {
		char e[64], a[64];

		qty_format(totals[i].expected, e);
		qty_format(totals[i].actual, a);
		evbuffer_add_printf(out,
		                    "%s{\"subscriptionId\":\"%s\",\"meterId\":\"%s\","
		                    "\"expected\":\"%s\",\"actual\":\"%s\",\"expectedEvents\":%llu,"
		                    "\"actualEvents\":%llu}",
		                    i ? "," : "", totals[i].sub, totals[i].meter, e, a,
		                    (unsigned long long)totals[i].n_expected,
		                    (unsigned long long)totals[i].n_actual);
		if (totals[i].expected != totals[i].actual)
			n_tmis++;
	}
	evbuffer_add_printf(out, "],\"expected\":{\"events\":%zu},\"comparison\":{\"missing\":[",
	                    n_exp);
	listed = 0;
	for (size_t i = 0; i < n_exp; i++) {
		if (exp[i].seen)
			continue;
		if (n_missing++ < LIST_MAX)
			evbuffer_add_printf(out, "%s\"%s\"", listed++ ? "," : "", exp[i].key);
	}
	evbuffer_add_printf(out, "],\"missingCount\":%zu,\"extra\":[", n_missing);
	evbuffer_add_buffer(out, extra);
	evbuffer_add_printf(out, "],\"extraCount\":%zu,\"wrongSubscription\":[", n_extra);
	evbuffer_add_buffer(out, wsub);
	evbuffer_add_printf(out, "],\"wrongSubscriptionCount\":%zu,\"wrongQuantity\":[", n_wsub);
	evbuffer_add_buffer(out, wqty);
	evbuffer_add_printf(out, "],\"wrongQuantityCount\":%zu,\"totalMismatches\":%zu,\"ok\":%s},",
	                    n_wqty, n_tmis,
	                    n_missing + n_extra + n_wsub + n_wqty + n_tmis + n_bad == 0 ? "true"
	                                                                                : "false");
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	total_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec - s->cpu_start_ns;
	evbuffer_add_printf(
	        out,
	        "\"sim\":{\"pagesServed\":%llu,\"recordsServed\":%llu,\"eventsReceived\":%llu,"
	        "\"cpuUs\":%llu,\"usageCpuUs\":%llu,\"commerceCpuUs\":%llu,"
	        "\"usageCpuUsPerRecord\":%.3f,\"commerceCpuUsPerEvent\":%.3f,"
	        "\"cpuUsPerRecord\":%.3f}}",
	        (unsigned long long)s->pages_served, (unsigned long long)s->records_served,
	        (unsigned long long)s->events_seen, (unsigned long long)(total_ns / 1000),
	        (unsigned long long)(s->cpu_ns[SIM_EP_USAGE] / 1000),
	        (unsigned long long)(s->cpu_ns[SIM_EP_COMMERCE] / 1000),
	        s->records_served
	                ? (double)s->cpu_ns[SIM_EP_USAGE] / 1000.0 / (double)s->records_served
	                : 0.0,
	        s->events_seen
	                ? (double)s->cpu_ns[SIM_EP_COMMERCE] / 1000.0 / (double)s->events_seen
	                : 0.0,
	        s->records_served + s->events_seen
	                ? (double)total_ns / 1000.0 / (double)(s->records_served + s->events_seen)
	                : 0.0);
	for (size_t i = 0; i < n_tot; i++) {
		free(totals[i].sub);
		free(totals[i].meter);
	}
	smap_free(&keys);
	smap_free(&tmap);
	evbuffer_free(extra);
	evbuffer_free(wsub);
	evbuffer_free(wqty);
}

/* Write the events a correct forwarder would send for the expected records (a JSON array). */
void
commerce_expected_events(struct sim *s, int64_t from, int64_t until, size_t limit,
                         struct evbuffer *out)
{
	struct sim_world *w = &s->world;
	int64_t first = MAX(from, w->hour_from);
	int64_t end = MIN(until, w->hour_from + (int64_t)w->hour_count * 3600);
	size_t n = 0;

	end = MIN(end, sim_now(s) - 3600 + 1);
	evbuffer_add(out, "[", 1);
	for (int64_t h = first; h < end && n < limit; h += 3600) {
		const struct sim_hour *hr = world_hour(w, h);
		char th[32];

		if (!hr)
			continue;
		time_format_rfc3339(h, th);
		for (size_t i = 0; i < hr->n && n < limit; i++, n++) {
			const struct sim_record *rec = &hr->recs[i];
			const struct sim_resource *res = &w->res[rec->resource];
			const struct sim_usersub *u = &w->subs[res->usersub];
			char key[SIM_KEY_LEN + 1], q[32], ts[32], te[32];
			const char *reason, *charged = world_charged(w, res->usersub, &reason);

			world_record_key(w, h, rec, key);
			world_quantity_text(rec->quantity, rec->style, q);
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
			                    res->tags, res->info);
		}
	}
	evbuffer_add(out, "]", 1);
}

/* Check one event against the contract; the per-event status and message when it fails. */
static int
validate_event(struct sim *s, const struct jevent *e, const char **ret_status,
               const char **ret_message)
{
	static const char *const times[] = {"usageStartTime", "usageEndTime", "reportedStartTime"};
	static const char *const strings[] = {"resourceUri", "location", "meterId"};
	const struct sim_world *w = &s->world;
	const char *id = ev_str(e, "usageEventId");
	const char *sub = ev_str(e, "subscriptionId");
	const char *reason = ev_str(e, "chargeReason");
	const char *src = ev_str(e, "sourceSubscriptionId");
	const char *reg = ev_str(e, "registration");
	const char *qty = ev_str(e, "quantity");
	enum jtype tenant = ev_type(e, "tenantId");
	int64_t t[3];
	sim_u128 v;
	bool known = false;
	int k;

	*ret_status = "BadArgument";
	if (!e->object || isempty(id) || strlen(id) > 128) {
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
	if (tenant != JT_NULL &&
	    !(tenant == JT_STRING && world_is_guid(ev_str(e, "tenantId"), true))) {
		*ret_message = "tenantId must be a lower-case GUID or null.";
		return -EINVAL;
	}
	if (!reg || strcasecmp(reg, w->reg_id) != 0) {
		*ret_message = "registration does not name this registration.";
		return -EINVAL;
	}
	for (size_t i = 0; i < ARRAY_SIZE(strings); i++)
		if (isempty(ev_str(e, strings[i]))) {
			*ret_message =
			        "resourceUri, location and meterId must be non-empty strings.";
			return -EINVAL;
		}
	for (size_t i = 0; i < ARRAY_SIZE(times); i++) {
		const char *tx = ev_str(e, times[i]);

		if (!tx || !is_utc_time(tx) || time_parse_rfc3339(tx, &t[i]) < 0) {
			*ret_message = "usageStartTime, usageEndTime and reportedStartTime must be "
			               "YYYY-MM-DDTHH:MM:SSZ.";
			return -EINVAL;
		}
	}
	if (t[1] <= t[0]) {
		*ret_message = "usageEndTime must be after usageStartTime.";
		return -EINVAL;
	}
	for (const char *m = "tags"; m; m = streq(m, "tags") ? "additionalInfo" : NULL) {
		enum jtype o = ev_type(e, m);

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
	k = qty_parse(qty, &v);
	if (k == -EDOM) {
		*ret_message = "The quantity passed is lower than 0.";
		return -EINVAL;
	}
	if (k < 0) {
		*ret_message =
		        "The quantity passed is not a decimal number with at most 18 decimals.";
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
	return 0;
}

/* Parse {"request":[event, ...]} (other top-level members are skipped). */
static int
parse_batch(char *p, char *end, struct jevent **ret, size_t *ret_n)
{
	struct jevent *events = NULL;
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
			if (parse_string(&p, end, &key, true) < 0)
				goto fail;
			skip_ws(&p, end);
			if (p >= end || *p++ != ':')
				goto fail;
			skip_ws(&p, end);
			if (streq(key, "request") && !seen) {
				seen = true;
				if (p >= end || *p++ != '[')
					goto fail;
				skip_ws(&p, end);
				if (p < end && *p == ']')
					p++;
				else
					for (;;) {
						events = xreallocarray(events, n + 1,
						                       sizeof(*events));
						skip_ws(&p, end);
						if (parse_event(&p, end, &events[n++]) < 0)
							goto fail;
						skip_ws(&p, end);
						if (p < end && *p == ',') {
							p++;
							continue;
						}
						if (p >= end || *p++ != ']')
							goto fail;
						break;
					}
			} else {
				enum jtype t;

				if (skip_value(&p, end, &t) < 0)
					goto fail;
			}
			skip_ws(&p, end);
			if (p < end && *p == ',') {
				p++;
				continue;
			}
			if (p >= end || *p++ != '}')
				goto fail;
			break;
		}
	skip_ws(&p, end);
	if (p != end || !seen)
		goto fail;
	*ret = events;
	*ret_n = n;
	return 0;
fail:
	free(events);
	return -EINVAL;
}

/* Parse one array element; an object keeps its members, anything else is skipped. */
static int
parse_event(char **pp, char *end, struct jevent *e)
{
	char *p = *pp;

	memset(e, 0, sizeof(*e));
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
		enum jtype t;

		skip_ws(&p, end);
		if (parse_string(&p, end, &key, true) < 0)
			return -EINVAL;
		skip_ws(&p, end);
		if (p >= end || *p++ != ':')
			return -EINVAL;
		skip_ws(&p, end);
		value = p;
		if (p < end && *p == '"') {
			if (parse_string(&p, end, &str, true) < 0)
				return -EINVAL;
			t = JT_STRING;
		} else if (skip_value(&p, end, &t) < 0) {
			return -EINVAL;
		}
		if (e->n < EVENT_MEMBERS_MAX && ev_type(e, key) == JT_NONE) {
			e->keys[e->n] = key;
			e->strs[e->n] = str;
			e->types[e->n] = t;
			e->raw[e->n] = value;
			e->raw_len[e->n] = (size_t)(p - value);
			e->n++;
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
 * Parse a JSON string at *pp and return its start; with decode, decode it in place
 * (NUL-terminated), else only check it, leaving the text as it was (the raw text of an object
 * member is kept for the ledger).
 */
static int
parse_string(char **pp, char *end, char **ret, bool decode)
{
	char *p = *pp, *out, *start;

	if (p >= end || *p != '"')
		return -EINVAL;
	start = out = ++p;
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
		return parse_string(pp, end, &s, false);
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
				if (parse_string(&p, end, &s, false) < 0)
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

/* A string member of an event, or NULL (absent or not a string). */
static const char *
ev_str(const struct jevent *e, const char *key)
{
	for (size_t i = 0; i < e->n; i++)
		if (streq(e->keys[i], key))
			return e->strs[i];
	return NULL;
}

/* The JSON text of an event member as received (NULL when absent). */
static const char *
ev_raw(const struct jevent *e, const char *key, size_t *ret_len)
{
	for (size_t i = 0; i < e->n; i++)
		if (streq(e->keys[i], key)) {
			*ret_len = e->raw_len[i];
			return e->raw[i];
		}
	return NULL;
}

/* The type of an event member (JT_NONE when absent). */
static enum jtype
ev_type(const struct jevent *e, const char *key)
{
	for (size_t i = 0; i < e->n; i++)
		if (streq(e->keys[i], key))
			return e->types[i];
	return JT_NONE;
}

/*
 * Parse a plain decimal string ("2.4000000000", "3") into integers of 10^-18. -EDOM for a
 * negative value, -EINVAL for anything else that is not a decimal, -ERANGE when it does not fit.
 */
static int
qty_parse(const char *text, sim_u128 *ret)
{
	sim_u128 v = 0;
	const char *p = text;
	int ip = 0, fp = 0;

	if (*p == '-')
		return (p[1] >= '0' && p[1] <= '9' && strspn(p + 1, "0.") != strlen(p + 1))
		               ? -EDOM
		               : -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++, ip++) {
		if (ip >= 20)
			return -ERANGE;
		v = v * 10 + (sim_u128)(*p - '0');
	}
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++, fp++) {
			if (fp >= QTY_DECIMALS) {
				if (*p != '0')
					return -ERANGE;
				continue;
			}
			v = v * 10 + (sim_u128)(*p - '0');
		}
		if (fp == 0)
			return -EINVAL;
	}
	if (*p || ip == 0)
		return -EINVAL;
	for (int i = MIN(fp, QTY_DECIMALS); i < QTY_DECIMALS; i++)
		v *= 10;
	*ret = v;
	return 0;
}

/* Write integers of 10^-18 as plain decimal text without trailing zeros ("2.4", "0"). */
static void
qty_format(sim_u128 v, char out[static 64])
{
	char digits[48];
	int n = 0, k = 0;

	do {
		digits[n++] = (char)('0' + (int)(v % 10));
		v /= 10;
	} while (v > 0 || n <= QTY_DECIMALS);
	for (int i = n - 1; i >= QTY_DECIMALS; i--)
		out[k++] = digits[i];
	out[k++] = '.';
	for (int i = QTY_DECIMALS - 1; i >= 0; i--)
		out[k++] = digits[i];
	while (out[k - 1] == '0')
		k--;
	if (out[k - 1] == '.')
		k--;
	out[k] = '\0';
}

/* Tell whether s is written exactly as YYYY-MM-DDTHH:MM:SSZ. */
static bool
is_utc_time(const char *s)
{
	static const char pat[] = "dddd-dd-ddTdd:dd:ddZ";

	if (strlen(s) != sizeof(pat) - 1)
		return false;
	for (size_t i = 0; pat[i]; i++)
		if (pat[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != pat[i])
			return false;
	return true;
}

/* Inflate a gzip body, refusing more than limit bytes (-EFBIG). */
static int
inflate_body(const unsigned char *in, size_t n, size_t limit, unsigned char **ret, size_t *ret_size)
{
	z_stream z = {0};
	size_t cap = MAX(n * 4, (size_t)4096), used = 0;
	unsigned char *out;
	int k;

	if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
		return -ENOMEM;
	out = xmalloc(cap);
	z.next_in = (unsigned char *)in;
	z.avail_in = (uInt)n;
	for (;;) {
		if (used == cap) {
			if (cap >= limit) {
				k = -EFBIG;
				goto fail;
			}
			cap = MIN(cap * 2, limit);
			out = xrealloc(out, cap);
		}
		z.next_out = out + used;
		z.avail_out = (uInt)(cap - used);
		k = inflate(&z, Z_NO_FLUSH);
		used = cap - z.avail_out;
		if (k == Z_STREAM_END)
			break;
		if (k != Z_OK && !(k == Z_BUF_ERROR && used == cap)) {
			k = -EBADMSG;
			goto fail;
		}
	}
	inflateEnd(&z);
	*ret = out;
	*ret_size = used;
	return 0;
fail:
	inflateEnd(&z);
	free(out);
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

/* Gather every record of the scenario's reported hours in [from, until) that have ended. */
static void
collect_expected(struct sim *s, int64_t from, int64_t until, struct expected **ret, size_t *ret_n)
{
	struct sim_world *w = &s->world;
	int64_t first = MAX(from, w->hour_from);
	int64_t end = MIN(until, w->hour_from + (int64_t)w->hour_count * 3600);
	struct expected *e = NULL;
	size_t n = 0;

	end = MIN(end, sim_now(s) - 3600 + 1);
	for (int64_t h = first; h < end; h += 3600) {
		const struct sim_hour *hr = world_hour(w, h);

		if (!hr)
			continue;
		e = xreallocarray(e, n + hr->n + 1, sizeof(*e));
		for (size_t i = 0; i < hr->n; i++) {
			const struct sim_record *rec = &hr->recs[i];
			const char *reason;

			world_record_key(w, h, rec, e[n].key);
			e[n].charged = world_charged(w, w->res[rec->resource].usersub, &reason);
			e[n].meter = w->meters[rec->meter];
			e[n].quantity = (sim_u128)rec->quantity * 100000000u;
			e[n].seen = false;
			n++;
		}
	}
	*ret = e;
	*ret_n = n;
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
