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
/* a failed refresh is tried again after a backoff starting here, capped at refresh_interval */
#define REGISTRY_REFRESH_RETRY (30 * USEC_PER_SEC)
#define REGISTRY_SYNC_USEC     (5 * USEC_PER_SEC)
#define REGISTRY_MAX_PAGES     10000
#define REGISTRY_QUOTE_MAX     200 /* bytes of an answer's text quoted in a message */

#define REASON_REGISTERED      "registered"
#define REASON_DEFAULT         "default"
#define REASON_UNKNOWN         "unknown-subscription"
#define REASON_AMBIGUOUS       "ambiguous"

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

	struct op op;
	struct event *retry_timer;
	struct event *refresh_timer;
	struct event *sync_timer;
	bool started;
	unsigned failures; /* refreshes failed in a row */
	char *failure;     /* what the last logged failure said; NULL: none */
	bool stale_logged; /* the cache was logged as stale and has not been fresh since */
};

static int op_begin(struct registry *r, enum registry_op kind, char *url, char *body);
static void op_send(struct registry *r);
static void op_clear(struct op *op);
static void op_fail(struct registry *r, int error, const char *format, ...) _printf_(3, 4);
static void op_finish(struct registry *r, struct registry_result *res);
static void on_token(const struct auth_result *result, void *userdata);
static void on_http(const struct http_result *result, void *userdata);
static void on_retry_timer(evutil_socket_t fd, short what, void *userdata);
static void on_refresh_timer(evutil_socket_t fd, short what, void *userdata);
static void on_sync_timer(evutil_socket_t fd, short what, void *userdata);
static int apply(struct registry *r, const char *id, const char *default_subscription,
                 int64_t refreshed_at, struct store_customer_subscription *list, size_t n,
                 bool unhold, bool *ret_changed, size_t *ret_unheld);
static int load_from_store(struct registry *r, bool unhold);
static int sub_get(struct registry *r, const char *subscription_id, struct sub_entry **ret);
static int charge(struct registry *r, const char *subscription_id, int64_t collected_at,
                  bool for_claim, struct store_charge *ret, struct sub_entry **ret_entry);
static void schedule_refresh(struct registry *r, uint64_t delay_usec);
static void note_stale(struct registry *r);
static void set_metrics(struct registry *r);
static char *lower_dup(const char *s);
static void table_put(struct table *t, const char *key, void *value);
static struct table_slot *table_find(const struct table *t, const char *key);
static void table_clear(struct table *t);
static void table_done(struct table *t);
static void customers_free(struct store_customer_subscription *list, size_t n);
static void tenant_entry_free(void *p);
static void sub_entry_free(void *p);

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
	r->subscription_id = lower_dup(o->subscription_id);
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
	r->tenants.free_value = tenant_entry_free;
	r->subs.free_value = sub_entry_free;

	r->configured = r->subscription_id && r->resource_group && r->name;
	if (r->configured) {
		r->resource_id = xasprintf("/subscriptions/%s/resourceGroups/%s/providers/"
		                           "Microsoft.AzureStack/registrations/%s",
		                           r->subscription_id, r->resource_group, r->name);
		r->id = lower_dup(r->resource_id);
		r->default_subscription = xstrdup(r->subscription_id);
	}
	if (base) {
		r->retry_timer = evtimer_new(base, on_retry_timer, r);
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
		schedule_refresh(r, delay);
	evtimer_add(r->sync_timer, &tv);
	note_stale(r);
	set_metrics(r);
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
	op_clear(&r->op);
}

/* Free a tenant entry. */
static void
tenant_entry_free(void *p)
{
	struct tenant_entry *t = p;

	if (!t)
		return;
	free(t->customer);
	free(t->other);
	free(t);
}

/* Free a user-subscription entry. */
static void
sub_entry_free(void *p)
{
	struct sub_entry *e = p;

	if (!e)
		return;
	free(e->tenant);
	free(e->delegated_provider);
	free(e);
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
	table_done(&r->tenants);
	table_done(&r->subs);
	table_done(&r->noticed);
	customers_free(r->customers, r->n_customers);
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
		schedule_refresh(r, delay);
	}
	note_stale(r);
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
	return op_begin(r, REGISTRY_REFRESH, NULL, NULL);
}

/* The URL of one customer subscription. */
static char *
customer_url(struct registry *r, const char *customer)
{
	_cleanup_free_ char *rg = http_escape(r->resource_group), *name = http_escape(r->name),
	                    *version = http_escape(r->api_version), *lower = lower_dup(customer);

	return xasprintf("%s/subscriptions/%s/resourceGroups/%s/providers/Microsoft.AzureStack/"
	                 "registrations/%s/customerSubscriptions/%s?api-version=%s",
	                 r->arm_endpoint, r->subscription_id, rg, name, lower, version);
}

