/*
 * The stamp's other documents as data (see stack.h): the user-subscriptions list, the metadata
 * endpoints document and ARM error bodies; the URLs the collector asks for and the nextLink
 * authority check. Also the helpers stack.c shares (stack-private.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "macro.h"
#include "stack-private.h"
#include "stack.h"
#include "timeutil.h"
#include "xmalloc.h"

/* An https authority: host as written and the port it means. */
struct authority {
	const char *host;
	size_t host_size;
	unsigned port;
};

static int parse_authority(const char *url, struct authority *ret);
static char *endpoint_dup(const char *arm_endpoint);

/* Parse an ARM error body in either of its two shapes. */
int
stack_arm_error_parse(const char *body, size_t size, struct stack_arm_error *ret)
{
	_cleanup_(json_decrefp) json_t *root = NULL;
	const char *code, *message;
	json_t *obj;

	if ((!body && size > 0) || !ret)
		return -EINVAL;
	root = json_loadb(body, size, 0, NULL);
	if (!json_is_object(root))
		return -EBADMSG;
	obj = json_object_get(root, "error");
	if (!json_is_object(obj))
		obj = root;
	code = stack_string_member(obj, "code", NULL);
	if (isempty(code))
		return -EBADMSG;
	message = stack_string_member(obj, "message", NULL);
	*ret = (struct stack_arm_error){
	        .code = xstrdup(code),
	        .message = message ? xstrdup(message) : NULL,
	};
	return 0;
}

/* Free the strings of an ARM error and zero it. */
void
stack_arm_error_done(struct stack_arm_error *e)
{
	if (!e)
		return;
	free(e->code);
	free(e->message);
	*e = (struct stack_arm_error){0};
}

/* Parse one page of the user-subscriptions list. */
int
stack_subscriptions_parse(const char *body, size_t size, struct stack_subscription_list **ret,
                          char error[static STACK_ERROR_MAX])
{
	_cleanup_(json_decrefp) json_t *root = NULL;
	struct stack_subscription_list *list;
	json_error_t jerr;
	json_t *value, *item;
	size_t i;
	int r;

	error[0] = '\0';
	if ((!body && size > 0) || !ret) {
		stack_set_error(error, "no page");
		return -EINVAL;
	}
	root = json_loadb(body, size, 0, &jerr);
	if (!root) {
		stack_set_error(error, "not JSON: line %d, column %d: %s", jerr.line, jerr.column,
		                jerr.text);
		return -EBADMSG;
	}
	if (!json_is_object(root)) {
		stack_set_error(error, "not a JSON object but %s", stack_type_name(root));
		return -EBADMSG;
	}
	value = json_object_get(root, "value");
	if (!json_is_array(value)) {
		/* an empty list would mark every known subscription gone: refuse instead */
		stack_set_error(error, "no value array");
		return -EBADMSG;
	}

	list = xcalloc(1, sizeof(*list));
	list->subscriptions = xcalloc(json_array_size(value), sizeof(*list->subscriptions));
	r = stack_next_link_get(root, &list->next_link, error);
	if (r < 0) {
		stack_subscription_list_free(list);
		return r;
	}
	json_array_foreach(value, i, item)
	{
		struct stack_subscription *sub = &list->subscriptions[list->n_subscriptions];
		const char *id, *tenant, *why = NULL, *s;

		id = stack_string_member(item, "subscriptionId", NULL);
		tenant = stack_string_member(item, "tenantId", NULL);
		if (!json_is_object(item))
			why = "not a JSON object";
		else if (!id)
			why = "subscriptionId: missing or not a string";
		else if (!stack_is_guid(id, false))
			why = "subscriptionId: not a GUID";
		else if (isempty(tenant))
			why = "tenantId: missing, empty or not a string";
		if (why) {
			if (list->n_skipped++ == 0)
				list->skipped_reason =
				        xasprintf("subscription %zu: %s", i + 1, why);
			continue;
		}
		sub->subscription_id = stack_lower_dup(id);
		sub->tenant_id = stack_lower_dup(tenant);
		if ((s = stack_string_member(item, "displayName", NULL)))
			sub->display_name = xstrdup(s);
		if ((s = stack_string_member(item, "owner", NULL)))
			sub->owner = xstrdup(s);
		if ((s = stack_string_member(item, "state", NULL)))
			sub->state = xstrdup(s);
		if ((s = stack_string_member(item, "delegatedProviderSubscriptionId", NULL)))
			sub->delegated_provider_subscription_id = stack_lower_dup(s);
		list->n_subscriptions++;
	}
	*ret = list;
	return 0;
}

