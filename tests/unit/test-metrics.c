/*
 * Unit tests for lib/metrics.c: the exact exposition text of a small registry, escaping of HELP
 * texts and label values, histogram buckets (cumulative, le inclusive, +Inf, _sum, _count), value
 * formatting, the daemon's registry (every family of ARCHITECTURE.md section 8 with HELP and
 * TYPE), argument checks, the "other" series, and exact counts under concurrent updates. Every
 * rendering is also checked line by line against the text format's grammar.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "macro.h"
#include "metrics.h"
#include "xmalloc.h"

#define THREADS     4
#define THREAD_RUNS 100000

DEFINE_TRIVIAL_CLEANUP_FUNC(struct metrics *, metrics_free)
#define _cleanup_metrics_ _cleanup_(metrics_freep)

static char *render(struct metrics *m);
static void assert_exposition_valid(const char *text);
static bool sample_value_valid(const char *s);
static void *hammer(void *arg);

/* A small registry renders to exactly this text. */
static void
test_metrics_render_small_registry(void **state)
{
	static const double bounds[] = {0.1, 1};
	_cleanup_metrics_ struct metrics *m = metrics_new();
	struct metrics_family *requests, *temp, *latency;
	_cleanup_free_ char *text = NULL;

	(void)state;
	assert_int_equal(metrics_add_family(m, METRICS_COUNTER, "t_requests_total", "Requests.",
	                                    "code", NULL, 0, &requests),
	                 0);
	assert_int_equal(metrics_add_family(m, METRICS_GAUGE, "t_temp", "Temperature.", NULL, NULL,
	                                    0, &temp),
	                 0);
	assert_int_equal(metrics_add_family(m, METRICS_HISTOGRAM, "t_latency_seconds", "Latency.",
	                                    "api", bounds, ARRAY_SIZE(bounds), &latency),
	                 0);
	/* made in this order, rendered sorted by label value */
	metrics_counter_add(metrics_get_series(requests, "500"), 1);
	metrics_counter_add(metrics_get_series(requests, "200"), 2);
	metrics_counter_add(metrics_get_series(requests, "200"), 1);
	metrics_gauge_set(metrics_get_series(temp, NULL), 21.5);
	metrics_histogram_observe(metrics_get_series(latency, "a"), 0.0625);
	metrics_histogram_observe(metrics_get_series(latency, "a"), 0.5);
	metrics_histogram_observe(metrics_get_series(latency, "a"), 2);

	text = render(m);
	assert_string_equal(text, "# HELP t_requests_total Requests.\n"
	                          "# TYPE t_requests_total counter\n"
	                          "t_requests_total{code=\"200\"} 3\n"
	                          "t_requests_total{code=\"500\"} 1\n"
	                          "# HELP t_temp Temperature.\n"
	                          "# TYPE t_temp gauge\n"
	                          "t_temp 21.5\n"
	                          "# HELP t_latency_seconds Latency.\n"
	                          "# TYPE t_latency_seconds histogram\n"
	                          "t_latency_seconds_bucket{api=\"a\",le=\"0.1\"} 1\n"
	                          "t_latency_seconds_bucket{api=\"a\",le=\"1\"} 2\n"
	                          "t_latency_seconds_bucket{api=\"a\",le=\"+Inf\"} 3\n"
	                          "t_latency_seconds_sum{api=\"a\"} 2.5625\n"
	                          "t_latency_seconds_count{api=\"a\"} 3\n");
}

/* HELP escapes backslash and newline; label values also the double quote. */
static void
test_metrics_render_escaping(void **state)
{
	_cleanup_metrics_ struct metrics *m = metrics_new();
	struct metrics_family *f;
	_cleanup_free_ char *text = NULL;

	(void)state;
	assert_int_equal(metrics_add_family(m, METRICS_COUNTER, "e_total",
	                                    "Back\\slash, \"quote\",\nnew line, é.", "path", NULL,
	                                    0, &f),
	                 0);
	metrics_counter_add(metrics_get_series(f, "C:\\dir\\\"x\"\nend é日"), 7);
	metrics_counter_add(metrics_get_series(f, NULL), 1); /* NULL: the empty value */
	text = render(m);
	assert_string_equal(text, "# HELP e_total Back\\\\slash, \"quote\",\\nnew line, é.\n"
	                          "# TYPE e_total counter\n"
	                          "e_total{path=\"\"} 1\n"
	                          "e_total{path=\"C:\\\\dir\\\\\\\"x\\\"\\nend é日\"} 7\n");
}

