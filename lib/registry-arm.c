/*
 * The registry's calls to Azure Resource Manager (see registry.c): one operation at a time, a
 * refresh (the registration, then every page of customerSubscriptions) or one PUT or DELETE of
 * a customer subscription, each request preceded by auth_get() and tried again on the transient
 * answers of registry_arm_retryable(); and the parsing of ARM's answers.
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

/* a failed refresh is tried again after a backoff starting here, capped at refresh_interval */
#define REGISTRY_REFRESH_RETRY (30 * USEC_PER_SEC)
#define REGISTRY_MAX_PAGES     10000
#define REGISTRY_QUOTE_MAX     200 /* bytes of an answer's text quoted in a message */

static void op_send(struct registry *r);
static void op_fail(struct registry *r, int error, const char *format, ...) _printf_(3, 4);
static void op_finish(struct registry *r, struct registry_result *res);
static void on_token(const struct auth_result *result, void *userdata);
static void on_http(const struct http_result *result, void *userdata);

/* The URL of one customer subscription. */
static char *
customer_url(struct registry *r, const char *customer)
{
	_cleanup_free_ char *rg = http_escape(r->resource_group), *name = http_escape(r->name),
	                    *version = http_escape(r->api_version),
	                    *lower = registry_lower_dup(customer);

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
	tenant = registry_lower_dup(tenant_id);
	body = json_pack("{s:{s:s}}", "properties", "tenantId", tenant);
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	if (!text)
		return -ENOMEM;
	return registry_op_begin(r, REGISTRY_TENANT_ADD, customer_url(r, customer_subscription),
	                         text);
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
	return registry_op_begin(r, REGISTRY_TENANT_REMOVE, customer_url(r, customer_subscription),
	                         NULL);
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
		list[n].subscription_id = registry_lower_dup(last + 1);
		list[n].tenant_id = registry_lower_dup(tenant);
		n++;
	}
	*ret_next_link = json_string_value(next) && *json_string_value(next)
	                         ? xstrdup(json_string_value(next))
	                         : NULL;
	*ret = list;
	*ret_n = n;
	return 0;

fail:
	registry_customers_free(list, n);
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
int
registry_op_begin(struct registry *r, enum registry_op kind, char *url, char *body)
{
	struct op *op = &r->op;

	registry_op_clear(op);
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
void
registry_op_clear(struct op *op)
{
	op->request = http_request_cancel(op->request);
	op->wait = auth_wait_cancel(op->wait);
	free(op->url);
	free(op->body);
	free_secret(op->token);
	free(op->raw);
	registry_customers_free(op->list, op->n);
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
	e = registry_apply(r, r->id, r->default_subscription, reg.refreshed_at, TAKE_PTR(op->list),
	                   op->n, true, &res.changed, &res.n_unheld);
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
		registry_customers_free(page, n);
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
void
registry_on_retry_timer(evutil_socket_t fd, short what, void *userdata)
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

	registry_op_clear(&r->op);
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
			registry_schedule_refresh(r, r->o.refresh_interval_usec);
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
			registry_schedule_refresh(r, delay);
		}
		registry_note_stale(r);
		registry_set_metrics(r);
	}
	if (callback)
		callback(res, userdata);
}
