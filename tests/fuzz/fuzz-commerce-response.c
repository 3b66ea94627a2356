/*
 * libFuzzer target for commerce_parse_response() (lib/commerce.c). The input is two header bytes
 * and a body: byte 0 picks the HTTP status, byte 1 the batch (1 to 8 records with the event ids
 * of commerce-batch-response.json and others; bit 3 repeats the first key at the end, bit 4 sends
 * one key in upper case). Whatever the body, parsing succeeds and the result keeps the contract:
 * the whole-batch result follows the status alone except for 2xx, which is OUTCOMES exactly when
 * jansson finds a result list; one outcome per record, in order, with the record's id; each kind
 * with the members it needs and texts within their limits; counts that add up; records with one
 * key share one outcome.
 *
 * The answer parser is written by hand; this target also holds a reference written with jansson
 * (the parser's first version) and checks that both give every record the same outcome, texts
 * included, and the same counts.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "commerce.h"
#include "macro.h"

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                                 \
		}                                                                                \
	} while (0)

#define RECORDS_MAX 9

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static enum commerce_result expected_result(int status, const char *body, size_t size);
static void check_outcome(const struct store_outcome *o, const struct store_record *r);
static bool one_of(const char *s, const char *const *list, size_t n);
static void check_reference(const struct commerce_response *resp,
                            const struct store_record *records, size_t n, const char *body,
                            size_t size);
static void reference_classify(json_t *item, struct store_outcome *o, size_t *unknown_status);
static char *reference_cut(const char *s, size_t max);
static bool str_equal(const char *a, const char *b);

static const int statuses[] = {200, 200, 200, 200, 201, 202, 204, 400, 401, 403,
                               404, 408, 409, 413, 429, 500, 502, 503, 504, 0};

static const char *const keys[] = {
        "3f1c0a9e8b7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b",
        "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
        "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",
        "a",
        "b",
        "k1",
        "k2",
};

static const char *const forwarded_statuses[] = {"Accepted", "Duplicate", "Conflict"};
static const char *const dead_codes[] = {
        "Expired",         "ResourceNotFound", "ResourceNotAuthorized", "ResourceNotActive",
        "InvalidQuantity", "InvalidDimension", "BadArgument",
};

/* Run one input. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct store_record records[RECORDS_MAX] = {{0}};
	char upper[80];
	struct commerce_response resp;
	const char *body;
	size_t n, body_size;
	int status;

	if (size < 2)
		return 0;
	status = statuses[data[0] % ARRAY_SIZE(statuses)];
	n = 1 + (data[1] & 7);
	for (size_t i = 0; i < n; i++) {
		records[i].id = (int64_t)i + 1;
		records[i].key = (char *)keys[i];
	}
	if (data[1] & 0x10) {
		snprintf(upper, sizeof(upper), "%s", keys[n - 1]);
		for (char *p = upper; *p; p++)
			if (*p >= 'a' && *p <= 'z')
				*p -= 'a' - 'A';
		records[n - 1].key = upper;
	}
	if (data[1] & 0x08) {
		records[n].id = (int64_t)n + 1;
		records[n].key = records[0].key;
		n++;
	}
	body = (const char *)data + 2;
	body_size = size - 2;

	CHECK(commerce_parse_response(records, n, status, body, body_size, &resp) == 0);
	CHECK((unsigned)resp.result < _COMMERCE_RESULT_MAX);
	CHECK(strcmp(commerce_result_to_string(resp.result), "invalid") != 0);
	CHECK(resp.http_status == status);
	CHECK(resp.throttle == (status == 429 || status == 503));
	CHECK(resp.result == expected_result(status, body, body_size));

	if (resp.result == COMMERCE_RESULT_OUTCOMES || resp.result == COMMERCE_RESULT_CONFLICT) {
		CHECK(resp.n_outcomes == n && resp.outcomes);
		CHECK(resp.n_forwarded + resp.n_dead + resp.n_retry == n);
		CHECK(resp.n_missing <= n);
		for (size_t i = 0; i < n; i++) {
			check_outcome(&resp.outcomes[i], &records[i]);
			if (resp.result == COMMERCE_RESULT_CONFLICT)
				CHECK(resp.outcomes[i].kind == STORE_OUTCOME_FORWARDED &&
				      strcmp(resp.outcomes[i].status, "Conflict") == 0);
			/* the same key (in any case): the same outcome */
			for (size_t j = 0; j < i; j++)
				if (strcasecmp(records[i].key, records[j].key) == 0)
					CHECK(resp.outcomes[i].kind == resp.outcomes[j].kind);
		}
	} else {
		CHECK(!resp.outcomes && resp.n_outcomes == 0);
		CHECK(resp.n_forwarded + resp.n_dead + resp.n_retry == 0);
	}
	if (resp.result == COMMERCE_RESULT_OUTCOMES) {
		check_reference(&resp, records, n, body, body_size);
		CHECK(!resp.error_code && !resp.error_message);
		CHECK(resp.n_unknown + resp.n_malformed + resp.n_duplicate <= resp.n_results);
		CHECK(resp.n_contradicting <= n);
		CHECK(!resp.unknown_id == (resp.n_unknown == 0));
		CHECK(!resp.unknown_id || strlen(resp.unknown_id) <= COMMERCE_ERROR_CODE_MAX);
	} else {
		CHECK(resp.error_code && *resp.error_code);
		CHECK(strlen(resp.error_code) <= COMMERCE_ERROR_CODE_MAX);
		CHECK(!resp.error_message ||
		      strlen(resp.error_message) <= COMMERCE_ERROR_MESSAGE_MAX);
		CHECK(resp.n_results == 0 && !resp.unknown_id);
	}
	commerce_response_done(&resp);
	CHECK(!resp.outcomes && !resp.error_code && !resp.strings);
	return 0;
}

