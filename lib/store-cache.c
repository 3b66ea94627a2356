/*
 * The caches kept in the store so that a restart without network still maps (ARCHITECTURE.md
 * sections 4 and 5): the stamp's user subscriptions (which never forget a tenant) and the
 * registration with its customer subscriptions.
 */
#include <errno.h>
#include <stdlib.h>

#include "store-private.h"
#include "xmalloc.h"

static void customer_load(sqlite3_stmt *st, void *elem);
static void customer_done(void *elem);
static void string_load(sqlite3_stmt *st, void *elem);
static void string_done(void *elem);

/* Free a subscription's strings. */
void
store_subscription_done(struct store_subscription *sub)
{
	if (!sub)
		return;
	free(sub->subscription_id);
	free(sub->tenant_id);
	free(sub->display_name);
	free(sub->owner);
	free(sub->state);
	free(sub->delegated_provider);
	*sub = (struct store_subscription){0};
}

/*
 * Refresh the user-subscription cache from a complete list. A subscription missing from the
 * list is not forgotten: the usage API still reports its late usage, which belongs to its
 * tenant's customer subscription, so it keeps its tenant and is marked gone.
 */
int
store_subscriptions_replace(struct store *s, const struct store_subscription *subs, size_t n,
                            int64_t now)
{
	int r;

	if (n && !subs)
		return -EINVAL;
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_finalize_ sqlite3_stmt *st = NULL;

		r = store_prepare(s, "UPDATE subscriptions SET gone = 1", &st);
		if (r >= 0)
			r = store_step_done(s, st);
	}
	if (r >= 0) {
		_cleanup_finalize_ sqlite3_stmt *st = NULL;

		r = store_prepare(s,
		                  "INSERT INTO subscriptions (subscription_id, tenant_id,"
		                  " display_name, owner, state, delegated_provider, gone)"
		                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)"
		                  " ON CONFLICT DO UPDATE SET"
		                  " tenant_id = COALESCE(excluded.tenant_id, tenant_id),"
		                  " display_name = excluded.display_name, owner = excluded.owner,"
		                  " state = excluded.state,"
		                  " delegated_provider = excluded.delegated_provider, gone = 0",
		                  &st);
		for (size_t i = 0; r >= 0 && i < n; i++) {
			if (!subs[i].subscription_id) {
				r = store_fail_msg(s, -EINVAL, "subscription without an id");
				break;
			}
			store_bind_text(st, 1, subs[i].subscription_id);
			store_bind_text(st, 2, subs[i].tenant_id);
			store_bind_text(st, 3, subs[i].display_name);
			store_bind_text(st, 4, subs[i].owner);
			store_bind_text(st, 5, subs[i].state);
			store_bind_text(st, 6, subs[i].delegated_provider);
			r = store_step_done(s, st);
			sqlite3_reset(st);
		}
	}
	if (r >= 0)
		r = store_meta_set(s, "subscriptions_refreshed_at", now);
	return store_tx_end(s, r);
}

/* One cached user subscription (gone ones too). */
int
store_subscription_get(struct store *s, const char *subscription_id, struct store_subscription *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	if (!subscription_id || !ret)
		return -EINVAL;
	r = store_stmt(s, STMT_SUBSCRIPTION_GET, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, subscription_id);
	r = store_step_row(s, st);
	if (r > 0)
		*ret = (struct store_subscription){
		        .subscription_id = store_col_dup(st, 0),
		        .tenant_id = store_col_dup(st, 1),
		        .display_name = store_col_dup(st, 2),
		        .owner = store_col_dup(st, 3),
		        .state = store_col_dup(st, 4),
		        .delegated_provider = store_col_dup(st, 5),
		        .gone = sqlite3_column_int(st, 6) != 0,
		};
	return r < 0 ? r : r == 0 ? -ENOENT : 0;
}

/* When the subscription cache was last replaced. */
int
store_subscriptions_refreshed_at(struct store *s, int64_t *ret)
{
	return store_meta_get(s, "subscriptions_refreshed_at", ret);
}

/* Free a registration's strings. */
void
store_registration_done(struct store_registration *reg)
{
	if (!reg)
		return;
	free(reg->id);
	free(reg->default_subscription);
	free(reg->raw);
	*reg = (struct store_registration){0};
}

/* Free a customer subscription's strings. */
void
store_customer_subscription_done(struct store_customer_subscription *c)
{
	if (!c)
		return;
	free(c->subscription_id);
	free(c->tenant_id);
	*c = (struct store_customer_subscription){0};
}

/* Run one statement without parameters (off the loop). */
static int
run_sql(struct store *s, const char *sql)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	int r;

	r = store_prepare(s, sql, &st);
	if (r < 0)
		return r;
	return store_step_done(s, st);
}

/* Count every write of the registration cache, so that a reader sees any change (its time is in
 * whole seconds: two writes in one second would look like one). */
static int
registration_generation_bump(struct store *s)
{
	int64_t g = 0;
	int r;

	r = store_meta_get(s, "registration_generation", &g);
	if (r < 0 && r != -ENOENT)
		return r;
	return store_meta_set(s, "registration_generation", g + 1);
}

/* How many times the registration cache was written (0: never). */
int
store_registration_generation(struct store *s, int64_t *ret)
{
	int r;

	r = store_meta_get(s, "registration_generation", ret);
	if (r == -ENOENT) {
		*ret = 0;
		return 0;
	}
	return r;
}