/* Buckets are cumulative and inclusive of their bound; +Inf holds everything; NaN is ignored. */
static void
test_metrics_render_histogram_buckets(void **state)
{
	static const double bounds[] = {-1, 0, 0.25, 10};
	static const double values[] = {-5, -1, -0.5, 0, 0.25, 0.25, 3, 10, 11, 1e300};
	_cleanup_metrics_ struct metrics *m = metrics_new();
	struct metrics_family *f;
	struct metrics_series *s;
	_cleanup_free_ char *text = NULL;

	(void)state;
	assert_int_equal(metrics_add_family(m, METRICS_HISTOGRAM, "h", "H.", NULL, bounds,
	                                    ARRAY_SIZE(bounds), &f),
	                 0);
	s = metrics_get_series(f, "ignored");
	assert_ptr_equal(s, metrics_get_series(f, NULL));
	for (size_t i = 0; i < ARRAY_SIZE(values); i++)
		metrics_histogram_observe(s, values[i]);
	metrics_histogram_observe(s, NAN);
	text = render(m);
	assert_string_equal(text, "# HELP h H.\n"
	                          "# TYPE h histogram\n"
	                          "h_bucket{le=\"-1\"} 2\n"
	                          "h_bucket{le=\"0\"} 4\n"
	                          "h_bucket{le=\"0.25\"} 6\n"
	                          "h_bucket{le=\"10\"} 8\n"
	                          "h_bucket{le=\"+Inf\"} 10\n"
	                          "h_sum 1e+300\n"
	                          "h_count 10\n");
	assert_true(metrics_series_value(s) == 10);

	/* an infinite observation makes the sum +Inf */
	metrics_histogram_observe(s, INFINITY);
	free(text);
	text = render(m);
	assert_non_null(strstr(text, "h_bucket{le=\"+Inf\"} 11\nh_sum +Inf\nh_count 11\n"));
}

/* A histogram without bounds has the +Inf bucket only. */
static void
test_metrics_render_histogram_no_bounds(void **state)
{
	_cleanup_metrics_ struct metrics *m = metrics_new();
	struct metrics_family *f;
	_cleanup_free_ char *text = NULL;

	(void)state;
	assert_int_equal(
	        metrics_add_family(m, METRICS_HISTOGRAM, "only_inf", "I.", "k", NULL, 0, &f), 0);
	metrics_histogram_observe(metrics_get_series(f, "v"), 1.5);
	text = render(m);
	assert_string_equal(text, "# HELP only_inf I.\n"
	                          "# TYPE only_inf histogram\n"
	                          "only_inf_bucket{k=\"v\",le=\"+Inf\"} 1\n"
	                          "only_inf_sum{k=\"v\"} 1.5\n"
	                          "only_inf_count{k=\"v\"} 1\n");
}

/* Values as Prometheus reads them: integers plain, others the shortest exact form. */
static void
test_metrics_render_values(void **state)
{
	static const struct {
		double v;
		const char *text;
	} rows[] = {
	        {0, "0"},
	        {-0.0, "0"},
	        {1, "1"},
	        {-3, "-3"},
	        {1793523600, "1793523600"},
	        {9007199254740991.0, "9007199254740991"},
	        {9007199254740992.0, "9007199254740992"},
	        {1.5, "1.5"},
	        {-3.25, "-3.25"},
	        {0.1, "0.1"},
	        {1e-7, "1e-07"},
	        {1.0 / 3, "0.33333333333333331"},
	        {1e300, "1e+300"},
	        {NAN, "NaN"},
	        {INFINITY, "+Inf"},
	        {-INFINITY, "-Inf"},
	};
	_cleanup_metrics_ struct metrics *m = metrics_new();
	struct metrics_family *f;
	_cleanup_free_ char *text = NULL;

	(void)state;
	assert_int_equal(metrics_add_family(m, METRICS_GAUGE, "g", "G.", "row", NULL, 0, &f), 0);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		char label[8];

		snprintf(label, sizeof(label), "%02zu", i);
		metrics_gauge_set(metrics_get_series(f, label), rows[i].v);
	}
	text = render(m);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		_cleanup_free_ char *line = xasprintf("g{row=\"%02zu\"} %s\n", i, rows[i].text);

		if (!strstr(text, line))
			fail_msg("missing line %s in\n%s", line, text);
	}
}