/* Register a tenant's customer subscription. */
int
registry_tenant_add(struct registry *r, const char *customer_subscription, const char *tenant_id)
{
	_cleanup_(json_decrefp) json_t *body = NULL;
	_cleanup_free_ char *tenant = NULL;
	char *text;

	if (!r || !registry_is_guid(customer_subscription) || !registry_is_guid(tenant_id))
		return -EINVAL;
	if (!r->o.http)
		return -ENOTCONN;
	if (r->op.active)
		return -EBUSY;
	tenant = lower_dup(tenant_id);
	body = json_pack("{s:{s:s}}", "properties", "tenantId", tenant);
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	if (!text)
		return -ENOMEM;
	return op_begin(r, REGISTRY_TENANT_ADD, customer_url(r, customer_subscription), text);
}

/* Remove a customer subscription. */
int
registry_tenant_remove(struct registry *r, const char *customer_subscription)
{
	if (!r || !registry_is_guid(customer_subscription))
		return -EINVAL;
	if (!r->o.http)
		return -ENOTCONN;
	if (r->op.active)
		return -EBUSY;
	return op_begin(r, REGISTRY_TENANT_REMOVE, customer_url(r, customer_subscription), NULL);
}

/* The store's map callback. */
int
registry_map(void *userdata, const struct store_record *rec, struct store_charge *ret)
{
	struct registry *r = userdata;

	if (!r || !rec || !ret || !rec->subscription_id)
		return -EINVAL;
	if (!r->loaded || registry_is_stale(r))
		return -ESTALE;
	return charge(r, rec->subscription_id, rec->collected_at, true, ret, NULL);
}

/* What a record of a subscription would be charged to now. */
int
registry_lookup(struct registry *r, const char *subscription_id, struct registry_lookup *ret)
{
	_cleanup_free_ char *sub = lower_dup(subscription_id);
	struct store_charge c = {0};
	struct sub_entry *e = NULL;
	const char *customers[2] = {0};
	int err;

	if (!r || !subscription_id || !ret)
		return -EINVAL;
	if (!r->loaded)
		return -ENOENT;
	/* as a record collected when the tenant cache was last refreshed */
	err = charge(r, sub, r->subs_refreshed_at, false, &c, &e);
	if (err < 0)
		return err;
	*ret = (struct registry_lookup){
	        .known = e->tenant != NULL,
	        .gone = e->gone,
	        .waiting = c.hold && streq(c.reason, REASON_UNKNOWN),
	        .tenant_id = e->tenant ? xstrdup(e->tenant) : NULL,
	        .delegated_provider = e->delegated_provider ? xstrdup(e->delegated_provider) : NULL,
	        .charged_subscription =
	                c.charged_subscription ? xstrdup(c.charged_subscription) : NULL,
	        .reason = xstrdup(c.reason),
	        .hold = c.hold,
	};
	if (e->tenant && registry_customer_subscriptions_of(r, e->tenant, customers) > 0)
		ret->customer_subscription = xstrdup(customers[0]);
	return 0;
}

/* Free a lookup's strings. */
void
registry_lookup_done(struct registry_lookup *l)
{
	if (!l)
		return;
	free(l->tenant_id);
	free(l->delegated_provider);
	free(l->customer_subscription);
	free(l->charged_subscription);
	free(l->reason);
	*l = (struct registry_lookup){0};
}

/* The charge of a tenant under the cached registration. */
int
registry_tenant_charge(struct registry *r, const char *tenant_id, const char **ret_charged,
                       const char **ret_reason)
{
	struct table_slot *slot;

	if (!r || !ret_charged || !ret_reason)
		return -EINVAL;
	if (!r->loaded)
		return -ENOENT;
	if (!tenant_id) {
		*ret_charged = r->default_subscription;
		*ret_reason = REASON_UNKNOWN;
		return 0;
	}
	slot = table_find(&r->tenants, tenant_id);
	if (!slot) {
		*ret_charged = r->default_subscription;
		*ret_reason = REASON_DEFAULT;
	} else if (((struct tenant_entry *)slot->value)->other) {
		*ret_charged = NULL;
		*ret_reason = REASON_AMBIGUOUS;
	} else {
		*ret_charged = ((struct tenant_entry *)slot->value)->customer;
		*ret_reason = REASON_REGISTERED;
	}
	return 0;
}

/* The tenant a customer subscription is registered for. */
const char *
registry_tenant_of(struct registry *r, const char *customer_subscription)
{
	if (!r || !customer_subscription)
		return NULL;
	for (size_t i = 0; i < r->n_customers; i++)
		if (strcasecmp(r->customers[i].subscription_id, customer_subscription) == 0)
			return r->customers[i].tenant_id;
	return NULL;
}

