/*
 * The registration cache and the charge mapping (ARCHITECTURE.md sections 1 and 5).
 *
 * The registry reads the stamp's registration and its customerSubscriptions (every page, through
 * nextLink) from Azure Resource Manager with the [azure] identity, keeps them in the store (so a
 * restart without network still maps) and in memory (so mapping a record costs no query), and
 * refreshes them every refresh_interval. A failed refresh keeps the previous copy; it is logged
 * when refreshes start failing, when the reason changes and when they work again. A copy older
 * than max_staleness is stale: the daemon reports not ready and forwarding holds.
 *
 * Mapping (registry_map, the store's map callback, decided when a record enters a batch and
 * frozen there by the store):
 *   user subscription known, its tenant registered        -> that customer subscription, registered
 *   user subscription known, its tenant not registered    -> the default subscription, default
 *   user subscription unknown after a tenant-cache refresh -> the default subscription,
 *                                                            unknown-subscription
 *   the tenant named by two customerSubscriptions entries  -> held, ambiguous
 * A subscription that left the stamp's list keeps its last known tenant (the store's cache never
 * forgets one), so its late usage stays with its tenant. A record of a subscription the tenant
 * cache has not known since before the record was collected is held ("unknown-subscription")
 * until the cache is refreshed (ARCHITECTURE.md section 4: the collector refreshes it at once
 * when it meets an unknown subscription); the registry then puts it back to pending by itself.
 * The first default charge of each tenant in this process logs a notice
 * (LOG_MESSAGE_ID_TENANT_DEFAULT) naming the tenant; after a restart each tenant is noticed again
 * at its first default charge.
 *
 * Changes made by another writer of the store (azs-usagectl registration refresh, tenant add or
 * remove, the collector's tenant-cache refresh) are picked up by registry_sync(), which the
 * registry runs every few seconds once started. A registration that changed puts held records
 * back to pending (store_unhold_all), so that they are mapped again.
 *
 * Every ARM request is tried again, up to max_attempts, after a 5xx, a 429, a transport error or
 * MetadataResolverBadGatewayError (capped exponential backoff with full jitter, or Retry-After);
 * a 401 asks lib/auth for a new token once. Tokens are never logged.
 *
 * Ownership: the registry borrows the store, the http client, the auth object and the metrics
 * registry, which must outlive it. It copies its options' strings. Times are lib/timeutil's clock.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

struct auth;
struct config;
struct event_base;
struct http_client;
struct http_random;
struct metrics;
struct registry;

/* What the registry was asked to do; a registry does one at a time. */
enum registry_op {
	REGISTRY_REFRESH,
	REGISTRY_TENANT_ADD,
	REGISTRY_TENANT_REMOVE,
};

/*
 * The outcome of one operation. error: 0, or -EREMOTEIO (ARM answered with an error: arm_code and
 * message say which), -EBADMSG (a success answer that is not what the API documents), -EACCES
 * or another lib/auth error (no token; message has the token endpoint's description), a
 * lib/http transport error (-ETIMEDOUT, -ECONNREFUSED, ...), -EPROTO (a nextLink that repeats or
 * names another host), or a store error (-EBUSY, -ENOSPC, ...). Strings are borrowed until the
 * callback returns.
 */
struct registry_result {
	enum registry_op op;
	int error;
	long http_status;     /* of the last answer; 0 when none arrived */
	const char *arm_code; /* the ARM error code, or NULL */
	const char *message;  /* the ARM message or why it failed; "" on success */
	unsigned attempts;    /* requests of the step that ended it, retries included */
	/* REGISTRY_REFRESH */
	bool changed; /* the registration or its customer subscriptions differ from before */
	size_t n_customer_subscriptions;
	size_t n_unheld; /* held records put back to pending because of the change */
	/* REGISTRY_TENANT_ADD, REGISTRY_TENANT_REMOVE */
	bool with_body; /* the success answer had a body (201 or 200 with the entry) */
};

/* Called after every operation (the daemon's periodic refreshes too). May free the registry. */
typedef void (*registry_callback)(const struct registry_result *result, void *userdata);

struct registry_options {
	/* [registration]; without subscription_id, resource_group and name the registry is
	 * offline: it maps and answers lookups from whatever registration the store holds */
	const char *arm_endpoint; /* https, no trailing slash */
	const char *subscription_id;
	const char *resource_group;
	const char *name;
	const char *api_version;        /* NULL: 2017-06-01 */
	const char *audience;           /* token audience of the ARM calls */
	uint64_t refresh_interval_usec; /* 0: 15 min */
	uint64_t max_staleness_usec;    /* 0: 24 h */
	uint64_t timeout_usec;          /* per request; 0: the http client's */
	uint64_t retry_initial_usec;    /* first retry of a failed request; 0: 1 s */
	uint64_t retry_max_usec;        /* cap of the retry and refresh backoff; 0: 5 min */
	unsigned max_attempts;          /* per request; 0: 4 */

	struct store *store;      /* required */
	struct http_client *http; /* NULL: no ARM calls (offline) */
	struct auth *auth;        /* the [azure] identity; required with http */
	struct metrics *metrics;  /* registration_age_seconds, tenants_charged_default; NULL */
	const struct http_random *random; /* backoff jitter; NULL: the default */
	registry_callback callback;       /* NULL: none */
	void *userdata;
};

/* Fill the [registration] members of o from a configuration (the rest is left alone). */
void registry_options_from_config(struct registry_options *o, const struct config *c);

/*
 * Make a registry and load the cached registration from the store. A cached registration whose id
 * is not the configured one is ignored (fetched again before anything is mapped). -EINVAL for
 * missing or inconsistent options, a store error when the cache cannot be read.
 */
int registry_new(struct event_base *base, const struct registry_options *o, struct registry **ret);

