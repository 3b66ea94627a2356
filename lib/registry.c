/*
 * The registration cache and the charge mapping (see registry.h; ARCHITECTURE.md sections 1, 4
 * and 5).
 *
 * Memory: the cached registration is kept as a table tenant -> customer subscription (an entry
 * with a second customer subscription is ambiguous), and user subscriptions met while mapping are
 * remembered (subscription -> tenant, including "not in the tenant cache"), so that mapping a
 * record is two hash look-ups; the store is asked once per user subscription, and again after
 * the tenant cache was refreshed (registry_sync notices that by its refresh time).
 *
 * ARM calls are one operation at a time (a refresh: the registration, then every page of
 * customerSubscriptions; or one PUT or DELETE), each request preceded by auth_get() (lib/auth
 * caches the token) and tried again on the transient answers of registry_arm_retryable().
 *
 * This file: the object, the cached registration (taken from a refresh or read back from the
 * store), syncing with other writers and staleness. registry-map.c maps records (the tables,
 * the look-ups for azs-usagectl); registry-arm.c makes the calls to ARM.
 */

#define LOG_MODULE "registry"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <jansson.h>

#include "auth.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "registry-private.h"
#include "registry.h"
#include "stack.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define REGISTRY_API_VERSION       "2017-06-01"
#define REGISTRY_REFRESH_DEFAULT   (15 * 60 * USEC_PER_SEC)
#define REGISTRY_STALENESS_DEFAULT (24 * 3600 * USEC_PER_SEC)
#define REGISTRY_RETRY_INITIAL     (1 * USEC_PER_SEC)
#define REGISTRY_RETRY_MAX         (5 * 60 * USEC_PER_SEC)
#define REGISTRY_ATTEMPTS          4
#define REGISTRY_SYNC_USEC         (5 * USEC_PER_SEC)

static void on_refresh_timer(evutil_socket_t fd, short what, void *userdata);
static void on_sync_timer(evutil_socket_t fd, short what, void *userdata);
static int load_from_store(struct registry *r, bool unhold);

/* Take the [registration] keys of a configuration. */
void
registry_options_from_config(struct registry_options *o, const struct config *c)
{
	o->arm_endpoint = c->registration.arm_endpoint;
	o->subscription_id = c->registration.subscription_id;
	o->resource_group = c->registration.resource_group;
	o->name = c->registration.name;
	o->api_version = c->registration.api_version;
	o->audience = c->registration.audience;
	o->refresh_interval_usec = c->registration.refresh_interval_usec;
	o->max_staleness_usec = c->registration.max_staleness_usec;
}

