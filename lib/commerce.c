/*
 * The Commerce ingestion API (ARCHITECTURE.md section 6): request bodies written and answers read
 * by hand, answers classified by the outcome table. No I/O.
 *
 * Why by hand: jansson spends most of its time allocating and freeing a tree, about twenty nodes
 * per event for json_pack + json_dumps (section 11: ~8 us per event, as much as the rest of a
 * record's life together) and ten per result for json_loadb (~2 us). An event has a fixed shape,
 * so the writer reserves the worst case for a record once (every string escaped to six bytes per
 * byte) and then writes without further checks; strings must be valid UTF-8 and are escaped as
 * jansson escapes them; tags and additionalInfo, stored as JSON text, are checked and copied as
 * they are. The answer reader checks the whole document first, then reads only the members it
 * needs, as slices of the body (decoded only when they hold escapes).
 *
 * One JSON grammar serves both: what jansson accepts (RFC 8259; UTF-8; paired surrogates; no
 * \u0000; integers within int64; reals that do not overflow; 2048 containers deep; the last of
 * repeated members counts). tests/fuzz/fuzz-commerce-response.c holds the reader against a jansson
 * reference; test-commerce.c parses every body written back with jansson.
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#define ZLIB_CONST
#include <zlib.h>

#include "commerce.h"
#include "hash.h"
#include "macro.h"
#include "timeutil.h"
#include "xmalloc.h"

#define JSON_DEPTH_MAX 2048 /* nesting accepted in tags and additionalInfo: jansson's limit */
#define EVENT_OVERHEAD 512  /* member names, punctuation and the three times of one event */
#define RECORD_GUESS   1024 /* initial buffer bytes per record */
#define INDEX_NONE     UINT32_MAX

/* A growing output buffer. */
struct jbuf {
	char *data;
	size_t len;
	size_t cap;
};

/* The copies of codes and messages that outcomes point to: a list of chunks, never moved. */
struct commerce_strings {
	struct commerce_strings *next;
	char text[];
};

/* Records by key (case-insensitive), for matching results to records. */
struct key_index {
	uint32_t *slots; /* record index + 1; 0 empty */
	uint32_t *next;  /* next record with the same key, or INDEX_NONE */
	size_t mask;
};

/* What parse_results() knows of a record. */
enum seen {
	UNSEEN,       /* no result yet */
	SEEN,         /* one result, or several that agree */
	CONTRADICTED, /* results that disagree: retried */
};

/* A string of an answer: a slice of the body when it has no escape, else a decoded copy. */
struct jstr {
	const char *s; /* NULL: absent or not a string */
	size_t len;
	char *owned;
};

/* What an element of an answer's result list says. */
struct answer_result {
	bool object; /* the element is an object */
	struct jstr id;
	struct jstr status;
	struct jstr code;    /* error.code */
	struct jstr message; /* error.message */
};

/* One result of the answer, classified. */
struct verdict {
	enum store_outcome_kind kind;
	const char *status;  /* static: Accepted, Duplicate (forwarded) */
	const char *code;    /* dead: static status name; retry: a copy or NULL */
	const char *message; /* a copy or NULL */
};

static char *jbuf_reserve(struct jbuf *b, size_t need);
static size_t len0(const char *s);
static size_t utf8_sequence(const unsigned char *u, const unsigned char *end);
static char *put_string(char *p, const char *s, size_t len, bool lower);
static char *put_escape(char *p, unsigned char c);
static char *put_time(char *p, int64_t t);
static int encode_event(struct jbuf *b, const struct commerce_options *o,
                        const struct store_record *r, const char **why);
static bool json_text_valid(const char *text, size_t len, const char **ret_start, size_t *ret_len);
static const unsigned char *json_skip_value(const unsigned char *p, const unsigned char *end,
                                            size_t depth);
static const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end);
static const unsigned char *scan_string(const unsigned char *p, const unsigned char *end);
static const unsigned char *scan_number(const unsigned char *p, const unsigned char *end);
static const unsigned char *scan_literal(const unsigned char *p, const unsigned char *end,
                                         const char *word);
static int hex4(const unsigned char *p, const unsigned char *end, unsigned *ret);
static int gzip_body(const char *in, size_t size, char **ret, size_t *ret_size);
static bool batch_id_valid(const char *s);

static const char *strings_add(struct commerce_response *r, const char *s, size_t len, size_t max);
static char *cut_dup(const char *s, size_t len, size_t max);
static size_t cut_len(const char *s, size_t len, size_t max);
static bool ascii_case_equal(const char *a, size_t alen, const char *b, size_t blen);
static uint64_t key_hash(const char *s, size_t len);
static void key_index_build(struct key_index *x, const struct store_record *records, size_t n);
static uint32_t key_index_find(const struct key_index *x, const struct store_record *records,
                               const char *id, size_t len);
static void key_index_done(struct key_index *x);
static void parse_results(struct commerce_response *resp, const struct store_record *records,
                          size_t n, const char *body, size_t size);
static void answer_not_a_list(struct commerce_response *resp, const char *body, size_t size);
static const unsigned char *answer_find_list(const char *body, size_t size);
static const unsigned char *answer_read_result(const unsigned char *p, const unsigned char *end,
                                               struct answer_result *r);
static const unsigned char *answer_read_error(const unsigned char *p, const unsigned char *end,
                                              struct answer_result *r);
static const unsigned char *answer_read_string(const unsigned char *p, const unsigned char *end,
                                               size_t depth, struct jstr *j);
static void answer_result_done(struct answer_result *r);
static const unsigned char *jstr_read(const unsigned char *p, const unsigned char *end,
                                      struct jstr *j);
static bool jstr_is(const struct jstr *j, const char *word);
static void jstr_done(struct jstr *j);
static char *put_utf8(char *o, unsigned cp);
static void classify_result(struct commerce_response *resp, const struct answer_result *r,
                            struct verdict *v);
