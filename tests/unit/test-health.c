/*
 * Unit tests for lib/health.c: a real evhttp server on a loopback port, on its own thread, that
 * hands questions to this process's loop, asked over a plain socket by the test (the loop turns
 * while the test waits for the answer, unless the test keeps it still): /healthz, /readyz with
 * reasons that appear and clear, /metrics refreshed before rendering and with azs_usaged_ready,
 * /v1/status, 404, 405, oversized headers and bodies, bind errors, stop; the heartbeat rule,
 * /healthz 503 while the loop does not turn and 200 once it has, the bound on questions waiting
 * for the loop, and a stop or a client gone while questions wait.
 *
 * With --dump-metrics it prints instead what /metrics answers for the daemon's registry with a
 * sample of every kind of series, for `promtool check metrics` (tests/monitoring/promtool.sh).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "health.h"
#include "macro.h"
#include "metrics.h"
#include "timeutil.h"
#include "xmalloc.h"

/* What a fake module says about itself. */
struct fake_module {
	const char *reasons[4];
	unsigned asked;
};

struct fake_daemon {
	struct metrics *metrics;
	unsigned refreshed;
	uint64_t pending;
	bool with_status;
};

/* One answer as the test read it off the socket. */
struct answer {
	int status; /* 0: the connection closed without an answer */
	char *head; /* status line and headers */
	char *body;
};

struct fixture {
	struct event_base *base;
	struct health *health;
	struct metrics *metrics;
	struct fake_daemon daemon;
	struct fake_module store, registry;
};

static int fixture_setup(void **state);
static int fixture_teardown(void **state);
static struct answer ask(struct fixture *f, const char *request);
static struct answer get(struct fixture *f, const char *path);
static int send_get(uint16_t port, const char *path);
static struct answer receive(struct event_base *base, int fd);
static void answer_done(struct answer *a);
static bool has_header(const struct answer *a, const char *line);
static json_t *body_json(const struct answer *a);
static void check_fake(void *userdata, struct health_reasons *reasons);
static void refresh_fake(void *userdata, struct metrics *metrics);
static void status_fake(void *userdata, struct health_status *ret);
static int dump_metrics(void);

/* /healthz answers 200 while the loop runs. */
static void
test_health_healthz_ok(void **state)
{
	struct fixture *f = *state;
	struct answer a = get(f, "/healthz");

	assert_int_equal(a.status, 200);
	assert_string_equal(a.body, "ok\n");
	assert_true(has_header(&a, "Cache-Control: no-store"));
	answer_done(&a);
}

/* /readyz without a reason: 200 and an empty list. */
static void
test_health_readyz_ready(void **state)
{
	struct fixture *f = *state;
	struct answer a = get(f, "/readyz");

	assert_int_equal(a.status, 200);
	assert_string_equal(a.body, "{\"ready\":true,\"reasons\":[]}");
	assert_true(has_header(&a, "Content-Type: application/json"));
	assert_int_equal(f->store.asked, 1);
	assert_int_equal(f->registry.asked, 1);
	answer_done(&a);
}

/* Reasons of every check appear in order, and clear when the checks say so. */
static void
test_health_readyz_reasons_appear_and_clear(void **state)
{
	struct fixture *f = *state;
	struct answer a;
	char **reasons = NULL;

	f->store.reasons[0] = "store is full";
	f->store.reasons[1] = "store is not writable";
	f->registry.reasons[0] = "registration cache stale";
	a = get(f, "/readyz");
	assert_int_equal(a.status, 503);
	assert_string_equal(a.body, "{\"ready\":false,\"reasons\":[\"store is full\",\"store is "
	                            "not writable\",\"registration cache stale\"]}");
	answer_done(&a);

	assert_false(health_is_ready(f->health, &reasons));
	assert_string_equal(reasons[0], "store is full");
	assert_string_equal(reasons[2], "registration cache stale");
	assert_null(reasons[3]);
	reasons = health_strv_free(reasons);

	f->store.reasons[0] = NULL;
	a = get(f, "/readyz");
	assert_int_equal(a.status, 503);
	assert_string_equal(a.body, "{\"ready\":false,\"reasons\":[\"registration cache stale\"]}");
	answer_done(&a);

	f->registry.reasons[0] = NULL;
	a = get(f, "/readyz");
	assert_int_equal(a.status, 200);
	assert_string_equal(a.body, "{\"ready\":true,\"reasons\":[]}");
	answer_done(&a);
	assert_true(health_is_ready(f->health, &reasons));
	assert_null(reasons[0]);
	health_strv_free(reasons);
}