/* Free a subscription list; returns NULL. */
struct stack_subscription_list *
stack_subscription_list_free(struct stack_subscription_list *list)
{
	if (!list)
		return NULL;
	for (size_t i = 0; i < list->n_subscriptions; i++) {
		struct stack_subscription *s = &list->subscriptions[i];

		free(s->subscription_id);
		free(s->tenant_id);
		free(s->display_name);
		free(s->owner);
		free(s->state);
		free(s->delegated_provider_subscription_id);
	}
	free(list->subscriptions);
	free(list->skipped_reason);
	free(list->next_link);
	free(list);
	return NULL;
}

/* Parse the metadata endpoints document. */
int
stack_metadata_parse(const char *body, size_t size, struct stack_metadata *ret,
                     char error[static STACK_ERROR_MAX])
{
	_cleanup_(json_decrefp) json_t *root = NULL;
	_cleanup_free_ char *login = NULL;
	const char *s, *audience;
	json_error_t jerr;
	json_t *auth, *aud;
	size_t n;

	error[0] = '\0';
	if ((!body && size > 0) || !ret) {
		stack_set_error(error, "no document");
		return -EINVAL;
	}
	root = json_loadb(body, size, 0, &jerr);
	if (!root) {
		stack_set_error(error, "not JSON: line %d, column %d: %s", jerr.line, jerr.column,
		                jerr.text);
		return -EBADMSG;
	}
	if (!json_is_object(root)) {
		stack_set_error(error, "not a JSON object but %s", stack_type_name(root));
		return -EBADMSG;
	}
	auth = json_object_get(root, "authentication");
	s = stack_string_member(auth, "loginEndpoint", NULL);
	if (!s)
		s = stack_string_member(root, "loginEndpoint", NULL);
	if (!s) {
		stack_set_error(error, "authentication.loginEndpoint: missing or not a string");
		return -EBADMSG;
	}
	/* the client secret goes there: never over plain HTTP */
	if (strncasecmp(s, "https://", 8) != 0 || s[8] == '\0' || s[8] == '/') {
		stack_set_error(error, "authentication.loginEndpoint: not an https URL");
		return -EBADMSG;
	}
	aud = json_array_get(json_object_get(auth, "audiences"), 0);
	audience = json_string_value(aud);
	if (isempty(audience) || strlen(audience) != json_string_length(aud)) {
		stack_set_error(error,
		                "authentication.audiences[0]: missing, empty or not a string");
		return -EBADMSG;
	}
	login = xstrdup(s);
	n = strlen(login);
	while (n > 8 && login[n - 1] == '/')
		login[--n] = '\0';
	*ret = (struct stack_metadata){
	        .login_endpoint = TAKE_PTR(login),
	        .audience = xstrdup(audience),
	};
	return 0;
}

/* Free the strings of a metadata document and zero it. */
void
stack_metadata_done(struct stack_metadata *m)
{
	if (!m)
		return;
	free(m->login_endpoint);
	free(m->audience);
	*m = (struct stack_metadata){0};
}