/* Make a registry and load the cached registration. */
int
registry_new(struct event_base *base, const struct registry_options *o, struct registry **ret)
{
	struct registry *r;
	int e;

	if (!o || !ret || !o->store)
		return -EINVAL;
	if (o->subscription_id && !registry_is_guid(o->subscription_id))
		return -EINVAL;
	if (o->http && (!base || !o->auth || isempty(o->arm_endpoint) || isempty(o->audience) ||
	                !o->subscription_id || isempty(o->resource_group) || isempty(o->name)))
		return -EINVAL;
	if (o->http && strncasecmp(o->arm_endpoint, "https://", 8) != 0)
		return -EINVAL;

	r = xcalloc(1, sizeof(*r));
	r->base = base;
	r->o = *o;
	r->arm_endpoint = o->arm_endpoint ? xstrdup(o->arm_endpoint) : NULL;
	r->subscription_id = registry_lower_dup(o->subscription_id);
	r->resource_group = o->resource_group ? xstrdup(o->resource_group) : NULL;
	r->name = o->name ? xstrdup(o->name) : NULL;
	r->api_version = xstrdup(o->api_version ? o->api_version : REGISTRY_API_VERSION);
	r->audience = o->audience ? xstrdup(o->audience) : NULL;
	r->o.arm_endpoint = r->arm_endpoint;
	r->o.subscription_id = r->subscription_id;
	r->o.resource_group = r->resource_group;
	r->o.name = r->name;
	r->o.api_version = r->api_version;
	r->o.audience = r->audience;
	if (!r->o.refresh_interval_usec)
		r->o.refresh_interval_usec = REGISTRY_REFRESH_DEFAULT;
	if (!r->o.max_staleness_usec)
		r->o.max_staleness_usec = REGISTRY_STALENESS_DEFAULT;
	if (!r->o.retry_initial_usec)
		r->o.retry_initial_usec = REGISTRY_RETRY_INITIAL;
	if (!r->o.retry_max_usec)
		r->o.retry_max_usec = REGISTRY_RETRY_MAX;
	if (!r->o.max_attempts)
		r->o.max_attempts = REGISTRY_ATTEMPTS;
	r->tenants.free_value = registry_tenant_entry_free;
	r->subs.free_value = registry_sub_entry_free;

	r->configured = r->subscription_id && r->resource_group && r->name;
	if (r->configured) {
		r->resource_id = xasprintf("/subscriptions/%s/resourceGroups/%s/providers/"
		                           "Microsoft.AzureStack/registrations/%s",
		                           r->subscription_id, r->resource_group, r->name);
		r->id = registry_lower_dup(r->resource_id);
		r->default_subscription = xstrdup(r->subscription_id);
	}
	if (base) {
		r->retry_timer = evtimer_new(base, registry_on_retry_timer, r);
		r->refresh_timer = evtimer_new(base, on_refresh_timer, r);
		r->sync_timer = event_new(base, -1, EV_PERSIST, on_sync_timer, r);
		if (!r->retry_timer || !r->refresh_timer || !r->sync_timer) {
			registry_free(r);
			return -ENOMEM;
		}
	}

	e = store_subscriptions_refreshed_at(o->store, &r->subs_refreshed_at);
	if (e == -ENOENT)
		r->subs_refreshed_at = 0;
	else if (e < 0) {
		registry_free(r);
		return e;
	}
	e = load_from_store(r, false);
	if (e < 0 && e != -ENOENT) {
		registry_free(r);
		return e;
	}
	*ret = r;
	return 0;
}

/* Attach to the loop. */
int
registry_start(struct registry *r)
{
	struct timeval tv = {.tv_sec = REGISTRY_SYNC_USEC / USEC_PER_SEC};
	size_t n = 0;
	uint64_t delay = 0;
	int e;

	if (!r || !r->base)
		return -EINVAL;
	if (r->started)
		return 0;
	r->started = true;

	/* records an earlier run held (ambiguous, or waiting for the tenant cache) are mapped
	 * again: the registration or the cache may have changed while it was down */
	e = store_unhold_all(r->o.store, now_seconds(), &n);
	if (e < 0)
		log_warning_errno(e, "putting held records back to pending failed: %s",
		                  store_errmsg(r->o.store));
	else if (n > 0)
		log_info("%zu held records back to pending, to be mapped again", n);

	if (r->loaded) {
		int64_t age = now_seconds() - r->refreshed_at;
		uint64_t interval = r->o.refresh_interval_usec;

		log_info(
		        "registration %s from the cache: %zu customer subscriptions, fetched %" PRId64
		        " s ago",
		        r->resource_id ? r->resource_id : r->id, r->n_customers, age);
		for (size_t i = 0; i < r->tenants.cap; i++) {
			struct tenant_entry *t = r->tenants.slots[i].value;

			if (r->tenants.slots[i].key && t->other)
				log_fields(LOG_WARNING,
				           LOG_FIELDS("AZS_TENANT", r->tenants.slots[i].key),
				           "the registration names tenant %s twice (customer "
				           "subscriptions %s and %s): its usage is held until one "
				           "entry is removed",
				           r->tenants.slots[i].key, t->customer, t->other);
		}
		if (age >= 0 && (uint64_t)age * USEC_PER_SEC < interval)
			delay = interval - (uint64_t)age * USEC_PER_SEC;
	}
	if (r->o.http)
		registry_schedule_refresh(r, delay);
	evtimer_add(r->sync_timer, &tv);
	registry_note_stale(r);
	registry_set_metrics(r);
	return 0;
}

/* Detach from the loop. */
void
registry_stop(struct registry *r)
{
	if (!r)
		return;
	r->started = false;
	if (r->retry_timer)
		evtimer_del(r->retry_timer);
	if (r->refresh_timer)
		evtimer_del(r->refresh_timer);
	if (r->sync_timer)
		evtimer_del(r->sync_timer);
	registry_op_clear(&r->op);
}

