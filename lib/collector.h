/*
 * The collection pipeline (ARCHITECTURE.md section 4): reads the stamp's usage API reported hour
 * by reported hour and writes every page into the store together with the hour's cursor.
 *
 * Schedule: every reported hour H from [stack] collect_from (on an empty store; else after the
 * store's cursor) up to the newest one with now >= H + 1h + settle is put into the store's
 * schedule, collected once (pass 0) and once more lookback after that (pass 1, whose records
 * deduplicate or become conflicts in the store); azs-usagectl recollect adds passes 2 and up.
 * Hours are collected one after the other, oldest due first, as fast as the stamp answers
 * (catch-up), each page through its nextLink. A page and the cursor that follows it are one store
 * transaction (store_put_page), so a restart resumes from the saved nextLink and loses or repeats
 * nothing that the store's keys would not deduplicate.
 *
 * per_subscriber: an hour of the schedule with the scope "" (all tenants) is split, once the
 * user-subscription cache has been refreshed after the hour ended, into one scope per known user
 * subscription, each collected with &subscriberId= and its own cursor. Known: in the store's cache
 * or the schedule's scopes at the start, listed since, or found in the cache because a page named
 * it; one that left the list stays known (its late usage is still reported). A scope the stamp
 * refuses with SubscriberIdIsNotDirectTenant is skipped for that hour.
 *
 * Answers (section 4): 503, 429, other 5xx, 408, time-outs, resets and malformed pages are
 * retried with backoff (capped exponential, full jitter); a Retry-After (429 or 503) holds every
 * request to the stamp until then. A 202 or a 2xx without "value" (not ready),
 * RequestEndTimeIsInFuture and other 4xx are asked again at the next poll, the cursor unmoved; a
 * 400 or 404 on a saved or followed nextLink restarts the hour from its first page once per pass;
 * a nextLink seen before in the hour, or one whose authority is not arm_endpoint's, is an error
 * for the hour (no request is sent; the hour starts again from its first page at the next poll).
 * A 401 drops the token and asks once more at once.
 *
 * Pauses: no new page is asked for while the store holds max_pending records waiting to be
 * forwarded, nor for a poll interval after the store answered -ENOSPC (store full).
 *
 * The user-subscription cache is refreshed at start, every refresh_interval and, at most once a
 * minute, when a page names a subscription the cache does not know; it is written with
 * store_subscriptions_replace (which never forgets a subscription's tenant).
 *
 * Logging: one line per change of state (an hour not ready, failing, recovered; the stamp
 * failing or throttling; a pause), never one per retry; no token and no record content.
 * Metrics: records_collected_total, collect_pages_total{result}, collect_cursor_timestamp_seconds,
 * conflicts_total, quarantined_total, store_full_total, collect_skipped_subscriptions_total,
 * http_request_duration_seconds{api="usage"|"subscriptions"}.
 *
 * The transport is a seam: by default every GET asks lib/auth for the stamp's token and sends the
 * request with lib/http; tests hand in their own. Times come from lib/timeutil (the clock seam);
 * waits are loop timers. Nothing here blocks the loop but short store transactions: a page's body
 * is parsed on a worker thread of the collector's own (lib/worker) while the loop serves the
 * forwarder and health, and the page is stored from the loop once parsed, in the order asked for.
 * While a page is parsed, the nextLink it seems to have (found by a quick scan, checked like any
 * nextLink) is asked for already; that answer is used only when the parsed page has the same
 * nextLink and is stored, else it is dropped unseen.
 *
 * Ownership: the collector borrows the store, metrics, http client and auth given in its options
 * (they must outlive it) and copies every string.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct auth;
struct event_base;
struct http_client;
struct http_random;
struct http_result;
struct metrics;
struct store;
struct collector;

/* The answer to one GET of the transport. */
struct collector_reply {
	int token_error;                /* 0, or -errno: no token could be had, nothing was sent */
	const char *token_error_text;   /* the token endpoint's code and description, or NULL */
	const struct http_result *http; /* the answer (or transport error) when token_error is 0 */
	const char *token;              /* the token that was sent (for token_refused), or NULL */
};

