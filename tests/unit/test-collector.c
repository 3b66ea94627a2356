/*
 * Unit tests for lib/collector.c: the scheduling decisions, against a store on a temporary file
 * and a fake transport (the collector's seam) that records every GET and lets the test answer
 * it. The realtime clock (which decides when a reported hour is collectable and when its
 * look-back is due) is the timeutil seam, moved by the tests; waits (poll interval, backoff,
 * Retry-After) are real loop timers, kept short. Assertions on time are lower bounds only (a
 * request came no sooner than it may), never upper ones.
 *
 * Covered: settle, pages through nextLink with the cursor, the look-back pass (duplicates and a
 * conflict), the exact quantity text, catch-up, Retry-After and backoff, not ready (202 and 2xx
 * without value), RequestEndTimeIsInFuture, a refused nextLink (restart once per pass), resuming
 * from the saved nextLink after a restart, nextLink loops, the nextLink authority, 401, the
 * per-subscriber split and SubscriberIdIsNotDirectTenant, the max_pending pause, the store-full
 * pause, quarantined records and the refresh for an unknown subscription; and the pages parsed on
 * the worker thread with their nextLink asked early (plain text only), stop while in flight.
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
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "collector.h"
#include "collector-private.h" /* the early requests of the job, for one test */
#include "http.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define ARM      "https://adminmanagement.local.azurestack.external"
#define PROVIDER "8158498d-27b1-4ccf-9aa1-de0f925731e6"
#define SUB_A    "0fd2e8a6-9a5c-4f5e-8f2c-3d1f2b7c9e10"
#define SUB_B    "c79389af-4480-48cc-8fa2-ee8ced8e843d"
#define SUB_X    "5e3b1c44-7f0e-4d8a-b1a9-2c6f0d4e8a21" /* not in the list */
#define TENANT   "104edf09-7fc1-459f-8c4e-b062db480b90"
#define METER    "FAB6EB84-500B-4A09-A8CA-7358F8BBAEA5"
#define H0       INT64_C(1793527200) /* 2026-11-01T10:00:00Z */
#define HOUR     INT64_C(3600)
#define POLL     (50 * USEC_PER_MSEC)
#define MAX_REQS 512
#define GUARD    (60 * USEC_PER_SEC) /* a hang becomes a failure, never a wait for time */

/* One GET the collector made. */
struct fake_req {
	char *url;
	collector_reply_fn done;
	void *userdata;
	bool answered;
	bool cancelled;
	uint64_t at; /* monotonic, when it was made */
};

struct fake {
	struct fake_req reqs[MAX_REQS];
	size_t n;
	unsigned token_refused;
	char *refused_token;
};

/* Everything a test works with. */
struct ctx {
	char dir[64];
	char path[96];
	struct store *store;
	struct metrics *metrics;
	struct event_base *base;
	struct fake fake;
	struct collector_transport tp;
	struct collector_options options;
	struct collector *c;
	char *log_text;
	size_t log_size;
	FILE *log;
};

static int64_t fake_now = H0 + 2 * HOUR; /* realtime seconds */

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

/* ---- the fake transport ------------------------------------------------------------------- */

static int
fake_get(void *userdata, const char *url, _unused_ uint64_t timeout_usec, collector_reply_fn done,
         void *done_userdata, void **ret_handle)
{
	struct fake *f = userdata;
	struct fake_req *r;

	assert_true(f->n < MAX_REQS);
	r = &f->reqs[f->n++];
	*r = (struct fake_req){.url = xstrdup(url),
	                       .done = done,
	                       .userdata = done_userdata,
	                       .at = now_monotonic_usec()};
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
fake_token_refused(void *userdata, const char *token)
{
	struct fake *f = userdata;

	f->token_refused++;
	free(f->refused_token);
	f->refused_token = token ? xstrdup(token) : NULL;
}

/* Answer request r with status and body (and a Retry-After when not NULL). */
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
	struct collector_reply reply = {.http = &http, .token = "token-1"};

	assert_false(r->answered);
	assert_false(r->cancelled);
	r->answered = true;
	r->done(&reply, r->userdata);
}

/* Answer r with a transport error. */
static void
answer_error(struct fake_req *r, int error)
{
	struct http_result http = {.error = error, .error_message = "reset", .body = ""};
	struct collector_reply reply = {.http = &http};

	r->answered = true;
	r->done(&reply, r->userdata);
}

static bool
is_usage(const struct fake_req *r)
{
	return strstr(r->url, "subscriberUsageAggregates") != NULL;
}

/* The oldest request not answered yet of the kind asked for, or NULL. */
static struct fake_req *
pending(struct ctx *t, bool usage)
{
	for (size_t i = 0; i < t->fake.n; i++) {
		struct fake_req *r = &t->fake.reqs[i];

		if (!r->answered && !r->cancelled && is_usage(r) == usage)
			return r;
	}
	return NULL;
}

/* Run the loop until nothing is left to do at once. */
static void
settle_loop(struct ctx *t)
{
	for (int i = 0; i < 20; i++)
		event_base_loop(t->base, EVLOOP_NONBLOCK);
}

/* Run the loop until a request of the kind arrives; fails after the guard. */
static struct fake_req *
wait_req(struct ctx *t, bool usage)
{
	uint64_t end = now_monotonic_usec() + GUARD;
	struct fake_req *r;

	while (!(r = pending(t, usage))) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	return r;
}