/* The customer subscriptions of a tenant. */
size_t
registry_customer_subscriptions_of(struct registry *r, const char *tenant_id,
                                   const char *ret[static 2])
{
	struct table_slot *slot;
	struct tenant_entry *t;

	ret[0] = ret[1] = NULL;
	if (!r || !tenant_id)
		return 0;
	slot = table_find(&r->tenants, tenant_id);
	if (!slot)
		return 0;
	t = slot->value;
	ret[0] = t->customer;
	ret[1] = t->other;
	return t->other ? 2 : 1;
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
		table_clear(&r->subs);
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

	note_stale(r);
	set_metrics(r);
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

/* True when s is all white space (or empty). */
static bool
blank(const char *s, size_t size)
{
	for (size_t i = 0; i < size; i++)
		if (!isspace((unsigned char)s[i]))
			return false;
	return true;
}

/* Parse one page of customerSubscriptions. */
int
registry_customer_subscriptions_parse(const char *body, size_t size,
                                      struct store_customer_subscription **ret, size_t *ret_n,
                                      char **ret_next_link, char **ret_error)
{
	_cleanup_(json_decrefp) json_t *root = NULL;
	struct store_customer_subscription *list = NULL;
	json_t *value, *next, *entry;
	char *error = NULL;
	size_t n = 0, i;

	if (!ret || !ret_n || !ret_next_link || (!body && size > 0))
		return -EINVAL;
	if (!body || blank(body, size)) {
		*ret = NULL;
		*ret_n = 0;
		*ret_next_link = NULL;
		return 0;
	}
	root = json_loadb(body, size, 0, NULL);
	if (!json_is_object(root)) {
		error = xstrdup("the answer is not a JSON object");
		goto fail;
	}
	next = json_object_get(root, "nextLink");
	if (next && !json_is_null(next) && !json_is_string(next)) {
		error = xstrdup("nextLink is not a string");
		goto fail;
	}
	value = json_object_get(root, "value");
	if (value && !json_is_null(value) && !json_is_array(value)) {
		error = xstrdup("value is not an array");
		goto fail;
	}
	list = xcalloc(json_array_size(value) + 1, sizeof(*list));
	json_array_foreach(value, i, entry)
	{
		const char *id = json_string_value(json_object_get(entry, "id"));
		const char *tenant = json_string_value(
		        json_object_get(json_object_get(entry, "properties"), "tenantId"));
		const char *last = id ? strrchr(id, '/') : NULL;

		if (!json_is_object(entry)) {
			error = xasprintf("value[%zu] is not an object", i);
			goto fail;
		}
		if (!last || !registry_is_guid(last + 1)) {
			error = xasprintf("value[%zu]: id does not end in a subscription id", i);
			goto fail;
		}
		if (!registry_is_guid(tenant)) {
			error = xasprintf("value[%zu]: properties.tenantId is not a tenant id", i);
			goto fail;
		}
		list[n].subscription_id = lower_dup(last + 1);
		list[n].tenant_id = lower_dup(tenant);
		n++;
	}
	*ret_next_link = json_string_value(next) && *json_string_value(next)
	                         ? xstrdup(json_string_value(next))
	                         : NULL;
	*ret = list;
	*ret_n = n;
	return 0;

fail:
	customers_free(list, n);
	if (ret_error)
		*ret_error = error;
	else
		free(error);
	return -EBADMSG;
}

/* The operator's action for an ARM error code. */
const char *
registry_arm_advice(const char *code)
{
	static const struct {
		const char *code;
		const char *advice;
	} table[] = {
	        {"RegistrationNotFound",
	         "the registration named by [registration] subscription_id, resource_group and name "
	         "does not exist: check them against the Microsoft.AzureStack/registrations resource "
	         "in Azure (the stamp's registration script prints them)"},
	        {"UnauthorizedCspRegistration",
	         "multi-tenancy is not approved for this registration: only a registration made with "
	         "a CSP or CSP Shared Services subscription can add tenants; register the stamp with "
	         "such a subscription or ask Microsoft to enable multi-tenancy for it"},
	        {"CustomerSubscriptionsNotAllowed",
	         "Capacity registrations cannot add tenants: all usage is charged to the default "
	         "subscription; re-register the stamp with the PayAsYouUse billing model to charge "
	         "tenants to their own subscriptions"},
	        {"BadCustomerSubscriptionId",
	         "the customer subscription id is not valid: give the customer's Azure subscription id "
	         "(a GUID, as Partner Center shows it)"},
	        {"InvalidCustomerSubscriptionId",
	         "the customer subscription id is invalid: give the customer's Azure subscription id "
	         "(a GUID, as Partner Center shows it)"},
	        {"CustomerSubscriptionNotFound",
	         "Azure does not know this customer subscription (or it is not registered here): "
	         "check the id with the customer or in Partner Center"},
	        {"InvalidCSPSubscription",
	         "the customer subscription is not a CSP subscription of this partner: create it for "
	         "the customer in Partner Center (or use the right id)"},
	        {"MetadataResolverBadGatewayError",
	         "Azure could not resolve the subscription's metadata (a transient failure on "
	         "Azure's side): it was retried; try again in a few minutes"},
	        {"AuthorizationFailed",
	         "the [azure] identity may not do this: give it the Contributor role on the "
	         "registration's resource group"},
	        {"SubscriptionNotFound",
	         "Azure does not know [registration] subscription_id for the [azure] identity: check "
	         "the subscription id and the identity's tenant"},
	        {"ResourceGroupNotFound",
	         "[registration] resource_group does not exist in that subscription: check it"},
	        {"InvalidApiVersionParameter",
	         "set [registration] api_version to a version the registration API supports "
	         "(2017-06-01)"},
	        {"InvalidAuthenticationTokenAudience",
	         "set [registration] audience to Azure Resource Manager's "
	         "(https://management.azure.com/)"},
	        {"InvalidAuthenticationTokenTenant",
	         "the [azure] tenant is not the directory of the registration's subscription: fix "
	         "[azure] tenant"},
	};

	if (!code)
		return NULL;
	for (size_t i = 0; i < ARRAY_SIZE(table); i++)
		if (streq(table[i].code, code))
			return table[i].advice;
	return NULL;
}

/* Whether an ARM answer is transient. */
bool
registry_arm_retryable(long status, const char *code)
{
	if (code && streq(code, "MetadataResolverBadGatewayError"))
		return true;
	return status >= 500 || status == 429 || status == 408;
}

/* True for a GUID. */
bool
registry_is_guid(const char *s)
{
	if (!s || strlen(s) != 36)
		return false;
	for (size_t i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i])) {
			return false;
		}
	}
	return true;
}

