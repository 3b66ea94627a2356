/*
 * libFuzzer target for the usage page parser of lib/stack.c. The input is a page body, parsed as
 * an HTTP 200 answer for one reported hour. Whatever it holds: the outcome is a page, "not ready"
 * or a malformed page, with a message on failure; the raw scanner never disagrees with jansson
 * (such a message would mean one of the two misread the page); every record keeps its raw text,
 * which is a piece of the input; a quarantined record has a reason naming it and no key; a valid
 * record has a lower-case GUID subscription, times on the hour in order, a quantity that
 * lib/decimal takes as >= 0, a canonical instanceData that is canonical again when parsed and
 * written once more, and the key stack_record_key() gives for its fields. A second parse gives the
 * same page. The nextLink, and the input itself, also go through the authority check and the host
 * helper.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "decimal.h"
#include "hash.h"
#include "macro.h"
#include "stack.h"
#include "timeutil.h"

#define FUZZ_HOUR INT64_C(1793527200) /* 2026-11-01T10:00:00Z */
#define FUZZ_HOST "adminmanagement.local.azurestack.external"
#define FUZZ_ARM  "https://" FUZZ_HOST

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                                 \
		}                                                                                \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_valid(const struct stack_record *r);
static void check_link(const char *link);
static bool is_lower_guid(const char *s);

/* Run one input. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *body = (const char *)data;
	struct stack_usage_page *page = NULL, *again = NULL;
	char error[STACK_ERROR_MAX], error2[STACK_ERROR_MAX];
	size_t quarantined = 0;
	int r;

	/* a 202 is never a page */
	CHECK(stack_usage_page_parse(202, body, size, FUZZ_HOUR, &page, error) == -EAGAIN);
	CHECK(!page);

	r = stack_usage_page_parse(200, body, size, FUZZ_HOUR, &page, error);
	CHECK(r == 0 || r == -EAGAIN || r == -EBADMSG);
	if (r < 0) {
		CHECK(!page);
		CHECK(error[0] != '\0' && strlen(error) < STACK_ERROR_MAX);
		/*
		 * The scanner and jansson read every accepted text alike. Only the parser's own
		 * messages are looked at: "not ready" ones quote the service's error message and
		 * "not JSON" ones jansson's, and either may hold any text.
		 */
		if (r == -EBADMSG && strncmp(error, "not JSON", 8) != 0) {
			CHECK(!strstr(error, "raw text"));
			CHECK(!strstr(error, "does not match"));
		}
	} else {
		CHECK(page);
		CHECK(page->reported_hour == FUZZ_HOUR);
		for (size_t i = 0; i < page->n_records; i++) {
			const struct stack_record *rec = &page->records[i];
			char prefix[32];

			CHECK(rec->raw);
			CHECK(memmem(body, size, rec->raw, strlen(rec->raw)));
			if (rec->reason) {
				quarantined++;
				snprintf(prefix, sizeof(prefix), "record %zu: ", i + 1);
				CHECK(strncmp(rec->reason, prefix, strlen(prefix)) == 0);
				CHECK(!rec->key);
			} else
				check_valid(rec);
		}
		CHECK(quarantined == page->n_quarantined);
		if (page->next_link)
			check_link(page->next_link);

		/* the same text gives the same page */
		CHECK(stack_usage_page_parse(200, body, size, FUZZ_HOUR, &again, error2) == 0);
		CHECK(again->n_records == page->n_records);
		for (size_t i = 0; i < page->n_records; i++) {
			CHECK(streq_ptr(again->records[i].key, page->records[i].key));
			CHECK(streq_ptr(again->records[i].reason, page->records[i].reason));
			CHECK(streq_ptr(again->records[i].quantity, page->records[i].quantity));
		}
		stack_usage_page_free(again);
	}
	stack_usage_page_free(page);

	/* the input as a link */
	if (!memchr(body, '\0', size)) {
		_cleanup_free_ char *link = strndup(body, size);

		CHECK(link);
		check_link(link);
	}
	return 0;
}

