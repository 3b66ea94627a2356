/*
 * Unit tests for lib/forwarder.c: the outcome table of ARCHITECTURE.md section 6 against a store
 * on a temporary file and a fake transport (the forwarder's seam) that records every POST and
 * lets the test answer it. The realtime clock (which decides when a record is due) is the
 * timeutil seam, moved by the tests; the forwarder is woken with forwarder_nudge() after a move,
 * so no test waits for time to pass.
 *
 * Covered: per-event statuses (Accepted, Duplicate, Expired, Error, a missing result), 400
 * bisection down to the poison record, 413 halving with an HTML body, 401 refresh once then
 * backoff, 409, transient answers keeping the batch id and event ids, Retry-After throttling the
 * endpoint, the backoff bounds, max_inflight, holding while the registration is stale, the
 * graceful drain, and the journal: one line per change of state, the fields of a dead letter.
 * While Commerce fails as a whole, nothing fresh is claimed and one batch at a time probes it;
 * the first success sends max_inflight batches again.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "forwarder.h"
#include "hash.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define SUB     "0fd2e8a6-9a5c-4f5e-8f2c-3d1f2b7c9e10"
#define DEFAULT "9a1c6f7e-3b2d-4e8f-a1b2-c3d4e5f60718"
#define REG                       \
	"/subscriptions/" DEFAULT \
	"/resourcegroups/azurestack/providers/microsoft.azurestack/registrations/r1"
#define METER    "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5"
#define H0       INT64_C(1793527200) /* 2026-11-01T10:00:00Z */
#define HOUR     INT64_C(3600)
#define MAX_REQS 256
#define MAX_KEYS 64
#define GUARD    (30 * USEC_PER_SEC)

/* One POST the forwarder made. */
struct fake_req {
	char correlation[64];
	char request_id[64];
	char *keys[MAX_KEYS];
	size_t n_keys;
	forwarder_reply_fn done;
	void *userdata;
	bool answered;
	bool cancelled;
};

struct ctx {
	char dir[64];
	char path[96];
	struct store *store;
	struct metrics *metrics;
	struct event_base *base;
	struct fake_req reqs[MAX_REQS];
	size_t n;
	unsigned token_refused;
	bool stale;
	struct forwarder_transport tp;
	struct forwarder_options options;
	struct forwarder *f;
	unsigned drained;
	unsigned drained_left;
	char keys[MAX_KEYS][HASH_SHA256_HEX_LEN + 1];
	FILE *log; /* what the forwarder logs, as logfmt lines */
	char *log_text;
	size_t log_size;
};

static int64_t fake_now = H0 + 2 * HOUR;

static uint64_t
fake_realtime(_unused_ void *userdata)
{
	return (uint64_t)fake_now * USEC_PER_SEC;
}

static uint64_t
real_monotonic(_unused_ void *userdata)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

static const struct timeutil_clock test_clock = {
        .realtime_usec = fake_realtime,
        .monotonic_usec = real_monotonic,
};

static uint64_t
max_random(_unused_ void *userdata)
{
	return UINT64_MAX;
}

static const struct http_random top_random = {.next = max_random};

/* ---- the fake transport ------------------------------------------------------------------- */

static const char *
header(const char *const *headers, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; headers[i]; i++)
		if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':')
			return headers[i] + n + 2;
	return NULL;
}

static int
fake_post(void *userdata, _unused_ const char *url, const char *const *headers, const void *body,
          size_t size, _unused_ uint64_t timeout_usec, forwarder_reply_fn done, void *done_userdata,
          void **ret_handle)
{
	struct ctx *t = userdata;
	struct fake_req *r;
	json_error_t err;
	json_t *doc, *events;
	size_t i;
	json_t *ev;

	assert_true(t->n < MAX_REQS);
	r = &t->reqs[t->n++];
	*r = (struct fake_req){.done = done, .userdata = done_userdata};
	assert_null(header(headers, "Content-Encoding"));
	snprintf(r->correlation, sizeof(r->correlation), "%s",
	         header(headers, "x-ms-correlationid"));
	snprintf(r->request_id, sizeof(r->request_id), "%s", header(headers, "x-ms-requestid"));
	doc = json_loadb(body, size, 0, &err);
	assert_non_null(doc);
	events = json_object_get(doc, "request");
	json_array_foreach(events, i, ev)
	{
		assert_true(r->n_keys < MAX_KEYS);
		r->keys[r->n_keys++] =
		        xstrdup(json_string_value(json_object_get(ev, "usageEventId")));
	}
	json_decref(doc);
	*ret_handle = r;
	return 0;
}

