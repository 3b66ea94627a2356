/*
 * The Commerce ingestion API (ARCHITECTURE.md section 6): request bodies written and answers read
 * by hand, answers classified by the outcome table. No I/O. This file writes the requests;
 * lib/commerce-answer.c reads and classifies the answers; the JSON grammar both use is here,
 * declared in commerce-private.h.
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

#define ZLIB_CONST
#include <zlib.h>

#include "commerce-private.h"
#include "commerce.h"
#include "hash.h"
#include "macro.h"
#include "timeutil.h"
#include "xmalloc.h"

#define JSON_DEPTH_MAX 2048 /* nesting accepted in tags and additionalInfo: jansson's limit */
#define EVENT_OVERHEAD 512  /* member names, punctuation and the three times of one event */
#define RECORD_GUESS   1024 /* initial buffer bytes per record */

/* buffers bigger than this after a build are not kept for the next one */
#define SCRATCH_KEEP_MAX (8u << 20)

/* A growing output buffer. */
struct jbuf {
	char *data;
	size_t len;
	size_t cap;
};

struct commerce_scratch {
	struct jbuf json; /* the JSON of the last body (len: 0 between builds) */
	char *out;        /* deflate's output, copied into the request at its size */
	size_t out_cap;
	z_stream z;
	bool z_ready; /* z was initialised: deflateReset() before the next body */
};

static char *jbuf_reserve(struct jbuf *b, size_t need);
static size_t utf8_sequence(const unsigned char *u, const unsigned char *end);
static char *put_string(char *p, const char *s, size_t len, bool lower);
static char *put_escape(char *p, unsigned char c);
static char *put_time(char *p, int64_t t);
static int encode_event(struct jbuf *b, const struct commerce_options *o,
                        const struct store_record *r, const char **why);
static bool json_text_valid(const char *text, size_t len, const char **ret_start, size_t *ret_len);
static const unsigned char *scan_number(const unsigned char *p, const unsigned char *end);
static const unsigned char *scan_literal(const unsigned char *p, const unsigned char *end,
                                         const char *word);
static int gzip_body(struct commerce_scratch *scratch, const char *in, size_t size, char **ret,
                     size_t *ret_size);
static bool batch_id_valid(const char *s);

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
	_cleanup_free_ char *json = NULL; /* the buffer when it is not the scratch's */
	struct commerce_scratch *scratch;
	struct commerce_request req = {0};
	struct jbuf b = {0};
	char *p;
	int k = 0;

	assert(o && ret);
	if (n == 0 || !records || !batch_id_valid(batch_id))
		return -EINVAL;
	if (n > COMMERCE_BATCH_MAX)
		return -E2BIG;

	/* a gzip body is compressed from the scratch's buffer; a plain one is the buffer itself */
	scratch = o->gzip ? o->scratch : NULL;
	if (scratch)
		b = (struct jbuf){.data = scratch->json.data, .cap = scratch->json.cap};
	if (b.cap < n * RECORD_GUESS + 16) {
		free(b.data);
		b.cap = n * RECORD_GUESS + 16;
		b.data = xmalloc(b.cap);
	}
	p = b.data;
	memcpy(p, "{\"request\":[", 12);
	b.len = 12;
	for (size_t i = 0; i < n; i++) {
		if (i > 0) {
			*jbuf_reserve(&b, 1) = ',';
			b.len++;
		}
		k = encode_event(&b, o, &records[i], NULL);
		if (k < 0)
			break;
	}
	if (k >= 0) {
		p = jbuf_reserve(&b, 3);
		memcpy(p, "]}", 3);
		b.len += 2;
	}
	if (scratch && b.cap <= SCRATCH_KEEP_MAX)
		/* kept, also after an error; a rare huge body is not */
		scratch->json = (struct jbuf){.data = b.data, .cap = b.cap};
	else {
		if (scratch)
			scratch->json = (struct jbuf){0};
		json = b.data;
	}
	if (k < 0)
		return k;

	req.json_size = b.len;
	if (o->gzip) {
		k = gzip_body(scratch, b.data, b.len, &req.body, &req.body_size);
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
size_t
commerce_len0(const char *s)
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
 * The bytes a JSON string holds as they are: printable ASCII (0x20 to 0x7f) but the quote (0x22)
 * and the backslash (0x5c).
 */
/* clang-format off */
static const bool json_plain[256] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
	1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x20 */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x30 */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x40 */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x50 */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x60 */
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x70 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x80 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x90 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xa0 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xb0 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xc0 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xd0 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xe0 */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xf0 */
};
/* clang-format on */

/*
 * Write s as a JSON string at p (room for 6 * len + 2 bytes is the caller's); ASCII letters in
 * lower case when lower. NULL when s is not valid UTF-8. Runs of plain bytes are copied whole.
 */