/* Gauges move up and down; counters and gauges read back. */
static void
test_metrics_gauge_add_and_read(void **state)
{
	_cleanup_metrics_ struct metrics *m = metrics_new();
	struct metrics_family *g, *c;
	struct metrics_series *gs, *cs;

	(void)state;
	assert_int_equal(metrics_add_family(m, METRICS_GAUGE, "g", "G.", NULL, NULL, 0, &g), 0);
	assert_int_equal(metrics_add_family(m, METRICS_COUNTER, "c_total", "C.", NULL, NULL, 0, &c),
	                 0);
	gs = metrics_get_series(g, NULL);
	cs = metrics_get_series(c, NULL);
	assert_true(metrics_series_value(gs) == 0);
	metrics_gauge_add(gs, 5);
	metrics_gauge_add(gs, -7.5);
	assert_true(metrics_series_value(gs) == -2.5);
	metrics_gauge_set(gs, 42);
	assert_true(metrics_series_value(gs) == 42);
	metrics_counter_add(cs, UINT64_C(1) << 40);
	metrics_counter_add(cs, 1);
	assert_true(metrics_series_value(cs) == (double)((UINT64_C(1) << 40) + 1));
	assert_true(metrics_series_value(NULL) == 0);
}

/* The daemon's registry has every family of section 8, with HELP and TYPE, in order. */
static void
test_metrics_new_daemon_every_family(void **state)
{
	static const struct {
		enum metrics_id id;
		const char *name;
		const char *type;
	} families[] = {
	        {METRICS_RECORDS_COLLECTED_TOTAL, "records_collected_total", "counter"},
	        {METRICS_RECORDS_FORWARDED_TOTAL, "records_forwarded_total", "counter"},
	        {METRICS_RECORDS, "records", "gauge"},
	        {METRICS_OLDEST_PENDING_SECONDS, "oldest_pending_seconds", "gauge"},
	        {METRICS_COLLECT_CURSOR_TIMESTAMP_SECONDS, "collect_cursor_timestamp_seconds",
	         "gauge"},
	        {METRICS_COLLECT_PAGES_TOTAL, "collect_pages_total", "counter"},
	        {METRICS_FORWARD_BATCHES_TOTAL, "forward_batches_total", "counter"},
	        {METRICS_FORWARD_RETRIES_TOTAL, "forward_retries_total", "counter"},
	        {METRICS_REGISTRATION_AGE_SECONDS, "registration_age_seconds", "gauge"},
	        {METRICS_TENANTS_CHARGED_DEFAULT, "tenants_charged_default", "gauge"},
	        {METRICS_HTTP_REQUEST_DURATION_SECONDS, "http_request_duration_seconds",
	         "histogram"},
	        {METRICS_CONFLICTS_TOTAL, "conflicts_total", "counter"},
	        {METRICS_QUARANTINED_TOTAL, "quarantined_total", "counter"},
	        {METRICS_STORE_FULL_TOTAL, "store_full_total", "counter"},
	        {METRICS_COLLECT_SKIPPED_SUBSCRIPTIONS_TOTAL, "collect_skipped_subscriptions_total",
	         "counter"},
	        {METRICS_BUILD_INFO, "build_info", "gauge"},
	};
	_cleanup_metrics_ struct metrics *m = metrics_new_daemon("0.1.0");
	_cleanup_metrics_ struct metrics *empty = metrics_new();
	_cleanup_free_ char *text = NULL;
	size_t previous = 0; /* an offset in text: gcc -O3 takes h for a pointer into help */

	(void)state;
	assert_int_equal(ARRAY_SIZE(families), _METRICS_ID_MAX);
	text = render(m);
	for (size_t i = 0; i < ARRAY_SIZE(families); i++) {
		_cleanup_free_ char *help =
		        xasprintf("# HELP " METRICS_PREFIX "%s ", families[i].name);
		_cleanup_free_ char *type = xasprintf("\n# TYPE " METRICS_PREFIX "%s %s\n",
		                                      families[i].name, families[i].type);
		const char *h = strstr(text, help), *t = strstr(text, type);

		assert_int_equal(families[i].id, i);
		assert_non_null(metrics_get_family(m, families[i].id));
		assert_null(metrics_get_family(empty, families[i].id));
		assert_non_null(h);
		assert_non_null(t);
		assert_true(h < t);
		/* the HELP line has text, not just the name */
		assert_true(h[strlen(help)] != '\n');
		assert_true(i == 0 || previous < (size_t)(h - text));
		previous = (size_t)(h - text);
	}
	assert_null(metrics_get_family(m, _METRICS_ID_MAX));
	assert_non_null(strstr(text, "\n" METRICS_PREFIX "build_info{version=\"0.1.0\"} 1\n"));
	/* unlabelled families show 0 from the start */
	assert_non_null(strstr(text, "\n" METRICS_PREFIX "records_collected_total 0\n"));
	assert_non_null(strstr(text, "\n" METRICS_PREFIX "oldest_pending_seconds 0\n"));
	/* labelled ones have no series until a label value is used */
	assert_null(strstr(text, METRICS_PREFIX "records{"));
}