/* Run the loop until a request for url, not answered yet, arrives; fails after the guard. */
static struct fake_req *
wait_url(struct ctx *t, const char *url)
{
	uint64_t end = now_monotonic_usec() + GUARD;

	for (;;) {
		for (size_t i = 0; i < t->fake.n; i++) {
			struct fake_req *r = &t->fake.reqs[i];

			if (!r->answered && !r->cancelled && streq(r->url, url))
				return r;
		}
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
}

/* ---- pages -------------------------------------------------------------------------------- */

/* An RFC 3339 time as the usage API writes it. */
static void
api_time(int64_t t, char out[32])
{
	char z[TIME_RFC3339_LEN + 1];

	time_format_rfc3339(t, z);
	snprintf(out, 32, "%.19s+00:00", z);
}

/*
 * A usage page of reported hour: n records (resource first .. first + n - 1, subscription sub,
 * quantities q, "1.5" when q is NULL) and a nextLink when next is not NULL. A quantity "bad"
 * makes the first record invalid (a negative quantity), the others 1.5.
 */
static char *
page(int64_t hour, const char *sub, int first, int n, const char *q, const char *next)
{
	char start[32], end[32];
	char *body = xstrdup("{\"value\":[");

	api_time(hour, start);
	api_time(hour + HOUR, end);
	for (int i = first; i < first + n; i++) {
		char *rec = xasprintf(
		        "%s{\"id\":\"/subscriptions/%s/providers/Microsoft.Commerce.Admin/"
		        "UsageAggregate/r%d\",\"name\":\"r%d\",\"type\":\"Microsoft.Commerce.Admin/"
		        "UsageAggregate\",\"properties\":{\"subscriptionId\":\"%s\",\"usageStartTime\":"
		        "\"%s\",\"usageEndTime\":\"%s\",\"instanceData\":\"{\\\"Microsoft.Resources\\\":"
		        "{\\\"resourceUri\\\":\\\"/subscriptions/%s/rg/vm%d\\\",\\\"location\\\":"
		        "\\\"local\\\",\\\"tags\\\":null,\\\"additionalInfo\\\":null}}\",\"quantity\":%s,"
		        "\"meterId\":\"" METER "\"}}",
		        i > first ? "," : "", sub, i, i, sub, start, end, sub, i,
		        q && streq(q, "bad") ? (i == first ? "-1" : "1.5")
		        : q                  ? q
		                             : "1.5");
		char *b = xasprintf("%s%s", body, rec);

		free(rec);
		free(body);
		body = b;
	}
	{
		char *b = next ? xasprintf("%s],\"nextLink\":\"%s\"}", body, next)
		               : xasprintf("%s]}", body);

		free(body);
		body = b;
	}
	return body;
}

/* The user-subscription list: A and B of one tenant. */
static const char *subs_body =
        "{\"value\":[{\"subscriptionId\":\"" SUB_A "\",\"tenantId\":\"" TENANT
        "\",\"displayName\":\"a\",\"state\":\"Enabled\"},{\"subscriptionId\":\"" SUB_B
        "\",\"tenantId\":\"" TENANT "\",\"displayName\":\"b\",\"state\":\"Enabled\"}]}";

/* Answer the refresh at start. */
static void
answer_subscriptions(struct ctx *t)
{
	answer(wait_req(t, false), 200, subs_body, NULL);
}

/* The reportedStartTime of a usage URL, as seconds. */
static int64_t
url_hour(const char *url)
{
	const char *p = strstr(url, "reportedStartTime=");
	char text[TIME_RFC3339_LEN + 1];
	int64_t t;

	assert_non_null(p);
	p += strlen("reportedStartTime=");
	/* YYYY-MM-DDTHH%3A00%3A00Z */
	snprintf(text, sizeof(text), "%.13s:00:00Z", p);
	assert_int_equal(time_parse_rfc3339(text, &t), 0);
	return t;
}

static bool
url_is_first_page(const char *url)
{
	return !strstr(url, "continuationToken");
}

/* ---- the store ---------------------------------------------------------------------------- */

struct counted {
	size_t n;
	char quantities[16][48];
};

static int
count_record(void *userdata, const struct store_record *r)
{
	struct counted *c = userdata;

	if (c->n < 16)
		snprintf(c->quantities[c->n], sizeof(c->quantities[0]), "%s", r->quantity);
	c->n++;
	return 0;
}

static size_t
count_state(struct ctx *t, int state)
{
	struct store_counts counts;

	assert_int_equal(store_counts(t->store, &counts), 0);
	return (size_t)counts.by_state[state];
}

/* The schedule row of hour and scope: its pass, or -1 when it is not in the schedule. */
static int
schedule_pass(struct ctx *t, int64_t hour, const char *scope, char **ret_link)
{
	struct store_hour *rows = NULL;
	size_t n = 0;
	int pass = -1;

	assert_int_equal(store_hours_due(t->store, INT64_MAX, 0, &rows, &n), 0);
	for (size_t i = 0; i < n; i++) {
		if (rows[i].hour == hour && streq(rows[i].scope, scope)) {
			pass = (int)rows[i].pass;
			if (ret_link)
				*ret_link = rows[i].next_link ? xstrdup(rows[i].next_link) : NULL;
		}
		store_hour_done(&rows[i]);
	}
	free(rows);
	return pass;
}

static double
metric(struct ctx *t, enum metrics_id id, const char *label)
{
	return metrics_series_value(metrics_get_series(metrics_get_family(t->metrics, id), label));
}

/* ---- set-up ------------------------------------------------------------------------------- */

static int
setup(void **state)
{
	struct ctx *t = xcalloc(1, sizeof(*t));
	struct store_options so = {0};

	snprintf(t->dir, sizeof(t->dir), "/tmp/test-collector-XXXXXX");
	assert_non_null(mkdtemp(t->dir));
	snprintf(t->path, sizeof(t->path), "%s/usage.db", t->dir);
	so.path = t->path;
	assert_int_equal(store_open(&so, &t->store, NULL), 0);
	t->metrics = metrics_new_daemon("test");
	t->base = event_base_new();
	assert_non_null(t->base);
	fake_now = H0 + 2 * HOUR;
	timeutil_set_clock(&test_clock);
	t->log = open_memstream(&t->log_text, &t->log_size);
	log_open(LOG_TARGET_STDERR);
	log_set_stream(t->log);
	log_set_max_level(LOG_DEBUG);
	t->tp = (struct collector_transport){
	        .get = fake_get,
	        .cancel = fake_cancel,
	        .token_refused = fake_token_refused,
	        .userdata = &t->fake,
	};
	t->options = (struct collector_options){
	        .store = t->store,
	        .metrics = t->metrics,
	        .transport = &t->tp,
	        .arm_endpoint = ARM,
	        .provider_subscription = PROVIDER,
	        .collect_from = H0,
	        .settings =
	                {
	                        .poll_interval_usec = POLL,
	                        .settle_usec = 0,
	                        .lookback_usec = 6 * HOUR * USEC_PER_SEC,
	                        .refresh_interval_usec = 3600 * USEC_PER_SEC,
	                },
	        .retry_initial_usec = USEC_PER_MSEC,
	        .retry_max_usec = 20 * USEC_PER_MSEC,
	        .unknown_refresh_usec = 100 * USEC_PER_MSEC,
	        .parse_on_loop = true, /* settle_loop() then sees every page stored */
	};
	*state = t;
	return 0;
}

/* Make and start the collector with t->options. */
static void
start(struct ctx *t)
{
	assert_int_equal(collector_new(t->base, &t->options, &t->c), 0);
	assert_int_equal(collector_start(t->c), 0);
}

static int
teardown(void **state)
{
	struct ctx *t = *state;
	char cmd[128];

	t->c = collector_free(t->c);
	for (size_t i = 0; i < t->fake.n; i++)
		free(t->fake.reqs[i].url);
	free(t->fake.refused_token);
	event_base_free(t->base);
	metrics_free(t->metrics);
	store_free(t->store);
	log_set_stream(NULL);
	fclose(t->log);
	free(t->log_text);
	timeutil_set_clock(NULL);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", t->dir);
	assert_int_equal(system(cmd), 0);
	free(t);
	return 0;
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

/* Run the loop for usec of real time (to show that nothing happens in it). */
static void
run_for(struct ctx *t, uint64_t usec)
{
	struct timeval tv = {.tv_sec = (time_t)(usec / USEC_PER_SEC),
	                     .tv_usec = (suseconds_t)(usec % USEC_PER_SEC)};

	event_base_loopexit(t->base, &tv);
	event_base_dispatch(t->base);
}

/* A nextLink of hour H0 with continuation token tok, on the stamp's authority as written. */
static char *
next_link(const char *authority, const char *tok)
{
	return xasprintf(
	        "https://%s/subscriptions/" PROVIDER
	        "/providers/Microsoft.Commerce.Admin/subscriberUsageAggregates?"
	        "reportedStartTime=2026-11-01T10%%3a00%%3a00Z&reportedEndTime=2026-11-01T11"
	        "%%3a00%%3a00Z&aggregationGranularity=Hourly&api-version=2015-06-01-preview"
	        "&continuationToken=%s%%3d%%3d",
	        authority, tok);
}

#define STAMP        "adminmanagement.local.azurestack.external"
#define EMPTY_PAGE   "{\"value\":[]}"
#define ARM_ERROR(c) "{\"error\":{\"code\":\"" c "\",\"message\":\"the stamp says " c "\"}}"
/*
 * r was asked for at least usec after t0. t0 is read before the answer that starts the wait, never
 * after it: on a slow machine the collector arms its timer well before the test could read the
 * clock. The 5 ms cover libevent's coarse monotonic clock (one tick is 4 ms here).
 */
#define AT_LEAST(r, t0, usec) assert_true((r)->at + 5 * USEC_PER_MSEC >= (t0) + (usec))

/* An hour is not asked for before H + 1h + settle, and at once after. */
static void
test_collector_settle(void **state)
{
	struct ctx *t = *state;
	struct fake_req *r;

	t->options.settings.settle_usec = 30 * 60 * USEC_PER_SEC;
	fake_now = H0 + HOUR + 30 * 60 - 1;
	start(t);
	answer_subscriptions(t);
	run_for(t, 3 * POLL);
	assert_null(pending(t, true));
	assert_int_equal(schedule_pass(t, H0, "", NULL), -1);

	fake_now++;
	r = wait_req(t, true);
	assert_int_equal(url_hour(r->url), H0);
	assert_true(url_is_first_page(r->url));
	answer(r, 200, EMPTY_PAGE, NULL);
	run_for(t, 3 * POLL);
	/* the next hour waits for its own settle; this one for its look-back */
	assert_null(pending(t, true));
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
	assert_int_equal(schedule_pass(t, H0 + HOUR, "", NULL), -1);
}

/*
 * Pages through nextLink, each stored with the cursor that follows it; the look-back pass an
 * hour later (by the clock) finds the same records (duplicates) and one changed quantity (a
 * conflict); the 17-significant-digit quantity is stored as written; then the hour is done.
 */
static void
test_collector_pages_and_lookback(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *n1 = next_link(STAMP, "page2"), *n2 = next_link(STAMP, "again2");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 2, NULL, n1);
	_cleanup_free_ char *p2 = page(H0, SUB_A, 2, 1, "123.45678901234567", NULL);
	_cleanup_free_ char *p1b = page(H0, SUB_A, 0, 2, NULL, n2);
	_cleanup_free_ char *p2b = page(H0, SUB_A, 2, 1, "123.45678901234568", NULL);
	_cleanup_free_ char *link = NULL;
	struct store_query q = {.state = -1};
	struct counted counted = {0};
	struct fake_req *r;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	assert_true(url_is_first_page(r->url));
	answer(r, 200, p1, NULL);
	assert_int_equal(schedule_pass(t, H0, "", &link), 0);
	assert_string_equal(link, n1); /* page and cursor in one transaction */
	assert_int_equal(count_state(t, STORE_PENDING), 2);

	r = wait_req(t, true);
	assert_string_equal(r->url, n1); /* followed verbatim */
	answer(r, 200, p2, NULL);
	assert_int_equal(count_state(t, STORE_PENDING), 3);
	assert_int_equal(store_records_query(t->store, &q, count_record, &counted), 0);
	assert_int_equal(counted.n, 3);
	assert_string_equal(counted.quantities[0], "123.45678901234567"); /* newest first */
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
	assert_int_equal(metric(t, METRICS_RECORDS_COLLECTED_TOTAL, NULL), 3);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "ok"), 2);
	assert_int_equal(metric(t, METRICS_COLLECT_CURSOR_TIMESTAMP_SECONDS, NULL), H0 + HOUR);
	run_for(t, 3 * POLL);
	assert_null(pending(t, true));

	/* six hours later: the look-back pass of H0 comes first (the oldest due) */
	fake_now += 6 * HOUR;
	r = wait_req(t, true);
	assert_int_equal(url_hour(r->url), H0);
	assert_true(url_is_first_page(r->url));
	answer(r, 200, p1b, NULL);
	r = wait_req(t, true);
	assert_string_equal(r->url, n2);
	answer(r, 200, p2b, NULL);
	assert_int_equal(count_state(t, STORE_PENDING), 3);
	assert_int_equal(count_state(t, STORE_CONFLICT), 1);
	assert_int_equal(metric(t, METRICS_CONFLICTS_TOTAL, NULL), 1);
	assert_int_equal(metric(t, METRICS_RECORDS_COLLECTED_TOTAL, NULL), 3);
	assert_int_equal(log_count(t, "message_id=4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c05"), 1);
	assert_int_equal(log_count(t, "(look-back pass)"), 1);
	assert_int_equal(schedule_pass(t, H0, "", NULL), -1); /* done with H0 */
}