static char *
put_string(char *p, const char *s, size_t len, bool lower)
{
	const unsigned char *u = (const unsigned char *)s, *end = u + len;

	*p++ = '"';
	while (u < end) {
		const unsigned char *run = u;
		unsigned char c;
		size_t n;

		while (u < end && json_plain[*u])
			u++;
		n = (size_t)(u - run);
		if (lower) {
			for (size_t i = 0; i < n; i++) {
				c = run[i];
				p[i] = (char)((unsigned)(c - 'A') < 26 ? c + ('a' - 'A') : c);
			}
		} else {
			memcpy(p, run, n);
		}
		p += n;
		if (u == end)
			break;
		c = *u;
		if (c >= 0x80) {
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
	l_tenant = commerce_len0(r->tenant_id);
	l_src = strlen(r->subscription_id);
	l_reg = strlen(registration);
	l_meter = strlen(r->meter_id);
	l_qty = strlen(r->quantity);
	l_uri = commerce_len0(r->resource_uri);
	l_loc = commerce_len0(r->location);
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
 * Whether text is exactly one JSON value as jansson reads it (see commerce_json_skip_value),
 * whitespace around it allowed. On success the value without the surrounding whitespace.
 */
static bool
json_text_valid(const char *text, size_t len, const char **ret_start, size_t *ret_len)
{
	const unsigned char *p = (const unsigned char *)text, *end = p + len, *start, *after;

	start = commerce_skip_ws(p, end);
	after = commerce_json_skip_value(start, end, 0);
	if (!after || commerce_skip_ws(after, end) != end)
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
const unsigned char *
commerce_json_skip_value(const unsigned char *p, const unsigned char *end, size_t depth)
{
	enum { WANT_VALUE, WANT_MEMBER, AFTER_VALUE } state = WANT_VALUE;
	char closer[JSON_DEPTH_MAX];
	size_t open = 0;

	for (;;) {
		p = commerce_skip_ws(p, end);
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
				p = commerce_skip_ws(p + 1, end);
				if (p < end && *p == closer[open - 1]) {
					open--;
					p++;
				} else {
					state = closer[open - 1] == '}' ? WANT_MEMBER : WANT_VALUE;
				}
				break;
			case '"':
				p = commerce_scan_string(p, end);
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
			if (*p != '"' || !(p = commerce_scan_string(p, end)))
				return NULL;
			p = commerce_skip_ws(p, end);
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
const unsigned char *
commerce_skip_ws(const unsigned char *p, const unsigned char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Scan a JSON string starting at its quote; returns the byte after the closing quote or NULL. */
const unsigned char *
commerce_scan_string(const unsigned char *p, const unsigned char *end)
{
	p++;
	while (p < end) {
		unsigned char c;
		unsigned cp, low;

		while (p < end && json_plain[*p])
			p++;
		if (p >= end)
			break;
		c = *p;
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
		/* a backslash */
		if (end - p < 2)
			return NULL;
		if (p[1] != 'u') {
			if (!strchr("\"\\/bfnrt", p[1]) || p[1] == '\0')
				return NULL;
			p += 2;
			continue;
		}
		/* jansson refuses \u0000 (without JSON_ALLOW_NUL): so do we */
		if (commerce_hex4(p + 2, end, &cp) < 0 || cp == 0)
			return NULL;
		p += 6;
		if (cp >= 0xdc00 && cp <= 0xdfff) /* a low surrogate alone */
			return NULL;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
			    commerce_hex4(p + 2, end, &low) < 0 || low < 0xdc00 || low > 0xdfff)
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
int
commerce_hex4(const unsigned char *p, const unsigned char *end, unsigned *ret)
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

/* Buffers for building bodies, kept from one build to the next. */
struct commerce_scratch *
commerce_scratch_new(void)
{
	return xcalloc(1, sizeof(struct commerce_scratch));
}

struct commerce_scratch *
commerce_scratch_free(struct commerce_scratch *s)
{
	if (!s)
		return NULL;
	if (s->z_ready)
		deflateEnd(&s->z);
	free(s->json.data);
	free(s->out);
	free(s);
	return NULL;
}

/* Start a gzip member in z: the scratch's state reset, else a new one. */
static int
gzip_start(struct commerce_scratch *scratch, z_stream *z)
{
	if (scratch && scratch->z_ready)
		return deflateReset(z) == Z_OK ? 0 : -ENOMEM;
	/* windowBits 15 + 16: a gzip header and trailer instead of zlib's */
	if (deflateInit2(z, COMMERCE_GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
	    Z_OK)
		return -ENOMEM;
	if (scratch)
		scratch->z_ready = true;
	return 0;
}

/*
 * Compress a body into a gzip member in one deflate() call, with the scratch's state and output
 * buffer when there is one. Level 1: on event JSON it compresses about as well as level 6 for
 * half the CPU (bench-commerce prints both), and CPU, not the uplink, is what bounds a catch-up
 * (section 11).
 */
static int
gzip_body(struct commerce_scratch *scratch, const char *in, size_t size, char **ret,
          size_t *ret_size)
{
	z_stream own = {0}, *z = scratch ? &scratch->z : &own;
	size_t bound;
	char *out;
	int k;

	if (size > UINT_MAX)
		return -E2BIG;
	if (gzip_start(scratch, z) < 0)
		return -ENOMEM;
	bound = deflateBound(z, (uLong)size);
	if (scratch && scratch->out_cap < bound) {
		free(scratch->out);
		scratch->out = xmalloc(bound);
		scratch->out_cap = bound;
	}
	out = scratch ? scratch->out : xmalloc(bound);
	z->next_in = (const Bytef *)in;
	z->avail_in = (uInt)size;
	z->next_out = (Bytef *)out;
	z->avail_out = (uInt)bound;
	/* with deflateBound() bytes of room, one Z_FINISH call always completes */
	k = deflate(z, Z_FINISH);
	if (!scratch)
		deflateEnd(z);
	if (k != Z_STREAM_END) {
		if (!scratch)
			free(out);
		return -ENOMEM;
	}
	*ret_size = z->total_out;
	if (!scratch) {
		*ret = xrealloc(out, z->total_out);
		return 0;
	}
	*ret = xmemdup(out, z->total_out);
	if (scratch->out_cap > SCRATCH_KEEP_MAX) {
		free(scratch->out);
		scratch->out = NULL;
		scratch->out_cap = 0;
	}
	return 0;
}

/* A batch id is a header value: 1 to 36 letters, digits and dashes. */
static bool
batch_id_valid(const char *s)
{
	size_t n = commerce_len0(s);

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