static void
fake_cancel(_unused_ void *userdata, void *handle)
{
	struct fake_req *r = handle;

	assert_false(r->answered);
	r->cancelled = true;
}

static void
fake_token_refused(void *userdata, _unused_ const char *token)
{
	struct ctx *t = userdata;

	t->token_refused++;
}

static bool
fake_stale(void *userdata)
{
	return ((struct ctx *)userdata)->stale;
}

static int
fake_map(_unused_ void *userdata, _unused_ const struct store_record *r, struct store_charge *ret)
{
	*ret = (struct store_charge){.charged_subscription = DEFAULT,
	                             .reason = "default",
	                             .tenant_id = NULL,
	                             .registration = REG};
	return 0;
}

/* Answer r with status, body and a Retry-After (or NULL). */
static void
answer(struct fake_req *r, long status, const char *body, const char *retry_after)
{
	struct http_result http = {
	        .status = status,
	        .error_message = "",
	        .retry_after = retry_after,
	        .body = body,
	        .body_size = strlen(body),
	        .total_usec = 2000,
	};
	struct forwarder_reply reply = {.http = &http, .token = "token-1"};

	assert_false(r->answered);
	assert_false(r->cancelled);
	r->answered = true;
	r->done(&reply, r->userdata);
}

static void
answer_error(struct fake_req *r, int error)
{
	struct http_result http = {.error = error, .error_message = "reset", .body = ""};
	struct forwarder_reply reply = {.http = &http};

	r->answered = true;
	r->done(&reply, r->userdata);
}

/* A 200 answer: each key with status, except special_key answered special_status (no result
 * at all when special_status is NULL) and skip_key left out. */
static char *
result_body2(const struct fake_req *r, const char *status, const char *special_key,
             const char *special_status, const char *skip_key)
{
	char *body = xstrdup("{\"count\":0,\"result\":[");

	for (size_t i = 0; i < r->n_keys; i++) {
		bool special = special_key && streq(r->keys[i], special_key);
		const char *st = special ? special_status : status;
		char *b;

		if ((special && !special_status) || (skip_key && streq(r->keys[i], skip_key)))
			continue; /* a missing result */
		b = xasprintf("%s%s{\"usageEventId\":\"%s\",\"status\":\"%s\"%s}", body,
		              body[strlen(body) - 1] == '[' ? "" : ",", r->keys[i], st,
		              streq(st, "Accepted") || streq(st, "Duplicate")
		                      ? ""
		                      : ",\"error\":{\"code\":\"X\",\"message\":\"why not\"}");
		free(body);
		body = b;
	}
	{
		char *b = xasprintf("%s]}", body);

		free(body);
		body = b;
	}
	return body;
}

static char *
result_body(const struct fake_req *r, const char *status, const char *special_key,
            const char *special_status)
{
	return result_body2(r, status, special_key, special_status, NULL);
}

static void
answer_all(struct fake_req *r, const char *status)
{
	_cleanup_free_ char *body = result_body(r, status, NULL, NULL);

	answer(r, 200, body, NULL);
}

/* ---- context ------------------------------------------------------------------------------ */

static void
settle_loop(struct ctx *t)
{
	for (int i = 0; i < 20; i++)
		event_base_loop(t->base, EVLOOP_NONBLOCK);
}

/* The oldest unanswered request, or NULL. */
static struct fake_req *
pending(struct ctx *t)
{
	for (size_t i = 0; i < t->n; i++)
		if (!t->reqs[i].answered && !t->reqs[i].cancelled)
			return &t->reqs[i];
	return NULL;
}

static struct fake_req *
wait_req(struct ctx *t)
{
	uint64_t end = now_monotonic_usec() + GUARD;
	struct fake_req *r;

	while (!(r = pending(t))) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	}
	return r;
}