/* A long reason is cut on a character boundary; past HEALTH_REASONS_MAX they are summed up. */
static void
test_health_readyz_reasons_bounded(_unused_ void **state)
{
	struct event_base *base = event_base_new();
	struct health *h = NULL;
	char **strv = NULL;
	char long_reason[3 * HEALTH_REASON_MAX];

	assert_non_null(base);
	assert_int_equal(health_new(base, &(struct health_options){0}, &h), 0);
	/* "é" is two bytes: the cut must not split one */
	for (size_t i = 0; i + 2 < sizeof(long_reason); i += 2)
		memcpy(long_reason + i, "\xc3\xa9", 2);
	long_reason[sizeof(long_reason) - 1 - (sizeof(long_reason) - 1) % 2] = '\0';
	assert_int_equal(health_add_check(h, "long", check_fake,
	                                  &(struct fake_module){.reasons = {long_reason}}),
	                 0);
	assert_false(health_is_ready(h, &strv));
	assert_true(strlen(strv[0]) <= HEALTH_REASON_MAX);
	assert_true(strlen(strv[0]) >= HEALTH_REASON_MAX - 1);
	assert_int_equal(strlen(strv[0]) % 2, 0);
	health_strv_free(strv);
	health_free(h);
	event_base_free(base);
}

/* Many checks: the list is capped and says how many more there were. */
static void
test_health_readyz_many_reasons(void **state)
{
	struct fixture *f = *state;
	struct fake_module m = {.reasons = {"a", "b", "c", "d"}};
	struct answer a;
	json_t *j, *reasons;
	int r = 0;

	/* 2 checks of the fixture, then as many as allowed of four reasons each */
	while (r == 0)
		r = health_add_check(f->health, "many", check_fake, &m);
	assert_int_equal(r, -E2BIG);
	a = get(f, "/readyz");
	assert_int_equal(a.status, 503);
	j = body_json(&a);
	reasons = json_object_get(j, "reasons");
	assert_int_equal(json_array_size(reasons), HEALTH_REASONS_MAX + 1);
	assert_string_equal(json_string_value(json_array_get(reasons, HEALTH_REASONS_MAX)),
	                    "and 24 more");
	json_decref(j);
	answer_done(&a);
}

/* /metrics: gauges refreshed just before rendering, the ready gauge, the content type. */
static void
test_health_metrics_refreshed(void **state)
{
	struct fixture *f = *state;
	struct answer a;

	f->daemon.pending = 7;
	a = get(f, "/metrics");
	assert_int_equal(a.status, 200);
	assert_true(has_header(&a, "Content-Type: " METRICS_CONTENT_TYPE));
	assert_int_equal(f->daemon.refreshed, 1);
	assert_non_null(strstr(a.body, "\nazs_usaged_records{state=\"pending\"} 7\n"));
	assert_non_null(strstr(a.body, "\nazs_usaged_build_info{version=\"9.8.7\"} 1\n"));
	assert_non_null(strstr(a.body, "# TYPE azs_usaged_ready gauge\nazs_usaged_ready 1\n"));
	answer_done(&a);

	f->daemon.pending = 8;
	f->registry.reasons[0] = "registration cache stale";
	a = get(f, "/metrics");
	assert_int_equal(a.status, 200);
	assert_int_equal(f->daemon.refreshed, 2);
	assert_non_null(strstr(a.body, "\nazs_usaged_records{state=\"pending\"} 8\n"));
	assert_non_null(strstr(a.body, "\nazs_usaged_ready 0\n"));
	answer_done(&a);
}

/* The ready gauge can be added once per registry. */
static void
test_health_new_twice_on_one_registry(void **state)
{
	struct fixture *f = *state;
	struct health *h = NULL;

	assert_int_equal(health_new(f->base, &(struct health_options){.metrics = f->metrics}, &h),
	                 -EEXIST);
	assert_null(h);
}