/* What the contract says the batch's result is, worked out independently. */
static enum commerce_result
expected_result(int status, const char *body, size_t size)
{
	json_t *root, *list;
	bool outcomes;

	switch (status) {
	case 400:
		return COMMERCE_RESULT_SPLIT;
	case 401:
	case 403:
		return COMMERCE_RESULT_AUTH;
	case 409:
		return COMMERCE_RESULT_CONFLICT;
	case 413:
		return COMMERCE_RESULT_TOO_LARGE;
	default:
		break;
	}
	if (status < 200 || status > 299)
		return COMMERCE_RESULT_TRANSIENT;
	/* a NUL byte is never JSON; jansson drops one that follows a number (its look-ahead
	 * loses it), the parser refuses it: an answer with one is not a result list */
	if (memchr(body, '\0', size))
		return COMMERCE_RESULT_TRANSIENT;
	root = size ? json_loadb(body, size, 0, NULL) : NULL;
	list = json_is_object(root) ? json_object_get(root, "result") : NULL;
	outcomes = json_is_array(list);
	json_decref(root);
	return outcomes ? COMMERCE_RESULT_OUTCOMES : COMMERCE_RESULT_TRANSIENT;
}

/* One record's outcome has what its kind needs. */
static void
check_outcome(const struct store_outcome *o, const struct store_record *r)
{
	CHECK(o->id == r->id);
	CHECK(o->next_attempt_at == 0 && !o->new_batch_id);
	CHECK(!o->error_code || strlen(o->error_code) <= COMMERCE_ERROR_CODE_MAX);
	CHECK(!o->error_message || strlen(o->error_message) <= COMMERCE_ERROR_MESSAGE_MAX);
	switch (o->kind) {
	case STORE_OUTCOME_FORWARDED:
		CHECK(o->status &&
		      one_of(o->status, forwarded_statuses, ARRAY_SIZE(forwarded_statuses)));
		CHECK(!o->error_code && !o->error_message);
		break;
	case STORE_OUTCOME_DEAD:
		CHECK(!o->status);
		CHECK(o->error_code && one_of(o->error_code, dead_codes, ARRAY_SIZE(dead_codes)));
		break;
	case STORE_OUTCOME_RETRY:
		CHECK(!o->status);
		break;
	default:
		CHECK(!"an outcome kind outside the enum");
	}
}

/* s is one of list. */
static bool
one_of(const char *s, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(s, list[i]) == 0)
			return true;
	return false;
}

/*
 * The outcomes as the jansson reference finds them must be the parser's: kinds, statuses, codes,
 * messages, the counts and the first unknown id.
 */