/* The shorthands update the daemon's families by id; the request histogram has its buckets. */
static void
test_metrics_new_daemon_shorthands(void **state)
{
	_cleanup_metrics_ struct metrics *m = metrics_new_daemon(NULL);
	_cleanup_free_ char *text = NULL;

	(void)state;
	metrics_add(m, METRICS_RECORDS_COLLECTED_TOTAL, NULL, 1000);
	metrics_inc(m, METRICS_RECORDS_FORWARDED_TOTAL, "Accepted");
	metrics_add(m, METRICS_RECORDS_FORWARDED_TOTAL, "Accepted", 4);
	metrics_inc(m, METRICS_RECORDS_FORWARDED_TOTAL, "Duplicate");
	metrics_set(m, METRICS_RECORDS, "pending", 120);
	metrics_set(m, METRICS_RECORDS, "dead", 0);
	metrics_set(m, METRICS_COLLECT_CURSOR_TIMESTAMP_SECONDS, NULL, 1793523600);
	metrics_observe(m, METRICS_HTTP_REQUEST_DURATION_SECONDS, "commerce", 0.2);
	metrics_observe(m, METRICS_HTTP_REQUEST_DURATION_SECONDS, "commerce", 45);
	metrics_observe(m, METRICS_HTTP_REQUEST_DURATION_SECONDS, "stack", 0.001);
	text = render(m);
	assert_non_null(strstr(text, "\nazs_usaged_records_collected_total 1000\n"));
	assert_non_null(strstr(text,
	                       "\nazs_usaged_records_forwarded_total{status=\"Accepted\"} 5\n"
	                       "azs_usaged_records_forwarded_total{status=\"Duplicate\"} 1\n"));
	assert_non_null(strstr(text, "\nazs_usaged_records{state=\"dead\"} 0\n"
	                             "azs_usaged_records{state=\"pending\"} 120\n"));
	assert_non_null(strstr(text, "\nazs_usaged_collect_cursor_timestamp_seconds 1793523600\n"));
	assert_non_null(strstr(
	        text,
	        "\nazs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"0.005\"} 0\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"0.01\"} 0\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"0.025\"} 0\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"0.05\"} 0\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"0.1\"} 0\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"0.25\"} 1\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"0.5\"} 1\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"1\"} 1\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"2.5\"} 1\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"5\"} 1\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"10\"} 1\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"30\"} 1\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"60\"} 2\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"commerce\",le=\"+Inf\"} 2\n"
	        "azs_usaged_http_request_duration_seconds_sum{api=\"commerce\"} 45.2\n"
	        "azs_usaged_http_request_duration_seconds_count{api=\"commerce\"} 2\n"
	        "azs_usaged_http_request_duration_seconds_bucket{api=\"stack\",le=\"0.005\"} 1\n"));
	assert_non_null(strstr(text, "\nazs_usaged_build_info{version=\"unknown\"} 1\n"));
}