/* /v1/status: what the callback says, with the version, the uptime and readiness. */
static void
test_health_status(void **state)
{
	struct fixture *f = *state;
	struct answer a;
	json_t *j;

	f->daemon.with_status = true;
	f->daemon.pending = 3;
	f->store.reasons[0] = "a held record exists";
	a = get(f, "/v1/status");
	assert_int_equal(a.status, 200);
	j = body_json(&a);
	assert_string_equal(json_string_value(json_object_get(j, "version")), "9.8.7");
	assert_true(json_is_integer(json_object_get(j, "uptime_seconds")));
	assert_true(json_is_false(json_object_get(j, "ready")));
	assert_string_equal(json_string_value(json_array_get(json_object_get(j, "reasons"), 0)),
	                    "a held record exists");
	assert_int_equal(
	        json_integer_value(json_object_get(json_object_get(j, "records"), "pending")), 3);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "records"), "dead")),
	                 1);
	assert_int_equal(json_integer_value(json_object_get(j, "oldest_pending_seconds")), 42);
	assert_string_equal(json_string_value(json_object_get(j, "cursor_hour")),
	                    "2024-05-01T10:00:00Z");
	assert_int_equal(json_integer_value(json_object_get(j, "cursor_timestamp")), 1714557600);
	assert_true(json_is_null(json_object_get(j, "registration_age_seconds")));
	assert_string_equal(
	        json_string_value(json_object_get(json_object_get(j, "last_success"), "collect")),
	        "2024-05-01T11:05:00Z");
	assert_true(json_is_null(json_object_get(json_object_get(j, "last_success"), "forward")));
	json_decref(j);
	answer_done(&a);
}

/* Without a status callback every field is there, unknown. */
static void
test_health_status_defaults(void **state)
{
	struct fixture *f = *state;
	struct answer a = get(f, "/v1/status");
	json_t *j;

	assert_int_equal(a.status, 200);
	j = body_json(&a);
	assert_true(json_is_true(json_object_get(j, "ready")));
	assert_int_equal(json_object_size(json_object_get(j, "records")), 0);
	assert_true(json_is_null(json_object_get(j, "oldest_pending_seconds")));
	assert_true(json_is_null(json_object_get(j, "cursor_hour")));
	assert_true(json_is_null(json_object_get(j, "registration_age_seconds")));
	json_decref(j);
	answer_done(&a);
}

/* Any other path is 404, whatever the method. */
static void
test_health_unknown_path_404(void **state)
{
	static const char *const paths[] = {
	        "/", "/healthz/", "/readyz/x", "/v1", "/metrics.txt", "/HEALTHZ", "/v1/status/.."};
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(paths); i++) {
		struct answer a = get(f, paths[i]);

		assert_int_equal(a.status, 404);
		answer_done(&a);
	}
	{
		struct answer a = ask(f, "DELETE /nope HTTP/1.1\r\nHost: x\r\nConnection: "
		                         "close\r\n\r\n");

		assert_int_equal(a.status, 404);
		answer_done(&a);
	}
}

/* Another method on a known path is 405 with Allow: GET; nothing is asked of the checks. */
static void
test_health_method_405(void **state)
{
	static const char *const methods[] = {"POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"};
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(methods); i++) {
		char request[256];
		struct answer a;

		snprintf(request, sizeof(request),
		         "%s /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: "
		         "close\r\n\r\n",
		         methods[i]);
		a = ask(f, request);
		assert_int_equal(a.status, 405);
		assert_true(has_header(&a, "Allow: GET"));
		answer_done(&a);
	}
	assert_int_equal(f->store.asked, 0);
}

/* Headers over HEALTH_MAX_HEADERS are refused, not served. */
static void
test_health_oversized_headers_refused(void **state)
{
	struct fixture *f = *state;
	size_t n = 2 * HEALTH_MAX_HEADERS;
	_cleanup_free_ char *request = xmalloc(n + 256);
	_cleanup_free_ char *filler = xmalloc(n + 1);
	struct answer a;

	memset(filler, 'a', n);
	filler[n] = '\0';
	snprintf(request, n + 256, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: %s\r\n\r\n",
	         filler);
	a = ask(f, request);
	/* evhttp (2.1) answers 400 Bad Request and closes the connection */
	assert_int_equal(a.status, 400);
	answer_done(&a);

	/* and the server goes on answering */
	a = get(f, "/healthz");
	assert_int_equal(a.status, 200);
	answer_done(&a);
}

