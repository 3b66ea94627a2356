/*
 * The forwarding pipeline: batches from the store to Commerce and their outcomes back into the
 * store (see forwarder.h for the outcome table and the scheduling rules).
 *
 * Every batch in flight is one struct fwd_batch: the claimed records, the built request (its body
 * kept for a re-send after a refused token) and the transport's handle. Its answer is classified
 * by lib/commerce; this file decides what each result means for the schedule and writes one
 * outcome per record with store_apply_outcomes(). Should that transaction fail (a busy or full
 * store), the outcome table is kept and written again a second later: the records stay inflight
 * meanwhile and nothing is claimed twice.
 *
 * One wake timer drives claiming: it fires at the earliest of the next due record, the end of a
 * Retry-After throttle and the idle poll. A reply frees a slot and claims again at once.
 *
 * While Commerce fails as a whole (no connection, time-outs, 408/429/5xx, no token or a refused
 * one: what fail_batch() covers) the forwarder claims no fresh batch: once the batches that
 * were out have come back, one batch at a time probes Commerce. The probe is the batch that
 * failed last, claimed again under its batch id when its backoff has passed (probe_at: the store
 * then holds a batch due for a re-send, which a claim takes before any fresh run); the other
 * failed batches wait with their own backoff. The first batch answered record by record ends the
 * failure and max_inflight batches go out again at once. Without this an outage would claim,
 * encode and fail every batch of the backlog in turn.
 */
#define LOG_MODULE "forwarder"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <event2/event.h>

#include "auth.h"
#include "commerce.h"
#include "forwarder.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define FWD_DEFAULT_BATCH      500
#define FWD_DEFAULT_INFLIGHT   4
#define FWD_DEFAULT_TIMEOUT    (30 * USEC_PER_SEC)
#define FWD_DEFAULT_RETRY_INIT (1 * USEC_PER_SEC)
#define FWD_DEFAULT_RETRY_MAX  (300 * USEC_PER_SEC)
#define FWD_DEFAULT_POLL       (1 * USEC_PER_SEC)
#define FWD_STORE_RETRY_USEC   (1 * USEC_PER_SEC) /* a store error: try again after this */
#define FWD_REASON_MAX         256
#define FWD_HEADERS_MAX        5

/* Kinds of a failure of the whole endpoint: each is logged once per failure. */
enum {
	FWD_FAIL_NO_ANSWER = 1 << 0, /* no connection, time-out, reset */
	FWD_FAIL_HTTP = 1 << 1,      /* 408, 429, 5xx, an unparsable answer */
	FWD_FAIL_AUTH = 1 << 2,      /* 401/403 even with a new token */
	FWD_FAIL_TOKEN = 1 << 3,     /* no token could be had */
};

struct fwd_batch {
	struct forwarder *f;
	struct fwd_batch *next; /* the forwarder's list */
	struct store_batch batch;
	struct commerce_request req;
	bool built;
	void *handle;      /* the transport's, while a request is out */
	bool auth_retried; /* the token was refused once already */
	/* the outcome table waiting to be written (after a store error) */
	struct store_outcome *outcomes;
	struct commerce_response resp;
	char (*split_ids)[STORE_BATCH_ID_LEN + 1];
	struct event *apply_timer;
	char headers_buf[FWD_HEADERS_MAX][128];
	const char *headers[FWD_HEADERS_MAX + 1];
};

struct forwarder {
	struct event_base *base;
	struct store *store;
	struct metrics *metrics;
	struct http_client *http;
	struct auth *auth;
	struct forwarder_transport transport;
	char *url;
	char *audience;
	char *registration;
	struct commerce_options commerce;
	store_map_fn map;
	void *map_userdata;
	bool (*is_stale)(void *userdata);
	void *stale_userdata;
	struct forwarder_settings settings;
	uint64_t poll_usec;
	const struct http_random *random;

	struct event *wake;
	struct event *drain_timer;
	struct event *drain_done;
	forwarder_drained_fn drained;
	void *drained_userdata;

	struct fwd_batch *batches; /* in flight */
	unsigned n_inflight;
	bool started;
	bool draining;

	uint64_t throttled_until; /* realtime usec */
	uint64_t probe_at;        /* while failing: realtime usec of the next probe */
	unsigned fail_count;      /* whole batches failed since Commerce last answered */
	bool holding;
	bool failing;
	bool auth_failing;
	bool store_failing;
	char fail_reason[FWD_REASON_MAX];
	unsigned fail_kinds; /* FWD_FAIL_* seen since Commerce last answered (each logged once) */
	int64_t last_success_at;
};