/* Build the usage URL of one reported hour. */
int
stack_usage_url(const char *arm_endpoint, const char *provider_subscription, int64_t hour,
                const char *subscriber_id, char **ret)
{
	char start[TIME_RFC3339_LEN + 1], end[TIME_RFC3339_LEN + 1];
	char start_enc[TIME_RFC3339_LEN + 5], end_enc[TIME_RFC3339_LEN + 5];
	_cleanup_free_ char *base = NULL;

	if (!ret || !provider_subscription || !stack_is_guid(provider_subscription, false) ||
	    (subscriber_id && !stack_is_guid(subscriber_id, false)) || !time_on_hour(hour))
		return -EINVAL;
	base = endpoint_dup(arm_endpoint);
	if (!base)
		return -EINVAL;
	time_format_rfc3339(hour, start);
	time_format_rfc3339(hour + 3600, end);
	if (start[0] == 'i' || end[0] == 'i')
		return -EINVAL;
	/* percent-encode the colons: "2026-11-01T10%3A00%3A00Z" */
	for (char *in = start, *out = start_enc;; in++) {
		if (*in == ':') {
			memcpy(out, "%3A", 3);
			out += 3;
		} else if (!(*out++ = *in))
			break;
	}
	for (char *in = end, *out = end_enc;; in++) {
		if (*in == ':') {
			memcpy(out, "%3A", 3);
			out += 3;
		} else if (!(*out++ = *in))
			break;
	}
	*ret = xasprintf("%s/subscriptions/%s/providers/Microsoft.Commerce.Admin/"
	                 "subscriberUsageAggregates?reportedStartTime=%s&reportedEndTime=%s"
	                 "&aggregationGranularity=Hourly&api-version=" STACK_USAGE_API_VERSION
	                 "%s%s",
	                 base, provider_subscription, start_enc, end_enc,
	                 subscriber_id ? "&subscriberId=" : "", subscriber_id ? subscriber_id : "");
	return 0;
}

/* Build the user-subscriptions URL. */
int
stack_subscriptions_url(const char *arm_endpoint, const char *provider_subscription, char **ret)
{
	_cleanup_free_ char *base = NULL;

	if (!ret || !provider_subscription || !stack_is_guid(provider_subscription, false))
		return -EINVAL;
	base = endpoint_dup(arm_endpoint);
	if (!base)
		return -EINVAL;
	*ret = xasprintf("%s/subscriptions/%s/providers/Microsoft.Subscriptions.Admin/subscriptions"
	                 "?api-version=" STACK_SUBSCRIPTIONS_API_VERSION,
	                 base, provider_subscription);
	return 0;
}

/* Build the metadata endpoints URL. */
int
stack_metadata_url(const char *arm_endpoint, char **ret)
{
	_cleanup_free_ char *base = NULL;

	if (!ret)
		return -EINVAL;
	base = endpoint_dup(arm_endpoint);
	if (!base)
		return -EINVAL;
	*ret = xasprintf("%s/metadata/endpoints?api-version=" STACK_METADATA_API_VERSION, base);
	return 0;
}

/* Whether a link may carry the stamp's token: same https host and port as arm_endpoint. */
bool
stack_link_authority_ok(const char *link, const char *arm_endpoint)
{
	struct authority a, b;

	if (!link || !arm_endpoint)
		return false;
	if (parse_authority(link, &a) < 0 || parse_authority(arm_endpoint, &b) < 0)
		return false;
	return a.port == b.port && a.host_size == b.host_size &&
	       strncasecmp(a.host, b.host, a.host_size) == 0;
}

/* The host[:port] of a URL, without user information. */
int
stack_url_host(const char *url, char **ret)
{
	const char *p, *end, *at;

	if (!url || !ret)
		return -EINVAL;
	p = strstr(url, "://");
	if (!p || p == url)
		return -EINVAL;
	p += 3;
	end = p + strcspn(p, "/?#");
	/* user information may hold a password: never log it */
	at = memrchr(p, '@', (size_t)(end - p));
	if (at)
		p = at + 1;
	*ret = xstrndup(p, (size_t)(end - p));
	return 0;
}

/* ---- helpers shared with stack.c ---- */

/* The JSON type of v, for messages. */
const char *
stack_type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a real";
	case JSON_TRUE:
		return "true";
	case JSON_FALSE:
		return "false";
	case JSON_NULL:
		return "null";
	}
	return "unknown";
}

/*
 * True for a GUID 8-4-4-4-12 in hex digits of either case; with dashes_optional also for the 32
 * digits without dashes (some meter ids are written so).
 */