/* A body over HEALTH_MAX_BODY is refused with 413. */
static void
test_health_oversized_body_refused(void **state)
{
	struct fixture *f = *state;
	size_t n = 4 * HEALTH_MAX_BODY;
	_cleanup_free_ char *request = xmalloc(n + 256);
	int len;
	struct answer a;

	len = snprintf(request, n + 256,
	               "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\nConnection: "
	               "close\r\n\r\n",
	               n);
	memset(request + len, 'b', n);
	request[len + n] = '\0';
	a = ask(f, request);
	assert_int_equal(a.status, 413);
	answer_done(&a);
}

/* Addresses that are not numeric IPs are refused at once; brackets around IPv6 are fine. */
static void
test_health_new_bad_address(void **state)
{
	struct fixture *f = *state;
	static const char *const bad[] = {"localhost", "", "1.2.3", "[127.0.0.1", "::1]"};
	struct health *h = NULL;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_int_equal(
		        health_new(f->base, &(struct health_options){.address = bad[i]}, &h),
		        -EINVAL);
	assert_int_equal(health_new(f->base, &(struct health_options){.address = "[::1]"}, &h), 0);
	h = health_free(h);
}

/* The heartbeat rule at its edges. */
static void
test_health_beat_fresh_rule(_unused_ void **state)
{
	uint64_t stall = HEALTH_STALL_MSEC * USEC_PER_MSEC;

	assert_true(health_beat_fresh(1000, 1000, 500));
	assert_true(health_beat_fresh(1000, 1499, 500));
	assert_false(health_beat_fresh(1000, 1500, 500));
	assert_false(health_beat_fresh(1000, UINT64_MAX, 500));
	/* noted by the loop after the reader took the time */
	assert_true(health_beat_fresh(2000, 1000, 500));
	assert_true(health_beat_fresh(UINT64_MAX, 0, 1));
	/* the defaults: a beat of a second is fresh, a stall of the whole time is not */
	assert_true(HEALTH_BEAT_MSEC < HEALTH_STALL_MSEC);
	assert_true(health_beat_fresh(0, HEALTH_BEAT_MSEC * USEC_PER_MSEC, stall));
	assert_false(health_beat_fresh(0, stall, stall));
}

/*
 * /healthz is the thread's: while the loop does not turn (the test does not run it, as a loop
 * stuck in a callback would not) it says 503 and for how long, once the heartbeat is older than
 * the stall time; /readyz waits for the loop meanwhile; after the loop has turned /healthz says
 * 200 again.
 */
static void
test_health_healthz_loop_stalled(_unused_ void **state)
{
	struct event_base *base = event_base_new();
	struct health_options o = {
	        .address = "127.0.0.1",
	        .beat_usec = 20 * USEC_PER_MSEC,
	        .stall_usec = 200 * USEC_PER_MSEC,
	};
	struct health *h = NULL;
	struct answer a;

	assert_non_null(base);
	assert_int_equal(health_new(base, &o, &h), 0);
	assert_int_equal(health_start(h), 0);

	/* fresh at the start, then old: each answer comes without the loop */
	a = receive(NULL, send_get(health_get_port(h), "/healthz"));
	assert_int_equal(a.status, 200);
	while (a.status == 200) {
		answer_done(&a);
		poll(NULL, 0, 10);
		a = receive(NULL, send_get(health_get_port(h), "/healthz"));
	}
	assert_int_equal(a.status, 503);
	assert_true(has_header(&a, "Content-Type: " HEALTH_CONTENT_TEXT));
	assert_true(strncmp(a.body, "stalled: the loop has not turned for ", 37) == 0);
	assert_true(atoi(a.body + 37) >= 200);
	answer_done(&a);

	/* a question for the loop is answered once it turns; then /healthz says 200 again */
	a = receive(base, send_get(health_get_port(h), "/readyz"));
	assert_int_equal(a.status, 200);
	answer_done(&a);
	a = receive(NULL, send_get(health_get_port(h), "/healthz"));
	assert_int_equal(a.status, 200);
	assert_string_equal(a.body, "ok\n");
	answer_done(&a);

	health_free(h);
	event_base_free(base);
}