/* The default transport: a token from lib/auth, then lib/http. */
struct fwd_send {
	struct forwarder *f;
	char *url;
	const char *const *headers;
	const void *body;
	size_t size;
	uint64_t timeout_usec;
	forwarder_reply_fn done;
	void *done_userdata;
	struct auth_wait *wait;
	struct http_request *request;
	char *token;
};

static void schedule(struct forwarder *f);
static void arm_wake(struct forwarder *f, uint64_t delay_usec);
static void batch_send(struct fwd_batch *b);
static void batch_finish(struct fwd_batch *b);
static void batch_free(struct fwd_batch *b);
static void batch_apply(struct fwd_batch *b);
static int64_t backoff_at(struct fwd_batch *b, unsigned attempts);
static void on_reply(const struct forwarder_reply *reply, void *userdata);
static void on_wake(evutil_socket_t fd, short what, void *userdata);
static void on_apply_timer(evutil_socket_t fd, short what, void *userdata);
static void on_drain_timer(evutil_socket_t fd, short what, void *userdata);
static void on_drain_done(evutil_socket_t fd, short what, void *userdata);
static int default_post(void *userdata, const char *url, const char *const *headers,
                        const void *body, size_t size, uint64_t timeout_usec,
                        forwarder_reply_fn done, void *done_userdata, void **ret_handle);
static void default_cancel(void *userdata, void *handle);
static void default_token_refused(void *userdata, const char *token);

/* Make a forwarder. */
int
forwarder_new(struct event_base *base, const struct forwarder_options *o, struct forwarder **ret)
{
	struct forwarder *f;

	if (!base || !o || !ret || !o->store || isempty(o->url) || !o->map)
		return -EINVAL;
	if (!o->transport && (!o->http || !o->auth || isempty(o->audience)))
		return -EINVAL;

	f = xcalloc(1, sizeof(*f));
	f->base = base;
	f->store = o->store;
	f->metrics = o->metrics;
	f->http = o->http;
	f->auth = o->auth;
	if (o->transport)
		f->transport = *o->transport;
	else
		f->transport = (struct forwarder_transport){
		        .post = default_post,
		        .cancel = default_cancel,
		        .token_refused = default_token_refused,
		        .userdata = f,
		};
	f->url = xstrdup(o->url);
	f->audience = o->audience ? xstrdup(o->audience) : NULL;
	f->registration = o->registration ? xstrdup(o->registration) : NULL;
	f->commerce = (struct commerce_options){
	        .registration = f->registration,
	        .gzip = o->gzip,
	        .scratch = commerce_scratch_new(),
	};
	f->map = o->map;
	f->map_userdata = o->map_userdata;
	f->is_stale = o->is_stale;
	f->stale_userdata = o->stale_userdata;
	f->poll_usec = o->poll_usec ? o->poll_usec : FWD_DEFAULT_POLL;
	f->random = o->random;
	forwarder_apply(f, &o->settings);

	f->wake = evtimer_new(base, on_wake, f);
	f->drain_timer = evtimer_new(base, on_drain_timer, f);
	f->drain_done = evtimer_new(base, on_drain_done, f);
	if (!f->wake || !f->drain_timer || !f->drain_done) {
		forwarder_free(f);
		return -ENOMEM;
	}
	*ret = f;
	return 0;
}

/* Start: the first claim runs from the loop. */
int
forwarder_start(struct forwarder *f)
{
	assert(f);
	f->started = true;
	f->draining = false;
	arm_wake(f, 0);
	return 0;
}

/* Stop: cancel what is in flight (it stays inflight in the store) and claim nothing more. */
void
forwarder_stop(struct forwarder *f)
{
	if (!f)
		return;
	f->started = false;
	if (f->wake)
		event_del(f->wake);
	if (f->drain_timer)
		event_del(f->drain_timer);
	while (f->batches) {
		struct fwd_batch *b = f->batches;

		if (b->handle)
			f->transport.cancel(f->transport.userdata, b->handle);
		b->handle = NULL;
		f->batches = b->next;
		f->n_inflight--;
		batch_free(b);
	}
}

/* Stop and free. */
struct forwarder *
forwarder_free(struct forwarder *f)
{
	if (!f)
		return NULL;
	forwarder_stop(f);
	if (f->wake)
		event_free(f->wake);
	if (f->drain_timer)
		event_free(f->drain_timer);
	if (f->drain_done)
		event_free(f->drain_done);
	free(f->url);
	free(f->audience);
	free(f->registration);
	commerce_scratch_free(f->commerce.scratch);
	free(f);
	return NULL;
}