/* Replace the registration cache. */
int
store_registration_replace(struct store *s, const struct store_registration *reg,
                           const struct store_customer_subscription *cs, size_t n)
{
	int r;

	if (!reg || !reg->id || !reg->default_subscription || (n && !cs))
		return -EINVAL;
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	r = registration_generation_bump(s);
	if (r >= 0)
		r = run_sql(s, "DELETE FROM registration");
	if (r >= 0)
		r = run_sql(s, "DELETE FROM customer_subscriptions");
	if (r >= 0) {
		_cleanup_finalize_ sqlite3_stmt *st = NULL;

		r = store_prepare(s,
		                  "INSERT INTO registration (id, default_subscription, raw,"
		                  " refreshed_at) VALUES (?1, ?2, ?3, ?4)",
		                  &st);
		if (r >= 0) {
			store_bind_text(st, 1, reg->id);
			store_bind_text(st, 2, reg->default_subscription);
			store_bind_text(st, 3, reg->raw);
			sqlite3_bind_int64(st, 4, reg->refreshed_at);
			r = store_step_done(s, st);
		}
	}
	if (r >= 0) {
		_cleanup_finalize_ sqlite3_stmt *st = NULL;

		r = store_prepare(s,
		                  "INSERT INTO customer_subscriptions (subscription_id, tenant_id)"
		                  " VALUES (?1, ?2)",
		                  &st);
		for (size_t i = 0; r >= 0 && i < n; i++) {
			if (!cs[i].subscription_id || !cs[i].tenant_id) {
				r = store_fail_msg(s, -EINVAL,
				                   "customer subscription without id or tenant");
				break;
			}
			store_bind_text(st, 1, cs[i].subscription_id);
			store_bind_text(st, 2, cs[i].tenant_id);
			r = store_step_done(s, st);
			sqlite3_reset(st);
		}
	}
	return store_tx_end(s, r);
}

/* The cached registration. */
int
store_registration_get(struct store *s, struct store_registration *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_REGISTRATION_GET, &st);
	if (r < 0)
		return r;
	r = store_step_row(s, st);
	if (r > 0)
		*ret = (struct store_registration){
		        .id = store_col_dup(st, 0),
		        .default_subscription = store_col_dup(st, 1),
		        .raw = store_col_dup(st, 2),
		        .refreshed_at = sqlite3_column_int64(st, 3),
		};
	return r < 0 ? r : r == 0 ? -ENOENT : 0;
}

/* All cached customer subscriptions. */
int
store_customer_subscriptions(struct store *s, struct store_customer_subscription **ret,
                             size_t *ret_n)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	int r;

	r = store_prepare(s,
	                  "SELECT subscription_id, tenant_id FROM customer_subscriptions"
	                  " ORDER BY subscription_id",
	                  &st);
	if (r < 0)
		return r;
	return store_collect_rows(s, st, sizeof(**ret), customer_load, customer_done, ret, ret_n);
}

/* The customer subscriptions registered for one tenant. */
int
store_customer_subscriptions_for_tenant(struct store *s, const char *tenant_id, char ***ret,
                                        size_t *ret_n)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	char **list = NULL;
	size_t n = 0;
	int r;

	if (!tenant_id)
		return -EINVAL;
	r = store_stmt(s, STMT_TENANT_CUSTOMER_SUBSCRIPTIONS, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, tenant_id);
	r = store_collect_rows(s, st, sizeof(*list), string_load, string_done, &list, &n);
	if (r < 0)
		return r;
	/* NULL-terminated as well */
	list = xreallocarray(list, n + 1, sizeof(*list));
	list[n] = NULL;
	*ret = list;
	*ret_n = n;
	return 0;
}

/* A customer subscription row, a text column, and freeing them (row loaders). */
static void
customer_load(sqlite3_stmt *st, void *elem)
{
	*(struct store_customer_subscription *)elem = (struct store_customer_subscription){
	        .subscription_id = store_col_dup(st, 0),
	        .tenant_id = store_col_dup(st, 1),
	};
}

static void
customer_done(void *elem)
{
	store_customer_subscription_done(elem);
}

static void
string_load(sqlite3_stmt *st, void *elem)
{
	*(char **)elem = store_col_dup(st, 0);
}

static void
string_done(void *elem)
{
	free(*(char **)elem);
}

/* Every cached user subscription, in id order. */
int
store_subscriptions_list(struct store *s, store_subscription_fn fn, void *userdata)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	int r;

	if (!fn)
		return -EINVAL;
	r = store_prepare(s,
	                  "SELECT subscription_id, tenant_id, display_name, owner, state,"
	                  " delegated_provider, gone FROM subscriptions ORDER BY subscription_id",
	                  &st);
	if (r < 0)
		return r;
	while ((r = store_step_row(s, st)) > 0) {
		const struct store_subscription sub = {
		        .subscription_id = (char *)sqlite3_column_text(st, 0),
		        .tenant_id = (char *)sqlite3_column_text(st, 1),
		        .display_name = (char *)sqlite3_column_text(st, 2),
		        .owner = (char *)sqlite3_column_text(st, 3),
		        .state = (char *)sqlite3_column_text(st, 4),
		        .delegated_provider = (char *)sqlite3_column_text(st, 5),
		        .gone = sqlite3_column_int(st, 6) != 0,
		};

		r = fn(userdata, &sub);
		if (r < 0)
			break;
	}
	return r < 0 ? r : 0;
}