/* Many hours behind: hour after hour as fast as the stamp answers, not one per poll. */
static void
test_collector_catch_up(void **state)
{
	struct ctx *t = *state;

	t->options.settings.poll_interval_usec = 3600 * USEC_PER_SEC; /* a poll never comes */
	fake_now = H0 + 10 * HOUR + 60;
	start(t);
	for (int i = 0; i < 10; i++) {
		struct fake_req *r = wait_req(t, true);

		assert_int_equal(url_hour(r->url), H0 + i * HOUR); /* oldest first */
		answer(r, 200, EMPTY_PAGE, NULL);
	}
	settle_loop(t);
	assert_null(pending(t, true));
	for (int i = 0; i < 10; i++)
		assert_int_equal(schedule_pass(t, H0 + i * HOUR, "", NULL), 1);
}

/*
 * 429 with Retry-After holds every request to the stamp (the subscription refresh too) until it
 * passes; 503s and resets are retried with backoff, logged once per kind, not per retry.
 */
static void
test_collector_throttle_and_backoff(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *url = NULL, *body = page(H0, SUB_A, 0, 1, NULL, NULL);
	struct fake_req *r, *subs;
	uint64_t t0;

	t->options.retry_max_usec = 5 * USEC_PER_SEC; /* also caps Retry-After */
	fake_now = H0 + HOUR + 60;
	start(t);
	r = wait_req(t, true);
	subs = wait_req(t, false);
	url = xstrdup(r->url);
	t0 = now_monotonic_usec();
	answer(r, 429, ARM_ERROR("TooManyRequests"), "1");
	answer(subs, 500, ARM_ERROR("InternalServerError"), NULL);

	r = wait_req(t, true);
	AT_LEAST(r, t0, USEC_PER_SEC);
	assert_string_equal(r->url, url);
	subs = wait_req(t, false);
	AT_LEAST(subs, t0, USEC_PER_SEC);
	answer(subs, 200, subs_body, NULL);

	assert_int_equal(log_count(t, "is failing"), 1);
	for (int i = 0; i < 3; i++) {
		answer(r, 503, ARM_ERROR("ServiceUnavailable"), NULL);
		r = wait_req(t, true);
		assert_string_equal(r->url, url);
	}
	assert_int_equal(log_count(t, "is failing"), 2); /* the change to 503, once */
	answer_error(r, -ECONNRESET);
	r = wait_req(t, true);
	assert_string_equal(r->url, url);
	assert_int_equal(log_count(t, "is failing"), 3);
	answer(r, 200, body, NULL);
	settle_loop(t);
	assert_int_equal(log_count(t, "answers again"), 1);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "retry"), 5);
	assert_int_equal(count_state(t, STORE_PENDING), 1);
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
}