/* New settings, defaults filled in. */
void
forwarder_apply(struct forwarder *f, const struct forwarder_settings *s)
{
	struct forwarder_settings n = *s;

	if (n.batch_size == 0)
		n.batch_size = FWD_DEFAULT_BATCH;
	n.batch_size = MIN(n.batch_size, COMMERCE_BATCH_MAX);
	if (n.max_inflight == 0)
		n.max_inflight = FWD_DEFAULT_INFLIGHT;
	if (n.timeout_usec == 0)
		n.timeout_usec = FWD_DEFAULT_TIMEOUT;
	if (n.retry_initial_usec == 0)
		n.retry_initial_usec = FWD_DEFAULT_RETRY_INIT;
	if (n.retry_max_usec == 0)
		n.retry_max_usec = FWD_DEFAULT_RETRY_MAX;
	n.retry_max_usec = MAX(n.retry_max_usec, n.retry_initial_usec);
	f->settings = n;
	if (f->started && !f->draining)
		arm_wake(f, 0);
}

/* Claim soon. */
void
forwarder_nudge(struct forwarder *f)
{
	if (f && f->started && !f->draining)
		arm_wake(f, 0);
}

/* Claim nothing more; call done once nothing is in flight or after timeout_usec. */
void
forwarder_drain(struct forwarder *f, uint64_t timeout_usec, forwarder_drained_fn done,
                void *userdata)
{
	struct timeval tv = {.tv_sec = (time_t)(timeout_usec / USEC_PER_SEC),
	                     .tv_usec = (suseconds_t)(timeout_usec % USEC_PER_SEC)};

	assert(f);
	f->draining = true;
	f->drained = done;
	f->drained_userdata = userdata;
	event_del(f->wake);
	if (f->n_inflight == 0)
		event_active(f->drain_done, EV_TIMEOUT, 0);
	else
		event_add(f->drain_timer, &tv);
}

/* A summary of the state. */
void
forwarder_get_status(const struct forwarder *f, struct forwarder_status *ret)
{
	uint64_t now = now_realtime_usec();

	*ret = (struct forwarder_status){
	        .inflight = f->n_inflight,
	        .last_success_at = f->last_success_at,
	        .throttled_until = f->throttled_until > now ? f->throttled_until : 0,
	        .holding = f->holding,
	        .failing = f->failing,
	        .auth_failing = f->auth_failing,
	        .draining = f->draining,
	};
}

/* ---- scheduling --------------------------------------------------------------------------- */

/* (Re)arm the wake timer delay_usec from now. */
static void
arm_wake(struct forwarder *f, uint64_t delay_usec)
{
	struct timeval tv = {.tv_sec = (time_t)(delay_usec / USEC_PER_SEC),
	                     .tv_usec = (suseconds_t)(delay_usec % USEC_PER_SEC)};

	event_del(f->wake);
	event_add(f->wake, &tv);
}

/* Log a change of the store's health, once. */
static void
note_store_error(struct forwarder *f, int r, const char *what)
{
	if (f->store_failing)
		return;
	f->store_failing = true;
	log_error_errno(r, "forwarding paused: cannot %s: %s", what, store_errmsg(f->store));
}

/* Claim and send batches while a slot is free, then sleep until the next thing to do. */
static void
schedule(struct forwarder *f)
{
	uint64_t now_usec, delay;
	unsigned limit;
	int64_t due;
	int r;

	if (!f->started || f->draining)
		return;
	now_usec = now_realtime_usec();
	if (f->throttled_until > now_usec) {
		arm_wake(f, f->throttled_until - now_usec);
		return;
	}
	if (f->throttled_until) {
		f->throttled_until = 0;
		/* while Commerce fails, each throttle's end is a retry, not news */
		log_full(f->failing ? LOG_DEBUG : LOG_INFO,
		         "the Commerce throttle (Retry-After) has passed; sending again");
	}
	if (f->is_stale && f->is_stale(f->stale_userdata)) {
		if (!f->holding)
			log_warning("forwarding holds: the registration cache is stale (mapping on "
			            "it could charge the wrong subscription)");
		f->holding = true;
		arm_wake(f, f->poll_usec);
		return;
	}
	if (f->holding) {
		f->holding = false;
		log_notice("the registration cache is fresh again: forwarding resumes");
	}
	/* Commerce fails: one probe at a time, when the last failed batch is due again */
	limit = f->failing ? 1 : f->settings.max_inflight;
	if (f->failing && f->n_inflight < limit) {
		now_usec = now_realtime_usec();
		if (f->probe_at > now_usec) {
			arm_wake(f, f->probe_at - now_usec);
			return;
		}
	}

	while (f->n_inflight < limit) {
		struct store_claim claim = {
		        .max_records = f->settings.batch_size,
		        .max_bytes = f->settings.batch_bytes,
		        .now = (int64_t)(now_realtime_usec() / USEC_PER_SEC),
		        .map = f->map,
		        .userdata = f->map_userdata,
		};
		struct fwd_batch *b = xcalloc(1, sizeof(*b));

		b->f = f;
		r = store_claim_batch(f->store, &claim, &b->batch);
		if (r < 0 || b->batch.n_records == 0) {
			free(b);
			if (r < 0) {
				note_store_error(f, r, "claim a batch");
				arm_wake(f, FWD_STORE_RETRY_USEC);
				return;
			}
			break;
		}
		if (f->store_failing) {
			f->store_failing = false;
			log_info("the store answers again: forwarding resumes");
		}
		b->next = f->batches;
		f->batches = b;
		f->n_inflight++;
		batch_send(b);
	}
	if (f->n_inflight >= limit)
		return; /* a reply claims again */

	delay = f->poll_usec;
	r = store_next_due(f->store, &due);
	if (r >= 0) {
		uint64_t at = (uint64_t)MAX(due, 0) * USEC_PER_SEC;

		now_usec = now_realtime_usec();
		/* due now and still nothing claimed: held by the mapping; the poll comes back */
		if (at > now_usec)
			delay = MIN(delay, at - now_usec);
	}
	arm_wake(f, delay);
}