/* Free the registry. */
struct registry *
registry_free(struct registry *r)
{
	if (!r)
		return NULL;
	registry_stop(r);
	if (r->retry_timer)
		event_free(r->retry_timer);
	if (r->refresh_timer)
		event_free(r->refresh_timer);
	if (r->sync_timer)
		event_free(r->sync_timer);
	registry_table_done(&r->tenants);
	registry_table_done(&r->subs);
	registry_table_done(&r->noticed);
	registry_customers_free(r->customers, r->n_customers);
	free(r->arm_endpoint);
	free(r->subscription_id);
	free(r->resource_group);
	free(r->name);
	free(r->api_version);
	free(r->audience);
	free(r->resource_id);
	free(r->id);
	free(r->default_subscription);
	free(r->failure);
	free(r);
	return NULL;
}

/* New intervals (a reload). */
void
registry_set_intervals(struct registry *r, uint64_t refresh_interval_usec,
                       uint64_t max_staleness_usec)
{
	if (!r)
		return;
	r->o.refresh_interval_usec =
	        refresh_interval_usec ? refresh_interval_usec : REGISTRY_REFRESH_DEFAULT;
	r->o.max_staleness_usec =
	        max_staleness_usec ? max_staleness_usec : REGISTRY_STALENESS_DEFAULT;
	if (r->started && r->o.http && !r->op.active && r->failures == 0) {
		int64_t age = r->loaded ? now_seconds() - r->refreshed_at : INT64_MAX;
		uint64_t delay = 0;

		if (age >= 0 && age < INT64_MAX &&
		    (uint64_t)age * USEC_PER_SEC < r->o.refresh_interval_usec)
			delay = r->o.refresh_interval_usec - (uint64_t)age * USEC_PER_SEC;
		registry_schedule_refresh(r, delay);
	}
	registry_note_stale(r);
}

/* Another token source (new credentials on a reload). */
void
registry_set_auth(struct registry *r, struct auth *auth)
{
	if (!r || !auth || !r->o.http)
		return;
	r->o.auth = auth;
	if (r->op.active && r->op.wait)
		/* waiting for a token of the old source, which goes away: ask the new one */
		registry_on_retry_timer(-1, 0, r);
	else if (r->started && !r->op.active && r->failures > 0)
		/* the failures may have been the old credentials' */
		registry_schedule_refresh(r, 0);
}

/* Fetch the registration now. */
int
registry_refresh(struct registry *r)
{
	if (!r)
		return -EINVAL;
	if (!r->o.http)
		return -ENOTCONN;
	if (r->op.active)
		return r->op.kind == REGISTRY_REFRESH ? -EALREADY : -EBUSY;
	if (r->refresh_timer)
		evtimer_del(r->refresh_timer);
	return registry_op_begin(r, REGISTRY_REFRESH, NULL, NULL);
}

/* Whether the store's registration cache was written since this registry last read it: by the
 * generation, not the time, which is in whole seconds (a write by azs-usagectl in the same second
 * as the daemon's own refresh would otherwise go unnoticed until the next refresh). */
static bool
registration_changed(struct registry *r)
{
	int64_t g = 0;

	if (store_registration_generation(r->o.store, &g) < 0)
		return false;
	return g != r->generation;
}

/* Re-read what other writers changed in the store. */
void
registry_sync(struct registry *r)
{
	struct store_registration reg = {0};
	int64_t t = 0;
	int e;

	if (!r)
		return;
	e = store_subscriptions_refreshed_at(r->o.store, &t);
	if (e == -ENOENT) {
		t = 0;
		e = 0;
	}
	if (e < 0) {
		log_debug_errno(e, "reading the tenant cache's time: %s", store_errmsg(r->o.store));
	} else if (t != r->subs_refreshed_at) {
		/* the tenant cache was refreshed: meet every subscription again */
		registry_map_forget(r);
		registry_table_clear(&r->subs);
		r->subs_refreshed_at = t;
		if (r->holding_unknown) {
			size_t n = 0;

			e = store_unhold_all(r->o.store, now_seconds(), &n);
			if (e < 0) {
				log_debug_errno(e, "unholding after the tenant cache refresh: %s",
				                store_errmsg(r->o.store));
			} else {
				r->holding_unknown = false;
				if (n > 0)
					log_info("tenant cache refreshed: %zu held records back to "
					         "pending",
					         n);
			}
		}
	}

	e = store_registration_get(r->o.store, &reg);
	if (e >= 0 && (!r->loaded || registration_changed(r)) &&
	    (!r->configured || streq(reg.id, r->id)))
		(void)load_from_store(r, true);
	else if (e < 0 && e != -ENOENT)
		log_debug_errno(e, "reading the registration cache: %s", store_errmsg(r->o.store));
	store_registration_done(&reg);

	registry_note_stale(r);
	registry_set_metrics(r);
}

