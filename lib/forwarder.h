/*
 * The forwarding pipeline (ARCHITECTURE.md section 6): claims batches of due records from the
 * store (the registry's map callback freezes each record's charge as it enters a batch), sends
 * up to max_inflight of them at once to the Commerce ingestion endpoint, and hands every answer's
 * outcome table back to the store in one transaction per batch.
 *
 * The outcome table: Accepted and Duplicate -> forwarded; the permanent per-event statuses ->
 * dead with the answer's code and message; Error or a missing result -> that record retried; a
 * 400 for the whole batch -> the batch split in halves under new batch ids, again and again until
 * the record that makes it fail is alone, which then ends dead with the answer's code and
 * message; 401/403 -> the token is refused and the batch sent once more at once, then backoff;
 * 409 -> forwarded; 413 -> halved (a batch of one record that is still too large ends dead);
 * 408, 429, 5xx, time-outs, resets and unparsable answers -> the batch retried after a capped,
 * full-jitter backoff (retry_initial .. retry_max, by the batch's attempts so far). A Retry-After
 * on a 429 or 503 throttles the whole endpoint: no batch is sent before it has passed. While
 * Commerce fails as a whole (any of those, or no token, or a token refused twice) nothing fresh is
 * claimed: one batch at a time, one that failed, is sent again after its backoff as a probe, and
 * the first batch answered record by record sends max_inflight batches again at once; per-event
 * rejections, 400s and 413s are answers, not failures. The schedule (attempts, next attempt)
 * lives in the store, so a restart keeps it; a retried batch keeps its batch id
 * (x-ms-correlationid) and its records their usageEventIds. A record leaves the queue only
 * forwarded or dead: nothing retryable is ever given up.
 *
 * Forwarding holds (claims nothing) while the registration cache is stale (is_stale), and
 * resumes by itself once it is fresh. New records are found by a short poll (poll_usec, 1 s):
 * the collector and the forwarder never call each other, and one indexed query a second
 * (store_next_due) costs nothing; forwarder_nudge() lets the daemon wake it sooner. Records due
 * later (a backoff) wake it at their time.
 *
 * Logging: one line per change of state (Commerce failing, once per kind of failure, or back,
 * throttled, holding for a stale registration, resuming), not per retry; dead letters with
 * LOG_MESSAGE_ID_BATCH_DEAD. No token, body or record content is logged. Metrics:
 * records_forwarded_total{status}, forward_batches_total{result}, forward_retries_total,
 * http_request_duration_seconds{api="commerce"}.
 *
 * Seams: the transport (by default lib/auth's token for the Commerce audience and lib/http) and
 * the realtime clock of lib/timeutil. Waits are loop timers; nothing here blocks the loop but
 * short store transactions.
 *
 * Ownership: the forwarder borrows the store, metrics, http client, auth and the map/is_stale
 * userdata given in its options (they must outlive it) and copies every string.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

struct auth;
struct event_base;
struct forwarder;
struct http_client;
struct http_random;
struct http_result;
struct metrics;

/* The answer to one POST of the transport. */
struct forwarder_reply {
	int token_error;                /* 0, or -errno: no token could be had, nothing was sent */
	const char *token_error_text;   /* the token endpoint's code and description, or NULL */
	const struct http_result *http; /* the answer (or transport error) when token_error is 0 */
	const char *token;              /* the token that was sent (for token_refused), or NULL */
};

typedef void (*forwarder_reply_fn)(const struct forwarder_reply *reply, void *userdata);

/*
 * How the forwarder reaches Commerce: POST body to url with headers (NULL-terminated "Name:
 * value" lines; the transport adds Authorization). headers and body stay valid until done runs
 * or the request is cancelled. post() calls done exactly once, from the loop and never from
 * inside post(), unless cancelled first. token_refused() is told the token of a request Commerce
 * answered 401 or 403.
 */
