/*
 * The charge mapping of the registry (see registry.c): records mapped through the tenant table
 * and the user subscriptions met, the look-ups azs-usagectl shows, and the string-keyed tables
 * and small helpers the registry's files share.
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

#define REASON_REGISTERED "registered"
#define REASON_DEFAULT    "default"
#define REASON_UNKNOWN    "unknown-subscription"
#define REASON_AMBIGUOUS  "ambiguous"

static int charge(struct registry *r, const char *subscription_id, int64_t collected_at,
                  bool for_claim, struct store_charge *ret, struct sub_entry **ret_entry);

/* Forget registry_map()'s last charge. */
void
registry_map_forget(struct registry *r)
{
	r->last_subscription[0] = '\0';
	r->last_charge = (struct store_charge){0};
}

/* The store's map callback. */
int
registry_map(void *userdata, const struct store_record *rec, struct store_charge *ret)
{
	struct registry *r = userdata;
	struct sub_entry *e = NULL;
	size_t len;
	int err;

	if (!r || !rec || !ret || !rec->subscription_id)
		return -EINVAL;
	if (!r->loaded || registry_is_stale(r))
		return -ESTALE;
	if (r->last_subscription[0] && streq(r->last_subscription, rec->subscription_id)) {
		*ret = r->last_charge;
		return 0;
	}
	err = charge(r, rec->subscription_id, rec->collected_at, true, ret, &e);
	if (err < 0)
		return err;
	/* only a known tenant's charge: one of an unknown subscription depends on collected_at */
	len = strlen(rec->subscription_id);
	if (e->tenant && len > 0 && len < sizeof(r->last_subscription)) {
		memcpy(r->last_subscription, rec->subscription_id, len + 1);
		r->last_charge = *ret;
	} else {
		registry_map_forget(r);
	}
	return 0;
}

/* What a record of a subscription would be charged to now. */
int
registry_lookup(struct registry *r, const char *subscription_id, struct registry_lookup *ret)
{
	_cleanup_free_ char *sub = registry_lower_dup(subscription_id);
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
	slot = registry_table_find(&r->tenants, tenant_id);
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
	slot = registry_table_find(&r->tenants, tenant_id);
	if (!slot)
		return 0;
	t = slot->value;
	ret[0] = t->customer;
	ret[1] = t->other;
	return t->other ? 2 : 1;
}

/* Free a tenant entry. */
void
registry_tenant_entry_free(void *p)
{
	struct tenant_entry *t = p;

	if (!t)
		return;
	free(t->customer);
	free(t->other);
	free(t);
}

/* Free a user-subscription entry. */
void
registry_sub_entry_free(void *p)
{
	struct sub_entry *e = p;

	if (!e)
		return;
	free(e->tenant);
	free(e->delegated_provider);
	free(e);
}

/* A user subscription as the tenant cache has it (remembered). */
static int
sub_get(struct registry *r, const char *subscription_id, struct sub_entry **ret)
{
	struct table_slot *slot = registry_table_find(&r->subs, subscription_id);
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
	registry_table_put(&r->subs, subscription_id, e);
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
	if (for_claim && streq(reason, REASON_DEFAULT) &&
	    !registry_table_find(&r->noticed, e->tenant)) {
		registry_table_put(&r->noticed, e->tenant, NULL);
		log_fields(LOG_NOTICE,
		           LOG_FIELDS("MESSAGE_ID", LOG_MESSAGE_ID_TENANT_DEFAULT, "AZS_TENANT",
		                      e->tenant, "AZS_SUBSCRIPTION", subscription_id),
		           "tenant %s has usage and no customer subscription in the registration: "
		           "it is charged to the default subscription %s (if it should be billed "
		           "to its own, register it with 'azs-usagectl tenant add')",
		           e->tenant, r->default_subscription);
		registry_set_metrics(r);
	}
	return 0;
}

/* A lower-case copy; NULL stays NULL. */
char *
registry_lower_dup(const char *s)
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
void
registry_customers_free(struct store_customer_subscription *list, size_t n)
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
struct table_slot *
registry_table_find(const struct table *t, const char *key)
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
void
registry_table_put(struct table *t, const char *key, void *value)
{
	struct table_slot *slot;
	size_t i;

	slot = registry_table_find(t, key);
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
void
registry_table_clear(struct table *t)
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
void
registry_table_done(struct table *t)
{
	registry_table_clear(t);
	free(t->slots);
	t->slots = NULL;
	t->cap = 0;
}