/* 202 and a 2xx without value: not ready, asked again at the next poll, the cursor unmoved. */
static void
test_collector_not_ready(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *link = NULL, *body = page(H0, SUB_A, 0, 1, NULL, NULL);
	struct fake_req *r;
	uint64_t t0;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	t0 = now_monotonic_usec();
	answer(r, 202, ARM_ERROR("ProcessingNotComplete"), NULL);
	r = wait_req(t, true);
	AT_LEAST(r, t0, POLL);
	assert_true(url_is_first_page(r->url));
	assert_int_equal(schedule_pass(t, H0, "", &link), 0);
	assert_null(link);
	t0 = now_monotonic_usec();
	answer(r, 200, "{}", NULL);
	r = wait_req(t, true);
	AT_LEAST(r, t0, POLL);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "not_ready"), 2);
	assert_int_equal(log_count(t, "is not ready"), 1); /* once for the hour */
	answer(r, 200, body, NULL);
	assert_int_equal(count_state(t, STORE_PENDING), 1);
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
}

/* RequestEndTimeIsInFuture: asked again at each poll, not an error for readiness. */
static void
test_collector_future(void **state)
{
	struct ctx *t = *state;
	struct collector_status st;
	struct fake_req *r;
	uint64_t t0;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	for (int i = 0; i < 3; i++) {
		t0 = now_monotonic_usec();
		answer(r, 400, ARM_ERROR("RequestEndTimeIsInFuture"), NULL);
		r = wait_req(t, true);
		AT_LEAST(r, t0, POLL);
		assert_int_equal(url_hour(r->url), H0);
	}
	collector_get_status(t->c, &st);
	assert_int_equal(st.consecutive_failures, 0);
	assert_int_equal(log_count(t, "has not ended yet by the stamp's clock"), 1);
	answer(r, 200, EMPTY_PAGE, NULL);
}

/*
 * A refused nextLink restarts the hour from its first page at once, once per pass; refused
 * again, the hour waits for the next poll and resumes from its saved cursor.
 */
static void
test_collector_refused_next_link(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *n1 = next_link(STAMP, "one"), *n2 = next_link(STAMP, "two");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 2, NULL, n1),
	                    *p1b = page(H0, SUB_A, 0, 2, NULL, n2);
	_cleanup_free_ char *p2 = page(H0, SUB_A, 2, 1, NULL, NULL);
	struct collector_status st;
	struct fake_req *r;
	uint64_t t0;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	answer(wait_req(t, true), 200, p1, NULL);
	r = wait_req(t, true);
	assert_string_equal(r->url, n1);
	answer(r, 400, ARM_ERROR("ExpiredContinuationToken"), NULL);
	r = wait_req(t, true);
	assert_true(url_is_first_page(r->url));
	answer(r, 200, p1b, NULL);
	r = wait_req(t, true);
	assert_string_equal(r->url, n2);
	t0 = now_monotonic_usec();
	answer(r, 404, ARM_ERROR("ExpiredContinuationToken"), NULL);
	collector_get_status(t->c, &st);
	assert_int_equal(st.consecutive_failures, 1);
	r = wait_req(t, true);
	AT_LEAST(r, t0, POLL);
	assert_string_equal(r->url, n2);
	answer(r, 200, p2, NULL);
	collector_get_status(t->c, &st);
	assert_int_equal(st.consecutive_failures, 0);
	assert_int_equal(count_state(t, STORE_PENDING), 3); /* page 1 twice: deduplicated */
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
}