static void
on_wake(_unused_ evutil_socket_t fd, _unused_ short what, void *userdata)
{
	schedule(userdata);
}

/* ---- one batch ---------------------------------------------------------------------------- */

/* Build the request (once) and hand it to the transport with a new request id. */
static void
batch_send(struct fwd_batch *b)
{
	struct forwarder *f = b->f;
	size_t h = 0;
	int r;

	if (!b->built) {
		r = commerce_request_build(&f->commerce, b->batch.batch_id, b->batch.records,
		                           b->batch.n_records, &b->req);
		if (r < 0) {
			/* unencodable records: they end dead, the others retried at once */
			size_t bad = 0;

			b->outcomes = xcalloc(b->batch.n_records, sizeof(*b->outcomes));
			for (size_t i = 0; i < b->batch.n_records; i++) {
				const char *why = NULL;
				struct store_outcome *o = &b->outcomes[i];

				o->id = b->batch.records[i].id;
				if ((r == -EBADMSG || r == -EINVAL) &&
				    commerce_check_record(&f->commerce, &b->batch.records[i],
				                          &why) < 0) {
					o->kind = STORE_OUTCOME_DEAD;
					o->error_code = "Unencodable";
					o->error_message = why;
					bad++;
				} else {
					o->kind = STORE_OUTCOME_RETRY;
					o->next_attempt_at =
					        bad ? 0 : backoff_at(b, b->batch.attempts);
				}
			}
			if (bad == 0)
				(void)log_fields_errno(
				        LOG_WARNING, r,
				        LOG_FIELDS("AZS_BATCH_ID", b->batch.batch_id),
				        "cannot encode batch %s; retried later", b->batch.batch_id);
			metrics_inc(f->metrics, METRICS_FORWARD_BATCHES_TOTAL, "unencodable");
			batch_apply(b);
			return;
		}
		b->built = true;
	} else
		(void)commerce_request_id_new(b->req.request_id);

	snprintf(b->headers_buf[h++], sizeof(b->headers_buf[0]), "Content-Type: %s",
	         COMMERCE_CONTENT_TYPE);
	if (b->req.gzip)
		snprintf(b->headers_buf[h++], sizeof(b->headers_buf[0]), "Content-Encoding: %s",
		         COMMERCE_CONTENT_ENCODING);
	snprintf(b->headers_buf[h++], sizeof(b->headers_buf[0]), "%s: %s",
	         COMMERCE_HEADER_REQUEST_ID, b->req.request_id);
	snprintf(b->headers_buf[h++], sizeof(b->headers_buf[0]), "%s: %s",
	         COMMERCE_HEADER_CORRELATION, b->req.correlation_id);
	for (size_t i = 0; i < h; i++)
		b->headers[i] = b->headers_buf[i];
	b->headers[h] = NULL;

	r = f->transport.post(f->transport.userdata, f->url, b->headers, b->req.body,
	                      b->req.body_size, f->settings.timeout_usec, on_reply, b, &b->handle);
	if (r < 0) {
		struct http_result http = {
		        .error = r, .error_message = "request not started", .body = ""};
		struct forwarder_reply reply = {.http = &http};

		log_debug_errno(r, "cannot start the request of batch %s", b->batch.batch_id);
		b->handle = NULL;
		on_reply(&reply, b);
	}
}