static void batch_error(struct commerce_response *resp, json_t *root, const char *fallback_code,
                        const char *fallback_message);
static enum commerce_result result_of_status(int status);
static void set_outcome(struct store_outcome *o, const struct store_record *r,
                        const struct verdict *v);
static void count_outcomes(struct commerce_response *resp);

static const char *const result_names[_COMMERCE_RESULT_MAX] = {
        [COMMERCE_RESULT_OUTCOMES] = "outcomes", [COMMERCE_RESULT_CONFLICT] = "conflict",
        [COMMERCE_RESULT_SPLIT] = "split",       [COMMERCE_RESULT_TOO_LARGE] = "too-large",
        [COMMERCE_RESULT_AUTH] = "auth",         [COMMERCE_RESULT_TRANSIENT] = "transient",
};

/* The per-event statuses that are permanent for the record (section 6), as spelled there. */
static const char *const permanent_statuses[] = {
        "Expired",         "ResourceNotFound", "ResourceNotAuthorized", "ResourceNotActive",
        "InvalidQuantity", "InvalidDimension", "BadArgument",
};

/* Check that one record can be encoded, by encoding it alone. */
int
commerce_check_record(const struct commerce_options *o, const struct store_record *r,
                      const char **ret_error)
{
	struct jbuf b = {0};
	const char *why = NULL;
	int k;

	assert(o && r);
	k = encode_event(&b, o, r, &why);
	free(b.data);
	if (k < 0 && ret_error)
		*ret_error = why;
	return k;
}

/* Build the body and header values of one attempt of a batch. */
int
commerce_request_build(const struct commerce_options *o, const char *batch_id,
                       const struct store_record *records, size_t n, struct commerce_request *ret)
{
	_cleanup_free_ char *json = NULL;
	struct commerce_request req = {0};
	struct jbuf b = {0};
	char *p;
	int k;

	assert(o && ret);
	if (n == 0 || !records || !batch_id_valid(batch_id))
		return -EINVAL;
	if (n > COMMERCE_BATCH_MAX)
		return -E2BIG;

	b.cap = n * RECORD_GUESS + 16;
	b.data = xmalloc(b.cap);
	p = b.data;
	memcpy(p, "{\"request\":[", 12);
	b.len = 12;
	for (size_t i = 0; i < n; i++) {
		if (i > 0) {
			*jbuf_reserve(&b, 1) = ',';
			b.len++;
		}
		k = encode_event(&b, o, &records[i], NULL);
		if (k < 0) {
			free(b.data);
			return k;
		}
	}
	p = jbuf_reserve(&b, 3);
	memcpy(p, "]}", 3);
	b.len += 2;
	json = b.data;

	req.json_size = b.len;
	if (o->gzip) {
		k = gzip_body(json, b.len, &req.body, &req.body_size);
		if (k < 0)
			return k;
		req.gzip = true;
	} else {
		req.body = TAKE_PTR(json);
		req.body_size = b.len;
	}
	k = hash_uuid4(req.request_id);
	if (k < 0) {
		free(req.body);
		return k;
	}
	memcpy(req.correlation_id, batch_id, strlen(batch_id) + 1);
	*ret = req;
	return 0;
}

/* Free a request's body. */
void
commerce_request_done(struct commerce_request *r)
{
	if (!r)
		return;
	free(r->body);
	*r = (struct commerce_request){0};
}

/* Make a new x-ms-requestid. */
int
commerce_request_id_new(char out[static COMMERCE_ID_LEN + 1])
{
	return hash_uuid4(out);
}

/* Name a result for logs and metric labels. */
const char *
commerce_result_to_string(enum commerce_result r)
{
	if ((unsigned)r >= _COMMERCE_RESULT_MAX)
		return "invalid";
	return result_names[r];
}

/* Classify an answer to a batch. */
int
commerce_parse_response(const struct store_record *records, size_t n, int http_status,
                        const void *body, size_t size, struct commerce_response *ret)
{
	_cleanup_(commerce_response_done) struct commerce_response resp = {0};

	assert(ret);
	if (!records || n == 0 || n > COMMERCE_BATCH_MAX)
		return -EINVAL;
	if (!body) {
		body = ""; /* no arithmetic on NULL below */
		size = 0;
	}

	resp.http_status = http_status;
	resp.throttle = http_status == 429 || http_status == 503;
	if (http_status >= 200 && http_status <= 299) {
		parse_results(&resp, records, n, body, size);
	} else {
		_cleanup_(json_decrefp) json_t *root =
		        size ? json_loadb(body, size, 0, NULL) : NULL;
		char code[32];

		resp.result = result_of_status(http_status);
		if (http_status <= 0)
			snprintf(code, sizeof(code), "no-answer");
		else
			snprintf(code, sizeof(code), "http-%d", http_status);
		batch_error(&resp, root, code, NULL);
		if (resp.result == COMMERCE_RESULT_CONFLICT) {
			struct verdict v = {.kind = STORE_OUTCOME_FORWARDED, .status = "Conflict"};

			resp.outcomes = xcalloc(n, sizeof(*resp.outcomes));
			resp.n_outcomes = n;
			for (size_t i = 0; i < n; i++)
				set_outcome(&resp.outcomes[i], &records[i], &v);
			count_outcomes(&resp);
		}
	}
	*ret = resp;
	resp = (struct commerce_response){0};
	return 0;
}

/* Free everything a response owns. */
void
commerce_response_done(struct commerce_response *r)
{
	struct commerce_strings *s, *next;

	if (!r)
		return;
	free(r->outcomes);
	free(r->error_code);
	free(r->error_message);
	free(r->unknown_id);
	for (s = r->strings; s; s = next) {
		next = s->next;
		free(s);
	}
	*r = (struct commerce_response){0};
}