/* A valid record: every field the store and the forwarder rely on. */
static void
check_valid(const struct stack_record *r)
{
	_cleanup_(json_decrefp) json_t *inst = NULL;
	_cleanup_free_ char *again = NULL;
	char key[HASH_SHA256_HEX_LEN + 1];
	json_t *res, *tags, *info;
	struct decimal d;

	CHECK(r->key && strlen(r->key) == HASH_SHA256_HEX_LEN);
	CHECK(strspn(r->key, "0123456789abcdef") == HASH_SHA256_HEX_LEN);
	CHECK(strlen(r->raw) <= STACK_RECORD_MAX);
	CHECK(r->subscription_id && is_lower_guid(r->subscription_id));
	CHECK(r->meter_id && (strlen(r->meter_id) == 36 || strlen(r->meter_id) == 32));
	CHECK(time_on_hour(r->usage_start) && time_on_hour(r->usage_end));
	CHECK(r->usage_end > r->usage_start);
	CHECK(r->quantity);
	CHECK(decimal_parse_string(r->quantity, &d) == 0);
	CHECK(!d.negative);
	/* the literal is a piece of the record's text */
	CHECK(strstr(r->raw, r->quantity));

	CHECK(r->instance_data);
	inst = json_loads(r->instance_data, JSON_DECODE_ANY, NULL);
	CHECK(json_is_object(inst));
	again = json_dumps(inst, JSON_COMPACT | JSON_SORT_KEYS);
	CHECK(again && streq(again, r->instance_data));
	/* tags and additionalInfo are written as jansson writes them, in their own order */
	res = json_object_get(inst, "Microsoft.Resources");
	tags = json_object_get(res, "tags");
	info = json_object_get(res, "additionalInfo");
	CHECK((tags && !json_is_null(tags)) == !!r->tags);
	CHECK((info && !json_is_null(info)) == !!r->additional_info);
	if (r->tags) {
		_cleanup_(json_decrefp) json_t *t = json_loads(r->tags, JSON_DECODE_ANY, NULL);
		_cleanup_free_ char *text = json_dumps(t, JSON_COMPACT | JSON_ENCODE_ANY);

		CHECK(text && streq(text, r->tags));
	}
	if (r->additional_info) {
		_cleanup_(json_decrefp) json_t *t =
		        json_loads(r->additional_info, JSON_DECODE_ANY, NULL);
		_cleanup_free_ char *text = json_dumps(t, JSON_COMPACT | JSON_ENCODE_ANY);

		CHECK(text && streq(text, r->additional_info));
	}

	CHECK(stack_record_key(FUZZ_HOUR, r->subscription_id, r->meter_id, r->usage_start,
	                       r->usage_end, r->instance_data, key) == 0);
	CHECK(streq(key, r->key));
}

/* A link: a trusted one is https to the same host; the host helper never shows user info. */
static void
check_link(const char *link)
{
	_cleanup_free_ char *host = NULL;
	bool ok = stack_link_authority_ok(link, FUZZ_ARM);

	if (stack_url_host(link, &host) == 0) {
		CHECK(host);
		CHECK(!strchr(host, '@') && !strchr(host, '/'));
	}
	if (ok) {
		CHECK(strncasecmp(link, "https://", 8) == 0);
		CHECK(host);
		CHECK(strncasecmp(host, FUZZ_HOST, strlen(FUZZ_HOST)) == 0);
		CHECK(host[strlen(FUZZ_HOST)] == '\0' || host[strlen(FUZZ_HOST)] == ':');
		/* no user information: an '@' only after the authority */
		const char *at = strchr(link + 8, '@');

		CHECK(!at || (size_t)(at - (link + 8)) >= strcspn(link + 8, "/?#"));
	}
}

/* True for a dashed GUID in lower case. */
static bool
is_lower_guid(const char *s)
{
	if (strlen(s) != 36)
		return false;
	for (size_t i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	}
	return true;
}