/* Start an operation: a refresh, or a tenant operation on url with body (both taken over). */
static int
op_begin(struct registry *r, enum registry_op kind, char *url, char *body)
{
	struct op *op = &r->op;

	op_clear(op);
	op->active = true;
	op->kind = kind;
	op->url = url;
	op->body = body;
	switch (kind) {
	case REGISTRY_REFRESH: {
		_cleanup_free_ char *rg = http_escape(r->resource_group),
		                    *name = http_escape(r->name),
		                    *version = http_escape(r->api_version);

		op->step = STEP_REGISTRATION;
		free(op->url);
		op->url = xasprintf("%s/subscriptions/%s/resourceGroups/%s/providers/"
		                    "Microsoft.AzureStack/registrations/%s?api-version=%s",
		                    r->arm_endpoint, r->subscription_id, rg, name, version);
		break;
	}
	case REGISTRY_TENANT_ADD:
		op->step = STEP_PUT;
		break;
	case REGISTRY_TENANT_REMOVE:
		op->step = STEP_DELETE;
		break;
	}
	op_send(r);
	return 0;
}

/* Ask for a token; the request follows in on_token. */
static void
op_send(struct registry *r)
{
	r->op.request = http_request_cancel(r->op.request);
	r->op.wait = auth_wait_cancel(r->op.wait);
	(void)auth_get(r->o.auth, r->audience, on_token, r, &r->op.wait);
}

/* Free what an operation holds and cancel what it waits for. */
static void
op_clear(struct op *op)
{
	op->request = http_request_cancel(op->request);
	op->wait = auth_wait_cancel(op->wait);
	free(op->url);
	free(op->body);
	free_secret(op->token);
	free(op->raw);
	customers_free(op->list, op->n);
	for (size_t i = 0; i < op->n_links; i++)
		free(op->links[i]);
	free(op->links);
	free(op->arm_code);
	free(op->message);
	*op = (struct op){0};
}

/* The token is here: send the request of the current step. */
static void
on_token(const struct auth_result *result, void *userdata)
{
	struct registry *r = userdata;
	struct op *op = &r->op;
	_cleanup_free_ char *authorization = NULL;
	const char *headers[4] = {0};
	enum http_method method = HTTP_GET;
	size_t n = 0;
	int e;

	op->wait = NULL;
	if (result->error != 0) {
		free(op->arm_code);
		op->arm_code = NULL;
		op->status = 0;
		op_fail(r, result->error, "no token for %s: %s%s%s", r->audience,
		        result->error_code ? result->error_code : "",
		        result->error_code ? ": " : "",
		        result->error_description ? result->error_description
		                                  : strerror(-result->error));
		return;
	}
	free_secret(op->token);
	op->token = xstrdup(result->token);
	authorization = xasprintf("Authorization: Bearer %s", op->token);
	headers[n++] = authorization;
	headers[n++] = "Accept: application/json";
	if (op->step == STEP_PUT) {
		method = HTTP_PUT;
		headers[n++] = "Content-Type: application/json";
	} else if (op->step == STEP_DELETE) {
		method = HTTP_DELETE;
	}
	e = http_request(r->o.http, method, op->url, headers, op->body,
	                 op->body ? strlen(op->body) : 0, r->o.timeout_usec, on_http, r,
	                 &op->request);
	explicit_wipe(authorization, strlen(authorization));
	if (e < 0)
		op_fail(r, e, "the request could not be started");
}

/* Keep the last answer's ARM error (code, message) for the result. */
static void
op_note_error(struct op *op, const struct http_result *res)
{
	struct stack_arm_error err = {0};

	free(op->arm_code);
	free(op->message);
	op->arm_code = op->message = NULL;
	op->retry_after_usec = 0;
	if (res->error != 0) {
		op->message = xstrdup(res->error_message);
		return;
	}
	if (stack_arm_error_parse(res->body, res->body_size, &err) >= 0) {
		op->arm_code = TAKE_PTR(err.code);
		op->message = err.message ? TAKE_PTR(err.message) : xstrdup("");
	} else {
		op->message = xasprintf("HTTP %ld%s%.*s", res->status, res->body_size ? ": " : "",
		                        (int)MIN(res->body_size, REGISTRY_QUOTE_MAX), res->body);
	}
	stack_arm_error_done(&err);
	if (res->retry_after)
		(void)http_retry_after_parse(res->retry_after, now_seconds(), UINT64_MAX,
		                             &op->retry_after_usec);
}