/* Make room for need more bytes; returns where they go. */
static char *
jbuf_reserve(struct jbuf *b, size_t need)
{
	if (_unlikely_(b->cap - b->len < need)) {
		size_t cap = MAX(b->cap * 2, b->len + need);

		b->data = xrealloc(b->data, cap);
		b->cap = cap;
	}
	return b->data + b->len;
}

/* strlen that takes NULL as empty. */
static size_t
len0(const char *s)
{
	return s ? strlen(s) : 0;
}

/*
 * The length of the valid UTF-8 sequence at u (RFC 3629: no overlong forms, no surrogates, at
 * most U+10FFFF), or 0 when it is not one.
 */
static size_t
utf8_sequence(const unsigned char *u, const unsigned char *end)
{
	unsigned char c = u[0];
	uint32_t cp;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c < 0xc2) /* a continuation byte, or an overlong two-byte form */
		return 0;
	if (c < 0xe0) {
		n = 2;
		cp = c & 0x1f;
	} else if (c < 0xf0) {
		n = 3;
		cp = c & 0x0f;
	} else if (c < 0xf5) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if ((size_t)(end - u) < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((u[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (u[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/*
 * Write s as a JSON string at p (room for 6 * len + 2 bytes is the caller's); ASCII letters in
 * lower case when lower. NULL when s is not valid UTF-8.
 */
static char *
put_string(char *p, const char *s, size_t len, bool lower)
{
	const unsigned char *u = (const unsigned char *)s, *end = u + len;

	*p++ = '"';
	while (u < end) {
		unsigned char c = *u;

		if (_likely_(c >= 0x20 && c < 0x80 && c != '"' && c != '\\')) {
			if (lower && c >= 'A' && c <= 'Z')
				c += 'a' - 'A';
			*p++ = (char)c;
			u++;
		} else if (c >= 0x80) {
			size_t k = utf8_sequence(u, end);

			if (!k)
				return NULL;
			memcpy(p, u, k);
			p += k;
			u += k;
		} else {
			p = put_escape(p, c);
			u++;
		}
	}
	*p++ = '"';
	return p;
}

/* Write the escape of a quote, a backslash or a control character. */
static char *
put_escape(char *p, unsigned char c)
{
	static const char hex[] = "0123456789ABCDEF"; /* as jansson writes them */
	char e = 0;

	switch (c) {
	case '"':
		e = '"';
		break;
	case '\\':
		e = '\\';
		break;
	case '\b':
		e = 'b';
		break;
	case '\f':
		e = 'f';
		break;
	case '\n':
		e = 'n';
		break;
	case '\r':
		e = 'r';
		break;
	case '\t':
		e = 't';
		break;
	default:
		break;
	}
	*p++ = '\\';
	if (e) {
		*p++ = e;
		return p;
	}
	memcpy(p, "u00", 3);
	p[3] = hex[c >> 4];
	p[4] = hex[c & 0xf];
	return p + 5;
}

/* Write "YYYY-MM-DDTHH:MM:SSZ" in quotes; NULL for a time outside the years 0000 to 9999. */
static char *
put_time(char *p, int64_t t)
{
	*p++ = '"';
	time_format_rfc3339(t, p);
	if (p[0] == 'i') /* "invalid-time" */
		return NULL;
	p += TIME_RFC3339_LEN;
	*p++ = '"';
	return p;
}

/*
 * Append one event. On failure the buffer's length is unchanged, and why (when not NULL) says
 * what is wrong.
 */
static int
encode_event(struct jbuf *b, const struct commerce_options *o, const struct store_record *r,
             const char **why)
{
	const char *registration = r->registration ? r->registration : o->registration;
	const char *tags = NULL, *info = NULL;
	size_t tags_len = 0, info_len = 0;
	size_t l_key, l_sub, l_reason, l_tenant, l_src, l_reg, l_meter, l_qty, l_uri, l_loc;
	const char *err = NULL;
	int k = -EINVAL;
	char *p, *start;

#define PUT_LIT(lit)                             \
	do {                                     \
		memcpy(p, lit, sizeof(lit) - 1); \
		p += sizeof(lit) - 1;            \
	} while (0)
#define PUT_STR(s, len, lower)                                          \
	do {                                                            \
		if (!(s)) {                                             \
			PUT_LIT("null");                                \
		} else if (!(p = put_string(p, (s), (len), (lower)))) { \
			k = -EBADMSG;                                   \
			err = "text is not valid UTF-8";                \
			goto fail;                                      \
		}                                                       \
	} while (0)
#define PUT_TIME(t)                                                       \
	do {                                                              \
		if (!(p = put_time(p, (t)))) {                            \
			err = "a time is outside the years 0000 to 9999"; \
			goto fail;                                        \
		}                                                         \
	} while (0)

	if (isempty(r->key)) {
		err = "no record key";
		goto fail;
	}
	if (isempty(r->charged_subscription) || isempty(r->charge_reason)) {
		err = "no charge";
		goto fail;
	}
	/* "ambiguous" is held, never sent: a record with it here is a bug, not a charge */
	if (!streq(r->charge_reason, "registered") && !streq(r->charge_reason, "default") &&
	    !streq(r->charge_reason, "unknown-subscription")) {
		err = "the charge reason is not registered, default or unknown-subscription";
		goto fail;
	}
	if (isempty(registration)) {
		err = "no registration";
		goto fail;
	}
	if (isempty(r->subscription_id) || isempty(r->meter_id) || isempty(r->quantity)) {
		err = "no subscription, meter or quantity";
		goto fail;
	}
	if (r->tags && !json_text_valid(r->tags, strlen(r->tags), &tags, &tags_len)) {
		k = -EBADMSG;
		err = "tags is not one JSON value";
		goto fail;
	}
	if (r->additional_info &&
	    !json_text_valid(r->additional_info, strlen(r->additional_info), &info, &info_len)) {
		k = -EBADMSG;
		err = "additionalInfo is not one JSON value";
		goto fail;
	}

	l_key = strlen(r->key);
	l_sub = strlen(r->charged_subscription);
	l_reason = strlen(r->charge_reason);
	l_tenant = len0(r->tenant_id);
	l_src = strlen(r->subscription_id);
	l_reg = strlen(registration);
	l_meter = strlen(r->meter_id);
	l_qty = strlen(r->quantity);
	l_uri = len0(r->resource_uri);
	l_loc = len0(r->location);
	start = p = jbuf_reserve(b, EVENT_OVERHEAD + tags_len + info_len +
	                                    6 * (l_key + l_sub + l_reason + l_tenant + l_src +
	                                         l_reg + l_meter + l_qty + l_uri + l_loc));

	PUT_LIT("{\"usageEventId\":");
	PUT_STR(r->key, l_key, false);
	PUT_LIT(",\"subscriptionId\":");
	PUT_STR(r->charged_subscription, l_sub, true);
	PUT_LIT(",\"chargeReason\":");
	PUT_STR(r->charge_reason, l_reason, false);
	PUT_LIT(",\"tenantId\":");
	PUT_STR(r->tenant_id, l_tenant, true);
	PUT_LIT(",\"sourceSubscriptionId\":");
	PUT_STR(r->subscription_id, l_src, true);
	PUT_LIT(",\"registration\":");
	PUT_STR(registration, l_reg, true);
	PUT_LIT(",\"meterId\":");
	PUT_STR(r->meter_id, l_meter, false);
	PUT_LIT(",\"quantity\":");
	PUT_STR(r->quantity, l_qty, false);
	PUT_LIT(",\"usageStartTime\":");
	PUT_TIME(r->usage_start);
	PUT_LIT(",\"usageEndTime\":");
	PUT_TIME(r->usage_end);
	PUT_LIT(",\"reportedStartTime\":");
	PUT_TIME(r->reported_hour);
	PUT_LIT(",\"resourceUri\":");
	PUT_STR(r->resource_uri, l_uri, false);
	PUT_LIT(",\"location\":");
	PUT_STR(r->location, l_loc, false);
	PUT_LIT(",\"tags\":");
	if (tags) {
		memcpy(p, tags, tags_len);
		p += tags_len;
	} else {
		PUT_LIT("null");
	}
	PUT_LIT(",\"additionalInfo\":");
	if (info) {
		memcpy(p, info, info_len);
		p += info_len;
	} else {
		PUT_LIT("null");
	}
	*p++ = '}';
	b->len += (size_t)(p - start);
	return 0;

fail:
	if (why)
		*why = err;
	return k;
#undef PUT_LIT
#undef PUT_STR
#undef PUT_TIME
}

/*
 * Whether text is exactly one JSON value as jansson reads it (see json_skip_value), whitespace
 * around it allowed. On success the value without the surrounding whitespace.
 */
static bool
json_text_valid(const char *text, size_t len, const char **ret_start, size_t *ret_len)
{
	const unsigned char *p = (const unsigned char *)text, *end = p + len, *start, *after;

	start = skip_ws(p, end);
	after = json_skip_value(start, end, 0);
	if (!after || skip_ws(after, end) != end)
		return false;
	*ret_start = (const char *)start;
	*ret_len = (size_t)(after - start);
	return true;
}

/*
 * Skip one JSON value at p (whitespace before it allowed), inside depth open containers; returns
 * the byte after it, or NULL when it is not valid. Valid means what jansson accepts: RFC 8259,
 * strings in UTF-8 with paired surrogate escapes and no \u0000, integers within int64, reals
 * that do not overflow, at most JSON_DEPTH_MAX containers deep counted from the document's root.
 * Iterative, so a deep document costs no stack.
 */
static const unsigned char *
json_skip_value(const unsigned char *p, const unsigned char *end, size_t depth)
{
	enum { WANT_VALUE, WANT_MEMBER, AFTER_VALUE } state = WANT_VALUE;
	char closer[JSON_DEPTH_MAX];
	size_t open = 0;

	for (;;) {
		p = skip_ws(p, end);
		if (p >= end)
			return NULL;
		switch (state) {
		case WANT_VALUE:
			state = AFTER_VALUE;
			switch (*p) {
			case '{':
			case '[':
				if (depth + open >= JSON_DEPTH_MAX)
					return NULL;
				closer[open++] = *p == '{' ? '}' : ']';
				p = skip_ws(p + 1, end);
				if (p < end && *p == closer[open - 1]) {
					open--;
					p++;
				} else {
					state = closer[open - 1] == '}' ? WANT_MEMBER : WANT_VALUE;
				}
				break;
			case '"':
				p = scan_string(p, end);
				break;
			case 't':
				p = scan_literal(p, end, "true");
				break;
			case 'f':
				p = scan_literal(p, end, "false");
				break;
			case 'n':
				p = scan_literal(p, end, "null");
				break;
			default:
				p = scan_number(p, end);
				break;
			}
			if (!p)
				return NULL;
			break;
		case WANT_MEMBER:
			if (*p != '"' || !(p = scan_string(p, end)))
				return NULL;
			p = skip_ws(p, end);
			if (p >= end || *p != ':')
				return NULL;
			p++;
			state = WANT_VALUE;
			break;
		case AFTER_VALUE:
			if (*p == ',') {
				p++;
				state = closer[open - 1] == '}' ? WANT_MEMBER : WANT_VALUE;
			} else if (*p == closer[open - 1]) {
				p++;
				open--;
			} else {
				return NULL;
			}
			break;
		}
		if (state == AFTER_VALUE && open == 0)
			return p;
	}
}

/* Skip JSON whitespace. */
static const unsigned char *
skip_ws(const unsigned char *p, const unsigned char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Scan a JSON string starting at its quote; returns the byte after the closing quote or NULL. */
static const unsigned char *
scan_string(const unsigned char *p, const unsigned char *end)
{
	p++;
	while (p < end) {
		unsigned char c = *p;
		unsigned cp, low;

		if (c == '"')
			return p + 1;
		if (c < 0x20)
			return NULL;
		if (c >= 0x80) {
			size_t k = utf8_sequence(p, end);

			if (!k)
				return NULL;
			p += k;
			continue;
		}
		if (c != '\\') {
			p++;
			continue;
		}
		if (end - p < 2)
			return NULL;
		if (p[1] != 'u') {
			if (!strchr("\"\\/bfnrt", p[1]) || p[1] == '\0')
				return NULL;
			p += 2;
			continue;
		}
		/* jansson refuses \u0000 (without JSON_ALLOW_NUL): so do we */
		if (hex4(p + 2, end, &cp) < 0 || cp == 0)
			return NULL;
		p += 6;
		if (cp >= 0xdc00 && cp <= 0xdfff) /* a low surrogate alone */
			return NULL;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
			    hex4(p + 2, end, &low) < 0 || low < 0xdc00 || low > 0xdfff)
				return NULL;
			p += 6;
		}
	}
	return NULL;
}

/*
 * Scan a JSON number; returns the byte after it or NULL. Like jansson, an integer (no fraction,
 * no exponent) must fit int64_t and a real must not overflow a double.
 */
static const unsigned char *
scan_number(const unsigned char *p, const unsigned char *end)
{
	static const char int64_max[] = "9223372036854775807", int64_min[] = "9223372036854775808";
	const unsigned char *start = p, *digits, *point;
	bool real = false, exponent = false;

#define DIGIT(q) ((q) < end && *(q) >= '0' && *(q) <= '9')
	if (p < end && *p == '-')
		p++;
	digits = p;
	if (!DIGIT(p))
		return NULL;
	if (*p == '0')
		p++;
	else
		while (DIGIT(p))
			p++;
	point = p;
	if (p < end && *p == '.') {
		p++;
		real = true;
		if (!DIGIT(p))
			return NULL;
		while (DIGIT(p))
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		p++;
		real = exponent = true;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (!DIGIT(p))
			return NULL;
		while (DIGIT(p))
			p++;
	}
#undef DIGIT

	if (!real) {
		size_t n = (size_t)(p - digits);
		const char *limit = digits > start ? int64_min : int64_max;

		if (n > sizeof(int64_max) - 1 ||
		    (n == sizeof(int64_max) - 1 && memcmp(digits, limit, n) > 0))
			return NULL;
	} else if (exponent || point - digits > 300) {
		/* only these can pass DBL_MAX (1.8e308); strtod reads the C locale's point */
		_cleanup_free_ char *copy = xstrndup((const char *)start, (size_t)(p - start));
		double v;

		errno = 0;
		v = strtod(copy, NULL);
		if (errno == ERANGE && (v == HUGE_VAL || v == -HUGE_VAL))
			return NULL;
	}
	return p;
}

/* Scan the literal word; returns the byte after it or NULL. */
static const unsigned char *
scan_literal(const unsigned char *p, const unsigned char *end, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(end - p) < n || memcmp(p, word, n) != 0)
		return NULL;
	return p + n;
}

/* Four hex digits at p. */
static int
hex4(const unsigned char *p, const unsigned char *end, unsigned *ret)
{
	unsigned v = 0;

	if (end - p < 4)
		return -EINVAL;
	for (int i = 0; i < 4; i++) {
		unsigned char c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -EINVAL;
	}
	*ret = v;
	return 0;
}

/*
 * Compress a body into a gzip member in one deflate() call. Level 1: on event JSON it compresses
 * about as well as level 6 for half the CPU (bench-commerce prints both), and CPU, not the
 * uplink, is what bounds a catch-up (section 11).
 */
static int
gzip_body(const char *in, size_t size, char **ret, size_t *ret_size)
{
	z_stream z = {0};
	size_t bound;
	char *out;
	int k;

	if (size > UINT_MAX)
		return -E2BIG;
	/* windowBits 15 + 16: a gzip header and trailer instead of zlib's */
	if (deflateInit2(&z, COMMERCE_GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
	    Z_OK)
		return -ENOMEM;
	bound = deflateBound(&z, (uLong)size);
	out = xmalloc(bound);
	z.next_in = (const Bytef *)in;
	z.avail_in = (uInt)size;
	z.next_out = (Bytef *)out;
	z.avail_out = (uInt)bound;
	/* with deflateBound() bytes of room, one Z_FINISH call always completes */
	k = deflate(&z, Z_FINISH);
	deflateEnd(&z);
	if (k != Z_STREAM_END) {
		free(out);
		return -ENOMEM;
	}
	*ret = xrealloc(out, z.total_out);
	*ret_size = z.total_out;
	return 0;
}

/* A batch id is a header value: 1 to 36 letters, digits and dashes. */
static bool
batch_id_valid(const char *s)
{
	size_t n = len0(s);

	if (n == 0 || n > COMMERCE_ID_LEN)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      c == '-'))
			return false;
	}
	return true;
}

/* Copy at most max bytes of s (cut at a character boundary) into the response's strings. */
static const char *
strings_add(struct commerce_response *r, const char *s, size_t len, size_t max)
{
	struct commerce_strings *c;

	len = cut_len(s, len, max);
	c = xmalloc(sizeof(*c) + len + 1);
	memcpy(c->text, s, len);
	c->text[len] = '\0';
	c->next = r->strings;
	r->strings = c;
	return c->text;
}

/* A new string of at most max bytes of s, cut at a character boundary. */
static char *
cut_dup(const char *s, size_t len, size_t max)
{
	return xstrndup(s, cut_len(s, len, max));
}

/* The length of s cut to at most max bytes without splitting a UTF-8 sequence or at a NUL. */
static size_t
cut_len(const char *s, size_t len, size_t max)
{
	const char *nul = memchr(s, '\0', len);

	if (nul)
		len = (size_t)(nul - s);
	if (len <= max)
		return len;
	len = max;
	while (len > 0 && ((unsigned char)s[len] & 0xc0) == 0x80)
		len--;
	return len;
}

/* Equal without regard to ASCII case. */
static bool
ascii_case_equal(const char *a, size_t alen, const char *b, size_t blen)
{
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++) {
		unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];

		if (x >= 'A' && x <= 'Z')
			x += 'a' - 'A';
		if (y >= 'A' && y <= 'Z')
			y += 'a' - 'A';
		if (x != y)
			return false;
	}
	return true;
}