/* Put n records (keys of "record-<i>") as one page. */
static void
put_records(struct ctx *t, size_t first, size_t n)
{
	struct store_record recs[MAX_KEYS];
	char uris[MAX_KEYS][128];
	struct store_page page = {
	        .reported_hour = H0, .scope = "", .records = recs, .n_records = n, .now = fake_now};
	struct store_page_result res;

	for (size_t i = 0; i < n; i++) {
		char in[32];

		snprintf(in, sizeof(in), "record-%zu", first + i);
		hash_sha256_hex(in, strlen(in), t->keys[first + i]);
		snprintf(uris[i], sizeof(uris[i]), "/subscriptions/" SUB "/vm%zu", first + i);
		recs[i] = (struct store_record){
		        .state = STORE_PENDING,
		        .key = t->keys[first + i],
		        .reported_hour = H0,
		        .subscription_id = (char *)SUB,
		        .meter_id = (char *)METER,
		        .quantity = (char *)"1.5",
		        .usage_start = H0 - HOUR,
		        .usage_end = H0,
		        .resource_uri = uris[i],
		        .location = (char *)"local",
		        .raw = (char *)"{}",
		};
	}
	assert_int_equal(store_put_page(t->store, &page, &res), 0);
	assert_int_equal(res.inserted, n);
}

static int
setup(void **state)
{
	struct ctx *t = xcalloc(1, sizeof(*t));
	struct store_options so = {0};

	fake_now = H0 + 2 * HOUR;
	timeutil_set_clock(&test_clock);
	snprintf(t->dir, sizeof(t->dir), "/tmp/test-forwarder-XXXXXX");
	assert_non_null(mkdtemp(t->dir));
	snprintf(t->path, sizeof(t->path), "%s/usage.db", t->dir);
	so.path = t->path;
	assert_int_equal(store_open(&so, &t->store, NULL), 0);
	t->metrics = metrics_new_daemon("test");
	t->base = event_base_new();
	t->log = open_memstream(&t->log_text, &t->log_size);
	assert_non_null(t->log);
	log_open(LOG_TARGET_STDERR);
	log_set_stream(t->log);
	log_set_max_level(LOG_INFO);
	t->tp = (struct forwarder_transport){.post = fake_post,
	                                     .cancel = fake_cancel,
	                                     .token_refused = fake_token_refused,
	                                     .userdata = t};
	t->options = (struct forwarder_options){
	        .store = t->store,
	        .metrics = t->metrics,
	        .transport = &t->tp,
	        .url = "https://commerce.example/api/usageEvents/batch",
	        .registration = REG,
	        .map = fake_map,
	        .is_stale = fake_stale,
	        .stale_userdata = t,
	        .settings = {.batch_size = 10,
	                     .max_inflight = 1,
	                     .retry_initial_usec = 1 * USEC_PER_SEC,
	                     .retry_max_usec = 8 * USEC_PER_SEC},
	        .poll_usec = 20 * USEC_PER_MSEC,
	};
	*state = t;
	return 0;
}

static void
start(struct ctx *t)
{
	assert_int_equal(forwarder_new(t->base, &t->options, &t->f), 0);
	assert_int_equal(forwarder_start(t->f), 0);
}

static int
teardown(void **state)
{
	struct ctx *t = *state;
	char cmd[128];

	forwarder_free(t->f);
	for (size_t i = 0; i < t->n; i++)
		for (size_t k = 0; k < t->reqs[i].n_keys; k++)
			free(t->reqs[i].keys[k]);
	store_free(t->store);
	metrics_free(t->metrics);
	event_base_free(t->base);
	log_set_stream(NULL);
	fclose(t->log);
	free(t->log_text);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", t->dir);
	assert_int_equal(system(cmd), 0);
	timeutil_set_clock(NULL);
	free(t);
	return 0;
}

static uint64_t
count(struct ctx *t, enum store_state s)
{
	struct store_counts c;

	assert_int_equal(store_counts(t->store, &c), 0);
	return c.by_state[s];
}

static double
metric(struct ctx *t, enum metrics_id id, const char *label)
{
	return metrics_series_value(metrics_get_series(metrics_get_family(t->metrics, id), label));
}

/* How often text occurs in the log so far. */
static size_t
log_count(struct ctx *t, const char *text)
{
	size_t n = 0;

	fflush(t->log);
	for (const char *p = t->log_text; p && (p = strstr(p, text)); p += strlen(text))
		n++;
	return n;
}

/* Move the clock by s seconds and let the forwarder look. */
static void
advance(struct ctx *t, int64_t s)
{
	fake_now += s;
	forwarder_nudge(t->f);
	settle_loop(t);
}