/* Try the request again after a backoff, or give up. */
static void
op_retry_or_fail(struct registry *r, int error)
{
	struct op *op = &r->op;
	uint64_t delay;
	struct timeval tv;

	if (op->attempts >= r->o.max_attempts) {
		op_fail(r, error, "%s", op->message ? op->message : "");
		return;
	}
	delay = http_backoff(op->attempts - 1, r->o.retry_initial_usec, r->o.retry_max_usec,
	                     r->o.random);
	if (op->retry_after_usec)
		delay = MIN(op->retry_after_usec, r->o.retry_max_usec);
	tv = (struct timeval){.tv_sec = (time_t)(delay / USEC_PER_SEC),
	                      .tv_usec = (suseconds_t)(delay % USEC_PER_SEC)};
	log_debug("retrying %s in %" PRIu64 " ms (attempt %u): %s%s%s", op->url,
	          delay / USEC_PER_MSEC, op->attempts + 1, op->arm_code ? op->arm_code : "",
	          op->arm_code ? ": " : "", op->message ? op->message : "");
	evtimer_add(r->retry_timer, &tv);
}

/* Add the entries of one page to the list, refusing a subscription named for two tenants. */
static int
list_add(struct op *op, struct store_customer_subscription *page, size_t n, char **ret_error)
{
	for (size_t i = 0; i < n; i++) {
		bool again = false;

		for (size_t k = 0; k < op->n && !again; k++) {
			if (!streq(op->list[k].subscription_id, page[i].subscription_id))
				continue;
			if (!streq(op->list[k].tenant_id, page[i].tenant_id)) {
				*ret_error = xasprintf("customer subscription %s is listed for two "
				                       "tenants",
				                       page[i].subscription_id);
				return -EBADMSG;
			}
			again = true;
		}
		if (again) {
			store_customer_subscription_done(&page[i]);
			continue;
		}
		if (op->n == op->cap) {
			op->cap = op->cap ? 2 * op->cap : 16;
			op->list = xreallocarray(op->list, op->cap, sizeof(*op->list));
		}
		op->list[op->n++] = page[i];
		page[i] = (struct store_customer_subscription){0};
	}
	return 0;
}

/* Order customer subscriptions by id. */
static int
customer_cmp(const void *a, const void *b)
{
	return strcmp(((const struct store_customer_subscription *)a)->subscription_id,
	              ((const struct store_customer_subscription *)b)->subscription_id);
}

/* The refresh has every page: write the cache and take it. */
static void
op_commit(struct registry *r)
{
	struct op *op = &r->op;
	struct store_registration reg = {
	        .id = r->id,
	        .default_subscription = r->default_subscription,
	        .raw = op->raw,
	        .refreshed_at = now_seconds(),
	};
	struct registry_result res = {
	        .op = REGISTRY_REFRESH, .message = "", .http_status = op->status};
	int e;

	if (op->n > 1)
		qsort(op->list, op->n, sizeof(*op->list), customer_cmp);
	e = store_registration_replace(r->o.store, &reg, op->list, op->n);
	if (e >= 0) /* our own write: nothing to read back */
		e = store_registration_generation(r->o.store, &r->generation);
	if (e < 0) {
		op_fail(r, e, "writing the registration cache: %s", store_errmsg(r->o.store));
		return;
	}
	res.attempts = op->attempts;
	res.n_customer_subscriptions = op->n;
	e = apply(r, r->id, r->default_subscription, reg.refreshed_at, TAKE_PTR(op->list), op->n,
	          true, &res.changed, &res.n_unheld);
	op->n = op->cap = 0;
	if (e < 0) {
		op_fail(r, e, "putting held records back to pending: %s", store_errmsg(r->o.store));
		return;
	}
	op_finish(r, &res);
}