/* A labelled family with no series yet shows HELP and TYPE only. */
static void
test_metrics_render_family_without_series(void **state)
{
	_cleanup_metrics_ struct metrics *m = metrics_new();
	_cleanup_free_ char *text = NULL;

	(void)state;
	assert_int_equal(
	        metrics_add_family(m, METRICS_COUNTER, "x_total", "X.", "l", NULL, 0, NULL), 0);
	text = render(m);
	assert_string_equal(text, "# HELP x_total X.\n# TYPE x_total counter\n");
}

/* Names, labels, help and bounds are checked; a name is added once. */
static void
test_metrics_add_family_invalid(void **state)
{
	static const char *const bad_names[] = {"", "1abc", "a-b", "a b", "é", "a.b"};
	static const char *const bad_labels[] = {"", "1x", "a:b", "__reserved", "a-b"};
	static const double unsorted[] = {1, 0.5}, equal[] = {1, 1}, nan_bound[] = {NAN},
	                    inf_bound[] = {INFINITY}, good[] = {1, 2};
	double many[METRICS_BUCKETS_MAX + 1];
	_cleanup_metrics_ struct metrics *m = metrics_new();
	struct metrics_family *f = NULL;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(many); i++)
		many[i] = (double)i;
	for (size_t i = 0; i < ARRAY_SIZE(bad_names); i++)
		assert_int_equal(metrics_add_family(m, METRICS_COUNTER, bad_names[i], "H.", NULL,
		                                    NULL, 0, &f),
		                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_COUNTER, NULL, "H.", NULL, NULL, 0, &f),
	                 -EINVAL);
	for (size_t i = 0; i < ARRAY_SIZE(bad_labels); i++)
		assert_int_equal(metrics_add_family(m, METRICS_COUNTER, "ok_total", "H.",
		                                    bad_labels[i], NULL, 0, &f),
		                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_HISTOGRAM, "h", "H.", "le", good, 2, &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_COUNTER, "c", NULL, NULL, NULL, 0, &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_COUNTER, "c", "\xff", NULL, NULL, 0, &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_COUNTER, "c", "H.", NULL, good, 2, &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_GAUGE, "g", "H.", NULL, good, 1, &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_HISTOGRAM, "h", "H.", NULL, unsorted, 2, &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_HISTOGRAM, "h", "H.", NULL, equal, 2, &f),
	                 -EINVAL);
	assert_int_equal(
	        metrics_add_family(m, METRICS_HISTOGRAM, "h", "H.", NULL, nan_bound, 1, &f),
	        -EINVAL);
	assert_int_equal(
	        metrics_add_family(m, METRICS_HISTOGRAM, "h", "H.", NULL, inf_bound, 1, &f),
	        -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_HISTOGRAM, "h", "H.", NULL, NULL, 2, &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(m, METRICS_HISTOGRAM, "h", "H.", NULL, many,
	                                    ARRAY_SIZE(many), &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(m, (enum metrics_type)7, "x", "H.", NULL, NULL, 0, &f),
	                 -EINVAL);
	assert_int_equal(metrics_add_family(NULL, METRICS_GAUGE, "x", "H.", NULL, NULL, 0, &f),
	                 -EINVAL);
	assert_null(f);

	assert_int_equal(metrics_add_family(m, METRICS_HISTOGRAM, "ns:h_seconds", "H.", "_a1", many,
	                                    METRICS_BUCKETS_MAX, &f),
	                 0);
	assert_non_null(f);
	assert_int_equal(
	        metrics_add_family(m, METRICS_GAUGE, "ns:h_seconds", "Other.", NULL, NULL, 0, NULL),
	        -EEXIST);
}

/* Beyond METRICS_SERIES_MAX - 1 label values, and for text that is not UTF-8, "other" counts. */
static void
test_metrics_get_series_other(void **state)
{
	_cleanup_metrics_ struct metrics *m = metrics_new();
	struct metrics_family *f;
	_cleanup_free_ char *text = NULL;
	size_t lines = 0;

	(void)state;
	assert_int_equal(metrics_add_family(m, METRICS_COUNTER, "o_total", "O.", "v", NULL, 0, &f),
	                 0);
	for (size_t i = 0; i < 100; i++) {
		char label[16];

		snprintf(label, sizeof(label), "v%03zu", i);
		metrics_counter_add(metrics_get_series(f, label), 1);
	}
	metrics_counter_add(metrics_get_series(f, "bad \xff utf-8"), 1000);
	assert_ptr_equal(metrics_get_series(f, "v000"), metrics_get_series(f, "v000"));
	text = render(m);
	for (const char *p = text; (p = strstr(p, "\no_total{")); p++)
		lines++;
	assert_int_equal(lines, METRICS_SERIES_MAX);
	assert_non_null(strstr(text, "\no_total{v=\"v062\"} 1\n"));
	assert_null(strstr(text, "v063"));
	/* 100 - 63 values plus the 1000 of the bad text */
	assert_non_null(strstr(text, "\no_total{v=\"other\"} 1037\n"));
}