/* Fill every outcome of the batch with kind; RETRY ones due at next_at. */
static void
fill_all(struct fwd_batch *b, enum store_outcome_kind kind, const char *status, const char *code,
         const char *message, int64_t next_at)
{
	if (!b->outcomes)
		b->outcomes = xcalloc(b->batch.n_records, sizeof(*b->outcomes));
	for (size_t i = 0; i < b->batch.n_records; i++)
		b->outcomes[i] = (struct store_outcome){
		        .id = b->batch.records[i].id,
		        .kind = kind,
		        .status = status,
		        .error_code = code,
		        .error_message = message,
		        .next_attempt_at = next_at,
		};
}

/* The next attempt of the batch after a backoff for attempts so far, no sooner than a throttle
 * ends (seconds). */
static int64_t
backoff_at(struct fwd_batch *b, unsigned attempts)
{
	struct forwarder *f = b->f;
	uint64_t at = now_realtime_usec() + http_backoff(attempts, f->settings.retry_initial_usec,
	                                                 f->settings.retry_max_usec, f->random);

	at = MAX(at, f->throttled_until);
	/* the store keeps whole seconds: round up, so that a retry is never sooner than its
	 * backoff */
	return (int64_t)((at + USEC_PER_SEC - 1) / USEC_PER_SEC);
}

/* Split the batch in two halves under new batch ids, both due at once. */
static void
split_halves(struct fwd_batch *b)
{
	size_t n = b->batch.n_records, half = n / 2;

	b->split_ids = xcalloc(2, sizeof(*b->split_ids));
	for (size_t k = 0; k < 2; k++)
		if (commerce_request_id_new(b->split_ids[k]) < 0)
			snprintf(b->split_ids[k], sizeof(b->split_ids[k]), "%s", "");
	fill_all(b, STORE_OUTCOME_RETRY, NULL, NULL, NULL, 0);
	for (size_t i = 0; i < n; i++)
		b->outcomes[i].new_batch_id = b->split_ids[i < half ? 0 : 1];
}

/*
 * Commerce failed the whole of batch b (kind: FWD_FAIL_*): every record is retried after a
 * backoff, and the forwarder fails until a batch is answered record by record: b, due again after
 * its backoff, is the next probe. The backoff grows with the batch's attempts or with the
 * failures in a row, whichever is more, so that probes which take turns among the batches that
 * failed together still back off. Logged when the failure starts and the first time it is of
 * another kind, not per retry (a transport error's text varies from one try to the next, and a
 * Commerce may answer 503 and refuse connections by turns).
 */
static void
fail_batch(struct fwd_batch *b, unsigned kind, const char *reason, long status)
{
	struct forwarder *f = b->f;
	int64_t next = backoff_at(b, MAX(b->batch.attempts, f->fail_count));
	char st[16];

	if (f->fail_count < UINT_MAX)
		f->fail_count++;

	fill_all(b, STORE_OUTCOME_RETRY, NULL, NULL, NULL, next);
	f->probe_at = (uint64_t)next * USEC_PER_SEC;
	metrics_inc(f->metrics, METRICS_FORWARD_RETRIES_TOTAL, NULL);
	snprintf(f->fail_reason, sizeof(f->fail_reason), "%s", reason);
	if (f->failing && (f->fail_kinds & kind))
		return;
	f->failing = true;
	f->fail_kinds |= kind;
	snprintf(st, sizeof(st), "%ld", status);
	log_fields(LOG_WARNING,
	           LOG_FIELDS("AZS_BATCH_ID", b->batch.batch_id, "AZS_HTTP_STATUS",
	                      status > 0 ? st : NULL),
	           "Commerce fails: %s; batches are retried with backoff", reason);
}

/* Note a batch answered record by record. */
static void
note_working(struct forwarder *f)
{
	f->last_success_at = (int64_t)(now_realtime_usec() / USEC_PER_SEC);
	if (f->auth_failing)
		log_notice("Commerce accepts the token again");
	f->auth_failing = false;
	if (f->failing)
		log_notice("Commerce answers again (it failed: %s)", f->fail_reason);
	f->failing = false;
	f->fail_reason[0] = '\0';
	f->fail_kinds = 0;
	f->probe_at = 0;
	f->fail_count = 0;
}