/* Whether the cache is too old to map on. */
bool
registry_is_stale(struct registry *r)
{
	int64_t age;

	if (!r || !r->loaded)
		return true;
	age = now_seconds() - r->refreshed_at;
	return age > 0 && (uint64_t)age > r->o.max_staleness_usec / USEC_PER_SEC;
}

/* The cache's age. */
int
registry_age(struct registry *r, int64_t *ret)
{
	if (!r || !ret)
		return -EINVAL;
	if (!r->loaded)
		return -ENOENT;
	*ret = now_seconds() - r->refreshed_at;
	return 0;
}

/* Tenants named twice. */
size_t
registry_ambiguous_tenants(struct registry *r)
{
	return r ? r->n_ambiguous : 0;
}

/* Why not ready. */
const char *
registry_not_ready_reason(struct registry *r)
{
	if (!r || !r->loaded)
		return "registration never fetched";
	if (registry_is_stale(r))
		return "registration cache stale";
	if (r->n_ambiguous > 0)
		return "registration names a tenant twice";
	return NULL;
}

/* The configured registration id. */
const char *
registry_resource_id(struct registry *r)
{
	return r ? r->resource_id : NULL;
}
/* Timer: time to refresh. */
static void
on_refresh_timer(evutil_socket_t fd, short what, void *userdata)
{
	struct registry *r = userdata;
	int e;

	(void)fd;
	(void)what;
	e = registry_refresh(r);
	if (e == -EBUSY)
		registry_schedule_refresh(r, REGISTRY_SYNC_USEC); /* after the tenant operation */
}

/* Timer: re-read the store. */
static void
on_sync_timer(evutil_socket_t fd, short what, void *userdata)
{
	(void)fd;
	(void)what;
	registry_sync(userdata);
}

/* Arm the refresh timer. */
void
registry_schedule_refresh(struct registry *r, uint64_t delay_usec)
{
	struct timeval tv = {.tv_sec = (time_t)(delay_usec / USEC_PER_SEC),
	                     .tv_usec = (suseconds_t)(delay_usec % USEC_PER_SEC)};

	if (!r->refresh_timer || !r->o.http)
		return;
	evtimer_del(r->refresh_timer);
	evtimer_add(r->refresh_timer, &tv);
}

/* Compare two lists of customer subscriptions (both in id order). */
static bool
customers_equal(const struct store_customer_subscription *a, size_t na,
                const struct store_customer_subscription *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (!streq(a[i].subscription_id, b[i].subscription_id) ||
		    !streq(a[i].tenant_id, b[i].tenant_id))
			return false;
	return true;
}

/*
 * Take a registration (list is taken over): rebuild the tenant table, forget noticed tenants
 * that are registered now, and with unhold put held records back to pending when it changed.
 */