/* After a restart the hour resumes from the nextLink saved with its last stored page. */
static void
test_collector_resumes_from_saved_next_link(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *n1 = next_link(STAMP, "one");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 2, NULL, n1);
	struct fake_req *r;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	answer(wait_req(t, true), 200, p1, NULL);
	r = wait_req(t, true);
	assert_string_equal(r->url, n1);
	t->c = collector_free(t->c); /* the request in flight is cancelled */
	assert_true(r->cancelled);

	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	assert_string_equal(r->url, n1);
}

/* A nextLink seen before in the hour is an error, not a loop: the hour starts over later. */
static void
test_collector_next_link_loop(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *n1 = next_link(STAMP, "one");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 2, NULL, n1),
	                    *p2 = page(H0, SUB_A, 2, 2, NULL, n1);
	struct fake_req *r;
	uint64_t t0;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	answer(wait_req(t, true), 200, p1, NULL);
	r = wait_req(t, true);
	assert_string_equal(r->url, n1);
	t0 = now_monotonic_usec();
	answer(r, 200, p2, NULL);
	assert_int_equal(count_state(t, STORE_PENDING), 2); /* the looping page is not stored */
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "error"), 1);
	r = wait_req(t, true);
	AT_LEAST(r, t0, POLL);
	assert_true(url_is_first_page(r->url));
	assert_int_equal(log_count(t, "a loop"), 1);
}

/*
 * The token goes only to arm_endpoint's authority: a nextLink elsewhere is never requested (the
 * hour starts over at the next poll, the host logged); the same authority written otherwise
 * (upper case, an explicit :443) is followed.
 */
static void
test_collector_next_link_authority(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *evil = next_link("evil.example", "x"),
	                    *same = next_link("ADMINMANAGEMENT.local.azurestack.external:443", "y");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 2, NULL, evil),
	                    *p1b = page(H0, SUB_A, 0, 2, NULL, same);
	struct fake_req *r;
	uint64_t t0;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	t0 = now_monotonic_usec();
	answer(r, 200, p1, NULL);
	r = wait_req(t, true);
	AT_LEAST(r, t0, POLL);
	assert_true(url_is_first_page(r->url));
	for (size_t i = 0; i < t->fake.n; i++)
		assert_null(strstr(t->fake.reqs[i].url, "evil.example"));
	assert_int_equal(log_count(t, "another authority (evil.example)"), 1);
	answer(r, 200, p1b, NULL);
	r = wait_req(t, true);
	assert_string_equal(r->url, same);
}

/* A 401: the token is dropped and the request made again at once; twice, the hour waits. */
static void
test_collector_token_refused(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *url = NULL;
	struct fake_req *r;
	uint64_t t0;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	url = xstrdup(r->url);
	answer(r, 401, ARM_ERROR("ExpiredAuthenticationToken"), NULL);
	assert_int_equal(t->fake.token_refused, 1);
	assert_string_equal(t->fake.refused_token, "token-1");
	r = wait_req(t, true);
	assert_string_equal(r->url, url);
	t0 = now_monotonic_usec();
	answer(r, 401, ARM_ERROR("ExpiredAuthenticationToken"), NULL);
	assert_int_equal(t->fake.token_refused, 2);
	r = wait_req(t, true);
	AT_LEAST(r, t0, POLL);
	assert_int_equal(log_count(t, "answered 401"), 1);
}

/*
 * per_subscriber: an hour is split into one scope per user subscription once the cache has been
 * refreshed after the hour ended; SubscriberIdIsNotDirectTenant skips that subscription for the
 * hour (counted every time, logged once) and the hour completes without it.
 */
static void
test_collector_per_subscriber_skip(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *pb = page(H0, SUB_B, 0, 1, NULL, NULL);
	_cleanup_free_ char *pb1 = page(H0 + HOUR, SUB_B, 0, 1, NULL, NULL);
	struct fake_req *r;

	t->options.settings.per_subscriber = true;
	fake_now = H0 + HOUR + 60;
	start(t);
	run_for(t, 3 * POLL);
	assert_null(pending(t, true)); /* no split before the list is in */
	answer_subscriptions(t);

	r = wait_req(t, true);
	assert_non_null(strstr(r->url, "&subscriberId=" SUB_A));
	answer(r, 400, ARM_ERROR("SubscriberIdIsNotDirectTenant"), NULL);
	r = wait_req(t, true);
	assert_non_null(strstr(r->url, "&subscriberId=" SUB_B));
	answer(r, 200, pb, NULL);
	settle_loop(t);
	assert_int_equal(schedule_pass(t, H0, "", NULL), -1);
	assert_int_equal(schedule_pass(t, H0, SUB_A, NULL), -1); /* skipped for the hour */
	assert_int_equal(schedule_pass(t, H0, SUB_B, NULL), 1);
	assert_int_equal(metric(t, METRICS_COLLECT_SKIPPED_SUBSCRIPTIONS_TOTAL, NULL), 1);

	/* the next hour: the list is asked again (it must be newer than the hour's end) */
	fake_now += HOUR;
	answer_subscriptions(t);
	r = wait_req(t, true);
	assert_int_equal(url_hour(r->url), H0 + HOUR);
	assert_non_null(strstr(r->url, "&subscriberId=" SUB_A));
	answer(r, 400, ARM_ERROR("SubscriberIdIsNotDirectTenant"), NULL);
	r = wait_req(t, true);
	answer(r, 200, pb1, NULL);
	settle_loop(t);
	assert_int_equal(metric(t, METRICS_COLLECT_SKIPPED_SUBSCRIPTIONS_TOTAL, NULL), 2);
	assert_int_equal(log_count(t, "is not a direct tenant"), 1);
	assert_int_equal(count_state(t, STORE_PENDING), 2);
}

/*
 * per_subscriber after a restart: a subscription that has left the list since is still asked
 * for, because the store's cache keeps it (marked gone once the list leaves it out).
 */