/* Take a Retry-After of a 429 or 503 as a throttle of the whole endpoint. */
static void
note_throttle(struct forwarder *f, const struct http_result *http)
{
	uint64_t delay, until;

	if (!http || !http->retry_after)
		return;
	if (http_retry_after_parse(http->retry_after, now_seconds(), f->settings.retry_max_usec,
	                           &delay) < 0)
		return;
	until = now_realtime_usec() + delay;
	if (until <= f->throttled_until)
		return;
	/* the first throttle of a failure is news; the next ones, while it fails, are retries */
	if (f->throttled_until <= now_realtime_usec())
		log_full(
		        f->failing ? LOG_DEBUG : LOG_NOTICE,
		        "Commerce throttles (HTTP %ld, Retry-After %s): nothing is sent for %" PRIu64
		        " s",
		        http->status, http->retry_after, (delay + USEC_PER_SEC - 1) / USEC_PER_SEC);
	f->throttled_until = until;
}

/* Commerce answered (or did not): decide every record's outcome. */
static void
on_reply(const struct forwarder_reply *reply, void *userdata)
{
	struct fwd_batch *b = userdata;
	struct forwarder *f = b->f;
	const struct http_result *http = reply->http;
	const char *batch_id = b->batch.batch_id;
	char reason[FWD_REASON_MAX];
	int status;
	int r;

	b->handle = NULL;
	if (reply->token_error) {
		snprintf(reason, sizeof(reason), "no token for Commerce: %s",
		         reply->token_error_text ? reply->token_error_text
		                                 : strerror(-reply->token_error));
		fail_batch(b, FWD_FAIL_TOKEN, reason, 0);
		f->auth_failing = true;
		metrics_inc(f->metrics, METRICS_FORWARD_BATCHES_TOTAL, "no-token");
		batch_apply(b);
		return;
	}

	assert(http);
	status = http->error ? 0 : (int)http->status;
	metrics_observe(f->metrics, METRICS_HTTP_REQUEST_DURATION_SECONDS, "commerce",
	                (double)http->total_usec / (double)USEC_PER_SEC);
	r = commerce_parse_response(b->batch.records, b->batch.n_records, status, http->body,
	                            http->body_size, &b->resp);
	if (r < 0) {
		/* cannot happen for a claimed batch; retried like a transient answer */
		log_debug_errno(r, "cannot classify the answer to batch %s", batch_id);
		fill_all(b, STORE_OUTCOME_RETRY, NULL, NULL, NULL,
		         backoff_at(b, b->batch.attempts));
		batch_apply(b);
		return;
	}
	metrics_inc(f->metrics, METRICS_FORWARD_BATCHES_TOTAL,
	            commerce_result_to_string(b->resp.result));

	switch (b->resp.result) {
	case COMMERCE_RESULT_OUTCOMES:
	case COMMERCE_RESULT_CONFLICT: {
		int64_t next = 0;

		note_working(f);
		if (b->resp.n_retry > 0) {
			next = backoff_at(b, b->batch.attempts);
			metrics_inc(f->metrics, METRICS_FORWARD_RETRIES_TOTAL, NULL);
			log_debug("batch %s: %zu records answered with a transient status, retried",
			          batch_id, b->resp.n_retry);
		}
		b->outcomes = xcalloc(b->batch.n_records, sizeof(*b->outcomes));
		for (size_t i = 0; i < b->batch.n_records; i++) {
			b->outcomes[i] = b->resp.outcomes[i];
			if (b->outcomes[i].kind == STORE_OUTCOME_RETRY)
				b->outcomes[i].next_attempt_at = next;
		}
		break;
	}
	case COMMERCE_RESULT_SPLIT:
	case COMMERCE_RESULT_TOO_LARGE:
		if (b->batch.n_records == 1) {
			fill_all(b, STORE_OUTCOME_DEAD, NULL, b->resp.error_code,
			         b->resp.error_message, 0);
			break;
		}
		log_debug("batch %s (%zu records) answered HTTP %d: split in halves", batch_id,
		          b->batch.n_records, status);
		split_halves(b);
		break;
	case COMMERCE_RESULT_AUTH:
		if (!b->auth_retried) {
			b->auth_retried = true;
			if (f->transport.token_refused)
				f->transport.token_refused(f->transport.userdata, reply->token);
			commerce_response_done(&b->resp);
			batch_send(b);
			return;
		}
		snprintf(reason, sizeof(reason), "HTTP %d %s even with a new token", status,
		         b->resp.error_code ? b->resp.error_code : "");
		fail_batch(b, FWD_FAIL_AUTH, reason, status);
		f->auth_failing = true;
		break;
	case COMMERCE_RESULT_TRANSIENT:
	default:
		if (b->resp.throttle)
			note_throttle(f, http);
		if (http->error)
			snprintf(reason, sizeof(reason), "no answer (%s)", http->error_message);
		else
			snprintf(reason, sizeof(reason), "HTTP %d %s", status,
			         b->resp.error_code ? b->resp.error_code : "");
		fail_batch(b, http->error ? FWD_FAIL_NO_ANSWER : FWD_FAIL_HTTP, reason, status);
		break;
	}
	batch_apply(b);
}