/* FNV-1a of the ASCII-lower-cased bytes. */
static uint64_t
key_hash(const char *s, size_t len)
{
	uint64_t h = UINT64_C(14695981039346656037);

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 'A' && c <= 'Z')
			c += 'a' - 'A';
		h = (h ^ c) * UINT64_C(1099511628211);
	}
	return h;
}

/* Index the records by key; records with the same key are chained through next. */
static void
key_index_build(struct key_index *x, const struct store_record *records, size_t n)
{
	size_t size = 16;

	while (size < 2 * n)
		size *= 2;
	x->slots = xcalloc(size, sizeof(*x->slots));
	x->next = xmalloc(n * sizeof(*x->next));
	x->mask = size - 1;
	for (size_t i = 0; i < n; i++) {
		const char *key = records[i].key;
		size_t len = len0(key);

		x->next[i] = INDEX_NONE;
		if (len == 0)
			continue;
		for (size_t j = key_hash(key, len) & x->mask;; j = (j + 1) & x->mask) {
			uint32_t slot = x->slots[j];

			if (slot == 0) {
				x->slots[j] = (uint32_t)i + 1;
				break;
			}
			if (ascii_case_equal(records[slot - 1].key, strlen(records[slot - 1].key),
			                     key, len)) {
				uint32_t last = slot - 1;

				while (x->next[last] != INDEX_NONE)
					last = x->next[last];
				x->next[last] = (uint32_t)i;
				break;
			}
		}
	}
}