static void
test_collector_per_subscriber_remembers_scopes(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *pa = page(H0, SUB_A, 0, 1, NULL, NULL);
	_cleanup_free_ char *pb = page(H0, SUB_B, 0, 1, NULL, NULL);
	static const char *only_a =
	        "{\"value\":[{\"subscriptionId\":\"" SUB_A "\",\"tenantId\":\"" TENANT "\"}]}";
	bool asked_b = false;
	struct fake_req *r;

	t->options.settings.per_subscriber = true;
	t->options.settings.lookback_usec = USEC_PER_SEC;
	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	answer(wait_req(t, true), 200, pa, NULL);
	answer(wait_req(t, true), 200, pb, NULL);
	settle_loop(t);
	assert_int_equal(schedule_pass(t, H0, SUB_B, NULL), 1);
	/* the look-back passes too: no scope of the schedule names B any more */
	fake_now += 1;
	answer(wait_req(t, true), 200, pa, NULL);
	answer(wait_req(t, true), 200, pb, NULL);
	settle_loop(t);
	assert_int_equal(schedule_pass(t, H0, SUB_B, NULL), -1);
	t->c = collector_free(t->c);

	fake_now += HOUR;
	start(t);
	answer(wait_req(t, false), 200, only_a, NULL); /* B has left the list */
	for (int i = 0; i < 2; i++) {
		r = wait_req(t, true);
		assert_int_equal(url_hour(r->url), H0 + HOUR);
		asked_b |= strstr(r->url, "&subscriberId=" SUB_B) != NULL;
		answer(r, 200, EMPTY_PAGE, NULL);
	}
	assert_true(asked_b);
}

/* max_pending records waiting: no further page until fewer wait (or the limit is raised). */
static void
test_collector_backlog_pause(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *n1 = next_link(STAMP, "one");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 3, NULL, n1);
	struct collector_settings set;
	struct collector_status st;
	struct fake_req *r;

	t->options.settings.max_pending = 2;
	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	answer(wait_req(t, true), 200, p1, NULL);
	run_for(t, 3 * POLL);
	assert_null(pending(t, true));
	collector_get_status(t->c, &st);
	assert_true(st.paused_backlog);
	assert_int_equal(log_count(t, "collection pauses"), 1);

	set = t->options.settings;
	set.max_pending = 10;
	collector_apply(t->c, &set);
	r = wait_req(t, true);
	assert_string_equal(r->url, n1);
	assert_int_equal(log_count(t, "collection goes on"), 1);
}

/* -ENOSPC from the store: the page is not stored, collection pauses and resumes later. */
static void
test_collector_store_full(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *url = NULL, *big = page(H0, SUB_A, 0, 200, NULL, NULL);
	struct collector_status st;
	struct fake_req *r;
	uint64_t t0;

	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	url = xstrdup(r->url);
	assert_int_equal(store_set_size_limit(t->store, 1), 0); /* no room to grow */
	t0 = now_monotonic_usec();
	answer(r, 200, big, NULL);
	assert_int_equal(metric(t, METRICS_STORE_FULL_TOTAL, NULL), 1);
	assert_int_equal(count_state(t, STORE_PENDING), 0);
	collector_get_status(t->c, &st);
	assert_true(st.store_full);
	assert_int_equal(log_count(t, "message_id=4f0b7c1d2a6e4e1b9c3d8a5f6b2e7c06"), 1);

	r = wait_req(t, true);
	AT_LEAST(r, t0, POLL);
	assert_string_equal(r->url, url);
	assert_int_equal(store_set_size_limit(t->store, 0), 0);
	answer(r, 200, big, NULL);
	assert_int_equal(count_state(t, STORE_PENDING), 200);
	collector_get_status(t->c, &st);
	assert_false(st.store_full);
}

/*
 * A record failing validation is stored quarantined with its reason; a record of a subscription
 * the cache does not know makes the cache refresh at once (at most once per interval).
 */
static void
test_collector_quarantine_and_unknown_subscription(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *bad = page(H0, SUB_X, 0, 2, "bad", NULL);
	_cleanup_free_ char *bad2 = page(H0 + HOUR, SUB_X, 0, 2, "bad", NULL);
	struct store_query q = {.state = STORE_QUARANTINED};
	struct counted counted = {0};
	struct fake_req *r;

	fake_now = H0 + 2 * HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	answer(r, 200, bad, NULL);
	assert_int_equal(count_state(t, STORE_QUARANTINED), 1);
	assert_int_equal(count_state(t, STORE_PENDING), 1);
	assert_int_equal(metric(t, METRICS_QUARANTINED_TOTAL, NULL), 1);
	assert_int_equal(store_records_query(t->store, &q, count_record, &counted), 0);
	assert_int_equal(counted.n, 1);
	assert_string_equal(counted.quantities[0], "-1");

	r = wait_req(t, false); /* SUB_X is unknown: the list is asked for at once */
	answer(r, 200, subs_body, NULL);
	r = wait_req(t, true);
	answer(r, 200, bad2, NULL);
	r = wait_req(t, false); /* still unknown, once the interval has passed */
	assert_int_equal(log_count(t, "does not know"), 1); /* logged once */
}

/*
 * The pages parsed on the worker thread (as the daemon does), with the nextLink asked early while
 * the page before it is parsed: stored in order through their nextLinks, an early answer that is
 * a malformed page retried after the page before it is in; and a collector stopped, then freed,
 * while a page is being parsed and its nextLink asked drops both (nothing stored, nothing leaks).
 */
static void
test_collector_worker_thread(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *n1 = next_link(STAMP, "page2"), *n3 = next_link(STAMP, "page4");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 2, NULL, n1);
	_cleanup_free_ char *p2 = page(H0, SUB_A, 2, 3, NULL, NULL);
	_cleanup_free_ char *p3 = page(H0 + HOUR, SUB_A, 10, 4, NULL, n3);
	_cleanup_free_ char *link = NULL;
	uint64_t end = now_monotonic_usec() + GUARD;
	struct fake_req *r, *early, *next;

	t->options.parse_on_loop = false;
	fake_now = H0 + 2 * HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	assert_int_equal(url_hour(r->url), H0);
	answer(r, 200, p1, NULL);
	early = wait_req(t, true); /* asked while page 1 is parsed */
	assert_string_equal(early->url, n1);
	answer(early, 200, "{\"value\": [", NULL); /* malformed: asked again once page 1 is in */
	/* the quick scan saw no nextLink in it: the next hour's first page is asked early too */
	next = pending(t, true);
	assert_non_null(next);
	assert_int_equal(url_hour(next->url), H0 + HOUR);
	r = wait_url(t, n1);
	assert_int_equal(count_state(t, STORE_PENDING), 2);
	assert_int_equal(schedule_pass(t, H0, "", &link), 0);
	assert_string_equal(link, n1);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "retry"), 1);
	answer(r, 200, p2, NULL);
	while (!t->c->job || t->c->job->hour != H0 + HOUR) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	r = wait_req(t, true);
	assert_ptr_equal(r, next); /* the next hour's job took it: not asked again */
	assert_ptr_equal(t->c->job->handle, next);
	assert_int_equal(count_state(t, STORE_PENDING), 5);
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "ok"), 2);

	/* the next hour's page is being parsed and its nextLink asked when the collector stops */
	answer(r, 200, p3, NULL); /* no loop turn in between: its parse is still owed */
	early = pending(t, true);
	assert_non_null(early);
	assert_string_equal(early->url, n3);
	collector_stop(t->c);
	assert_true(early->cancelled);
	settle_loop(t);
	t->c = collector_free(t->c);
	assert_int_equal(count_state(t, STORE_PENDING), 5);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "ok"), 2);
}