typedef void (*collector_reply_fn)(const struct collector_reply *reply, void *userdata);

/*
 * How the collector reaches the stamp: GET url with the stamp's bearer token. get() calls done
 * exactly once, from the loop and never from inside get(), unless the request is cancelled
 * first; *ret_handle identifies it for cancel(). token_refused() is told the token of a request
 * the stamp answered 401, from inside done.
 */
struct collector_transport {
	int (*get)(void *userdata, const char *url, uint64_t timeout_usec, collector_reply_fn done,
	           void *done_userdata, void **ret_handle);
	void (*cancel)(void *userdata, void *handle);
	void (*token_refused)(void *userdata, const char *token);
	void *userdata;
};

/* What SIGHUP may change. */
struct collector_settings {
	uint64_t poll_interval_usec;
	uint64_t settle_usec;
	uint64_t lookback_usec;
	uint64_t refresh_interval_usec;
	bool per_subscriber;
	uint64_t max_pending; /* records waiting to be forwarded; 0: no limit */
};

struct collector_options {
	struct store *store;
	struct metrics *metrics;  /* NULL: not counted */
	struct http_client *http; /* with auth: the default transport */
	struct auth *auth;        /* the stamp's identity; auth_get(NULL) gives its token */
	const struct collector_transport *transport; /* replaces http and auth (tests) */
	const char *arm_endpoint;                    /* https, no trailing slash */
	const char *provider_subscription;           /* GUID */
	int64_t collect_from; /* on the hour; -1: now - 24h (on an empty store) */
	struct collector_settings settings;
	uint64_t request_timeout_usec;    /* per request; 0: 120 s */
	uint64_t retry_initial_usec;      /* backoff of a failing stamp; 0: 1 s */
	uint64_t retry_max_usec;          /* and its cap, also of Retry-After; 0: 5 min */
	uint64_t unknown_refresh_usec;    /* refreshes for unknown subscriptions; 0: 60 s apart */
	const struct http_random *random; /* jitter; NULL: the default */
	bool parse_on_loop; /* tests: parse a page inside its answer, without the worker */
};

/* A summary for /readyz and /v1/status. */
struct collector_status {
	int64_t cursor;                /* end of the newest hour collected once; 0: none yet */
	int64_t last_page_at;          /* realtime of the last page stored; 0: none yet */
	unsigned consecutive_failures; /* hour errors (4xx, loop, authority) since the last page */
	bool paused_backlog;           /* max_pending reached */
	bool store_full;               /* the store refused a page with -ENOSPC */
	bool throttled;                /* a Retry-After is being waited out */
	bool subscriptions_failing;    /* the last refresh of the cache failed */
};

/*
 * Make a collector on base. Copies the options. -EINVAL when the store, the endpoint, the
 * provider subscription or a transport (http and auth, or transport) is missing, or
 * collect_from is not on the hour.
 */
int collector_new(struct event_base *base, const struct collector_options *options,
                  struct collector **ret);

/* Start collecting (the first decisions run from the loop, not from inside this call). */
int collector_start(struct collector *c);

/*
 * Stop: requests in flight are cancelled without their answers (what was not committed is
 * collected again after a restart); nothing runs until collector_start(). Accepts NULL.
 */
void collector_stop(struct collector *c);

/* Stop and free. Accepts NULL; returns NULL. */
struct collector *collector_free(struct collector *c);

/* Apply new settings (SIGHUP): they count from the next decision on. */
void collector_apply(struct collector *c, const struct collector_settings *settings);

/*
 * Use another token source from now on (new credentials on SIGHUP; the old one may be freed once
 * this returns): a request waiting for a token, in flight or in a backoff is sent again at once
 * with the new one.
 */
void collector_set_auth(struct collector *c, struct auth *auth);

void collector_get_status(const struct collector *c, struct collector_status *ret);