/* A success answer of the current step. */
static void
op_answer(struct registry *r, const struct http_result *res)
{
	struct op *op = &r->op;
	_cleanup_free_ char *error = NULL, *next = NULL;
	struct store_customer_subscription *page = NULL;
	size_t n = 0;
	int e;

	switch (op->step) {
	case STEP_REGISTRATION: {
		_cleanup_(json_decrefp) json_t *root =
		        json_loadb(res->body, res->body_size, 0, NULL);
		const char *id = json_string_value(json_object_get(root, "id"));
		_cleanup_free_ char *rg = NULL, *name = NULL, *version = NULL;

		if (!json_is_object(root)) {
			op_fail(r, -EBADMSG,
			        "the registration answer (HTTP %ld) is not a JSON object",
			        res->status);
			return;
		}
		if (id && strcasecmp(id, r->resource_id) != 0) {
			op_fail(r, -EBADMSG, "the answer is registration %.*s, not %s",
			        REGISTRY_QUOTE_MAX, id, r->resource_id);
			return;
		}
		free(op->raw);
		op->raw = xstrndup(res->body, res->body_size);
		rg = http_escape(r->resource_group);
		name = http_escape(r->name);
		version = http_escape(r->api_version);
		free(op->url);
		op->url = xasprintf("%s/subscriptions/%s/resourceGroups/%s/providers/"
		                    "Microsoft.AzureStack/registrations/%s/customerSubscriptions"
		                    "?api-version=%s",
		                    r->arm_endpoint, r->subscription_id, rg, name, version);
		op->step = STEP_LIST;
		op->attempts = 0;
		op->reauthorized = false;
		op_send(r);
		return;
	}
	case STEP_LIST:
		e = registry_customer_subscriptions_parse(res->body, res->body_size, &page, &n,
		                                          &next, &error);
		if (e < 0) {
			op_fail(r, e, "customerSubscriptions: %s", error ? error : "malformed");
			return;
		}
		e = list_add(op, page, n, &error);
		customers_free(page, n);
		if (e < 0) {
			op_fail(r, e, "customerSubscriptions: %s", error);
			return;
		}
		if (!next) {
			op_commit(r);
			return;
		}
		if (!stack_link_authority_ok(next, r->arm_endpoint)) {
			_cleanup_free_ char *host = NULL;

			(void)stack_url_host(next, &host);
			op_fail(r, -EPROTO,
			        "customerSubscriptions: nextLink names another host (%s): not "
			        "followed with the token",
			        host ? host : "not a URL");
			return;
		}
		for (size_t i = 0; i < op->n_links; i++)
			if (streq(op->links[i], next)) {
				op_fail(r, -EPROTO, "customerSubscriptions: a nextLink came again");
				return;
			}
		if (op->n_links >= REGISTRY_MAX_PAGES) {
			op_fail(r, -EPROTO, "customerSubscriptions: more than %d pages",
			        REGISTRY_MAX_PAGES);
			return;
		}
		op->links = xreallocarray(op->links, op->n_links + 1, sizeof(char *));
		op->links[op->n_links++] = xstrdup(next);
		free(op->url);
		op->url = TAKE_PTR(next);
		op->attempts = 0;
		op->reauthorized = false;
		op_send(r);
		return;
	case STEP_PUT:
	case STEP_DELETE: {
		bool ok = op->step == STEP_PUT ? res->status == 200 || res->status == 201
		                               : res->status == 200 || res->status == 204;
		struct registry_result out = {
		        .op = op->kind,
		        .http_status = res->status,
		        .message = "",
		        .attempts = op->attempts,
		        .with_body = !blank(res->body, res->body_size),
		};

		if (!ok) {
			op_fail(r, -EBADMSG,
			        "Azure Resource Manager answered HTTP %ld, which the API does not "
			        "document for %s: check the result with 'azs-usagectl registration "
			        "refresh'",
			        res->status, op->step == STEP_PUT ? "PUT" : "DELETE");
			return;
		}
		op_finish(r, &out);
		return;
	}
	}
}

/* The answer of a request. */
static void
on_http(const struct http_result *res, void *userdata)
{
	struct registry *r = userdata;
	struct op *op = &r->op;

	op->request = NULL;
	op->attempts++;
	op->status = res->status;
	metrics_observe(r->o.metrics, METRICS_HTTP_REQUEST_DURATION_SECONDS, "registration",
	                (double)res->total_usec / (double)USEC_PER_SEC);
	if (res->error != 0) {
		op_note_error(op, res);
		op_retry_or_fail(r, res->error);
		return;
	}
	if (res->status == 401 && !op->reauthorized) {
		/* the token was refused: a new one, once */
		op->reauthorized = true;
		auth_invalidate(r->o.auth, r->audience, op->token);
		op_send(r);
		return;
	}
	if (res->status >= 200 && res->status < 300) {
		op_answer(r, res);
		return;
	}
	op_note_error(op, res);
	if (registry_arm_retryable(res->status, op->arm_code))
		op_retry_or_fail(r, -EREMOTEIO);
	else
		op_fail(r, -EREMOTEIO, "%s", op->message);
}

/* Retry timer: send the current request again. */
static void
on_retry_timer(evutil_socket_t fd, short what, void *userdata)
{
	(void)fd;
	(void)what;
	op_send(userdata);
}

/* End the operation with an error. */
static void
op_fail(struct registry *r, int error, const char *format, ...)
{
	_cleanup_free_ char *message = NULL;
	_cleanup_free_ char *code = TAKE_PTR(r->op.arm_code);
	struct registry_result res = {
	        .op = r->op.kind,
	        .error = error,
	        .http_status = r->op.status,
	        .attempts = r->op.attempts,
	};
	va_list ap;

	va_start(ap, format);
	message = xvasprintf(format, ap);
	va_end(ap);
	res.arm_code = code;
	res.message = message;
	op_finish(r, &res);
}