/* The first record whose key is id, or INDEX_NONE. */
static uint32_t
key_index_find(const struct key_index *x, const struct store_record *records, const char *id,
               size_t len)
{
	for (size_t j = key_hash(id, len) & x->mask;; j = (j + 1) & x->mask) {
		uint32_t slot = x->slots[j];

		if (slot == 0)
			return INDEX_NONE;
		if (ascii_case_equal(records[slot - 1].key, strlen(records[slot - 1].key), id, len))
			return slot - 1;
	}
}

/* Free an index. */
static void
key_index_done(struct key_index *x)
{
	free(x->slots);
	free(x->next);
}

/*
 * A 2xx answer: the result list, matched to the records. The body is read by hand in two passes
 * (jansson would build a tree of about ten nodes per result: 2 us per event): the first checks the
 * whole document as jansson would and finds the root's last "result" member (jansson keeps the
 * last of repeated members), the second reads its elements. Anything else (no list, not JSON) is
 * rare and goes through jansson for the error's code and message.
 */
static void
parse_results(struct commerce_response *resp, const struct store_record *records, size_t n,
              const char *body, size_t size)
{
	const unsigned char *p, *end = (const unsigned char *)body + size;
	_cleanup_free_ uint8_t *seen = NULL; /* enum seen per record */
	struct key_index index = {0};

	p = size > 0 ? answer_find_list(body, size) : NULL;
	if (!p) {
		answer_not_a_list(resp, body, size);
		return;
	}

	resp->result = COMMERCE_RESULT_OUTCOMES;
	resp->outcomes = xcalloc(n, sizeof(*resp->outcomes));
	resp->n_outcomes = n;
	seen = xcalloc(n, sizeof(*seen));
	key_index_build(&index, records, n);

	p = skip_ws(p + 1, end);
	while (p < end && *p != ']') {
		_cleanup_(answer_result_done) struct answer_result r = {0};
		struct verdict v;
		uint32_t first;

		/* the document was checked: reading it again cannot fail */
		p = answer_read_result(p, end, &r);
		assert(p);
		p = skip_ws(p, end);
		if (p < end && *p == ',')
			p = skip_ws(p + 1, end);
		resp->n_results++;

		if (!r.object || !r.id.s) {
			resp->n_malformed++;
			continue;
		}
		first = key_index_find(&index, records, r.id.s, r.id.len);
		if (first == INDEX_NONE) {
			resp->n_unknown++;
			if (!resp->unknown_id)
				resp->unknown_id =
				        cut_dup(r.id.s, r.id.len, COMMERCE_ERROR_CODE_MAX);
			continue;
		}
		classify_result(resp, &r, &v);
		if (seen[first] != UNSEEN) {
			resp->n_duplicate++;
			if (seen[first] == CONTRADICTED || resp->outcomes[first].kind == v.kind)
				continue; /* agreeing, or settled already: the outcome stands */
			v = (struct verdict){
			        .kind = STORE_OUTCOME_RETRY,
			        .code = "contradicting-results",
			        .message = "Commerce answered this event more than once, and "
			                   "differently: it is sent again to settle it",
			};
		}
		for (uint32_t j = first; j != INDEX_NONE; j = index.next[j]) {
			if (seen[j] == SEEN) {
				seen[j] = CONTRADICTED;
				resp->n_contradicting++;
			} else {
				seen[j] = SEEN;
			}
			set_outcome(&resp->outcomes[j], &records[j], &v);
		}
	}

	for (size_t i = 0; i < n; i++)
		if (seen[i] == UNSEEN) {
			struct verdict v = {.kind = STORE_OUTCOME_RETRY, .code = "missing-result"};

			set_outcome(&resp->outcomes[i], &records[i], &v);
			resp->n_missing++;
		}
	count_outcomes(resp);
	key_index_done(&index);
}