#define BUSY "busy: 64 questions wait for the loop"

/*
 * While the loop does not turn, at most HEALTH_JOBS_MAX questions wait for it: the next are
 * answered 503 at once by the thread, in the shape of the path's answer (the contract's
 * {"ready":false,"reasons":[...]} for /readyz, a JSON error object for /v1/status, text for
 * /metrics), with Retry-After. Once the loop turns, it answers every one that waited.
 */
static void
test_health_questions_for_the_loop_bounded(void **state)
{
	struct fixture *f = *state;
	int fds[3 * HEALTH_JOBS_MAX];
	struct answer a[ARRAY_SIZE(fds)];
	size_t n = 0, busy = 0, answered = 0;

	memset(a, 0, sizeof(a));
	while (busy == 0) {
		assert_true(n < ARRAY_SIZE(fds));
		fds[n++] = send_get(health_get_port(f->health), "/readyz");
		for (size_t i = 0; i < n; i++) {
			if (fds[i] < 0 || poll(&(struct pollfd){.fd = fds[i], .events = POLLIN}, 1,
			                       i + 1 == n ? 10 : 0) != 1)
				continue;
			a[i] = receive(NULL, fds[i]);
			fds[i] = -1;
			assert_int_equal(a[i].status, 503);
			assert_string_equal(a[i].body,
			                    "{\"ready\":false,\"reasons\":[\"" BUSY "\"]}");
			assert_true(has_header(&a[i], "Content-Type: " HEALTH_CONTENT_JSON));
			assert_true(has_header(&a[i], "Retry-After: 1"));
			busy++;
		}
	}
	assert_int_equal(f->store.asked, 0);
	assert_true(n > HEALTH_JOBS_MAX);
	assert_int_equal(health_get_waiting(f->health), HEALTH_JOBS_MAX);

	/* the loop still does not turn: the other paths are busy too, each in its shape */
	{
		struct answer b = receive(NULL, send_get(health_get_port(f->health), "/v1/status"));
		json_t *j;

		assert_int_equal(b.status, 503);
		assert_true(has_header(&b, "Content-Type: " HEALTH_CONTENT_JSON));
		assert_true(has_header(&b, "Retry-After: 1"));
		j = body_json(&b);
		assert_true(json_is_object(j));
		assert_string_equal(json_string_value(json_object_get(j, "error")), BUSY);
		json_decref(j);
		answer_done(&b);

		b = receive(NULL, send_get(health_get_port(f->health), "/metrics"));
		assert_int_equal(b.status, 503);
		assert_true(has_header(&b, "Content-Type: " HEALTH_CONTENT_TEXT));
		assert_true(has_header(&b, "Retry-After: 1"));
		assert_string_equal(b.body, BUSY "\n");
		answer_done(&b);
	}

	for (size_t i = 0; i < n; i++) {
		if (fds[i] >= 0) {
			a[i] = receive(f->base, fds[i]);
			assert_true(a[i].status == 200 ||
			            (a[i].status == 503 && strstr(a[i].body, BUSY)));
		}
		answered += a[i].status == 200;
		answer_done(&a[i]);
	}
	assert_true(answered >= HEALTH_JOBS_MAX);
	assert_int_equal(f->store.asked, answered);
}

/*
 * Questions still waiting for the loop when the server stops are answered 503 "stopping" in
 * their path's shape, with Connection: close, and answers the loop made are delivered; questions
 * whose client left before the loop answered end without a leak (the sanitizer build checks);
 * nothing is asked of the checks after the stop; the server starts again afterwards.
 */