/*
 * An early answer's page goes to the worker when it comes, before the page before it is stored,
 * and its own nextLink is asked early in turn; the pages are stored in order. An early page whose
 * link is not the nextLink of the parsed page before it (the quick scan saw another: a duplicate
 * member, the last one counts) is dropped with its parse, never stored, and the parsed nextLink
 * is asked.
 */
static void
test_collector_worker_parses_ahead(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *n1 = next_link(STAMP, "page2"), *n2 = next_link(STAMP, "page3");
	_cleanup_free_ char *na = next_link(STAMP, "pageA"), *nb = next_link(STAMP, "pageB");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 2, NULL, n1);
	_cleanup_free_ char *p2 = page(H0, SUB_A, 2, 3, NULL, n2);
	_cleanup_free_ char *p3 = page(H0, SUB_A, 5, 1, NULL, NULL);
	_cleanup_free_ char *q1 = page(H0 + HOUR, SUB_A, 10, 2, NULL, nb);
	_cleanup_free_ char *qa = page(H0 + HOUR, SUB_A, 20, 4, NULL, NULL);
	_cleanup_free_ char *qb = page(H0 + HOUR, SUB_A, 12, 1, NULL, NULL);
	_cleanup_free_ char *q1_dup = xasprintf("{\"nextLink\":\"%s\",%s", na, q1 + 1);
	uint64_t end = now_monotonic_usec() + GUARD;
	struct fake_req *r, *early;

	t->options.parse_on_loop = false;
	fake_now = H0 + 2 * HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	assert_int_equal(url_hour(r->url), H0);
	answer(r, 200, p1, NULL); /* no loop turn from here: page 1 is not stored yet */
	early = pending(t, true);
	assert_non_null(early);
	assert_string_equal(early->url, n1);
	answer(early, 200, p2, NULL);
	assert_int_equal(count_state(t, STORE_PENDING), 0);
	assert_non_null(t->c->job);
	assert_int_equal(t->c->job->n_ahead, 2);
	assert_non_null(t->c->job->ahead[0].parse); /* page 2 is on the worker already */
	early = pending(t, true);
	assert_non_null(early);
	assert_string_equal(early->url, n2); /* and its nextLink asked */
	answer(early, 200, p3, NULL);
	while (schedule_pass(t, H0, "", NULL) != 1) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	assert_int_equal(count_state(t, STORE_PENDING), 6);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "ok"), 3);

	/* the next hour: its first page seems to link to pageA, its parsed nextLink is pageB */
	while (!t->c->job || t->c->job->hour != H0 + HOUR) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	r = wait_req(t, true); /* asked early while page 3 was stored, the job's request now */
	assert_int_equal(url_hour(r->url), H0 + HOUR);
	assert_ptr_equal(t->c->job->handle, r);
	answer(r, 200, q1_dup, NULL);
	early = pending(t, true);
	assert_non_null(early);
	assert_string_equal(early->url, na);
	answer(early, 200, qa, NULL);
	assert_non_null(t->c->job->ahead[0].parse);
	r = wait_req(t, true); /* page 1 is in, pageA and its parse dropped: pageB is asked */
	assert_string_equal(r->url, nb);
	assert_int_equal(count_state(t, STORE_PENDING), 8);
	answer(r, 200, qb, NULL);
	while (schedule_pass(t, H0 + HOUR, "", NULL) != 1) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	assert_int_equal(count_state(t, STORE_PENDING), 9);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "ok"), 5);
}

/*
 * A nextLink written with escapes is not asked early (the quick scan takes only plain text): it
 * is asked, unescaped, once its page is parsed and stored.
 */
static void
test_collector_worker_escaped_next_link(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *n1 = next_link(STAMP, "page2");
	_cleanup_free_ char *p1 = page(H0, SUB_A, 0, 2, NULL, n1);
	_cleanup_free_ char *p2 = page(H0, SUB_A, 2, 1, NULL, NULL);
	_cleanup_free_ char *escaped = NULL;
	const char *at = strstr(p1, "\"nextLink\":\"https://");
	uint64_t end = now_monotonic_usec() + GUARD;
	struct fake_req *r;

	assert_non_null(at);
	escaped = xasprintf("%.*s\"nextLink\":\"https:\\/\\/%s", (int)(at - p1), p1,
	                    at + strlen("\"nextLink\":\"https://"));
	t->options.parse_on_loop = false;
	fake_now = H0 + HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	answer(r, 200, escaped, NULL);
	r = wait_req(t, true);
	assert_string_equal(r->url, n1);
	assert_int_equal(count_state(t, STORE_PENDING), 2); /* asked only after page 1 is in */
	answer(r, 200, p2, NULL);
	while (schedule_pass(t, H0, "", NULL) != 1) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	assert_int_equal(count_state(t, STORE_PENDING), 3);
}

/* How many usage requests were made. */
static size_t
usage_requests(struct ctx *t)
{
	size_t n = 0;

	for (size_t i = 0; i < t->fake.n; i++)
		n += is_usage(&t->fake.reqs[i]);
	return n;
}

/*
 * While the hour's last page (no nextLink) is parsed, the next collectable hour's first page is
 * asked early; its answer is parsed at once and kept, and the next hour's job takes it instead of
 * asking again. Nothing of it is stored before the hour before is in; an hour not collectable yet
 * is not asked.
 */