/* Log the dead letters of an outcome table. */
static void
log_dead(struct fwd_batch *b)
{
	size_t n = 0, first = 0;
	char count[32], hour[TIME_RFC3339_LEN + 1];

	for (size_t i = 0; i < b->batch.n_records; i++)
		if (b->outcomes[i].kind == STORE_OUTCOME_DEAD && n++ == 0)
			first = i;
	if (n == 0)
		return;
	snprintf(count, sizeof(count), "%zu", n);
	log_fields(LOG_WARNING,
	           LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_BATCH_DEAD, "AZS_BATCH_ID",
	                      b->batch.batch_id, "AZS_RECORD_KEY", b->batch.records[first].key,
	                      "AZS_RECORDS", count, "AZS_SUBSCRIPTION",
	                      b->batch.records[first].subscription_id, "AZS_TENANT",
	                      b->batch.records[first].tenant_id, "AZS_REPORTED_HOUR",
	                      time_format_rfc3339(b->batch.records[first].reported_hour, hour)),
	           "%zu record%s of batch %s dead-lettered: %s%s%s%s", n, n == 1 ? "" : "s",
	           b->batch.batch_id,
	           b->outcomes[first].error_code ? b->outcomes[first].error_code : "unknown",
	           b->outcomes[first].error_message ? ": " : "",
	           b->outcomes[first].error_message ? b->outcomes[first].error_message : "",
	           n > 1 ? " (and others)" : "");
}

/*
 * Count the forwarded and dead records of an outcome table in records_forwarded_total, one
 * addition per run of records with the same label (a batch is mostly one run of "Accepted")
 * rather than one look-up of the label's series per record.
 */
static void
count_forwarded(struct forwarder *f, const struct store_outcome *o, size_t n)
{
	const char *label = NULL;
	uint64_t run = 0;

	for (size_t i = 0; i < n; i++) {
		const char *l;

		if (o[i].kind == STORE_OUTCOME_FORWARDED)
			l = o[i].status ? o[i].status : "Accepted";
		else if (o[i].kind == STORE_OUTCOME_DEAD)
			l = "dead";
		else
			continue;
		if (run > 0 && l != label && !streq(l, label)) {
			metrics_add(f->metrics, METRICS_RECORDS_FORWARDED_TOTAL, label, run);
			run = 0;
		}
		label = l;
		run++;
	}
	if (run > 0)
		metrics_add(f->metrics, METRICS_RECORDS_FORWARDED_TOTAL, label, run);
}

/* Write the outcome table; on a store error keep it and try again shortly. */
static void
batch_apply(struct fwd_batch *b)
{
	struct forwarder *f = b->f;
	int64_t now = (int64_t)(now_realtime_usec() / USEC_PER_SEC);
	size_t applied = 0;
	int r;

	r = store_apply_outcomes(f->store, b->batch.batch_id, b->outcomes, b->batch.n_records, now,
	                         &applied);
	if (r < 0) {
		note_store_error(f, r, "store the outcomes of a batch");
		if (!b->apply_timer)
			b->apply_timer = evtimer_new(f->base, on_apply_timer, b);
		if (b->apply_timer)
			event_add(b->apply_timer,
			          &(struct timeval){.tv_sec = FWD_STORE_RETRY_USEC / USEC_PER_SEC});
		return;
	}
	if (f->store_failing) {
		f->store_failing = false;
		log_info("the store answers again: forwarding resumes");
	}
	count_forwarded(f, b->outcomes, b->batch.n_records);
	log_dead(b);
	batch_finish(b);
}

static void
on_apply_timer(_unused_ evutil_socket_t fd, _unused_ short what, void *userdata)
{
	batch_apply(userdata);
}

/* The batch is settled: free its slot, claim again or finish a drain. */
static void
batch_finish(struct fwd_batch *b)
{
	struct forwarder *f = b->f;

	for (struct fwd_batch **p = &f->batches; *p; p = &(*p)->next)
		if (*p == b) {
			*p = b->next;
			break;
		}
	f->n_inflight--;
	batch_free(b);
	if (f->draining) {
		if (f->n_inflight == 0 && f->drained)
			event_active(f->drain_done, EV_TIMEOUT, 0);
		return;
	}
	/* from the loop, not from inside a transport call */
	arm_wake(f, 0);
}