static void
test_health_stop_while_questions_wait(void **state)
{
	struct fixture *f = *state;
	int fds[8];
	unsigned asked;
	struct answer a;

	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		fds[i] = send_get(health_get_port(f->health), i % 2 ? "/metrics" : "/v1/status");
	/* the odd ones leave at once */
	for (size_t i = 1; i < ARRAY_SIZE(fds); i += 2)
		close(fds[i]);
	for (size_t i = 0; i < ARRAY_SIZE(fds); i += 2) {
		a = receive(f->base, fds[i]);
		assert_int_equal(a.status, 200);
		answer_done(&a);
	}

	/* every question waits for the loop (the thread has read them all), then the stop */
	asked = f->store.asked;
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		fds[i] = send_get(health_get_port(f->health), i % 2   ? "/metrics"
		                                              : i % 4 ? "/readyz"
		                                                      : "/v1/status");
	while (health_get_waiting(f->health) < ARRAY_SIZE(fds))
		poll(NULL, 0, 1);
	for (size_t i = 1; i < ARRAY_SIZE(fds); i += 2)
		close(fds[i]);
	health_stop(f->health);
	for (size_t i = 0; i < ARRAY_SIZE(fds); i += 2) {
		json_t *j;

		a = receive(NULL, fds[i]);
		assert_int_equal(a.status, 503);
		assert_true(has_header(&a, "Content-Type: " HEALTH_CONTENT_JSON));
		assert_true(has_header(&a, "Connection: close"));
		if (i % 4) {
			assert_string_equal(a.body, "{\"ready\":false,\"reasons\":[\"stopping\"]}");
		} else {
			j = body_json(&a);
			assert_string_equal(json_string_value(json_object_get(j, "error")),
			                    "stopping");
			json_decref(j);
		}
		answer_done(&a);
	}
	assert_int_equal(f->store.asked, asked);

	/* answers the loop made just before the stop are delivered */
	assert_int_equal(health_start(f->health), 0);
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		fds[i] = send_get(health_get_port(f->health), i % 2 ? "/readyz" : "/metrics");
	while (health_get_waiting(f->health) < ARRAY_SIZE(fds))
		poll(NULL, 0, 1);
	event_base_loop(f->base, EVLOOP_NONBLOCK);
	assert_int_equal(f->store.asked, asked + ARRAY_SIZE(fds));
	health_stop(f->health);
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++) {
		a = receive(NULL, fds[i]);
		assert_int_equal(a.status, 200);
		answer_done(&a);
	}

	assert_int_equal(health_start(f->health), 0);
	a = get(f, "/readyz");
	assert_int_equal(a.status, 200);
	answer_done(&a);
}

/* A port in use is -EADDRINUSE; after health_stop the port is closed. */
static void
test_health_port_in_use_and_stop(void **state)
{
	struct fixture *f = *state;
	struct health *h = NULL;
	uint16_t port = health_get_port(f->health);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
	int fd;

	assert_int_not_equal(port, 0);
	assert_int_equal(health_new(f->base,
	                            &(struct health_options){.address = "127.0.0.1", .port = port},
	                            &h),
	                 0);
	assert_int_equal(health_start(h), -EADDRINUSE);
	assert_int_equal(health_get_port(h), 0);
	h = health_free(h);

	health_stop(f->health);
	assert_int_equal(health_get_port(f->health), 0);
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), -1);
	assert_int_equal(errno, ECONNREFUSED);
	close(fd);

	/* started again, it answers */
	assert_int_equal(health_start(f->health), 0);
	{
		struct answer a = get(f, "/healthz");

		assert_int_equal(a.status, 200);
		answer_done(&a);
	}
	health_stop(NULL);
	assert_null(health_free(NULL));
}

/*
 * A failure after the bind (here: no descriptor left for the eventfd) comes back as its error,
 * with nothing of the server left: not listening, the port free; started again, it answers.
 */