/* End the operation: schedule the next refresh, log a change of state, call back. */
static void
op_finish(struct registry *r, struct registry_result *res)
{
	registry_callback callback = r->o.callback;
	void *userdata = r->o.userdata;
	uint64_t retry_after = r->op.retry_after_usec;

	op_clear(&r->op);
	if (res->op == REGISTRY_REFRESH && r->started) {
		if (res->error == 0) {
			if (r->failures > 0)
				log_notice(
				        "registration refreshed again after %u failed refreshes: "
				        "%zu customer subscriptions",
				        r->failures, res->n_customer_subscriptions);
			r->failures = 0;
			free(r->failure);
			r->failure = NULL;
			schedule_refresh(r, r->o.refresh_interval_usec);
		} else {
			_cleanup_free_ char *what = xasprintf(
			        "%s%s%s", res->arm_code ? res->arm_code : "",
			        res->arm_code ? ": " : "", res->message ? res->message : "");
			uint64_t cap = r->o.refresh_interval_usec;
			uint64_t delay = http_backoff(r->failures, MIN(REGISTRY_REFRESH_RETRY, cap),
			                              cap, r->o.random);
			char status[24];

			r->failures++;
			snprintf(status, sizeof(status), "%ld", res->http_status);
			if (!r->failure || !streq(r->failure, what)) {
				const char *advice = registry_arm_advice(res->arm_code);

				(void)log_fields_errno(
				        LOG_WARNING, res->error,
				        LOG_FIELDS("AZS_ARM_ERROR", res->arm_code,
				                   "AZS_HTTP_STATUS",
				                   res->http_status ? status : NULL),
				        "refreshing the registration failed (%s): %s%s%s",
				        r->loaded ? "the cached copy stays in use"
				                  : "nothing is cached yet",
				        what, advice ? "; " : "", advice ? advice : "");
				free(r->failure);
				r->failure = TAKE_PTR(what);
			}
			delay = MAX(delay, MIN(USEC_PER_SEC, cap));
			if (retry_after > delay)
				delay = MIN(retry_after, r->o.retry_max_usec);
			schedule_refresh(r, delay);
		}
		note_stale(r);
		set_metrics(r);
	}
	if (callback)
		callback(res, userdata);
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
		schedule_refresh(r, REGISTRY_SYNC_USEC); /* after the tenant operation */
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
static void
schedule_refresh(struct registry *r, uint64_t delay_usec)
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
static int
apply(struct registry *r, const char *id, const char *default_subscription, int64_t refreshed_at,
      struct store_customer_subscription *list, size_t n, bool unhold, bool *ret_changed,
      size_t *ret_unheld)
{
	bool changed = !r->loaded || !r->id || !streq(r->id, id) ||
	               !streq_ptr(r->default_subscription, default_subscription) ||
	               !customers_equal(r->customers, r->n_customers, list, n);
	size_t ambiguous = 0;
	struct table kept = {0};

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
		customers_free(list, n);
		return 0;
	}

	customers_free(r->customers, r->n_customers);
	r->customers = list;
	r->n_customers = n;
	table_clear(&r->tenants);
	for (size_t i = 0; i < n; i++) {
		struct table_slot *slot = table_find(&r->tenants, list[i].tenant_id);
		struct tenant_entry *t;

		if (!slot) {
			t = xcalloc(1, sizeof(*t));
			t->customer = xstrdup(list[i].subscription_id);
			table_put(&r->tenants, list[i].tenant_id, t);
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

		if (tenant && !table_find(&r->tenants, tenant))
			table_put(&kept, tenant, NULL);
	}
	table_done(&r->noticed);
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
	set_metrics(r);
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
	e = apply(r, reg.id, r->configured ? r->default_subscription : reg.default_subscription,
	          reg.refreshed_at, list, n, unhold, NULL, NULL);
	store_registration_done(&reg);
	return e;
}

/* A user subscription as the tenant cache has it (remembered). */
static int
sub_get(struct registry *r, const char *subscription_id, struct sub_entry **ret)
{
	struct table_slot *slot = table_find(&r->subs, subscription_id);
	struct store_subscription s = {0};
	struct sub_entry *e;
	int err;

	if (slot) {
		*ret = slot->value;
		return 0;
	}
	err = store_subscription_get(r->o.store, subscription_id, &s);
	if (err < 0 && err != -ENOENT)
		return err;
	e = xcalloc(1, sizeof(*e));
	if (err == 0) {
		e->tenant = TAKE_PTR(s.tenant_id);
		e->delegated_provider = TAKE_PTR(s.delegated_provider);
		e->gone = s.gone;
		store_subscription_done(&s);
	}
	table_put(&r->subs, subscription_id, e);
	*ret = e;
	return 0;
}

/* The charge of a record of a subscription, collected at collected_at. */
static int
charge(struct registry *r, const char *subscription_id, int64_t collected_at, bool for_claim,
       struct store_charge *ret, struct sub_entry **ret_entry)
{
	struct sub_entry *e = NULL;
	const char *charged = NULL, *reason = NULL;
	int err;

	err = sub_get(r, subscription_id, &e);
	if (err < 0)
		return err;
	if (ret_entry)
		*ret_entry = e;
	*ret = (struct store_charge){.registration = r->id};

	if (!e->tenant) {
		if (r->subs_refreshed_at == 0 || r->subs_refreshed_at < collected_at) {
			/* not known yet: the tenant cache is refreshed for it (section 4) */
			ret->hold = true;
			ret->reason = REASON_UNKNOWN;
			if (for_claim) {
				r->holding_unknown = true;
				if (!e->held_logged)
					log_fields(
					        LOG_INFO,
					        LOG_FIELDS("AZS_SUBSCRIPTION", subscription_id),
					        "user subscription %s is not in the tenant cache "
					        "yet: its records are held until the cache is "
					        "refreshed",
					        subscription_id);
				e->held_logged = true;
			}
			return 0;
		}
		ret->charged_subscription = r->default_subscription;
		ret->reason = REASON_UNKNOWN;
		return 0;
	}

	ret->tenant_id = e->tenant;
	(void)registry_tenant_charge(r, e->tenant, &charged, &reason);
	ret->reason = reason;
	ret->charged_subscription = charged;
	if (!charged) {
		ret->hold = true;
		return 0;
	}
	if (for_claim && streq(reason, REASON_DEFAULT) && !table_find(&r->noticed, e->tenant)) {
		table_put(&r->noticed, e->tenant, NULL);
		log_fields(LOG_NOTICE,
		           LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_TENANT_DEFAULT, "AZS_TENANT",
		                      e->tenant, "AZS_SUBSCRIPTION", subscription_id),
		           "tenant %s has usage and no customer subscription in the registration: "
		           "it is charged to the default subscription %s (if it should be billed "
		           "to its own, register it with 'azs-usagectl tenant add')",
		           e->tenant, r->default_subscription);
		set_metrics(r);
	}
	return 0;
}

