/*
 * What lib/collector.c (the object, the schedule, the decisions, holds and sets) and
 * lib/collector-fetch.c (the requests, the answers, the user-subscription cache refresh, the
 * default transport) share. Private to them.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "collector.h"
#include "macro.h"
#include "stack.h"
#include "timeutil.h"
#include "worker.h"

#define HOUR_SEC INT64_C(3600)

/* A set of strings (nextLinks, subscription ids): sorted, for bsearch. */
struct strset {
	char **v;
	size_t n;
};

/* An hour (scope) remembered between jobs: see the module comment. */
struct hold {
	int64_t hour;
	char *scope;
	unsigned pass;
	uint64_t not_before; /* monotonic */
	char *resume_url;    /* NULL: the store's saved cursor */
	bool restarted;
	char *error; /* the state logged for the hour; NULL: none */
};

/* How many requests are asked early, ahead of the page being parsed or stored. */
#define COLLECTOR_AHEAD_MAX 2

/* A request asked early. */
struct ahead {
	char *url;           /* NULL: adopted, its answer is the next step's */
	void *handle;        /* in flight, not yet the job's */
	struct early *early; /* its answer, kept until the page before is in (not a 2xx's body) */
	char *next_link;     /* what that 2xx seems to link to; asked with it when it could be */
	/* that answer's page (a 2xx), parsed on the worker while the page before is stored */
	struct parse *parse;
	struct worker_task *task; /* its parse, still owed by the worker */
};

/* The hour (scope) being collected. */
struct job {
	int64_t hour;
	char *scope; /* "" or a user subscription */
	unsigned pass;
	char *first_url;
	char *url;          /* the next request */
	struct strset seen; /* the first page and every nextLink of this pass */
	bool restarted;     /* the refused-nextLink restart of this pass is used */
	bool token_retried; /* the one retry after a 401 is used */
	unsigned attempt;   /* transient failures in a row */
	uint64_t not_before;
	void *handle;              /* the request in flight */
	struct worker_task *parse; /* the answer's page being parsed on the worker */
	/*
	 * asked early, in page order: ahead[0] is the nextLink found in the page being parsed or
	 * stored, ahead[1] the one found in ahead[0]'s answer while that is parsed (only the last
	 * one is ever in flight); each used only when the page before, parsed and stored, has the
	 * same nextLink
	 */
	struct ahead ahead[COLLECTOR_AHEAD_MAX];
	size_t n_ahead;
	bool prefetch_adopted;   /* handle is the early request (its answer: on_prefetch_reply) */
	struct ahead *replaying; /* the answer being replayed, while page_answer() takes its page */
	char *error;             /* the state logged for the hour; NULL: none */
	size_t pages, records, inserted, duplicates, conflicts, quarantined;
};

/* A refresh of the user-subscription cache in progress. */
struct refresh {
	char *url;
	struct strset seen;
	void *handle;
	int64_t started_at; /* realtime */
	struct stack_subscription_list **lists;
	size_t n_lists;
	size_t skipped;
	char *skipped_reason;
};

struct collector {
	struct event_base *base;
	struct store *store;
	struct metrics *metrics;
	struct http_client *http;
	struct auth *auth;
	struct collector_transport tp;
	struct worker *worker; /* parses the pages */
	char *arm_endpoint;
	char *provider;
	int64_t collect_from;
	struct collector_settings set;
	uint64_t timeout_usec, retry_initial, retry_max, unknown_refresh;
	const struct http_random *random;

	struct event *timer;
	bool started;

	struct job *job;
	struct hold *holds;
	size_t n_holds;
	/*
	 * asked early: the first page of the hour after the job's (all tenants), asked while the
	 * job's last page is parsed and stored, so that the next job need not wait for the stamp;
	 * used only by a job started at the next decision with the same request (see
	 * collector_next_take), else dropped
	 */
	struct ahead next;
	int64_t next_hour;

	uint64_t throttle_until; /* monotonic: no request to the stamp before */
	char *stamp_error;       /* the stamp's failing state as logged; NULL: answering */
	bool paused_backlog;
	bool store_full;
	uint64_t full_until;
	char *store_error; /* another store failure as logged */

	/* the user-subscription cache */
	struct refresh *refresh;
	struct strset subs;    /* every user subscription known in this process */
	bool subs_loaded;      /* a refresh succeeded in this process */
	int64_t subs_fresh_at; /* realtime at which that refresh started */
	int64_t split_wants;   /* a split waits for a refresh started at or after this */
	uint64_t refresh_due;  /* monotonic: the next periodic refresh */
	uint64_t refresh_last; /* monotonic: the last successful one */
	bool unknown_wanted;   /* a page named a subscription the cache does not know */
	struct strset unknown; /* not in the store either, until the next refresh */
	struct strset unknown_logged;
	uint64_t unknown_asked_at; /* monotonic */
	unsigned refresh_attempt;
	uint64_t refresh_not_before;
	char *refresh_error;
	size_t subs_listed;
	struct strset skipped; /* subscriptions logged as not direct tenants */

	int64_t cursor;
	int64_t last_page_at;
	unsigned consecutive_failures;
};
/* collector.c: run tick() on the next loop turn. */
void collector_kick(struct collector *c);
/* A reported hour as text for the log. */
const char *collector_hour_text(int64_t hour, char buf[static TIME_RFC3339_LEN + 1]);
/* Log a store failure once per kind; -ENOSPC is the store-full pause. */
void collector_store_failed(struct collector *c, int r, const char *what);
/* The store took a write: leave the store-full and store-error states. */
void collector_store_ok(struct collector *c);
/* False while the store holds max_pending records waiting to be forwarded (logged on change). */
bool collector_backlog_ok(struct collector *c);
/* Remember the job's hour in a hold and end the job. */
void collector_job_park(struct collector *c, struct job *j, uint64_t not_before,
                        const char *resume_url);
/* End the job: the hour is done for this pass (or skipped). */
void collector_job_end(struct collector *c, struct job *j);

/* Sets of strings. */
bool collector_strset_has(const struct strset *s, const char *v);
bool collector_strset_add(struct strset *s, const char *v); /* false: there already */
void collector_strset_clear(struct strset *s);

/* collector-fetch.c: drop the page being parsed for the job and what was asked early, if any. */
void collector_job_cancel_work(struct collector *c, struct job *j);
/* collector-fetch.c: drop what was asked early for the job, if anything. */
void collector_job_drop_prefetch(struct collector *c, struct job *j);
/*
 * collector-fetch.c: a new job takes the next hour's first page asked early when it is its own
 * first request (else that is dropped): then it is in flight as the job's request (j->handle) or
 * its answer is the job's next step.
 */
void collector_next_take(struct collector *c, struct job *j);
/* collector-fetch.c: drop the next hour's first page asked early, if any. */
void collector_next_drop(struct collector *c);
/* collector-fetch.c: send the job's next request, unless paused, throttled or in its backoff. */
void collector_job_step(struct collector *c, uint64_t now, uint64_t *wake);
/* Start or continue a refresh of the user-subscription cache when one is due. */
void collector_refresh_step(struct collector *c, uint64_t now, uint64_t *wake);
/* Free a refresh, cancelling its request. */
void collector_refresh_free(struct collector *c, struct refresh *f);

/* The default transport: lib/auth's token, lib/http's GET. */
int collector_stack_get(void *userdata, const char *url, uint64_t timeout_usec,
                        collector_reply_fn done, void *done_userdata, void **ret_handle);
void collector_stack_cancel(void *userdata, void *handle);
void collector_stack_token_refused(void *userdata, const char *token);
