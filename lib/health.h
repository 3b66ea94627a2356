/*
 * The health server (ARCHITECTURE.md section 8): a small libevent evhttp server on [health]
 * listen (loopback by default) that answers
 *
 *   GET /healthz    200 "ok" while the loop runs (its heartbeat is fresh), else 503
 *   GET /readyz     200 {"ready":true,"reasons":[]} or 503 {"ready":false,"reasons":["..."]}
 *   GET /metrics    the metrics registry in the Prometheus text format
 *   GET /v1/status  JSON: version, uptime, ready, counts by state, oldest pending age, cursor
 *                   hour, registration age, last success per pipeline
 *
 * Anything else is 404, a method other than GET 405 (with Allow: GET). Requests are small: headers
 * over HEALTH_MAX_HEADERS bytes or a body over HEALTH_MAX_BODY bytes are refused by evhttp (the
 * connection is answered 413 or closed).
 *
 * The server runs on a small thread of its own with its own event base, so that a monitor's
 * question is answered at once however busy the loop is (the loop's own turns, storing pages,
 * building and compressing batches, last tens of milliseconds on a busy machine, and an answer
 * made on the loop waited for several of them). The loop keeps a heartbeat: a timer on it
 * notes the time every HEALTH_BEAT_MSEC. /healthz is answered by the thread from the heartbeat
 * alone: 200 while it is fresh (the loop ran its timers within the last HEALTH_STALL_MSEC), else
 * 503 with how long the loop has not turned. /readyz, /metrics and /v1/status are handed to the
 * loop, which makes the answer from what the callbacks say (they run on the loop, as before, and
 * must be cheap: counters in memory, the store's kept counts) and hands it back for the thread to
 * send; at most HEALTH_JOBS_MAX wait at a time, more are answered 503 at once, in the shape of
 * the path's answer: /readyz {"ready":false,"reasons":["busy: ..."]} and /v1/status {"error":
 * "busy: ..."} as JSON, /metrics as text, each with Retry-After.
 *
 * At health_stop() the server stops listening, answers the questions still waiting for the loop
 * 503 (stopping, in the same shapes) and lets its thread run until every answer made is written
 * to its connection, at most HEALTH_DRAIN_MSEC, before it closes the connections.
 *
 * Readiness is the sum of checks: the daemon adds one per module (health_add_check), and each
 * adds zero or more reasons (health_reasons_add) when asked. The server knows nothing of the
 * modules and shows only what the checks and the status callback give it: the daemon must never
 * put a secret, a token or a record's content in a reason. /readyz and /metrics also set the gauge
 * azs_usaged_ready (1 ready, 0 not), which the health server adds to the metrics registry.
 *
 * Only this module touches evhttp. Ownership: the server borrows the event base and the metrics
 * registry (they must outlive it) and copies the strings of its options. Every function here and
 * every callback (checks, refresh, status) runs on the loop's thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HEALTH_MAX_HEADERS  8192 /* bytes of the request line and headers */
#define HEALTH_MAX_BODY     1024 /* bytes; a GET has none */
#define HEALTH_REASONS_MAX  32   /* reasons kept per question; more are dropped */
#define HEALTH_REASON_MAX   200  /* bytes per reason, longer ones are cut */
#define HEALTH_COUNTS_MAX   16   /* counts by state in /v1/status */
#define HEALTH_READY_METRIC "azs_usaged_ready"
#define HEALTH_CONTENT_JSON "application/json"
#define HEALTH_CONTENT_TEXT "text/plain; charset=utf-8"
#define HEALTH_BEAT_MSEC    1000 /* the loop notes that it runs this often */
/*
 * /healthz says 503 once the heartbeat is older. Well above the store's busy time-out (5 s per
 * statement): a loop waiting for the store's lock behind azs-usagectl or a backup is not stuck,
 * and a liveness probe must not restart it.
 */
#define HEALTH_STALL_MSEC 15000
#define HEALTH_JOBS_MAX   64  /* questions waiting for the loop at a time */
#define HEALTH_DRAIN_MSEC 500 /* at stop, answers made are written for at most this long */

struct event_base;
struct metrics;
struct health;
struct health_reasons;

/* A readiness check: add a reason (health_reasons_add) for each thing that is not ready. */
typedef void (*health_check_fn)(void *userdata, struct health_reasons *reasons);