/* Log the change to stale and back. */
static void
note_stale(struct registry *r)
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
static void
set_metrics(struct registry *r)
{
	if (!r->o.metrics)
		return;
	if (r->loaded)
		metrics_set(r->o.metrics, METRICS_REGISTRATION_AGE_SECONDS, NULL,
		            (double)(now_seconds() - r->refreshed_at));
	metrics_set(r->o.metrics, METRICS_TENANTS_CHARGED_DEFAULT, NULL, (double)r->noticed.n);
}

/* A lower-case copy; NULL stays NULL. */
static char *
lower_dup(const char *s)
{
	char *out;

	if (!s)
		return NULL;
	out = xstrdup(s);
	for (char *p = out; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return out;
}

/* Free a list of customer subscriptions. */
static void
customers_free(struct store_customer_subscription *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		store_customer_subscription_done(&list[i]);
	free(list);
}

/* FNV-1a. */
static uint64_t
hash_string(const char *s)
{
	uint64_t h = UINT64_C(14695981039346656037);

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= UINT64_C(1099511628211);
	}
	return h;
}

/* The slot holding key, or NULL. */
static struct table_slot *
table_find(const struct table *t, const char *key)
{
	if (t->cap == 0 || !key)
		return NULL;
	for (size_t i = hash_string(key) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
		if (!t->slots[i].key)
			return NULL;
		if (streq(t->slots[i].key, key))
			return &t->slots[i];
	}
}

/* Put key (copied) with value; a key already there gets the new value. */
static void
table_put(struct table *t, const char *key, void *value)
{
	struct table_slot *slot;
	size_t i;

	slot = table_find(t, key);
	if (slot) {
		if (t->free_value && slot->value != value)
			t->free_value(slot->value);
		slot->value = value;
		return;
	}
	if ((t->n + 1) * 10 > t->cap * 7) {
		struct table bigger = {.cap = t->cap ? 2 * t->cap : 16,
		                       .free_value = t->free_value};

		bigger.slots = xcalloc(bigger.cap, sizeof(*bigger.slots));
		for (size_t k = 0; k < t->cap; k++) {
			if (!t->slots[k].key)
				continue;
			for (i = hash_string(t->slots[k].key) & (bigger.cap - 1);
			     bigger.slots[i].key; i = (i + 1) & (bigger.cap - 1))
				;
			bigger.slots[i] = t->slots[k];
			bigger.n++;
		}
		free(t->slots);
		*t = bigger;
	}
	for (i = hash_string(key) & (t->cap - 1); t->slots[i].key; i = (i + 1) & (t->cap - 1))
		;
	t->slots[i] = (struct table_slot){.key = xstrdup(key), .value = value};
	t->n++;
}

/* Empty a table, keeping its slots. */
static void
table_clear(struct table *t)
{
	for (size_t i = 0; i < t->cap; i++) {
		if (!t->slots[i].key)
			continue;
		free(t->slots[i].key);
		if (t->free_value)
			t->free_value(t->slots[i].value);
		t->slots[i] = (struct table_slot){0};
	}
	t->n = 0;
}

/* Free a table. */
static void
table_done(struct table *t)
{
	table_clear(t);
	free(t->slots);
	t->slots = NULL;
	t->cap = 0;
}