static void
test_health_start_fails_after_bind(void **state)
{
	struct fixture *f = *state;
	struct rlimit old, low;
	uint16_t port;
	int fd, r;
	struct answer a;

	health_stop(f->health);
	assert_int_equal(health_listen(f->health), 0);
	port = health_get_port(f->health);
	assert_int_not_equal(port, 0);
	/* the lowest free descriptor is the limit: the next one made fails */
	fd = dup(0);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = (struct rlimit){.rlim_cur = (rlim_t)fd, .rlim_max = old.rlim_max};
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	r = health_start(f->health);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(r, -EMFILE);
	assert_int_equal(health_get_port(f->health), 0);
	assert_int_equal(health_get_waiting(f->health), 0);

	/* the listening socket was closed */
	{
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
		assert_true(c >= 0);
		assert_int_equal(connect(c, (struct sockaddr *)&sin, sizeof(sin)), -1);
		assert_int_equal(errno, ECONNREFUSED);
		close(c);
	}

	assert_int_equal(health_start(f->health), 0);
	assert_int_not_equal(health_get_port(f->health), 0);
	a = get(f, "/readyz");
	assert_int_equal(a.status, 200);
	answer_done(&a);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_health_healthz_ok, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_readyz_ready, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_readyz_reasons_appear_and_clear,
	                                        fixture_setup, fixture_teardown),
	        cmocka_unit_test(test_health_readyz_reasons_bounded),
	        cmocka_unit_test_setup_teardown(test_health_readyz_many_reasons, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_metrics_refreshed, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_new_twice_on_one_registry,
	                                        fixture_setup, fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_status, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_status_defaults, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_unknown_path_404, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_method_405, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_oversized_headers_refused,
	                                        fixture_setup, fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_oversized_body_refused, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_new_bad_address, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_port_in_use_and_stop, fixture_setup,
	                                        fixture_teardown),
	        cmocka_unit_test(test_health_beat_fresh_rule),
	        cmocka_unit_test(test_health_healthz_loop_stalled),
	        cmocka_unit_test_setup_teardown(test_health_questions_for_the_loop_bounded,
	                                        fixture_setup, fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_stop_while_questions_wait,
	                                        fixture_setup, fixture_teardown),
	        cmocka_unit_test_setup_teardown(test_health_start_fails_after_bind, fixture_setup,
	                                        fixture_teardown),
	};

	if (argc == 2 && strcmp(argv[1], "--dump-metrics") == 0)
		return dump_metrics() < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* A server on 127.0.0.1 (any port) with two fake checks and the daemon's registry. */
static int
fixture_setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct health_options o = {
	        .address = "127.0.0.1",
	        .version = "9.8.7",
	        .refresh = refresh_fake,
	        .status = status_fake,
	};

	f->base = event_base_new();
	assert_non_null(f->base);
	f->metrics = metrics_new_daemon("9.8.7");
	f->daemon.metrics = f->metrics;
	o.metrics = f->metrics;
	o.userdata = &f->daemon;
	assert_int_equal(health_new(f->base, &o, &f->health), 0);
	assert_int_equal(health_add_check(f->health, "store", check_fake, &f->store), 0);
	assert_int_equal(health_add_check(f->health, "registry", check_fake, &f->registry), 0);
	assert_int_equal(health_start(f->health), 0);
	assert_int_not_equal(health_get_port(f->health), 0);
	*state = f;
	return 0;
}

static int
fixture_teardown(void **state)
{
	struct fixture *f = *state;

	health_free(f->health);
	metrics_free(f->metrics);
	event_base_free(f->base);
	free(f);
	return 0;
}

/* Send request on a new connection and read the answer, turning the loop meanwhile. */
static struct answer
ask(struct fixture *f, const char *request)
{
	struct sockaddr_in sin = {.sin_family = AF_INET,
	                          .sin_port = htons(health_get_port(f->health))};
	size_t len = strlen(request), sent = 0;
	int fd;

	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	assert_true(fd >= 0);
	assert_true(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 || errno == EINPROGRESS);
	while (sent < len) {
		ssize_t n;

		event_base_loop(f->base, EVLOOP_NONBLOCK);
		n = send(fd, request + sent, len - sent, MSG_NOSIGNAL);
		if (n > 0)
			sent += (size_t)n;
		else if (n < 0 && errno != EAGAIN && errno != EINPROGRESS)
			break; /* refused halfway: read what came back */
		else
			poll(&(struct pollfd){.fd = fd, .events = POLLOUT}, 1, 5);
	}
	return receive(f->base, fd);
}

/* A small GET of path sent on a new connection (to be read with receive()). */
static int
send_get(uint16_t port, const char *path)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
	char request[512];
	int fd, len;

	len = snprintf(request, sizeof(request),
	               "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(send(fd, request, (size_t)len, MSG_NOSIGNAL), len);
	return fd;
}

/*
 * Read until the server closes the connection, then close fd; with base, turn that loop in
 * between (without, the answer must come from the server's thread alone). The test's time-out
 * bounds the wait.
 */
