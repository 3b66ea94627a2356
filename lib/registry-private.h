/*
 * What lib/registry.c (the object, the cached registration, sync and staleness),
 * lib/registry-map.c (the charge mapping, its tables and look-ups) and lib/registry-arm.c (the
 * calls to ARM) share. Private to them.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "registry.h"
#include "store.h"

/* A string-keyed hash table (open addressing, linear probing); keys are owned. */
struct table_slot {
	char *key;
	void *value;
};

struct table {
	struct table_slot *slots;
	size_t cap; /* a power of two, or 0 */
	size_t n;
	void (*free_value)(void *value);
};

/* A tenant of the cached registration. */
struct tenant_entry {
	char *customer; /* its customer subscription (the first by id) */
	char *other;    /* a second one: the registration is ambiguous about this tenant */
};

/* A user subscription as the tenant cache had it when first met. */
struct sub_entry {
	char *tenant; /* NULL: not in the tenant cache */
	char *delegated_provider;
	bool gone;
	bool held_logged;
};

enum op_step {
	STEP_REGISTRATION,
	STEP_LIST,
	STEP_PUT,
	STEP_DELETE,
};

/* The operation in flight. */
struct op {
	bool active;
	enum registry_op kind;
	enum op_step step;
	unsigned attempts; /* requests of this step so far */
	bool reauthorized; /* a 401 led to a new token already */
	char *url;
	char *body; /* PUT */
	char *token;
	char *raw; /* the registration as received */
	struct store_customer_subscription *list;
	size_t n, cap;
	char **links; /* nextLinks followed, to refuse a loop */
	size_t n_links;
	struct http_request *request;
	struct auth_wait *wait;
	/* the last answer */
	long status;
	char *arm_code;
	char *message;
	uint64_t retry_after_usec;
	bool with_body;
};

struct registry {
	struct event_base *base;
	struct registry_options o; /* strings below are our copies */
	char *arm_endpoint, *subscription_id, *resource_group, *name, *api_version, *audience;
	bool configured;
	char *resource_id; /* as ARM writes it, for URLs and messages */

	/* the cached registration */
	bool loaded;
	int64_t generation;         /* of the store's registration cache when it was last read */
	char *id;                   /* lower-case */
	char *default_subscription; /* lower-case */
	int64_t refreshed_at;
	struct store_customer_subscription *customers;
	size_t n_customers;
	struct table tenants; /* tenant -> struct tenant_entry */
	size_t n_ambiguous;

	/* user subscriptions met while mapping */
	struct table subs;         /* subscription -> struct sub_entry */
	int64_t subs_refreshed_at; /* of the tenant cache they were read from; 0: never */
	bool holding_unknown;      /* records were held for a subscription not known yet */

	struct table noticed; /* tenants whose default charge was logged */

	/*
	 * registry_map()'s last charge of a subscription with a tenant: the records of a claim
	 * mostly share one. Such a charge depends on the tables above and the registration only,
	 * and a repeat has no side effect (the default charge's notice is logged the first time);
	 * registry_map_forget() empties it wherever they change.
	 */
	char last_subscription[64]; /* "": none */
	struct store_charge last_charge;

	struct op op;
	struct event *retry_timer;
	struct event *refresh_timer;
	struct event *sync_timer;
	bool started;
	unsigned failures; /* refreshes failed in a row */
	char *failure;     /* what the last logged failure said; NULL: none */
	bool stale_logged; /* the cache was logged as stale and has not been fresh since */
};
/* registry-map.c: forget registry_map()'s last charge (the tables or registration change). */
void registry_map_forget(struct registry *r);
/* registry.c: arm the refresh timer. */
void registry_schedule_refresh(struct registry *r, uint64_t delay_usec);
/* Log the change to stale and back. */
void registry_note_stale(struct registry *r);
/* Update the registry's metrics. */
void registry_set_metrics(struct registry *r);
/*
 * Take a registration (list is taken over): rebuild the tenant table, forget noticed tenants
 * that are registered now, and with unhold put held records back to pending when it changed.
 */
int registry_apply(struct registry *r, const char *id, const char *default_subscription,
                   int64_t refreshed_at, struct store_customer_subscription *list, size_t n,
                   bool unhold, bool *ret_changed, size_t *ret_unheld);

/* registry-arm.c: start an operation: a refresh, or a tenant operation on url with body (both
 * taken over). */
int registry_op_begin(struct registry *r, enum registry_op kind, char *url, char *body);
/* Free what an operation holds and cancel what it waits for. */
void registry_op_clear(struct op *op);
/* Retry timer: send the current request again. */
void registry_on_retry_timer(evutil_socket_t fd, short what, void *userdata);

/* registry-map.c: free a tenant entry, a user-subscription entry (table values). */
void registry_tenant_entry_free(void *p);
void registry_sub_entry_free(void *p);
/* A lower-case copy; NULL stays NULL. */
char *registry_lower_dup(const char *s);
/* Free a list of customer subscriptions. */
void registry_customers_free(struct store_customer_subscription *list, size_t n);

/* The tables. */
struct table_slot *registry_table_find(const struct table *t, const char *key); /* NULL: none */
void registry_table_put(struct table *t, const char *key, void *value);         /* key is copied */
void registry_table_clear(struct table *t); /* empty it, keeping its slots */
void registry_table_done(struct table *t);