int
registry_apply(struct registry *r, const char *id, const char *default_subscription,
               int64_t refreshed_at, struct store_customer_subscription *list, size_t n,
               bool unhold, bool *ret_changed, size_t *ret_unheld)
{
	bool changed = !r->loaded || !r->id || !streq(r->id, id) ||
	               !streq_ptr(r->default_subscription, default_subscription) ||
	               !customers_equal(r->customers, r->n_customers, list, n);
	size_t ambiguous = 0;
	struct table kept = {0};

	registry_map_forget(r); /* the charges of the registration before */
	if (r->id != id) {
		free(r->id);
		r->id = xstrdup(id);
	}
	if (r->default_subscription != default_subscription) {
		free(r->default_subscription);
		r->default_subscription = xstrdup(default_subscription);
	}
	r->refreshed_at = refreshed_at;
	r->loaded = true;
	if (ret_changed)
		*ret_changed = changed;
	if (ret_unheld)
		*ret_unheld = 0;
	if (!changed) {
		registry_customers_free(list, n);
		return 0;
	}

	registry_customers_free(r->customers, r->n_customers);
	r->customers = list;
	r->n_customers = n;
	registry_table_clear(&r->tenants);
	for (size_t i = 0; i < n; i++) {
		struct table_slot *slot = registry_table_find(&r->tenants, list[i].tenant_id);
		struct tenant_entry *t;

		if (!slot) {
			t = xcalloc(1, sizeof(*t));
			t->customer = xstrdup(list[i].subscription_id);
			registry_table_put(&r->tenants, list[i].tenant_id, t);
			continue;
		}
		t = slot->value;
		if (!t->other) {
			t->other = xstrdup(list[i].subscription_id);
			ambiguous++;
			if (r->started)
				log_fields(LOG_WARNING, LOG_FIELDS("AZS_TENANT", list[i].tenant_id),
				           "the registration names tenant %s twice (customer "
				           "subscriptions %s and %s): its usage is held until one "
				           "entry is removed",
				           list[i].tenant_id, t->customer, t->other);
		}
	}
	r->n_ambiguous = ambiguous;

	/* a tenant registered now is noticed again should it go back to default */
	for (size_t i = 0; i < r->noticed.cap; i++) {
		const char *tenant = r->noticed.slots[i].key;

		if (tenant && !registry_table_find(&r->tenants, tenant))
			registry_table_put(&kept, tenant, NULL);
	}
	registry_table_done(&r->noticed);
	r->noticed = kept;

	if (r->started)
		log_notice("registration %s changed: %zu customer subscriptions", r->id, n);
	if (unhold) {
		size_t k = 0;
		int e = store_unhold_all(r->o.store, now_seconds(), &k);

		if (e < 0)
			return e;
		if (ret_unheld)
			*ret_unheld = k;
		if (k > 0 && r->started)
			log_info("%zu held records back to pending, to be mapped on the new "
			         "registration",
			         k);
	}
	registry_set_metrics(r);
	return 0;
}

/* Load the registration from the store; -ENOENT when none (or another one) is cached. */
static int
load_from_store(struct registry *r, bool unhold)
{
	struct store_registration reg = {0};
	struct store_customer_subscription *list = NULL;
	size_t n = 0;
	int e;

	e = store_registration_generation(r->o.store, &r->generation);
	if (e < 0)
		return e;
	e = store_registration_get(r->o.store, &reg);
	if (e < 0)
		return e;
	if (r->configured && !streq(reg.id, r->id)) {
		if (!r->loaded)
			log_info(
			        "the cached registration %s is not the configured %s: it is fetched "
			        "again before anything is mapped",
			        reg.id, r->id);
		store_registration_done(&reg);
		return -ENOENT;
	}
	e = store_customer_subscriptions(r->o.store, &list, &n);
	if (e < 0) {
		store_registration_done(&reg);
		return e;
	}
	e = registry_apply(r, reg.id,
	                   r->configured ? r->default_subscription : reg.default_subscription,
	                   reg.refreshed_at, list, n, unhold, NULL, NULL);
	store_registration_done(&reg);
	return e;
}

/* Log the change to stale and back. */
void
registry_note_stale(struct registry *r)
{
	bool stale;
	int64_t age = 0;

	if (!r->started)
		return;
	stale = registry_is_stale(r);
	if (stale && !r->stale_logged) {
		if (r->loaded) {
			age = now_seconds() - r->refreshed_at;
			log_fields(LOG_WARNING,
			           LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_REGISTRATION_STALE),
			           "the registration cache is %" PRId64
			           " s old, more than max_staleness (%" PRIu64
			           " s): not ready, forwarding holds until a refresh succeeds",
			           age, r->o.max_staleness_usec / USEC_PER_SEC);
		} else {
			log_fields(LOG_WARNING,
			           LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_REGISTRATION_STALE),
			           "no registration cached yet: not ready, forwarding holds until "
			           "it is fetched");
		}
		r->stale_logged = true;
	} else if (!stale && r->stale_logged) {
		log_notice("the registration cache is fresh again");
		r->stale_logged = false;
	}
}

/* Update the registry's metrics. */
void
registry_set_metrics(struct registry *r)
{
	if (!r->o.metrics)
		return;
	if (r->loaded)
		metrics_set(r->o.metrics, METRICS_REGISTRATION_AGE_SECONDS, NULL,
		            (double)(now_seconds() - r->refreshed_at));
	metrics_set(r->o.metrics, METRICS_TENANTS_CHARGED_DEFAULT, NULL, (double)r->noticed.n);
}