/* NULL registries, families and series are accepted and do nothing. */
static void
test_metrics_null_is_no_op(void **state)
{
	_cleanup_metrics_ struct metrics *empty = metrics_new();
	char *text = (char *)"untouched";

	(void)state;
	metrics_inc(NULL, METRICS_FORWARD_RETRIES_TOTAL, NULL);
	metrics_add(NULL, METRICS_RECORDS_COLLECTED_TOTAL, NULL, 5);
	metrics_set(NULL, METRICS_RECORDS, "pending", 1);
	metrics_observe(NULL, METRICS_HTTP_REQUEST_DURATION_SECONDS, "stack", 1);
	metrics_inc(empty, METRICS_FORWARD_RETRIES_TOTAL, NULL);
	metrics_counter_add(NULL, 1);
	metrics_gauge_set(NULL, 1);
	metrics_gauge_add(NULL, 1);
	metrics_histogram_observe(NULL, 1);
	assert_null(metrics_get_series(NULL, "x"));
	assert_null(metrics_get_family(NULL, METRICS_RECORDS));
	assert_null(metrics_free(NULL));
	assert_int_equal(metrics_render(NULL, &text, NULL), -EINVAL);
	assert_string_equal(text, "untouched");
}

/* Threads counting at once, making series as they go, lose nothing. */
static void
test_metrics_concurrent_updates(void **state)
{
	_cleanup_metrics_ struct metrics *m = metrics_new_daemon("t");
	_cleanup_free_ char *text = NULL, *expect = NULL;
	pthread_t threads[THREADS];

	(void)state;
	for (size_t i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&threads[i], NULL, hammer, m), 0);
	for (size_t i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(threads[i], NULL), 0);
	text = render(m);
	expect = xasprintf("\nazs_usaged_forward_retries_total %d\n", THREADS * THREAD_RUNS);
	assert_non_null(strstr(text, expect));
	free(expect);
	expect = xasprintf("\nazs_usaged_records_forwarded_total{status=\"Accepted\"} %d\n"
	                   "azs_usaged_records_forwarded_total{status=\"Duplicate\"} %d\n",
	                   THREADS * THREAD_RUNS / 2, THREADS * THREAD_RUNS / 2);
	assert_non_null(strstr(text, expect));
	free(expect);
	expect = xasprintf("\nazs_usaged_oldest_pending_seconds %d\n", THREADS * THREAD_RUNS);
	assert_non_null(strstr(text, expect));
	free(expect);
	expect = xasprintf("azs_usaged_http_request_duration_seconds_sum{api=\"commerce\"} %d\n"
	                   "azs_usaged_http_request_duration_seconds_count{api=\"commerce\"} %d\n",
	                   THREADS * THREAD_RUNS / 4, THREADS * THREAD_RUNS);
	assert_non_null(strstr(text, expect));
}

/* Render, checking the text against the format's grammar. */
static char *
render(struct metrics *m)
{
	char *text = NULL;
	size_t size = 0;

	assert_int_equal(metrics_render(m, &text, &size), 0);
	assert_non_null(text);
	assert_int_equal(strlen(text), size);
	assert_exposition_valid(text);
	return text;
}

/*
 * The text format 0.0.4, line by line: "# HELP name text" then "# TYPE name type" for each family
 * before its samples; sample names are the family name (plus _bucket, _sum, _count for a
 * histogram); labels name="value" with only \\, \" and \n escapes; le on every bucket; values
 * parse as floats; every line ends with a newline.
 */