struct forwarder_transport {
	int (*post)(void *userdata, const char *url, const char *const *headers, const void *body,
	            size_t size, uint64_t timeout_usec, forwarder_reply_fn done,
	            void *done_userdata, void **ret_handle);
	void (*cancel)(void *userdata, void *handle);
	void (*token_refused)(void *userdata, const char *token);
	void *userdata;
};

/* What SIGHUP may change. */
struct forwarder_settings {
	unsigned batch_size;         /* events per batch, 1..1000; 0: 500 */
	uint64_t batch_bytes;        /* estimated bytes per batch; 0: no limit */
	unsigned max_inflight;       /* batches at once; 0: 4 */
	uint64_t timeout_usec;       /* per request; 0: 30 s */
	uint64_t retry_initial_usec; /* 0: 1 s */
	uint64_t retry_max_usec;     /* also caps Retry-After; 0: 5 min */
};

struct forwarder_options {
	struct store *store;
	struct metrics *metrics;                     /* NULL: not counted */
	struct http_client *http;                    /* with auth: the default transport */
	struct auth *auth;                           /* the [azure] identity */
	const struct forwarder_transport *transport; /* replaces http and auth (tests) */
	const char *url;                             /* [commerce] url */
	const char *audience;                        /* [commerce] audience (default transport) */
	const char *registration; /* the registration resource id, commerce_options' guard */
	bool gzip;
	/* the charge of a record entering a batch (registry_map) */
	store_map_fn map;
	void *map_userdata;
	/* true while forwarding must hold (registry_is_stale); NULL: never */
	bool (*is_stale)(void *userdata);
	void *stale_userdata;
	struct forwarder_settings settings;
	uint64_t poll_usec;               /* idle poll for new records; 0: 1 s */
	const struct http_random *random; /* jitter; NULL: the default */
};

/* A summary for /readyz and /v1/status. */
struct forwarder_status {
	unsigned inflight;        /* batches being sent */
	int64_t last_success_at;  /* realtime of the last batch answered with outcomes; 0: none */
	uint64_t throttled_until; /* realtime usec of a Retry-After being waited out; 0: none */
	bool holding;             /* the registration cache is stale: nothing is claimed */
	bool failing;             /* Commerce fails as a whole: one batch probes it, none is new */
	bool auth_failing;        /* Commerce refused the token even after a new one */
	bool draining;            /* forwarder_drain() was called */
};

/* -EINVAL when the store, url, map or a transport (http and auth, or transport) is missing. */
int forwarder_new(struct event_base *base, const struct forwarder_options *options,
                  struct forwarder **ret);

/* Start forwarding (the first claim runs from the loop, not from inside this call). */
int forwarder_start(struct forwarder *f);

/* Stop: nothing new is claimed and requests in flight are cancelled without their answers (their
 * records stay inflight in the store, sent again after a restart). Accepts NULL. */
void forwarder_stop(struct forwarder *f);

/* Stop and free. Accepts NULL; returns NULL. */
struct forwarder *forwarder_free(struct forwarder *f);

/* Apply new settings (SIGHUP): the next claim and the next backoff use them. */
void forwarder_apply(struct forwarder *f, const struct forwarder_settings *settings);

/*
 * Use another token source from now on (new [azure] credentials on SIGHUP; the old one may be
 * freed once this returns): a batch waiting for a token asks the new one, the others use it at
 * their next attempt. Only for the default transport.
 */
void forwarder_set_auth(struct forwarder *f, struct auth *auth);

/* Look for due records now (e.g. after the collector stored a page). */
void forwarder_nudge(struct forwarder *f);

/*
 * Graceful stop: claim nothing more, let the batches in flight finish and store their outcomes,
 * then call done (from the loop, once): when none is in flight any more, or after timeout_usec.
 */
typedef void (*forwarder_drained_fn)(void *userdata, unsigned left_inflight);
void forwarder_drain(struct forwarder *f, uint64_t timeout_usec, forwarder_drained_fn done,
                     void *userdata);

void forwarder_get_status(const struct forwarder *f, struct forwarder_status *ret);