static void
batch_free(struct fwd_batch *b)
{
	if (b->apply_timer)
		event_free(b->apply_timer);
	commerce_request_done(&b->req);
	commerce_response_done(&b->resp);
	store_batch_done(&b->batch);
	free(b->outcomes);
	free(b->split_ids);
	free(b);
}

static void
on_drain_timer(_unused_ evutil_socket_t fd, _unused_ short what, void *userdata)
{
	on_drain_done(fd, what, userdata);
}

/* The drain is over (or timed out): tell the caller, once. */
static void
on_drain_done(_unused_ evutil_socket_t fd, _unused_ short what, void *userdata)
{
	struct forwarder *f = userdata;
	forwarder_drained_fn done = f->drained;

	event_del(f->drain_timer);
	f->drained = NULL;
	if (done)
		done(f->drained_userdata, f->n_inflight);
}

/* ---- the default transport ---------------------------------------------------------------- */

static void
send_free(struct fwd_send *s)
{
	free(s->url);
	free_secret(s->token);
	free(s);
}

static void
on_http(const struct http_result *result, void *userdata)
{
	struct fwd_send *s = userdata;
	struct forwarder_reply reply = {.http = result, .token = s->token};
	forwarder_reply_fn done = s->done;
	void *ud = s->done_userdata;

	s->request = NULL;
	done(&reply, ud);
	send_free(s);
}

static void
on_token(const struct auth_result *result, void *userdata)
{
	struct fwd_send *s = userdata;
	_cleanup_free_ char *auth = NULL;
	const char *headers[FWD_HEADERS_MAX + 2];
	size_t n = 0;
	int r;

	s->wait = NULL;
	if (result->error) {
		struct forwarder_reply reply = {
		        .token_error = result->error,
		        .token_error_text = result->error_description,
		};

		s->done(&reply, s->done_userdata);
		send_free(s);
		return;
	}
	s->token = xstrdup(result->token);
	auth = xasprintf("Authorization: Bearer %s", result->token);
	headers[n++] = auth;
	for (size_t i = 0; s->headers[i] && n < ARRAY_SIZE(headers) - 1; i++)
		headers[n++] = s->headers[i];
	headers[n] = NULL;
	r = http_request(s->f->http, HTTP_POST, s->url, headers, s->body, s->size, s->timeout_usec,
	                 on_http, s, &s->request);
	explicit_wipe(auth, strlen(auth));
	if (r < 0) {
		struct http_result http = {
		        .error = r, .error_message = "request not started", .body = ""};
		struct forwarder_reply reply = {.http = &http};

		s->done(&reply, s->done_userdata);
		send_free(s);
	}
}

static int
default_post(void *userdata, const char *url, const char *const *headers, const void *body,
             size_t size, uint64_t timeout_usec, forwarder_reply_fn done, void *done_userdata,
             void **ret_handle)
{
	struct forwarder *f = userdata;
	struct fwd_send *s = xcalloc(1, sizeof(*s));

	*s = (struct fwd_send){
	        .f = f,
	        .url = xstrdup(url),
	        .headers = headers,
	        .body = body,
	        .size = size,
	        .timeout_usec = timeout_usec,
	        .done = done,
	        .done_userdata = done_userdata,
	};
	auth_get(f->auth, f->audience, on_token, s, &s->wait);
	*ret_handle = s;
	return 0;
}

static void
default_cancel(_unused_ void *userdata, void *handle)
{
	struct fwd_send *s = handle;

	auth_wait_cancel(s->wait);
	http_request_cancel(s->request);
	send_free(s);
}

static void
default_token_refused(void *userdata, const char *token)
{
	struct forwarder *f = userdata;

	auth_invalidate(f->auth, f->audience, token);
}

/* Another token source: a batch waiting for a token of the old one asks the new one. */
void
forwarder_set_auth(struct forwarder *f, struct auth *auth)
{
	if (!f || !auth || f->transport.post != default_post)
		return;
	f->auth = auth;
	for (struct fwd_batch *b = f->batches; b; b = b->next) {
		struct fwd_send *s = b->handle;

		if (!s || !s->wait)
			continue;
		s->wait = auth_wait_cancel(s->wait);
		auth_get(f->auth, f->audience, on_token, s, &s->wait);
	}
	/* failing for want of a token: the new credentials are tried at once, not at the probe's
	 * backoff */
	if (f->failing && (f->fail_kinds & (FWD_FAIL_AUTH | FWD_FAIL_TOKEN))) {
		f->probe_at = 0;
		f->fail_count = 0;
		schedule(f);
	}
}
