/*
 * Answers of the Commerce ingestion API read and classified (ARCHITECTURE.md section 6; see the
 * top of commerce.c for why by hand and the JSON grammar, which commerce-private.h shares): the
 * whole document checked first, then only the members needed read as slices of the body, each
 * result matched to its record by key and classified by the outcome table.
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "commerce-private.h"
#include "commerce.h"
#include "macro.h"
#include "xmalloc.h"

#define INDEX_NONE     UINT32_MAX
#define KEY_HASH_BYTES 16

/* The copies of codes and messages that outcomes point to: a list of chunks, never moved. */
struct commerce_strings {
	struct commerce_strings *next;
	char text[];
};

/* Records by key (case-insensitive), for matching results to records. */
struct key_index {
	uint32_t *slots; /* record index + 1; 0 empty */
	uint32_t *next;  /* next record with the same key, or INDEX_NONE */
	size_t *len;     /* each record's key length, measured once */
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
	if (memcmp(a, b, alen) == 0) /* the usual case: Commerce echoes the key as sent */
		return true;
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

/*
 * FNV-1a of the ASCII-lower-cased bytes, at most the last KEY_HASH_BYTES of them, and the
 * length: a record key is 64 hex digits of SHA-256, whose last 16 (64 bits) tell a batch's keys
 * apart well enough (hashing all 64, of every record's key and every result's id, was a quarter
 * of the instructions of reading an answer). An id that is not such a key only costs time when
 * it collides: equality is decided by the whole key.
 */
static uint64_t
key_hash(const char *s, size_t len)
{
	uint64_t h = UINT64_C(14695981039346656037) ^ len;

	for (size_t i = len - MIN(len, (size_t)KEY_HASH_BYTES); i < len; i++) {
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
	x->len = xmalloc(n * sizeof(*x->len));
	x->mask = size - 1;
	for (size_t i = 0; i < n; i++) {
		const char *key = records[i].key;
		size_t len = commerce_len0(key);

		x->len[i] = len;
		x->next[i] = INDEX_NONE;
		if (len == 0)
			continue;
		for (size_t j = key_hash(key, len) & x->mask;; j = (j + 1) & x->mask) {
			uint32_t slot = x->slots[j];

			if (slot == 0) {
				x->slots[j] = (uint32_t)i + 1;
				break;
			}
			if (ascii_case_equal(records[slot - 1].key, x->len[slot - 1], key, len)) {
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
		if (ascii_case_equal(records[slot - 1].key, x->len[slot - 1], id, len))
			return slot - 1;
	}
}

/* Free an index. */
static void
key_index_done(struct key_index *x)
{
	free(x->slots);
	free(x->next);
	free(x->len);
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

	p = commerce_skip_ws(p + 1, end);
	while (p < end && *p != ']') {
		_cleanup_(answer_result_done) struct answer_result r = {0};
		struct verdict v;
		uint32_t first;

		/* the document was checked: reading it again cannot fail */
		p = answer_read_result(p, end, &r);
		assert(p);
		p = commerce_skip_ws(p, end);
		if (p < end && *p == ',')
			p = commerce_skip_ws(p + 1, end);
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

	p = commerce_skip_ws(p, end);
	if (p >= end || *p != '{')
		return NULL;
	p = commerce_skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return NULL;
	for (;;) {
		const unsigned char *value;

		if (p >= end || *p != '"' || !commerce_scan_string(p, end))
			return NULL;
		p = commerce_skip_ws(jstr_read(p, end, &key), end);
		if (p >= end || *p != ':')
			return NULL;
		value = commerce_skip_ws(p + 1, end);
		p = commerce_json_skip_value(value, end, 1);
		if (!p)
			return NULL;
		if (jstr_is(&key, "result"))
			list = value;
		p = commerce_skip_ws(p, end);
		if (p < end && *p == ',') {
			p = commerce_skip_ws(p + 1, end);
			continue;
		}
		if (p < end && *p == '}')
			break;
		return NULL;
	}
	if (commerce_skip_ws(p + 1, end) != end)
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
		return commerce_json_skip_value(p, end, 2);
	p = commerce_skip_ws(p + 1, end);
	while (p && p < end && *p == '"') {
		p = commerce_skip_ws(jstr_read(p, end, &key), end);
		if (p >= end || *p != ':')
			return NULL;
		p = commerce_skip_ws(p + 1, end);
		if (jstr_is(&key, "usageEventId"))
			p = answer_read_string(p, end, 3, &r->id);
		else if (jstr_is(&key, "status"))
			p = answer_read_string(p, end, 3, &r->status);
		else if (jstr_is(&key, "error"))
			p = answer_read_error(p, end, r);
		else
			p = commerce_json_skip_value(p, end, 3);
		p = p ? commerce_skip_ws(p, end) : NULL;
		if (p && p < end && *p == ',')
			p = commerce_skip_ws(p + 1, end);
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
		return commerce_json_skip_value(p, end, 3);
	p = commerce_skip_ws(p + 1, end);
	while (p && p < end && *p == '"') {
		p = commerce_skip_ws(jstr_read(p, end, &key), end);
		if (p >= end || *p != ':')
			return NULL;
		p = commerce_skip_ws(p + 1, end);
		if (jstr_is(&key, "code"))
			p = answer_read_string(p, end, 4, &r->code);
		else if (jstr_is(&key, "message"))
			p = answer_read_string(p, end, 4, &r->message);
		else
			p = commerce_json_skip_value(p, end, 4);
		p = p ? commerce_skip_ws(p, end) : NULL;
		if (p && p < end && *p == ',')
			p = commerce_skip_ws(p + 1, end);
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
	return commerce_json_skip_value(p, end, depth);
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
	const unsigned char *start = p + 1, *q, *after;
	char *o;

	jstr_done(j);
	/* the usual string has no escape: it ends at the first quote, with no backslash before */
	q = memchr(start, '"', (size_t)(end - start));
	if (q && !memchr(start, '\\', (size_t)(q - start))) {
		j->s = (const char *)start;
		j->len = (size_t)(q - start);
		return q + 1;
	}
	after = commerce_scan_string(p, end);
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
			(void)commerce_hex4(q + 2, end, &cp);
			if (cp >= 0xd800 && cp <= 0xdbff) {
				(void)commerce_hex4(q + 8, end, &low);
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