struct dead_row {
	char key[HASH_SHA256_HEX_LEN + 1];
	char code[64];
	char message[128];
	size_t n;
};

static int
dead_cb(void *userdata, const struct store_record *r)
{
	struct dead_row *d = userdata;

	snprintf(d->key, sizeof(d->key), "%s", r->key);
	snprintf(d->code, sizeof(d->code), "%s", r->error_code ? r->error_code : "");
	snprintf(d->message, sizeof(d->message), "%s", r->error_message ? r->error_message : "");
	d->n++;
	return 0;
}

static void
dead_rows(struct ctx *t, struct dead_row *ret)
{
	struct store_query q = {.state = STORE_DEAD};

	*ret = (struct dead_row){0};
	assert_int_equal(store_records_query(t->store, &q, dead_cb, ret), 0);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void
test_forwarder_accepted_and_duplicate_forwarded(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r;

	put_records(t, 0, 3);
	start(t);
	r = wait_req(t);
	assert_int_equal(r->n_keys, 3);
	assert_int_equal(strlen(r->correlation), 36);
	assert_int_equal(strlen(r->request_id), 36);
	{
		_cleanup_free_ char *body = result_body(r, "Accepted", t->keys[1], "Duplicate");

		answer(r, 200, body, NULL);
	}
	settle_loop(t);
	assert_int_equal(count(t, STORE_FORWARDED), 3);
	assert_int_equal(metric(t, METRICS_RECORDS_FORWARDED_TOTAL, "Accepted"), 2);
	assert_int_equal(metric(t, METRICS_RECORDS_FORWARDED_TOTAL, "Duplicate"), 1);
	assert_int_equal(metric(t, METRICS_FORWARD_BATCHES_TOTAL, "outcomes"), 1);
	assert_int_equal(metric(t, METRICS_HTTP_REQUEST_DURATION_SECONDS, "commerce"), 1);
	assert_null(pending(t));
}

static void
test_forwarder_per_event_dead_and_retry(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r, *r2;
	struct dead_row d;
	_cleanup_free_ char *body = NULL, *body2 = NULL;

	put_records(t, 0, 3);
	start(t);
	r = wait_req(t);
	/* record 0 Expired (dead), record 2 missing from the result (retried), 1 accepted */
	body = result_body2(r, "Accepted", t->keys[0], "Expired", t->keys[2]);
	answer(r, 200, body, NULL);
	settle_loop(t);
	assert_int_equal(count(t, STORE_FORWARDED), 1);
	assert_int_equal(count(t, STORE_DEAD), 1);
	assert_int_equal(count(t, STORE_PENDING), 1);
	dead_rows(t, &d);
	assert_string_equal(d.key, t->keys[0]);
	assert_string_equal(d.code, "Expired");
	assert_non_null(strstr(d.message, "why not"));

	/* the retry comes after its backoff, under the same batch id and event id */
	assert_null(pending(t));
	advance(t, 2);
	r2 = wait_req(t);
	assert_string_equal(r2->correlation, r->correlation);
	assert_string_not_equal(r2->request_id, r->request_id);
	assert_int_equal(r2->n_keys, 1);
	assert_string_equal(r2->keys[0], t->keys[2]);
	body2 = result_body(r2, "Error", NULL, NULL);
	answer(r2, 200, body2, NULL);
	settle_loop(t);
	assert_int_equal(count(t, STORE_PENDING), 1);
	advance(t, 4);
	answer_all(wait_req(t), "Accepted");
	settle_loop(t);
	assert_int_equal(count(t, STORE_FORWARDED), 2);
	assert_int_equal(count(t, STORE_PENDING), 0);
}

/* 400 for any batch that holds the poison key. */
static void
test_forwarder_400_bisects_to_the_poison_record(void **state)
{
	struct ctx *t = *state;
	struct dead_row d;
	struct fake_req *r;
	unsigned requests = 0;
	const char *poison;

	put_records(t, 0, 10);
	poison = t->keys[6];
	start(t);
	while (count(t, STORE_FORWARDED) + count(t, STORE_DEAD) < 10) {
		bool bad = false;

		r = wait_req(t);
		requests++;
		assert_true(requests < 40);
		for (size_t i = 0; i < r->n_keys; i++)
			bad |= streq(r->keys[i], poison);
		if (bad)
			answer(r, 400,
			       "{\"error\":{\"code\":\"BadRequest\",\"message\":\"event 6 is "
			       "malformed\"}}",
			       NULL);
		else
			answer_all(r, "Accepted");
		settle_loop(t);
	}
	assert_int_equal(count(t, STORE_FORWARDED), 9);
	dead_rows(t, &d);
	assert_int_equal(d.n, 1);
	assert_string_equal(d.key, poison);
	assert_string_equal(d.code, "BadRequest");
	assert_string_equal(d.message, "event 6 is malformed");
	/* log2(10) rounds of splits, not one request per record */
	assert_true(requests <= 2 * 4 + 1);
}

static void
test_forwarder_413_halves_without_json_body(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r;
	unsigned requests = 0;

	put_records(t, 0, 8);
	start(t);
	while (count(t, STORE_FORWARDED) < 8) {
		r = wait_req(t);
		assert_true(++requests < 20);
		if (r->n_keys > 2)
			answer(r, 413, "<html><body>413 Request Entity Too Large</body></html>",
			       NULL);
		else
			answer_all(r, "Accepted");
		settle_loop(t);
	}
	assert_int_equal(count(t, STORE_DEAD), 0);
	assert_int_equal(requests, 1 + 2 + 4);
	assert_int_equal(metric(t, METRICS_FORWARD_BATCHES_TOTAL, "too-large"), 3);
}

static void
test_forwarder_401_refreshes_once_then_backs_off(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r, *r2;
	struct forwarder_status st;

	put_records(t, 0, 2);
	start(t);
	r = wait_req(t);
	answer(r, 401, "{\"error\":{\"code\":\"ExpiredAuthenticationToken\",\"message\":\"x\"}}",
	       NULL);
	settle_loop(t);
	assert_int_equal(t->token_refused, 1);
	r2 = wait_req(t); /* sent again at once, with a new request id */
	assert_string_equal(r2->correlation, r->correlation);
	assert_string_not_equal(r2->request_id, r->request_id);
	answer(r2, 403, "{\"error\":{\"code\":\"Forbidden\",\"message\":\"x\"}}", NULL);
	settle_loop(t);
	assert_int_equal(t->token_refused, 1);
	assert_null(pending(t));
	assert_int_equal(count(t, STORE_PENDING), 2);
	forwarder_get_status(t->f, &st);
	assert_true(st.auth_failing);
	assert_true(st.failing);
	advance(t, 2);
	r = wait_req(t);
	assert_string_equal(r->correlation, r2->correlation);
	answer_all(r, "Accepted");
	settle_loop(t);
	forwarder_get_status(t->f, &st);
	assert_false(st.auth_failing);
	assert_false(st.failing);
	assert_int_equal(count(t, STORE_FORWARDED), 2);
}

static void
test_forwarder_409_forwards(void **state)
{
	struct ctx *t = *state;

	put_records(t, 0, 4);
	start(t);
	answer(wait_req(t), 409, "{\"error\":{\"code\":\"Conflict\",\"message\":\"dup\"}}", NULL);
	settle_loop(t);
	assert_int_equal(count(t, STORE_FORWARDED), 4);
	assert_int_equal(metric(t, METRICS_RECORDS_FORWARDED_TOTAL, "Conflict"), 4);
}

/* Time-outs, resets, 5xx and unparsable answers: the whole batch again, same ids. */
static void
test_forwarder_transient_keeps_batch_and_event_ids(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r;
	char correlation[64];

	put_records(t, 0, 3);
	start(t);
	r = wait_req(t);
	snprintf(correlation, sizeof(correlation), "%s", r->correlation);
	answer_error(r, -ECONNRESET);
	settle_loop(t);
	advance(t, 2);
	r = wait_req(t);
	assert_string_equal(r->correlation, correlation);
	assert_int_equal(r->n_keys, 3);
	answer(r, 500, "{}", NULL);
	settle_loop(t);
	advance(t, 3);
	r = wait_req(t);
	answer(r, 200, "{\"count\":3,\"result\":[", NULL); /* cut short */
	settle_loop(t);
	advance(t, 5);
	r = wait_req(t);
	answer_error(r, -ETIMEDOUT);
	settle_loop(t);
	advance(t, 9);
	r = wait_req(t);
	assert_string_equal(r->correlation, correlation);
	for (size_t i = 0; i < 3; i++)
		assert_string_equal(r->keys[i], t->keys[i]);
	answer_all(r, "Accepted");
	settle_loop(t);
	assert_int_equal(count(t, STORE_FORWARDED), 3);
	assert_int_equal(metric(t, METRICS_FORWARD_RETRIES_TOTAL, NULL), 4);
}

/* A 429 with Retry-After holds every batch until it has passed. */
static void
test_forwarder_retry_after_throttles_endpoint(void **state)
{
	struct ctx *t = *state;
	struct forwarder_status st;
	struct fake_req *r;

	t->options.settings.batch_size = 1;
	t->options.settings.max_inflight = 2;
	put_records(t, 0, 3);
	start(t);
	r = wait_req(t);
	settle_loop(t);
	assert_int_equal(t->n, 2); /* two at once */
	answer(r, 429, "{\"error\":{\"code\":\"TooManyRequests\",\"message\":\"slow\"}}", "6");
	settle_loop(t);
	forwarder_get_status(t->f, &st);
	assert_int_equal(st.throttled_until, (uint64_t)(fake_now + 6) * USEC_PER_SEC);
	/* the slot is free and a record is due, but nothing goes out during the throttle */
	assert_int_equal(t->n, 2);
	advance(t, 5);
	assert_int_equal(t->n, 2);
	answer_all(&t->reqs[1], "Accepted");
	settle_loop(t);
	assert_int_equal(t->n, 2);
	advance(t, 1);
	r = wait_req(t);
	answer_all(r, "Accepted");
	settle_loop(t);
	while ((r = pending(t))) {
		answer_all(r, "Accepted");
		settle_loop(t);
	}
	assert_int_equal(count(t, STORE_FORWARDED), 3);
}

/*
 * The journal: a failure is one line when it starts (the first throttle and "Commerce fails"),
 * not one per retry, and one when it ends; a dead-lettered batch carries its MESSAGE_ID with the
 * batch, the first record's key, subscription and reported hour, and the count.
 */
static void
test_forwarder_logs_changes_once_with_fields(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r;
	char want[160];

	t->options.settings.batch_size = 1;
	put_records(t, 0, 1);
	start(t);
	for (int i = 0; i < 3; i++) {
		r = wait_req(t);
		answer(r, 429, "{\"error\":{\"code\":\"TooManyRequests\",\"message\":\"x\"}}", "1");
		settle_loop(t);
		while (!pending(t))
			advance(t, 1);
	}
	assert_int_equal(log_count(t, "Commerce throttles"), 1);
	assert_int_equal(log_count(t, "Commerce fails"), 1);
	assert_int_equal(log_count(t, "http_status=429"), 1);
	assert_int_equal(log_count(t, "throttle (Retry-After) has passed"), 0);

	r = wait_req(t);
	{
		_cleanup_free_ char *body = result_body(r, "Expired", NULL, NULL);

		answer(r, 200, body, NULL);
	}
	settle_loop(t);
	assert_int_equal(count(t, STORE_DEAD), 1);
	assert_int_equal(log_count(t, "Commerce answers again"), 1);
	assert_int_equal(log_count(t, "message_id=" LOG_MESSAGE_ID_BATCH_DEAD), 1);
	snprintf(want, sizeof(want), "batch_id=%s", r->correlation);
	assert_int_equal(log_count(t, want), 2); /* "Commerce fails" named it too */
	snprintf(want, sizeof(want), "record_key=%s", t->keys[0]);
	assert_int_equal(log_count(t, want), 1);
	assert_int_equal(log_count(t, "records=1"), 1);
	assert_int_equal(log_count(t, "subscription=" SUB), 1);
	assert_int_equal(log_count(t, "reported_hour=2026-11-01T10:00:00Z"), 1);
}

/* The delay doubles from retry_initial and stops at retry_max; the jitter is the seam's draw. */
static void
test_forwarder_backoff_bounds(void **state)
{
	struct ctx *t = *state;
	const uint64_t cap[] = {1, 2, 4, 8, 8, 8}; /* seconds */
	int64_t due;

	t->options.random = &top_random;
	put_records(t, 0, 1);
	start(t);
	for (size_t i = 0; i < ARRAY_SIZE(cap); i++) {
		uint64_t delay = UINT64_MAX % (cap[i] * USEC_PER_SEC + 1);

		answer(wait_req(t), 503, "{}", NULL);
		settle_loop(t);
		assert_int_equal(store_next_due(t->store, &due), 0);
		assert_int_equal(due,
		                 fake_now + (int64_t)((delay + USEC_PER_SEC - 1) / USEC_PER_SEC));
		assert_true(due <= fake_now + (int64_t)cap[i]);
		/* not a moment sooner */
		if (due > fake_now + 1) {
			advance(t, due - fake_now - 1);
			assert_null(pending(t));
		}
		advance(t, due - fake_now);
	}
	answer_all(wait_req(t), "Accepted");
	settle_loop(t);
	assert_int_equal(count(t, STORE_FORWARDED), 1);
}

/* Whether a request carries key. */
static bool
req_has_key(const struct fake_req *r, const char *key)
{
	for (size_t i = 0; i < r->n_keys; i++)
		if (streq(r->keys[i], key))
			return true;
	return false;
}

/* Unanswered requests. */
static size_t
n_pending(struct ctx *t)
{
	size_t n = 0;

	for (size_t i = 0; i < t->n; i++)
		n += !t->reqs[i].answered && !t->reqs[i].cancelled;
	return n;
}

/*
 * A Commerce that refuses connections: the batches out when it starts failing come back, then
 * no fresh record is claimed, one batch at a time is sent again (one that failed, under its batch
 * id) after its backoff, and the journal says it once. The first success sends max_inflight
 * batches at once again, and the records all end forwarded.
 */
static void
test_forwarder_failing_probes_one_batch_claims_nothing(void **state)
{
	struct ctx *t = *state;
	struct forwarder_status st;
	struct fake_req *r;
	char failed[4][64];
	size_t n_failed = 0;
	uint64_t fresh;

	t->options.settings.batch_size = 2;
	t->options.settings.max_inflight = 4;
	put_records(t, 0, 40);
	start(t);
	wait_req(t);
	settle_loop(t);
	assert_int_equal(t->n, 4);
	/* the first failure: the three others out already fail too, and nothing new goes out */
	for (size_t i = 0; i < 4; i++) {
		snprintf(failed[n_failed++], sizeof(failed[0]), "%s", t->reqs[i].correlation);
		answer_error(&t->reqs[i], -ECONNREFUSED);
		settle_loop(t);
		assert_int_equal(t->n, 4);
	}
	forwarder_get_status(t->f, &st);
	assert_true(st.failing);
	assert_int_equal(st.inflight, 0);
	fresh = count(t, STORE_PENDING);
	assert_int_equal(fresh, 40);

	/* probes: one at a time, each a batch that failed, never a fresh one */
	for (int probe = 0; probe < 12; probe++) {
		bool known = false;

		while (!pending(t))
			advance(t, 1);
		r = pending(t);
		settle_loop(t);
		assert_int_equal(n_pending(t), 1);
		forwarder_get_status(t->f, &st);
		assert_int_equal(st.inflight, 1);
		for (size_t k = 0; k < n_failed; k++)
			known |= streq(r->correlation, failed[k]);
		assert_true(known);
		assert_int_equal(r->n_keys, 2);
		/* the 32 records no batch took are still untouched: claimed by nobody */
		for (size_t k = 8; k < 40; k++)
			assert_false(req_has_key(r, t->keys[k]));
		assert_int_equal(count(t, STORE_INFLIGHT), 2);
		if (probe % 3 == 2)
			answer(r, 503, "{}", NULL);
		else
			answer_error(r, -ECONNREFUSED);
		settle_loop(t);
		assert_int_equal(n_pending(t), 0);
	}
	assert_int_equal(t->n, 4 + 12);
	assert_int_equal(count(t, STORE_PENDING), 40);
	/* one line when it started, one the first time it was a 503 (not per retry or per turn) */
	assert_int_equal(log_count(t, "Commerce fails"), 2);
	assert_true(metric(t, METRICS_FORWARD_RETRIES_TOTAL, NULL) == 16);

	/* the first success: max_inflight batches at once again */
	while (!pending(t))
		advance(t, 1);
	answer_all(pending(t), "Accepted");
	settle_loop(t);
	forwarder_get_status(t->f, &st);
	assert_false(st.failing);
	assert_int_equal(n_pending(t), 4);
	assert_int_equal(st.inflight, 4);
	assert_int_equal(log_count(t, "Commerce answers again"), 1);
	while (count(t, STORE_FORWARDED) < 40) {
		r = pending(t);
		if (!r) {
			advance(t, 1);
			continue;
		}
		answer_all(r, "Accepted");
		settle_loop(t);
	}
	assert_int_equal(count(t, STORE_PENDING), 0);
	assert_int_equal(log_count(t, "Commerce fails"), 2);
}

/* A batch answered record by record, even with per-event rejections, is not a failing Commerce:
 * the other slots keep claiming. */
static void
test_forwarder_rejections_do_not_stop_claiming(void **state)
{
	struct ctx *t = *state;
	struct forwarder_status st;
	struct fake_req *r;

	t->options.settings.batch_size = 2;
	t->options.settings.max_inflight = 2;
	put_records(t, 0, 8);
	start(t);
	wait_req(t);
	settle_loop(t);
	assert_int_equal(n_pending(t), 2);
	r = pending(t);
	{
		_cleanup_free_ char *body = result_body(r, "Expired", NULL, NULL);

		answer(r, 200, body, NULL);
	}
	settle_loop(t);
	answer(pending(t), 400, "{\"error\":{\"code\":\"BadRequest\",\"message\":\"no\"}}", NULL);
	settle_loop(t);
	forwarder_get_status(t->f, &st);
	assert_false(st.failing);
	assert_int_equal(n_pending(t), 2);
	assert_int_equal(log_count(t, "Commerce fails"), 0);
}

static void
test_forwarder_holds_while_registration_stale(void **state)
{
	struct ctx *t = *state;
	struct forwarder_status st;

	t->stale = true;
	put_records(t, 0, 2);
	start(t);
	settle_loop(t);
	forwarder_nudge(t->f);
	settle_loop(t);
	assert_int_equal(t->n, 0);
	forwarder_get_status(t->f, &st);
	assert_true(st.holding);
	t->stale = false;
	answer_all(wait_req(t), "Accepted"); /* resumes by itself at the next poll */
	settle_loop(t);
	forwarder_get_status(t->f, &st);
	assert_false(st.holding);
	assert_int_equal(count(t, STORE_FORWARDED), 2);
}

static void
on_drained(void *userdata, unsigned left)
{
	struct ctx *t = userdata;

	t->drained++;
	t->drained_left = left;
}

static void
test_forwarder_drain_waits_for_inflight(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r;

	t->options.settings.batch_size = 2;
	put_records(t, 0, 4);
	start(t);
	r = wait_req(t);
	forwarder_drain(t->f, 30 * USEC_PER_SEC, on_drained, t);
	settle_loop(t);
	assert_int_equal(t->drained, 0);
	assert_int_equal(count(t, STORE_INFLIGHT), 2);
	answer_all(r, "Accepted");
	settle_loop(t);
	assert_int_equal(t->drained, 1);
	assert_int_equal(t->drained_left, 0);
	assert_int_equal(count(t, STORE_FORWARDED), 2);
	/* nothing more is claimed */
	forwarder_nudge(t->f);
	settle_loop(t);
	assert_int_equal(t->n, 1);
	assert_int_equal(count(t, STORE_PENDING), 2);
}

static void
test_forwarder_stop_leaves_inflight_for_restart(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r;

	put_records(t, 0, 2);
	start(t);
	r = wait_req(t);
	forwarder_stop(t->f);
	assert_true(r->cancelled);
	assert_int_equal(count(t, STORE_INFLIGHT), 2);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_forwarder_accepted_and_duplicate_forwarded,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_per_event_dead_and_retry, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_400_bisects_to_the_poison_record,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_413_halves_without_json_body, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_401_refreshes_once_then_backs_off,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_409_forwards, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_transient_keeps_batch_and_event_ids,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_logs_changes_once_with_fields, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_retry_after_throttles_endpoint,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_backoff_bounds, setup, teardown),
	        cmocka_unit_test_setup_teardown(
	                test_forwarder_failing_probes_one_batch_claims_nothing, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_rejections_do_not_stop_claiming,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_holds_while_registration_stale,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_drain_waits_for_inflight, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_forwarder_stop_leaves_inflight_for_restart,
	                                        setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