/* A 2xx answer without a result list: transient, with what jansson makes of the body. */
static void
answer_not_a_list(struct commerce_response *resp, const char *body, size_t size)
{
	_cleanup_(json_decrefp) json_t *root = NULL;
	json_error_t error;
	char message[96];

	if (size > 0)
		root = json_loadb(body, size, 0, &error);
	resp->result = COMMERCE_RESULT_TRANSIENT;
	if (size == 0)
		snprintf(message, sizeof(message), "the answer has no body");
	else if (!root)
		/* jansson's text may quote the body: only the position goes to the log */
		snprintf(message, sizeof(message), "the answer is not JSON (at byte %d)",
		         error.position);
	else
		snprintf(message, sizeof(message), "the answer has no result list");
	batch_error(resp, root, "unparsable-answer", message);
}

/*
 * The '[' of the result list of an answer, or NULL: the body must be one JSON document as
 * jansson reads it, an object whose last "result" member is an array.
 */
static const unsigned char *
answer_find_list(const char *body, size_t size)
{
	const unsigned char *p = (const unsigned char *)body, *end = p + size, *list = NULL;
	_cleanup_(jstr_done) struct jstr key = {0};

	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return NULL;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return NULL;
	for (;;) {
		const unsigned char *value;

		if (p >= end || *p != '"' || !scan_string(p, end))
			return NULL;
		p = skip_ws(jstr_read(p, end, &key), end);
		if (p >= end || *p != ':')
			return NULL;
		value = skip_ws(p + 1, end);
		p = json_skip_value(value, end, 1);
		if (!p)
			return NULL;
		if (jstr_is(&key, "result"))
			list = value;
		p = skip_ws(p, end);
		if (p < end && *p == ',') {
			p = skip_ws(p + 1, end);
			continue;
		}
		if (p < end && *p == '}')
			break;
		return NULL;
	}
	if (skip_ws(p + 1, end) != end)
		return NULL;
	return list && *list == '[' ? list : NULL;
}