static struct answer
receive(struct event_base *base, int fd)
{
	struct answer a = {0};
	size_t size = 0, cap = 4096;
	char *buf = xmalloc(cap);
	char *end;

	for (;;) {
		ssize_t n;

		if (base)
			event_base_loop(base, EVLOOP_NONBLOCK);
		if (cap - size < 1024)
			buf = xrealloc(buf, cap *= 2);
		n = recv(fd, buf + size, cap - size - 1, MSG_DONTWAIT);
		if (n > 0) {
			size += (size_t)n;
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			break; /* closed (or reset) */
		poll(&(struct pollfd){.fd = fd, .events = POLLIN}, 1, base ? 5 : -1);
	}
	close(fd);
	buf[size] = '\0';

	end = strstr(buf, "\r\n\r\n");
	if (size > 12 && strncmp(buf, "HTTP/1.", 7) == 0 && end) {
		a.status = atoi(buf + 9);
		*end = '\0';
		a.head = xstrdup(buf);
		a.body = xstrdup(end + 4);
	}
	free(buf);
	return a;
}

/* GET path on a connection of its own. */
static struct answer
get(struct fixture *f, const char *path)
{
	char request[512];

	snprintf(request, sizeof(request),
	         "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
	return ask(f, request);
}

static void
answer_done(struct answer *a)
{
	free(a->head);
	free(a->body);
	*a = (struct answer){0};
}

/* True when the answer has exactly this header line. */
static bool
has_header(const struct answer *a, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = a->head; p && (p = strstr(p, "\r\n")); p += 2)
		if (strncmp(p + 2, line, n) == 0 && (p[2 + n] == '\r' || p[2 + n] == '\0'))
			return true;
	return false;
}

static json_t *
body_json(const struct answer *a)
{
	json_t *j = json_loads(a->body, 0, NULL);

	assert_non_null(j);
	return j;
}

/* A fake module's check: its reasons. */
static void
check_fake(void *userdata, struct health_reasons *reasons)
{
	struct fake_module *m = userdata;

	m->asked++;
	for (size_t i = 0; i < ARRAY_SIZE(m->reasons) && m->reasons[i]; i++)
		health_reasons_add(reasons, "%s", m->reasons[i]);
}

/* The daemon's refresh: records{state} from its "store". */
static void
refresh_fake(void *userdata, struct metrics *metrics)
{
	struct fake_daemon *d = userdata;

	d->refreshed++;
	metrics_set(metrics, METRICS_RECORDS, "pending", (double)d->pending);
}

/* The daemon's status, when the test asks for one. */
static void
status_fake(void *userdata, struct health_status *ret)
{
	struct fake_daemon *d = userdata;

	if (!d->with_status)
		return;
	ret->counts[0].state = "pending";
	ret->counts[0].count = d->pending;
	ret->counts[1].state = "dead";
	ret->counts[1].count = 1;
	ret->n_counts = 2;
	ret->oldest_pending_seconds = 42;
	ret->cursor = 1714557600;
	ret->last_collect_success = 1714561500;
}

/* --dump-metrics: /metrics of the daemon's registry, every kind of series sampled, on stdout. */
static int
dump_metrics(void)
{
	struct fixture *f;
	struct answer a;

	fixture_setup((void **)&f);
	metrics_add(f->metrics, METRICS_RECORDS_COLLECTED_TOTAL, NULL, 12);
	metrics_inc(f->metrics, METRICS_RECORDS_FORWARDED_TOTAL, "accepted");
	metrics_set(f->metrics, METRICS_RECORDS, "dead", 2);
	metrics_set(f->metrics, METRICS_OLDEST_PENDING_SECONDS, NULL, 93.5);
	metrics_inc(f->metrics, METRICS_COLLECT_PAGES_TOTAL, "ok");
	metrics_inc(f->metrics, METRICS_FORWARD_BATCHES_TOTAL, "throttled");
	metrics_observe(f->metrics, METRICS_HTTP_REQUEST_DURATION_SECONDS, "usage", 0.2);
	metrics_observe(f->metrics, METRICS_HTTP_REQUEST_DURATION_SECONDS, "commerce", 31);
	f->daemon.pending = 5;
	a = get(f, "/metrics");
	if (a.status != 200) {
		fprintf(stderr, "/metrics answered %d\n", a.status);
		answer_done(&a);
		fixture_teardown((void **)&f);
		return -EIO;
	}
	fputs(a.body, stdout);
	answer_done(&a);
	fixture_teardown((void **)&f);
	return 0;
}