bool
stack_is_guid(const char *s, bool dashes_optional)
{
	size_t n = strlen(s);
	bool dashes = n == 36;

	if (!dashes && !(dashes_optional && n == 32))
		return false;
	for (size_t i = 0; i < n; i++) {
		if (dashes && (i == 8 || i == 13 || i == 18 || i == 23)) {
			if (s[i] != '-')
				return false;
		} else if (stack_hex_value(s[i]) < 0)
			return false;
	}
	return true;
}

/* A copy of s in ASCII lower case. */
char *
stack_lower_dup(const char *s)
{
	char *d = xstrdup(s);

	for (char *p = d; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	return d;
}

/* A member of obj that is a string without NUL characters, or NULL. */
const char *
stack_string_member(json_t *obj, const char *name, size_t *ret_size)
{
	json_t *v = json_object_get(obj, name);
	const char *s = json_string_value(v);

	if (!s || strlen(s) != json_string_length(v))
		return NULL;
	if (ret_size)
		*ret_size = json_string_length(v);
	return s;
}

/* Read an optional nextLink: absent, null or "" is the last page. */
int
stack_next_link_get(json_t *root, char **ret, char error[static STACK_ERROR_MAX])
{
	json_t *v = json_object_get(root, "nextLink");
	const char *s;

	if (!v || json_is_null(v)) {
		*ret = NULL;
		return 0;
	}
	s = stack_string_member(root, "nextLink", NULL);
	if (!s) {
		stack_set_error(error, "nextLink: not a string but %s",
		                json_is_string(v) ? "a string with a NUL character"
		                                  : stack_type_name(v));
		return -EBADMSG;
	}
	*ret = *s ? xstrdup(s) : NULL;
	return 0;
}

/* Write a message into an error buffer. */
void
stack_set_error(char error[static STACK_ERROR_MAX], const char *format, ...)
{
	va_list ap;

	va_start(ap, format);
	vsnprintf(error, STACK_ERROR_MAX, format, ap);
	va_end(ap);
}

/* ---- helpers ---- */

/* Split "https://host[:port]/..." into host and port; -EINVAL for anything not to be trusted. */
static int
parse_authority(const char *url, struct authority *ret)
{
	const char *p, *end, *host_end, *port;
	unsigned long v = 443;

	if (strncasecmp(url, "https://", 8) != 0)
		return -EINVAL;
	p = url + 8;
	end = p + strcspn(p, "/?#");
	for (const char *c = p; c < end; c++)
		if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f || *c == '@' ||
		    *c == '\\' || *c == '%')
			return -EINVAL;
	if (p < end && *p == '[') {
		/* an IPv6 literal */
		host_end = memchr(p, ']', (size_t)(end - p));
		if (!host_end)
			return -EINVAL;
		host_end++;
		port = host_end < end ? host_end : NULL;
		if (port && *port != ':')
			return -EINVAL;
	} else {
		port = memchr(p, ':', (size_t)(end - p));
		host_end = port ? port : end;
	}
	if (host_end == p)
		return -EINVAL;
	if (port) {
		size_t digits = (size_t)(end - port - 1);

		/* "host:" is the default port (RFC 3986 section 3.2.3) */
		if (digits > 5)
			return -EINVAL;
		if (digits > 0) {
			v = 0;
			for (const char *c = port + 1; c < end; c++) {
				if (*c < '0' || *c > '9')
					return -EINVAL;
				v = v * 10 + (unsigned long)(*c - '0');
			}
			if (v == 0 || v > 65535)
				return -EINVAL;
		}
	}
	*ret = (struct authority){
	        .host = p,
	        .host_size = (size_t)(host_end - p),
	        .port = (unsigned)v,
	};
	return 0;
}

/* arm_endpoint without trailing slashes (a new string), or NULL unless it is an https URL. */
static char *
endpoint_dup(const char *arm_endpoint)
{
	struct authority a;
	char *d;
	size_t n;

	if (!arm_endpoint || parse_authority(arm_endpoint, &a) < 0)
		return NULL;
	d = xstrdup(arm_endpoint);
	n = strlen(d);
	while (n > 0 && d[n - 1] == '/')
		d[--n] = '\0';
	return d;
}