/*
 * Read one element of a checked result list: its id, status and error code and message when
 * they are strings (the last of repeated members, as jansson keeps). Returns the byte after it.
 */
static const unsigned char *
answer_read_result(const unsigned char *p, const unsigned char *end, struct answer_result *r)
{
	_cleanup_(jstr_done) struct jstr key = {0};

	r->object = *p == '{';
	if (!r->object)
		return json_skip_value(p, end, 2);
	p = skip_ws(p + 1, end);
	while (p && p < end && *p == '"') {
		p = skip_ws(jstr_read(p, end, &key), end);
		if (p >= end || *p != ':')
			return NULL;
		p = skip_ws(p + 1, end);
		if (jstr_is(&key, "usageEventId"))
			p = answer_read_string(p, end, 3, &r->id);
		else if (jstr_is(&key, "status"))
			p = answer_read_string(p, end, 3, &r->status);
		else if (jstr_is(&key, "error"))
			p = answer_read_error(p, end, r);
		else
			p = json_skip_value(p, end, 3);
		p = p ? skip_ws(p, end) : NULL;
		if (p && p < end && *p == ',')
			p = skip_ws(p + 1, end);
	}
	return p && p < end && *p == '}' ? p + 1 : NULL;
}

/* Read the "error" member of a result: code and message when it is an object with strings. */
static const unsigned char *
answer_read_error(const unsigned char *p, const unsigned char *end, struct answer_result *r)
{
	_cleanup_(jstr_done) struct jstr key = {0};

	jstr_done(&r->code);
	jstr_done(&r->message);
	if (*p != '{')
		return json_skip_value(p, end, 3);
	p = skip_ws(p + 1, end);
	while (p && p < end && *p == '"') {
		p = skip_ws(jstr_read(p, end, &key), end);
		if (p >= end || *p != ':')
			return NULL;
		p = skip_ws(p + 1, end);
		if (jstr_is(&key, "code"))
			p = answer_read_string(p, end, 4, &r->code);
		else if (jstr_is(&key, "message"))
			p = answer_read_string(p, end, 4, &r->message);
		else
			p = json_skip_value(p, end, 4);
		p = p ? skip_ws(p, end) : NULL;
		if (p && p < end && *p == ',')
			p = skip_ws(p + 1, end);
	}
	return p && p < end && *p == '}' ? p + 1 : NULL;
}

/* Read a member's value into j when it is a string; other values leave j cleared. */
static const unsigned char *
answer_read_string(const unsigned char *p, const unsigned char *end, size_t depth, struct jstr *j)
{
	if (*p == '"')
		return jstr_read(p, end, j);
	jstr_done(j);
	return json_skip_value(p, end, depth);
}

/* Free what a result element holds. */
static void
answer_result_done(struct answer_result *r)
{
	jstr_done(&r->id);
	jstr_done(&r->status);
	jstr_done(&r->code);
	jstr_done(&r->message);
}

/*
 * Read the checked string at p: a slice of the body when it has no escape, else a decoded copy.
 * Returns the byte after its closing quote.
 */
static const unsigned char *
jstr_read(const unsigned char *p, const unsigned char *end, struct jstr *j)
{
	const unsigned char *start = p + 1, *q = start, *after;
	char *o;

	jstr_done(j);
	while (q < end && *q != '"' && *q != '\\')
		q++;
	if (q < end && *q == '"') {
		j->s = (const char *)start;
		j->len = (size_t)(q - start);
		return q + 1;
	}
	after = scan_string(p, end);
	assert(after);
	/* escapes only shrink: the raw length bounds the decoded one */
	j->owned = o = xmalloc((size_t)(after - start));
	for (q = start; q < after - 1;) {
		unsigned cp, low;

		if (*q != '\\') {
			*o++ = (char)*q++;
			continue;
		}
		switch (q[1]) {
		case 'b':
			*o++ = '\b';
			break;
		case 'f':
			*o++ = '\f';
			break;
		case 'n':
			*o++ = '\n';
			break;
		case 'r':
			*o++ = '\r';
			break;
		case 't':
			*o++ = '\t';
			break;
		case 'u':
			(void)hex4(q + 2, end, &cp);
			if (cp >= 0xd800 && cp <= 0xdbff) {
				(void)hex4(q + 8, end, &low);
				cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
				q += 6;
			}
			o = put_utf8(o, cp);
			q += 4;
			break;
		default: /* " \ / */
			*o++ = (char)q[1];
			break;
		}
		q += 2;
	}
	j->s = j->owned;
	j->len = (size_t)(o - j->owned);
	return after;
}