/* Add a reason why the daemon is not ready (printf-style; cut at HEALTH_REASON_MAX). */
void health_reasons_add(struct health_reasons *reasons, const char *format, ...)
        __attribute__((format(printf, 2, 3)));

/* What /v1/status shows beside the version, the uptime and readiness; -1 or 0 where unknown. */
struct health_status {
	struct {
		const char
		        *state; /* e.g. "pending"; borrowed until the callback's caller returns */
		uint64_t count;
	} counts[HEALTH_COUNTS_MAX];
	size_t n_counts;
	int64_t oldest_pending_seconds;   /* age of the oldest pending record; -1: none */
	int64_t cursor;                   /* end of the newest hour collected (epoch s); 0: none */
	int64_t registration_age_seconds; /* -1: no registration cached */
	int64_t last_collect_success;     /* epoch seconds of the last page stored; 0: none */
	int64_t last_forward_success;     /* epoch seconds of the last batch accepted; 0: none */
};

struct health_options {
	const char *address;     /* numeric IPv4 or IPv6 address; NULL: 127.0.0.1 */
	uint16_t port;           /* 0: any free port (tests; see health_get_port) */
	const char *version;     /* shown by /v1/status; NULL: "unknown" */
	struct metrics *metrics; /* /metrics; NULL: /metrics answers 404 */
	/* Called before /metrics is rendered, to bring gauges up to date (records{state},
	 * oldest_pending_seconds, ...). NULL: none. */
	void (*refresh)(void *userdata, struct metrics *metrics);
	/* Fills *ret (already set to "unknown") for /v1/status. NULL: only the defaults. */
	void (*status)(void *userdata, struct health_status *ret);
	void *userdata;      /* of refresh and status */
	uint64_t beat_usec;  /* 0: HEALTH_BEAT_MSEC (tests set less) */
	uint64_t stall_usec; /* 0: HEALTH_STALL_MSEC (tests set less) */
};

/*
 * Make the server and add azs_usaged_ready to the metrics registry. -EINVAL for an address that
 * is not a numeric IP, -EEXIST when the registry has the ready gauge already, -ENOMEM.
 */
int health_new(struct event_base *base, const struct health_options *options, struct health **ret);

/*
 * Add a readiness check; checks run in the order added. name says whose it is (debug logs).
 * Returns 0 or -E2BIG past 16 checks.
 */
int health_add_check(struct health *h, const char *name, health_check_fn fn, void *userdata);

/*
 * Bind and listen (health_get_port says where); nothing answers until health_start(). Returns 0
 * (also when listening already) or the errno of socket, bind or listen: -EADDRINUSE,
 * -EADDRNOTAVAIL, -EACCES, ...; logs nothing, the caller names the address.
 */
int health_listen(struct health *h);

/*
 * Listen (health_listen, when not yet) and start the server's thread; the heartbeat starts
 * fresh. Returns 0, an error of health_listen() (not logged), or the error of what failed after
 * listening (an eventfd, an event base or event, evhttp, the thread), which is logged here,
 * naming it; then nothing of the server is left.
 */
int health_start(struct health *h);

/*
 * Stop listening, answer what waits (503), write the answers made (at most HEALTH_DRAIN_MSEC),
 * close every connection and end the thread (from the loop). Accepts NULL.
 */
void health_stop(struct health *h);

/* Stop and free. Accepts NULL; returns NULL. */
struct health *health_free(struct health *h);

/* The port listened on (after health_listen or health_start), 0 when not listening. */
uint16_t health_get_port(const struct health *h);

/* How many questions wait for the loop, or for their answer to be sent, now (tests). */
size_t health_get_waiting(struct health *h);

/*
 * Run every check now: true when ready. With ret_reasons, a new NULL-terminated array of new
 * strings (free with health_strv_free), empty when ready. Also sets azs_usaged_ready.
 */
bool health_is_ready(struct health *h, char ***ret_reasons);

/* Free a NULL-terminated array of strings. Accepts NULL; returns NULL. */
char **health_strv_free(char **strv);

/*
 * The rule of /healthz: is a heartbeat noted at beat_usec still fresh at now_usec (both
 * monotonic)? True while less than stall_usec old; a beat later than now (noted by the loop
 * after the caller read the clock) is fresh.
 */
bool health_beat_fresh(uint64_t beat_usec, uint64_t now_usec, uint64_t stall_usec);