static void
test_collector_worker_next_hour_early(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *p0 = page(H0, SUB_A, 0, 2, NULL, NULL);
	_cleanup_free_ char *q0 = page(H0 + HOUR, SUB_A, 10, 3, NULL, NULL);
	uint64_t end = now_monotonic_usec() + GUARD;
	struct fake_req *r, *next;

	t->options.parse_on_loop = false;
	fake_now = H0 + 2 * HOUR + 60; /* H0 and H0 + 1h are collectable, H0 + 2h is not */
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	assert_int_equal(url_hour(r->url), H0);
	answer(r, 200, p0, NULL); /* no loop turn from here: page 1 is not stored yet */
	next = pending(t, true);
	assert_non_null(next);
	assert_int_equal(url_hour(next->url), H0 + HOUR);
	answer(next, 200, q0, NULL);
	assert_int_equal(count_state(t, STORE_PENDING), 0);
	assert_int_equal(schedule_pass(t, H0 + HOUR, "", NULL), 0);
	while (schedule_pass(t, H0 + HOUR, "", NULL) != 1) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
	assert_int_equal(count_state(t, STORE_PENDING), 5);
	assert_int_equal(metric(t, METRICS_COLLECT_PAGES_TOTAL, "ok"), 2);
	settle_loop(t);
	assert_null(pending(t, true)); /* H0 + 2h is not asked before it is collectable */
	assert_int_equal(usage_requests(t), 2);
}

/*
 * The next hour's first page asked early is dropped when no job starts at once to take it (here:
 * max_pending reached by the hour before): the request is cancelled, and the hour is asked again
 * when collection goes on. Stopped while that page is parsed, the collector stores none of it.
 */
static void
test_collector_worker_next_hour_dropped(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *p0 = page(H0, SUB_A, 0, 2, NULL, NULL);
	_cleanup_free_ char *q0 = page(H0 + HOUR, SUB_A, 10, 3, NULL, NULL);
	uint64_t end = now_monotonic_usec() + GUARD;
	struct fake_req *r, *next;

	t->options.parse_on_loop = false;
	t->options.settings.max_pending = 2;
	fake_now = H0 + 2 * HOUR + 60;
	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	answer(r, 200, p0, NULL);
	next = pending(t, true);
	assert_non_null(next);
	assert_int_equal(url_hour(next->url), H0 + HOUR);
	while (!next->cancelled) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
	assert_int_equal(count_state(t, STORE_PENDING), 2);
	assert_null(pending(t, true));

	/* collection goes on: the hour is asked again; its last page's parse is under way when
	 * the collector stops with the hour after it asked early and answered */
	t->c->set.max_pending = 0;
	collector_apply(t->c, &t->c->set);
	r = wait_req(t, true);
	assert_ptr_not_equal(r, next);
	assert_int_equal(url_hour(r->url), H0 + HOUR);
	fake_now = H0 + 3 * HOUR + 60;
	answer(r, 200, q0, NULL);
	next = pending(t, true);
	assert_non_null(next);
	assert_int_equal(url_hour(next->url), H0 + 2 * HOUR);
	answer(next, 200, p0, NULL); /* not even of its hour: never looked at */
	collector_stop(t->c);
	settle_loop(t);
	t->c = collector_free(t->c);
	assert_int_equal(count_state(t, STORE_PENDING), 2);
	assert_int_equal(schedule_pass(t, H0 + HOUR, "", NULL), 0);
	assert_int_equal(schedule_pass(t, H0 + 2 * HOUR, "", NULL), -1);
}

/*
 * The next hour's first page asked early is only for that hour's first pass (04094b0): here the
 * next hour is due for a recollect pass (pass 2, scheduled by an operator before it); its job
 * asks the same first page, but must not take the early one, which was asked for a pass that was
 * not due: the early request is cancelled and the job asks its page itself, which is stored.
 */
static void
test_collector_worker_next_hour_not_for_later_pass(void **state)
{
	struct ctx *t = *state;
	_cleanup_free_ char *p0 = page(H0, SUB_A, 0, 2, NULL, NULL);
	_cleanup_free_ char *q0 = page(H0 + HOUR, SUB_A, 10, 3, NULL, NULL);
	struct store_recollect rc = {
	        .from = H0 + HOUR,
	        .to = H0 + HOUR,
	        .lookback = 6 * HOUR,
	        .actor = "test",
	        .now = H0 + 2 * HOUR + 60,
	};
	uint64_t end = now_monotonic_usec() + GUARD;
	struct fake_req *r, *next;
	size_t n = 0;

	t->options.parse_on_loop = false;
	fake_now = H0 + 2 * HOUR + 60; /* H0 and H0 + 1h are collectable */
	assert_int_equal(store_hour_schedule(t->store, H0, "", H0 + HOUR), 0);
	assert_int_equal(store_hour_schedule(t->store, H0 + HOUR, "", H0 + 2 * HOUR), 0);
	assert_int_equal(store_recollect(t->store, &rc, &n), 0);
	assert_int_equal(n, 1);
	assert_true(schedule_pass(t, H0 + HOUR, "", NULL) >= 2);
	assert_int_equal(schedule_pass(t, H0, "", NULL), 0);

	start(t);
	answer_subscriptions(t);
	r = wait_req(t, true);
	assert_int_equal(url_hour(r->url), H0);
	answer(r, 200, p0, NULL); /* the hour's last page: the next hour's first is asked early */
	next = pending(t, true);
	assert_non_null(next);
	assert_int_equal(url_hour(next->url), H0 + HOUR);
	/* the job of H0 + 1h is its recollect pass: the early request is not its own */
	while (!next->cancelled) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	assert_non_null(t->c->job);
	assert_int_equal(t->c->job->hour, H0 + HOUR);
	assert_true(t->c->job->pass >= 2);
	r = wait_req(t, true);
	assert_ptr_not_equal(r, next);
	assert_string_equal(r->url, next->url);
	answer(r, 200, q0, NULL);
	while (count_state(t, STORE_PENDING) != 5) {
		assert_true(now_monotonic_usec() < end);
		event_base_loop(t->base, EVLOOP_ONCE);
	}
	assert_int_equal(schedule_pass(t, H0, "", NULL), 1);
	assert_int_equal(usage_requests(t), 3);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_collector_settle, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_worker_thread, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_worker_parses_ahead, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_collector_worker_escaped_next_link, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_collector_worker_next_hour_early, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_collector_worker_next_hour_dropped, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_collector_worker_next_hour_not_for_later_pass,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_pages_and_lookback, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_catch_up, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_throttle_and_backoff, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_collector_not_ready, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_future, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_refused_next_link, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_resumes_from_saved_next_link, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_collector_next_link_loop, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_next_link_authority, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_collector_token_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_per_subscriber_skip, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_collector_per_subscriber_remembers_scopes,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_backlog_pause, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_store_full, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_collector_quarantine_and_unknown_subscription,
	                                        setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