/* Whether j is the word. */
static bool
jstr_is(const struct jstr *j, const char *word)
{
	size_t n = strlen(word);

	return j->s && j->len == n && memcmp(j->s, word, n) == 0;
}

/* Forget a string. */
static void
jstr_done(struct jstr *j)
{
	free(j->owned);
	*j = (struct jstr){0};
}

/* Write a code point (at most U+10FFFF, not a surrogate) as UTF-8. */
static char *
put_utf8(char *o, unsigned cp)
{
	if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | cp >> 6);
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | cp >> 12);
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | cp >> 18);
		*o++ = (char)(0x80 | (cp >> 12 & 0x3f));
		*o++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	return o;
}

/* The outcome one result asks for. */
static void
classify_result(struct commerce_response *resp, const struct answer_result *r, struct verdict *v)
{
	const char *s = r->status.s;
	size_t len = r->status.len;

	*v = (struct verdict){.kind = STORE_OUTCOME_RETRY};
	if (r->message.s)
		v->message =
		        strings_add(resp, r->message.s, r->message.len, COMMERCE_ERROR_MESSAGE_MAX);
	if (!s) {
		v->code = "no-status";
		resp->n_unknown_status++;
		return;
	}
	if (ascii_case_equal(s, len, "Accepted", 8) || ascii_case_equal(s, len, "Duplicate", 9)) {
		v->kind = STORE_OUTCOME_FORWARDED;
		v->status = ascii_case_equal(s, len, "Accepted", 8) ? "Accepted" : "Duplicate";
		v->message = NULL;
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(permanent_statuses); i++) {
		const char *p = permanent_statuses[i];

		if (!ascii_case_equal(s, len, p, strlen(p)))
			continue;
		v->kind = STORE_OUTCOME_DEAD;
		v->code = p;
		/* a more specific code than the status goes in front of the message */
		if (r->code.s && r->code.len > 0 &&
		    !ascii_case_equal(r->code.s, r->code.len, p, strlen(p))) {
			_cleanup_free_ char *c =
			        cut_dup(r->code.s, r->code.len, COMMERCE_ERROR_CODE_MAX);
			_cleanup_free_ char *joined =
			        v->message ? xasprintf("%s: %s", c, v->message) : xstrdup(c);

			v->message = strings_add(resp, joined, strlen(joined),
			                         COMMERCE_ERROR_MESSAGE_MAX);
		}
		return;
	}
	/* Error (transient), or a status the contract does not name: send it again */
	if (!ascii_case_equal(s, len, "Error", 5))
		resp->n_unknown_status++;
	if (r->code.s)
		v->code = strings_add(resp, r->code.s, r->code.len, COMMERCE_ERROR_CODE_MAX);
	else
		v->code = strings_add(resp, s, len, COMMERCE_ERROR_CODE_MAX);
}

/*
 * The whole-batch error of an answer: {"error":{"code","message"}} or {"code","message"} when the
 * body has them, else the fallbacks.
 */
static void
batch_error(struct commerce_response *resp, json_t *root, const char *fallback_code,
            const char *fallback_message)
{
	json_t *error = json_object_get(root, "error");
	json_t *holder = json_is_object(error) ? error : root;
	json_t *code = json_object_get(holder, "code");
	json_t *message = json_object_get(holder, "message");

	if (json_is_string(code) && json_string_length(code) > 0)
		resp->error_code = cut_dup(json_string_value(code), json_string_length(code),
		                           COMMERCE_ERROR_CODE_MAX);
	else
		resp->error_code = xstrdup(fallback_code);
	if (json_is_string(message))
		resp->error_message =
		        cut_dup(json_string_value(message), json_string_length(message),
		                COMMERCE_ERROR_MESSAGE_MAX);
	else if (fallback_message)
		resp->error_message = xstrdup(fallback_message);
}

/* The result of a status that is not 2xx. */
static enum commerce_result
result_of_status(int status)
{
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
		/* 408, 429, 5xx, no answer, and what the contract does not name: never a reason
		 * to give a record up */
		return COMMERCE_RESULT_TRANSIENT;
	}
}

/* Fill one record's outcome. */
static void
set_outcome(struct store_outcome *o, const struct store_record *r, const struct verdict *v)
{
	*o = (struct store_outcome){
	        .id = r->id,
	        .kind = v->kind,
	        .status = v->kind == STORE_OUTCOME_FORWARDED ? v->status : NULL,
	        .error_code = v->kind == STORE_OUTCOME_FORWARDED ? NULL : v->code,
	        .error_message = v->kind == STORE_OUTCOME_FORWARDED ? NULL : v->message,
	};
}

/* Count the outcomes by kind. */
static void
count_outcomes(struct commerce_response *resp)
{
	resp->n_forwarded = resp->n_dead = resp->n_retry = 0;
	for (size_t i = 0; i < resp->n_outcomes; i++)
		switch (resp->outcomes[i].kind) {
		case STORE_OUTCOME_FORWARDED:
			resp->n_forwarded++;
			break;
		case STORE_OUTCOME_DEAD:
			resp->n_dead++;
			break;
		case STORE_OUTCOME_RETRY:
			resp->n_retry++;
			break;
		}
}