static void
assert_exposition_valid(const char *text)
{
	char family[256] = "", type[16] = "";
	const char *line = text;

	assert_true(*text == '\0' || text[strlen(text) - 1] == '\n');
	while (*line) {
		const char *end = strchr(line, '\n');
		_cleanup_free_ char *l = xstrndup(line, (size_t)(end - line));
		char name[256], *p;

		if (strncmp(l, "# HELP ", 7) == 0) {
			assert_int_equal(sscanf(l + 7, "%255s", family), 1);
			type[0] = '\0';
			for (p = l + 7 + strlen(family) + 1; *p; p++)
				if (*p == '\\')
					assert_non_null(strchr("\\n", *++p));
		} else if (strncmp(l, "# TYPE ", 7) == 0) {
			assert_int_equal(sscanf(l + 7, "%255s %15s", name, type), 2);
			assert_string_equal(name, family);
			assert_true(streq(type, "counter") || streq(type, "gauge") ||
			            streq(type, "histogram"));
		} else {
			size_t n = strcspn(l, "{ ");
			bool histogram = streq(type, "histogram"), le = false;

			assert_true(n < sizeof(name));
			memcpy(name, l, n);
			name[n] = '\0';
			assert_true(type[0] != '\0');
			if (histogram) {
				size_t f = strlen(family);

				assert_memory_equal(name, family, f);
				assert_true(streq(name + f, "_bucket") || streq(name + f, "_sum") ||
				            streq(name + f, "_count"));
			} else {
				assert_string_equal(name, family);
			}
			p = l + n;
			if (*p == '{') {
				p++;
				while (*p != '}') {
					size_t k = strcspn(p, "=");

					le |= k == 2 && strncmp(p, "le", 2) == 0;
					p += k;
					assert_true(p[0] == '=' && p[1] == '"');
					for (p += 2; *p != '"'; p++) {
						assert_true(*p != '\0');
						if (*p == '\\')
							assert_non_null(strchr("\\\"n", *++p));
					}
					p++;
					if (*p == ',')
						p++;
					else
						assert_int_equal(*p, '}');
				}
				p++;
			}
			assert_int_equal(le, histogram && strstr(name, "_bucket") != NULL);
			assert_int_equal(*p, ' ');
			assert_true(sample_value_valid(p + 1));
		}
		line = end + 1;
	}
}

/* A sample value Prometheus parses. */
static bool
sample_value_valid(const char *s)
{
	char *end;

	if (streq(s, "NaN") || streq(s, "+Inf") || streq(s, "-Inf"))
		return true;
	if (!*s)
		return false;
	(void)strtod(s, &end);
	return *end == '\0' && !strpbrk(s, "iInN");
}

/* One thread's updates. */
static void *
hammer(void *arg)
{
	struct metrics *m = arg;
	struct metrics_series *retries =
	        metrics_get_series(metrics_get_family(m, METRICS_FORWARD_RETRIES_TOTAL), NULL);
	struct metrics_series *oldest =
	        metrics_get_series(metrics_get_family(m, METRICS_OLDEST_PENDING_SECONDS), NULL);

	for (int i = 0; i < THREAD_RUNS; i++) {
		metrics_counter_add(retries, 1);
		metrics_inc(m, METRICS_RECORDS_FORWARDED_TOTAL, i % 2 ? "Accepted" : "Duplicate");
		metrics_observe(m, METRICS_HTTP_REQUEST_DURATION_SECONDS, "commerce", 0.25);
		metrics_gauge_add(oldest, 1);
	}
	return NULL;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_metrics_render_small_registry),
	        cmocka_unit_test(test_metrics_render_escaping),
	        cmocka_unit_test(test_metrics_render_histogram_buckets),
	        cmocka_unit_test(test_metrics_render_histogram_no_bounds),
	        cmocka_unit_test(test_metrics_render_values),
	        cmocka_unit_test(test_metrics_gauge_add_and_read),
	        cmocka_unit_test(test_metrics_new_daemon_every_family),
	        cmocka_unit_test(test_metrics_new_daemon_shorthands),
	        cmocka_unit_test(test_metrics_render_family_without_series),
	        cmocka_unit_test(test_metrics_add_family_invalid),
	        cmocka_unit_test(test_metrics_get_series_other),
	        cmocka_unit_test(test_metrics_null_is_no_op),
	        cmocka_unit_test(test_metrics_concurrent_updates),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