/*
 * Attach to the loop: put back to pending what an earlier run held, refresh at once when the
 * cache is absent or older than refresh_interval (else when it will be), then every
 * refresh_interval; run registry_sync() every few seconds.
 */
int registry_start(struct registry *r);

/* Detach from the loop: timers stop, an operation in flight is dropped without its callback. */
void registry_stop(struct registry *r);

struct registry *registry_free(struct registry *r); /* accepts NULL, returns NULL */

/* Apply new intervals (a reload); the next refresh is scheduled again from the last one. */
void registry_set_intervals(struct registry *r, uint64_t refresh_interval_usec,
                            uint64_t max_staleness_usec);

/*
 * Use another token source from now on (new [azure] credentials on SIGHUP; the old one may be
 * freed once this returns): a request waiting for a token asks the new one, and a refresh that
 * failed is tried again at once.
 */
void registry_set_auth(struct registry *r, struct auth *auth);

/*
 * Fetch the registration and its customer subscriptions now and write the cache; the result
 * arrives through the callback. -EALREADY when a refresh is in flight (its callback will come),
 * -EBUSY during a tenant operation, -ENOTCONN when offline.
 */
int registry_refresh(struct registry *r);

/*
 * PUT {registration}/customerSubscriptions/{customer_subscription} with {"properties":
 * {"tenantId": tenant_id}} (both GUIDs, sent lower-case); 200 or 201, with a body or without, is
 * success. The cache is not refreshed by this: call registry_refresh() after it. -EINVAL for a
 * GUID that is not one, -EBUSY while another operation runs, -ENOTCONN when offline.
 */
int registry_tenant_add(struct registry *r, const char *customer_subscription,
                        const char *tenant_id);

/* DELETE the same; 200 or 204 is success (204 also when it was not there). */
int registry_tenant_remove(struct registry *r, const char *customer_subscription);

/*
 * The store's map callback (store_map_fn; userdata is the registry). Strings in *ret are the
 * registry's, valid until the claim ends. -ESTALE when the registration is absent or stale (the
 * forwarder holds before claiming; see registry_is_stale), a store error when the tenant cache
 * cannot be read.
 */
int registry_map(void *userdata, const struct store_record *rec, struct store_charge *ret);

/* Which subscription a record of subscription_id would be charged to now, and why. */
struct registry_lookup {
	bool known;   /* in the tenant cache */
	bool gone;    /* no longer listed by the stamp; its last known tenant is used */
	bool waiting; /* not in the tenant cache, which was never refreshed: held until it is */
	char *tenant_id;
	char *delegated_provider;    /* as cached, or NULL */
	char *customer_subscription; /* the tenant's, when registered */
	char *charged_subscription;  /* NULL when held */
	char *reason;                /* registered | default | unknown-subscription | ambiguous */
	bool hold;
};

/* Fill *ret (free with registry_lookup_done). -ENOENT when no registration is cached. */
int registry_lookup(struct registry *r, const char *subscription_id, struct registry_lookup *ret);
void registry_lookup_done(struct registry_lookup *l);

/*
 * The charge of a tenant (NULL: a subscription unknown to the tenant cache) under the cached
 * registration: the charged subscription (the tenant's customer subscription when registered,
 * NULL when held) and the reason. Borrowed until the registration changes. -ENOENT when no
 * registration is cached.
 */
int registry_tenant_charge(struct registry *r, const char *tenant_id, const char **ret_charged,
                           const char **ret_reason);

/* The tenant a customer subscription is registered for in the cache, or NULL (borrowed). */
const char *registry_tenant_of(struct registry *r, const char *customer_subscription);

/*
 * The customer subscriptions registered for a tenant in the cache: 0, 1, or 2 (ambiguous; the
 * two first found). Borrowed.
 */
size_t registry_customer_subscriptions_of(struct registry *r, const char *tenant_id,
                                          const char *ret[static 2]);

/* Re-read what other writers changed in the store; log staleness as it changes. */
void registry_sync(struct registry *r);

/* True when no registration is cached or the cached one is older than max_staleness. */
bool registry_is_stale(struct registry *r);

/* Seconds since the cached registration was fetched; -ENOENT when none is cached. */
int registry_age(struct registry *r, int64_t *ret);

/* Tenants named by more than one customer subscription in the cache. */
size_t registry_ambiguous_tenants(struct registry *r);

/*
 * Why the daemon is not ready on the registry's account ("registration never fetched",
 * "registration cache stale", "registration names a tenant twice"), or NULL.
 */
const char *registry_not_ready_reason(struct registry *r);

/* The registration resource id as configured (ARM's casing), or NULL when offline. */
const char *registry_resource_id(struct registry *r);

/*
 * Parse one page of customerSubscriptions: each entry's customer subscription is the last
 * segment of its id, lower-cased, its tenant properties.tenantId lower-cased. No body (size 0 or
 * only white space), {} or an object without value is an empty list. *ret_next_link: the
 * nextLink, or NULL. -EBADMSG (with *ret_error, a new string) when the body is not a JSON object,
 * value is not an array, nextLink is not a string, or an entry lacks a GUID id segment or tenant.
 */
int registry_customer_subscriptions_parse(const char *body, size_t size,
                                          struct store_customer_subscription **ret, size_t *ret_n,
                                          char **ret_next_link, char **ret_error);

/* What the operator should do about an ARM error code of the registration API; NULL if unknown. */
const char *registry_arm_advice(const char *code);

/* Whether an ARM answer is worth trying again: 5xx, 429, MetadataResolverBadGatewayError. */
bool registry_arm_retryable(long status, const char *code);

/* True for a GUID (8-4-4-4-12 hex digits, any case). */
bool registry_is_guid(const char *s);