static void
check_reference(const struct commerce_response *resp, const struct store_record *records, size_t n,
                const char *body, size_t size)
{
	json_t *root = json_loadb(body, size, 0, NULL);
	json_t *list = json_object_get(root, "result"), *item;
	struct store_outcome ref[RECORDS_MAX];
	char *texts[2 * RECORDS_MAX] = {NULL}, *unknown_id = NULL;
	int state[RECORDS_MAX] = {0}; /* 0 none, 1 seen, 2 contradicted */
	size_t results = 0, unknown = 0, malformed = 0, duplicate = 0, contradicting = 0;
	size_t missing = 0, unknown_status = 0, i;

	CHECK(json_is_array(list));
	json_array_foreach(list, i, item)
	{
		json_t *id = json_object_get(item, "usageEventId");
		struct store_outcome o;
		size_t first = n;

		results++;
		if (!json_is_string(id)) {
			malformed++;
			continue;
		}
		for (size_t j = 0; j < n && first == n; j++)
			if (strlen(records[j].key) == json_string_length(id) &&
			    strcasecmp(records[j].key, json_string_value(id)) == 0)
				first = j;
		if (first == n) {
			if (!unknown++)
				unknown_id = reference_cut(json_string_value(id),
				                           COMMERCE_ERROR_CODE_MAX);
			continue;
		}
		reference_classify(item, &o, &unknown_status);
		if (state[first]) {
			duplicate++;
			if (state[first] == 2 || ref[first].kind == o.kind) {
				free((char *)o.error_code);
				free((char *)o.error_message);
				continue;
			}
			free((char *)o.error_code);
			free((char *)o.error_message);
			o = (struct store_outcome){.kind = STORE_OUTCOME_RETRY,
			                           .error_code = strdup("contradicting-results")};
		}
		for (size_t j = 0; j < n; j++) {
			if (strcasecmp(records[j].key, records[first].key) != 0)
				continue;
			if (state[j] == 1) {
				state[j] = 2;
				contradicting++;
			} else {
				state[j] = 1;
			}
			free(texts[2 * j]);
			free(texts[2 * j + 1]);
			ref[j] = o;
			ref[j].error_code = texts[2 * j] =
			        o.error_code ? strdup(o.error_code) : NULL;
			ref[j].error_message = texts[2 * j + 1] =
			        o.error_message ? strdup(o.error_message) : NULL;
		}
		free((char *)o.error_code);
		free((char *)o.error_message);
	}
	for (size_t j = 0; j < n; j++)
		if (!state[j]) {
			missing++;
			ref[j] = (struct store_outcome){.kind = STORE_OUTCOME_RETRY};
		}

	CHECK(resp->n_results == results);
	CHECK(resp->n_unknown == unknown);
	CHECK(resp->n_malformed == malformed);
	CHECK(resp->n_duplicate == duplicate);
	CHECK(resp->n_contradicting == contradicting);
	CHECK(resp->n_missing == missing);
	CHECK(resp->n_unknown_status == unknown_status);
	CHECK(str_equal(resp->unknown_id, unknown_id));
	for (size_t j = 0; j < n; j++) {
		const struct store_outcome *o = &resp->outcomes[j];

		CHECK(o->kind == ref[j].kind);
		CHECK(str_equal(o->status, ref[j].status));
		if (state[j] == 1) { /* missing and contradicted records carry no answer text */
			CHECK(str_equal(o->error_code, ref[j].error_code));
			CHECK(str_equal(o->error_message, ref[j].error_message));
		}
		free(texts[2 * j]);
		free(texts[2 * j + 1]);
	}
	free(unknown_id);
	json_decref(root);
}

/* The reference classification of one result (new strings in o). */
static void
reference_classify(json_t *item, struct store_outcome *o, size_t *unknown_status)
{
	const char *status = json_string_value(json_object_get(item, "status"));
	json_t *error = json_object_get(item, "error");
	const char *code = json_string_value(json_object_get(error, "code"));
	const char *message = json_string_value(json_object_get(error, "message"));

	*o = (struct store_outcome){.kind = STORE_OUTCOME_RETRY};
	if (!status) {
		(*unknown_status)++;
		o->error_code = strdup("no-status");
		o->error_message =
		        message ? reference_cut(message, COMMERCE_ERROR_MESSAGE_MAX) : NULL;
		return;
	}
	if (strcasecmp(status, "Accepted") == 0 || strcasecmp(status, "Duplicate") == 0) {
		o->kind = STORE_OUTCOME_FORWARDED;
		o->status = strcasecmp(status, "Accepted") == 0 ? "Accepted" : "Duplicate";
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(dead_codes); i++) {
		if (strcasecmp(status, dead_codes[i]) != 0 ||
		    strlen(status) != strlen(dead_codes[i]))
			continue;
		o->kind = STORE_OUTCOME_DEAD;
		o->error_code = strdup(dead_codes[i]);
		if (code && *code && strcasecmp(code, dead_codes[i]) != 0) {
			char *c = reference_cut(code, COMMERCE_ERROR_CODE_MAX), *joined = NULL, *m;

			m = message ? reference_cut(message, COMMERCE_ERROR_MESSAGE_MAX) : NULL;
			if (m)
				CHECK(asprintf(&joined, "%s: %s", c, m) > 0);
			else
				joined = strdup(c);
			o->error_message = reference_cut(joined, COMMERCE_ERROR_MESSAGE_MAX);
			free(joined);
			free(c);
			free(m);
		} else {
			o->error_message =
			        message ? reference_cut(message, COMMERCE_ERROR_MESSAGE_MAX) : NULL;
		}
		return;
	}
	if (strcasecmp(status, "Error") != 0)
		(*unknown_status)++;
	o->error_code = reference_cut(code ? code : status, COMMERCE_ERROR_CODE_MAX);
	o->error_message = message ? reference_cut(message, COMMERCE_ERROR_MESSAGE_MAX) : NULL;
}

/* A copy of at most max bytes of s, not splitting a UTF-8 sequence. */
static char *
reference_cut(const char *s, size_t max)
{
	size_t len = strlen(s);

	if (len > max) {
		len = max;
		while (len > 0 && ((unsigned char)s[len] & 0xc0) == 0x80)
			len--;
	}
	return strndup(s, len);
}

/* Both NULL or equal. */
static bool
str_equal(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}
