/*
 * The stamp's usage pages as data (see stack.h): a page parsed and validated into records, the
 * record key and each quantity's literal. The other documents, the URLs and the nextLink
 * authority are in stack-lists.c; what both files share is in stack-private.h.
 *
 * A usage page is read twice. jansson parses it into values, and a small scanner walks the same
 * bytes to find what jansson cannot give back: the text of each record (kept for quarantine and
 * audit) and the literal of each record's properties.quantity (billing data, which jansson turns
 * into a double). The scanner follows the document's structure, value[i].properties.quantity,
 * with member names decoded the way jansson decodes them, so a "quantity" inside a string (such
 * as instanceData, where it is escaped) or deeper in an object is never taken for the member.
 * It runs only on text jansson accepted, so it may assume valid JSON, but it still checks every
 * bound. Its findings are paired with jansson's in document order; any disagreement (a record
 * count, a number where jansson has none, a literal that does not convert to the value jansson
 * produced) refuses the page, because then one of the two readings is wrong and billing must not
 * guess which.
 */
#include <assert.h>
#include <errno.h>
#include <locale.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "decimal.h"
#include "hash.h"
#include "jsonarena.h"
#include "macro.h"
#include "stack-private.h"
#include "stack.h"
#include "timeutil.h"
#include "xmalloc.h"

#if defined(__SANITIZE_ADDRESS__)
#define STACK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STACK_ASAN 1
#endif
#endif

#ifdef STACK_ASAN
#include <sanitizer/asan_interface.h>
#define REDZONE 8 /* poisoned bytes after each string of a page, at least */
#define ALIGN   8 /* AddressSanitizer's granule: a string starts on one */
#else
#define ASAN_POISON_MEMORY_REGION(addr, size)   ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define REDZONE                                 0
#define ALIGN                                   1
#endif

#define BLOCK_MIN        (64 * 1024)  /* bytes of a page's text block, at least */
#define BLOCKS_KEPT      2            /* freed large blocks kept per kind */
#define BLOCK_KEPT_MIN   (256 * 1024) /* smaller blocks are not kept */
#define BLOCK_KEPT_MAX   (16u << 20)  /* nor larger ones: an odd huge page is not held for good */
#define KEY_TEXT_STACK   2048 /* a record key's hashed text up to this size stays on the stack */
#define NAME_MAX_DECODED 16   /* longest member name the scanner compares ("properties") */
#define QUOTE_MAX        64   /* bytes of a value quoted in a reason */
#define MEMO_MAX         4096 /* slots of a page's instanceData memo, at most (128 KiB) */

/* What the scanner found for one element of the page's value array. */
struct scan_record {
	const char *start; /* the element's text */
	size_t size;
	const char *quantity; /* the last properties.quantity value's text */
	size_t quantity_size;
	unsigned n_properties; /* "properties" members */
	unsigned n_quantity;   /* "quantity" members inside them */
};

struct scan {
	const char *p, *end;
	struct scan_record *records;
	size_t n_records, cap;
	unsigned n_value; /* top-level "value" members */
};

/*
 * The memory of a page. The page and its records are one allocation; every string of every
 * record is copied back to back into a few large text blocks that the page owns, so parsing a
 * page takes a handful of mallocs instead of one per string, and freeing it (on another thread
 * than the parse, where glibc's free is dearer) a handful of frees. A block never moves once a
 * string is in it: when the current one is full, a new one is started. Under AddressSanitizer
 * every byte of a block not handed out is poisoned, with a red zone after each string.
 */
struct block {
	struct block *next;
	size_t size; /* bytes of data */
	char data[];
};

struct pool {
	struct block *blocks; /* newest first */
	char *p, *end;        /* the free part of the newest block */
	size_t next_size;     /* bytes of the next block, at least */
};

struct page_memory {
	struct pool pool;
	struct stack_usage_page page;
	struct stack_record records[];
};

/* A quarantine reason being built: "what: why; what: why". */
struct reason {
	char *text;
	unsigned n; /* problems in it */
};

/*
 * The instanceData strings of a page met so far, each with the first record that had it. A
 * resource's records (one per meter, per usage hour) carry the same instanceData: what a record
 * takes from it (the canonical text, the Microsoft.Resources members) depends on that string
 * alone, so a repeat is copied from the first record instead of being parsed and written again.
 * Only strings that gave no problem are kept, so every reason is still written as it was. Open
 * addressing, at most half full; at most MEMO_MAX slots, after which nothing more is kept.
 */
struct memo_entry {
	const char *text; /* in the page's tree, which outlives the memo; NULL: free */
	size_t size;
	uint64_t hash;
	const struct stack_record *rec;
};

struct memo {
	struct memo_entry *entries;
	size_t mask; /* slots - 1 */
	size_t used;
};

static int usage_page_read(long http_status, const char *body, size_t size, int64_t reported_hour,
                           struct stack_usage_page **ret, char error[static STACK_ERROR_MAX]);
static void json_dropp(json_t **v);
static int scan_page(struct scan *s);
static void scan_free(struct scan *s);
static int parse_record(struct pool *pool, struct memo *memo, json_t *item,
                        const struct scan_record *sr, size_t index, int64_t reported_hour,
                        bool ints_as_real, struct stack_record *rec,
                        char error[static STACK_ERROR_MAX]);
static void memo_init(struct memo *memo, size_t n_records);
static void memo_free(struct memo *memo);
static void pool_grow(struct pool *pool, size_t size);
static char *pool_alloc(struct pool *pool, size_t size);
static char *pool_strndup(struct pool *pool, const char *s, size_t n);
static int check_quantity_literal(json_t *q, const struct scan_record *sr, size_t index,
                                  bool ints_as_real, char error[static STACK_ERROR_MAX]);
static void reason_add(struct reason *r, const char *format, ...) _printf_(2, 3);
static char *quote(const char *s, size_t size);
static bool body_blank(const char *body, size_t size);
static void describe_arm_error(const char *body, size_t size, char *out, size_t out_size);

/* Parse one usage page; see stack.h for the outcomes. */
int
stack_usage_page_parse(long http_status, const char *body, size_t size, int64_t reported_hour,
                       struct stack_usage_page **ret, char error[static STACK_ERROR_MAX])
{
	char arm[STACK_ERROR_MAX];
	const char *nul;
	bool arena;
	int r;

	error[0] = '\0';
	if ((!body && size > 0) || !ret) {
		stack_set_error(error, "no page");
		return -EINVAL;
	}
	if (http_status < 200 || http_status > 299) {
		stack_set_error(error, "HTTP status %ld does not carry a usage page", http_status);
		return -EINVAL;
	}
	if (!time_on_hour(reported_hour)) {
		stack_set_error(error, "reported hour %lld is not on the hour",
		                (long long)reported_hour);
		return -EINVAL;
	}
	if (http_status == 202) {
		describe_arm_error(body, size, arm, sizeof(arm));
		stack_set_error(error, "not ready: HTTP 202 (processing not complete)%s", arm);
		return -EAGAIN;
	}
	if (body_blank(body, size)) {
		stack_set_error(error, "not ready: HTTP %ld with an empty body", http_status);
		return -EAGAIN;
	}

	/*
	 * A raw NUL byte is never JSON, but jansson skips one after a number or a literal
	 * ("[null\0,1]" loads as [null,1]): refuse it here, where the raw text is still the truth.
	 */
	nul = memchr(body, '\0', size);
	if (nul) {
		stack_set_error(error, "not JSON: a NUL byte at byte %zu", (size_t)(nul - body));
		return -EBADMSG;
	}

	/*
	 * jansson's values live only inside usage_page_read(), which copies what the page keeps
	 * into the page's own memory: they come from this thread's arena (see jsonarena.h) when it
	 * is free, and go all at once.
	 */
	arena = jsonarena_begin() >= 0;
	r = usage_page_read(http_status, body, size, reported_hour, ret, error);
	if (arena)
		jsonarena_end();
	return r;
}

/* Free a page and its records; returns NULL. */
struct stack_usage_page *
stack_usage_page_free(struct stack_usage_page *page)
{
	struct page_memory *m;
	struct block *b;

	if (!page)
		return NULL;
	m = (struct page_memory *)((char *)page - offsetof(struct page_memory, page));
	while ((b = m->pool.blocks)) {
		m->pool.blocks = b->next;
		ASAN_UNPOISON_MEMORY_REGION(b->data, b->size);
		stack_block_put(STACK_BLOCK_TEXT, b, offsetof(struct block, data) + b->size);
	}
	free(m);
	return NULL;
}

/* Hash the fields of section 4 into a record key. */
int
stack_record_key(int64_t reported_hour, const char *subscription_id, const char *meter_id,
                 int64_t usage_start, int64_t usage_end, const char *instance_data,
                 char ret[static HASH_SHA256_HEX_LEN + 1])
{
	/* a page's records share the reported hour and mostly their usage hour: the last texts */
	static _Thread_local struct time_rfc3339_cache times[3];
	const char *hour, *start, *end;
	char small[KEY_TEXT_STACK];
	_cleanup_free_ char *big = NULL;
	size_t ns, nm, ni, size;
	char *text, *p;

	if (!subscription_id || !meter_id || !instance_data)
		return -EINVAL;
	hour = time_format_rfc3339_cached(&times[0], reported_hour);
	start = time_format_rfc3339_cached(&times[1], usage_start);
	end = time_format_rfc3339_cached(&times[2], usage_end);
	if (hour[0] == 'i' || start[0] == 'i' || end[0] == 'i') /* "invalid-time" */
		return -EINVAL;

	ns = strlen(subscription_id);
	nm = strlen(meter_id);
	ni = strlen(instance_data);
	size = 3 * TIME_RFC3339_LEN + ns + nm + ni + 5;
	p = text = size <= sizeof(small) ? small : (big = xmalloc(size));
	memcpy(p, hour, TIME_RFC3339_LEN);
	p += TIME_RFC3339_LEN;
	*p++ = '\n';
	for (size_t i = 0; i < ns; i++)
		*p++ = (char)(subscription_id[i] >= 'A' && subscription_id[i] <= 'Z'
		                      ? subscription_id[i] - 'A' + 'a'
		                      : subscription_id[i]);
	*p++ = '\n';
	for (size_t i = 0; i < nm; i++)
		if (meter_id[i] != '-')
			*p++ = (char)(meter_id[i] >= 'A' && meter_id[i] <= 'Z'
			                      ? meter_id[i] - 'A' + 'a'
			                      : meter_id[i]);
	*p++ = '\n';
	memcpy(p, start, TIME_RFC3339_LEN);
	p += TIME_RFC3339_LEN;
	*p++ = '\n';
	memcpy(p, end, TIME_RFC3339_LEN);
	p += TIME_RFC3339_LEN;
	*p++ = '\n';
	memcpy(p, instance_data, ni);
	p += ni;
	hash_sha256_hex(text, (size_t)(p - text), ret);
	return 0;
}

/* ---- the jansson part ---- */

/* The jansson part of stack_usage_page_parse(): parse, pair with the scanner, make the page. */
static int
usage_page_read(long http_status, const char *body, size_t size, int64_t reported_hour,
                struct stack_usage_page **ret, char error[static STACK_ERROR_MAX])
{
	_cleanup_(json_dropp) json_t *root = NULL;
	_cleanup_(scan_free) struct scan scan = {0};
	_cleanup_(memo_free) struct memo memo = {0};
	_cleanup_free_ char *next_link = NULL;
	struct stack_usage_page *page;
	struct page_memory *m;
	char arm[STACK_ERROR_MAX];
	json_error_t jerr;
	bool ints_as_real = false;
	json_t *value;
	size_t n;
	int r;

	/* an escaped NUL in a string is allowed so that it quarantines one record, not the page */
	root = json_loadb(body, size, JSON_ALLOW_NUL, &jerr);
	if (!root && json_error_code(&jerr) == json_error_numeric_overflow) {
		/*
		 * An integer beyond 64 bits (jansson's "too big integer") would refuse the whole
		 * page for good, though a quantity may have up to 38 digits. Read integers as reals
		 * then: the literal is still what is kept, and the pairing compares it as a real.
		 */
		ints_as_real = true;
		root = json_loadb(body, size, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &jerr);
	}
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
		describe_arm_error(body, size, arm, sizeof(arm));
		stack_set_error(error, "not ready: HTTP %ld without a value array%s", http_status,
		                arm);
		return -EAGAIN;
	}

	scan.p = body;
	scan.end = body + size;
	r = scan_page(&scan);
	if (r < 0) {
		/* jansson accepted the text, so this is a scanner bug: refuse rather than guess */
		stack_set_error(error, "raw text not understood at byte %zu",
		                (size_t)(scan.p - body));
		return -EBADMSG;
	}
	if (scan.n_value != 1) {
		stack_set_error(error, "member \"value\" appears %u times", scan.n_value);
		return -EBADMSG;
	}
	n = json_array_size(value);
	if (scan.n_records != n) {
		stack_set_error(error, "the raw text has %zu records, the parsed page %zu",
		                scan.n_records, n);
		return -EBADMSG;
	}

	m = xcalloc(1, sizeof(*m) + n * sizeof(m->records[0]));
	/*
	 * The first block fits the strings of an ordinary page, about twice its text: each
	 * record's text, its canonical instanceData and the members copied out of both (each
	 * shorter than its escaped text in the page, unless reals are written longer), its key.
	 * Anything beyond goes to further blocks.
	 */
	m->pool.next_size = 2 * size + n * (HASH_SHA256_HEX_LEN + 16 * (ALIGN + REDZONE));
	page = &m->page;
	page->reported_hour = reported_hour;
	page->records = m->records;
	r = stack_next_link_get(root, &next_link, error);
	if (r >= 0 && next_link)
		page->next_link = pool_strndup(&m->pool, next_link, strlen(next_link));
	else if (n > 0)
		pool_alloc(&m->pool, 0); /* the first block */
	m->pool.next_size = BLOCK_MIN;
	memo_init(&memo, n);
	for (size_t i = 0; r >= 0 && i < n; i++) {
		r = parse_record(&m->pool, &memo, json_array_get(value, i), &scan.records[i], i,
		                 reported_hour, ints_as_real, &page->records[i], error);
		page->n_records = i + 1;
		if (r >= 0 && page->records[i].reason)
			page->n_quarantined++;
	}
	if (r < 0) {
		stack_usage_page_free(page);
		return r;
	}
	*ret = page;
	return 0;
}

/* Drop a tree jansson made: an active arena forgets it whole, so walking it would be wasted. */
static void
json_dropp(json_t **v)
{
	if (*v && !jsonarena_active())
		json_decref(*v);
}

/* ---- the raw scanner ---- */

/* Skip JSON whitespace. */
static void
scan_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

/*
 * Skip a string at s->p whose content is not wanted. Most of a page's bytes are in strings
 * (instanceData above all), so this looks only for quotes (memchr) and counts the backslashes
 * before each: an odd number escapes it. That is enough on text that jansson accepted, where
 * every escape is valid; bounds are still checked.
 */
static int
scan_string_skip(struct scan *s)
{
	const char *start = s->p + 1, *p = start, *q;

	for (;;) {
		size_t backslashes = 0;

		q = memchr(p, '"', (size_t)(s->end - p));
		if (!q) {
			s->p = s->end;
			return -EBADMSG;
		}
		while (q - backslashes > start && q[-1 - (ptrdiff_t)backslashes] == '\\')
			backslashes++;
		if (backslashes % 2 == 0) {
			s->p = q + 1;
			return 0;
		}
		p = q + 1;
	}
}

/*
 * Read a string at s->p. With name set, decode it as jansson would into name (NAME_MAX_DECODED
 * bytes) and report its length in *ret_size, or SIZE_MAX when it is longer or not plain ASCII (it
 * is then none of the names compared against).
 */
static int
scan_string(struct scan *s, char *name, size_t *ret_size)
{
	size_t n = 0;
	bool plain = true;

	if (s->p >= s->end || *s->p != '"')
		return -EBADMSG;
	if (!name && !ret_size)
		return scan_string_skip(s);
	if (name && ret_size) {
		/* the usual member name: short plain ASCII without escapes, decoded as it is */
		const char *start = s->p + 1;
		size_t avail = (size_t)(s->end - start);
		size_t limit = MIN(avail, (size_t)NAME_MAX_DECODED + 1);

		for (size_t i = 0; i < limit; i++) {
			unsigned char c = (unsigned char)start[i];

			if (c == '"') {
				memcpy(name, start, i);
				*ret_size = i;
				s->p = start + i + 1;
				return 0;
			}
			if (c < 0x20 || c == '\\' || c >= 0x80)
				break;
		}
	}
	s->p++;
	while (s->p < s->end) {
		unsigned char c = (unsigned char)*s->p++;

		if (c == '"') {
			if (ret_size)
				*ret_size = plain ? n : SIZE_MAX;
			return 0;
		}
		if (c < 0x20)
			return -EBADMSG;
		if (c == '\\') {
			if (s->p >= s->end)
				return -EBADMSG;
			switch (*s->p++) {
			case '"':
			case '\\':
			case '/':
				c = (unsigned char)s->p[-1];
				break;
			case 'b':
				c = '\b';
				break;
			case 'f':
				c = '\f';
				break;
			case 'n':
				c = '\n';
				break;
			case 'r':
				c = '\r';
				break;
			case 't':
				c = '\t';
				break;
			case 'u': {
				int v = 0;

				if (s->end - s->p < 4)
					return -EBADMSG;
				for (int i = 0; i < 4; i++) {
					int h = stack_hex_value(s->p[i]);

					if (h < 0)
						return -EBADMSG;
					v = v * 16 + h;
				}
				s->p += 4;
				if (v >= 0x80)
					plain = false;
				c = (unsigned char)v;
				break;
			}
			default:
				return -EBADMSG;
			}
		} else if (c >= 0x80)
			plain = false;
		if (name && plain) {
			if (n < NAME_MAX_DECODED)
				name[n++] = (char)c;
			else
				plain = false;
		}
	}
	return -EBADMSG;
}

/* True when a decoded name (from scan_string) is the member name want. */
static bool
name_is(const char *name, size_t size, const char *want)
{
	return size != SIZE_MAX && size == strlen(want) && memcmp(name, want, size) == 0;
}

/* Skip one value of any kind; containers by counting brackets outside strings. */
static int
scan_skip(struct scan *s)
{
	unsigned long depth = 0;
	const char *start;

	scan_ws(s);
	if (s->p >= s->end)
		return -EBADMSG;
	if (*s->p == '"')
		return scan_string(s, NULL, NULL);
	if (*s->p != '{' && *s->p != '[') {
		/* a number or a literal */
		start = s->p;
		while (s->p < s->end &&
		       ((*s->p >= '0' && *s->p <= '9') || (*s->p >= 'a' && *s->p <= 'z') ||
		        *s->p == '-' || *s->p == '+' || *s->p == '.' || *s->p == 'E'))
			s->p++;
		return s->p > start ? 0 : -EBADMSG;
	}
	while (s->p < s->end) {
		char c = *s->p;

		if (c == '"') {
			if (scan_string(s, NULL, NULL) < 0)
				return -EBADMSG;
			continue;
		}
		s->p++;
		if (c == '{' || c == '[')
			depth++;
		else if (c == '}' || c == ']') {
			if (depth == 0)
				return -EBADMSG;
			if (--depth == 0)
				return 0;
		}
	}
	return -EBADMSG;
}

/*
 * Walk the members of the object at s->p. For each, member() is called with the decoded name and
 * s->p at the value, and must consume the value.
 */
static int
scan_object(struct scan *s, int (*member)(struct scan *s, const char *name, size_t size, void *u),
            void *userdata)
{
	char name[NAME_MAX_DECODED];
	size_t size;
	int r;

	scan_ws(s);
	if (s->p >= s->end || *s->p != '{')
		return -EBADMSG;
	s->p++;
	scan_ws(s);
	if (s->p < s->end && *s->p == '}') {
		s->p++;
		return 0;
	}
	for (;;) {
		scan_ws(s);
		r = scan_string(s, name, &size);
		if (r < 0)
			return r;
		scan_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return -EBADMSG;
		s->p++;
		scan_ws(s);
		r = member(s, name, size, userdata);
		if (r < 0)
			return r;
		scan_ws(s);
		if (s->p >= s->end)
			return -EBADMSG;
		if (*s->p == '}') {
			s->p++;
			return 0;
		}
		if (*s->p != ',')
			return -EBADMSG;
		s->p++;
	}
}

/* A member of a record's properties: the quantity literal. */
static int
scan_properties_member(struct scan *s, const char *name, size_t size, void *userdata)
{
	struct scan_record *rec = userdata;
	const char *start = s->p;
	int r;

	r = scan_skip(s);
	if (r < 0 || !name_is(name, size, "quantity"))
		return r;
	rec->n_quantity++;
	rec->quantity = start;
	rec->quantity_size = (size_t)(s->p - start);
	return 0;
}

/* A member of a record: its properties object. */
static int
scan_record_member(struct scan *s, const char *name, size_t size, void *userdata)
{
	struct scan_record *rec = userdata;

	if (!name_is(name, size, "properties"))
		return scan_skip(s);
	/* counted whatever its type: jansson keeps the last of several */
	rec->n_properties++;
	if (s->p >= s->end || *s->p != '{')
		return scan_skip(s);
	return scan_object(s, scan_properties_member, rec);
}

/* The page's value array: one scan_record per element. */
static int
scan_records(struct scan *s)
{
	int r;

	s->n_records = 0; /* a "value" given twice is refused by the caller */
	s->p++;           /* '[' */
	scan_ws(s);
	if (s->p < s->end && *s->p == ']') {
		s->p++;
		return 0;
	}
	for (;;) {
		struct scan_record *rec;

		scan_ws(s);
		if (s->n_records == s->cap) {
			s->cap = s->cap ? 2 * s->cap : 16;
			s->records = xreallocarray(s->records, s->cap, sizeof(*s->records));
		}
		rec = &s->records[s->n_records++];
		*rec = (struct scan_record){.start = s->p};
		if (s->p < s->end && *s->p == '{')
			r = scan_object(s, scan_record_member, rec);
		else
			r = scan_skip(s);
		if (r < 0)
			return r;
		rec->size = (size_t)(s->p - rec->start);
		scan_ws(s);
		if (s->p >= s->end)
			return -EBADMSG;
		if (*s->p == ']') {
			s->p++;
			return 0;
		}
		if (*s->p != ',')
			return -EBADMSG;
		s->p++;
	}
}

/* A top-level member: the value array. */
static int
scan_page_member(struct scan *s, const char *name, size_t size, void *userdata)
{
	if (!name_is(name, size, "value"))
		return scan_skip(s);
	s->n_value++;
	if (s->p >= s->end || *s->p != '[')
		return scan_skip(s);
	return scan_records(s);
}

/* Walk a whole page. */
static int
scan_page(struct scan *s)
{
	int r = scan_object(s, scan_page_member, NULL);

	if (r < 0)
		return r;
	scan_ws(s);
	return s->p == s->end ? 0 : -EBADMSG;
}

/* Free the scanner's record table. */
static void
scan_free(struct scan *s)
{
	free(s->records);
	s->records = NULL;
}

/* ---- records ---- */

/* A strtod that reads '.' whatever the process locale (jansson does the same). */
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;

/* Create the C locale once per process. */
static void
c_locale_make(void)
{
	c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
	if (!c_locale)
		abort();
}

/*
 * Check that the scanner and jansson agree on a record's quantity: a number literal exactly where
 * jansson has a number, an integer literal for a jansson integer with the same value, a literal
 * with a point or an exponent for a jansson real that converts to the same double. With
 * ints_as_real (the page was read with JSON_DECODE_INT_AS_REAL) every literal is a real.
 */
static int
check_quantity_literal(json_t *q, const struct scan_record *sr, size_t index, bool ints_as_real,
                       char error[static STACK_ERROR_MAX])
{
	_cleanup_free_ char *big = NULL;
	char small[64], *literal;
	bool literal_number, integer;
	char *end;

	if (sr->n_properties > 1 || sr->n_quantity > 1)
		return 0; /* quarantined as ambiguous; jansson kept only the last one */
	if (sr->n_quantity == 0) {
		if (q) {
			stack_set_error(error,
			                "record %zu: quantity parsed but not found in the raw text",
			                index + 1);
			return -EBADMSG;
		}
		return 0;
	}
	literal_number =
	        sr->quantity_size > 0 &&
	        (sr->quantity[0] == '-' || (sr->quantity[0] >= '0' && sr->quantity[0] <= '9'));
	if (!q || literal_number != json_is_number(q)) {
		stack_set_error(error,
		                "record %zu: quantity: the raw text has %s, the parsed page %s",
		                index + 1, literal_number ? "a number" : "no number",
		                q ? stack_type_name(q) : "nothing");
		return -EBADMSG;
	}
	if (!literal_number)
		return 0;

	if (sr->quantity_size < sizeof(small)) {
		memcpy(small, sr->quantity, sr->quantity_size);
		small[sr->quantity_size] = '\0';
		literal = small;
	} else
		literal = big = xstrndup(sr->quantity, sr->quantity_size);
	integer = !ints_as_real && !strpbrk(literal, ".eE");
	errno = 0;
	if (integer && json_is_integer(q)) {
		long long v = strtoll(literal, &end, 10);

		if (errno == 0 && *end == '\0' && v == json_integer_value(q))
			return 0;
	} else if (!integer && json_is_real(q)) {
		double v;

		if (pthread_once(&c_locale_once, c_locale_make) != 0)
			abort();
		/*
		 * The one place a quantity meets floating point: the literal is converted only to
		 * compare it with the double jansson made of the same text. The quantity itself is
		 * the literal, never this double.
		 */
		v = strtod_l(literal, &end, c_locale);
		if (*end == '\0' && v == json_real_value(q))
			return 0;
	}
	_cleanup_free_ char *quoted = quote(literal, strlen(literal));
	stack_set_error(error, "record %zu: quantity literal %s does not match the parsed %s",
	                index + 1, quoted, stack_type_name(q));
	return -EBADMSG;
}

/*
 * Read a required string member of obj for a record: NULL (with a reason) when it is missing, not
 * a string or holds a NUL character.
 */
static const char *
required_string(json_t *obj, const char *name, struct reason *why, size_t *ret_size)
{
	json_t *v = json_object_get(obj, name);
	const char *s;
	size_t n;

	if (!v) {
		reason_add(why, "%s: missing", name);
		return NULL;
	}
	if (!json_is_string(v)) {
		reason_add(why, "%s: not a string but %s", name, stack_type_name(v));
		return NULL;
	}
	s = json_string_value(v);
	n = json_string_length(v);
	if (memchr(s, '\0', n)) {
		reason_add(why, "%s: contains a NUL character", name);
		return NULL;
	}
	if (ret_size)
		*ret_size = n;
	return s;
}

/* Read one of the two usage times; false (with a reason) unless it parses and is on the hour. */
static bool
record_time(json_t *props, const char *name, struct reason *why, int64_t *ret)
{
	const char *s = required_string(props, name, why, NULL);
	_cleanup_free_ char *quoted = NULL;
	int64_t t;

	if (!s)
		return false;
	if (time_parse_rfc3339(s, &t) < 0) {
		quoted = quote(s, strlen(s));
		reason_add(why, "%s: not an RFC 3339 time (%s)", name, quoted);
		return false;
	}
	*ret = t;
	if (!time_on_hour(t)) {
		quoted = quote(s, strlen(s));
		reason_add(why, "%s: not on the hour (%s)", name, quoted);
		return false;
	}
	return true;
}

/* Read the quantity of a record (the literal from the raw text); false with a reason if bad. */
static bool
record_quantity(struct pool *pool, json_t *props, const struct scan_record *sr,
                struct stack_record *rec, struct reason *why)
{
	json_t *q = json_object_get(props, "quantity");
	_cleanup_free_ char *quoted = NULL;
	struct decimal d;
	int r;

	if (sr->n_quantity > 1) {
		reason_add(why, "quantity: appears %u times", sr->n_quantity);
		return false;
	}
	if (!q) {
		reason_add(why, "quantity: missing");
		return false;
	}
	if (json_is_string(q)) {
		const char *s = json_string_value(q);
		size_t n = json_string_length(q);

		rec->quantity = pool_strndup(pool, s, strnlen(s, n));
		quoted = quote(s, n);
		if (strlen(s) != n || decimal_parse(s, n, &d) < 0)
			reason_add(why, "quantity: not a finite decimal (%s)", quoted);
		else
			reason_add(why, "quantity: a string (%s), not a JSON number", quoted);
		return false;
	}
	if (!json_is_number(q)) {
		reason_add(why, "quantity: not a number but %s", stack_type_name(q));
		return false;
	}
	rec->quantity = pool_strndup(pool, sr->quantity, sr->quantity_size);
	r = decimal_parse(rec->quantity, sr->quantity_size, &d);
	if (r < 0) {
		quoted = quote(rec->quantity, sr->quantity_size);
		if (r == -ERANGE)
			reason_add(why,
			           "quantity: more than %d significant digits or out of range (%s)",
			           DECIMAL_MAX_DIGITS, quoted);
		else
			reason_add(why, "quantity: not a finite decimal (%s)", quoted);
		return false;
	}
	if (d.negative) {
		quoted = quote(rec->quantity, sr->quantity_size);
		reason_add(why, "quantity: negative (%s)", quoted);
		return false;
	}
	return true;
}

/* Read an optional string member of Microsoft.Resources; a reason when it is not a string. */
static void
resource_string(struct pool *pool, json_t *res, const char *name, struct reason *why, char **ret)
{
	json_t *v = json_object_get(res, name);

	if (!v || json_is_null(v))
		return;
	if (!json_is_string(v)) {
		reason_add(why, "instanceData: Microsoft.Resources.%s: not a string but %s", name,
		           stack_type_name(v));
		return;
	}
	/* the inner document was parsed without NULs */
	*ret = pool_strndup(pool, json_string_value(v), json_string_length(v));
}

/* ---- JSON text as jansson writes it ---- */

/*
 * json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY [| JSON_SORT_KEYS]) without jansson's writer,
 * which spends most of its time in callbacks, a growing string buffer and, to sort, an array of
 * keys per object: the same text, byte for byte, for every tree that jansson's parser makes.
 * Strings are written as jansson writes them without JSON_ENSURE_ASCII: '"', '\\' and control
 * characters escaped (\b \f \n \r \t, the others \u00XX in upper-case hex), everything else
 * (UTF-8 included, which jansson's parser has validated) as it is. Members in the object's order,
 * or sorted by name bytes (a shorter name that is a prefix of another first) with sort. Integers
 * as %lld; a real through json_dumps() itself, so its precision rules stay jansson's.
 */
struct text {
	struct pool *pool; /* written at the free part of its newest block */
	char *data;
	size_t len, cap;
};

/* Start a text at the free part of the pool's newest block. */
static void
text_begin(struct text *t, struct pool *pool)
{
	char *p = pool_alloc(pool, 0); /* aligned, a red zone's room at least */

	pool->p = p; /* the text is open there */
	*t = (struct text){.pool = pool, .data = p, .cap = (size_t)(pool->end - p) - REDZONE};
}

/*
 * Move a text that outgrew its block to a new one with room for need more bytes: nothing points
 * into it before text_end().
 */
static void
text_move(struct text *t, size_t need)
{
	struct pool *pool = t->pool;
	char *old = t->data;

	pool->next_size = MAX((size_t)BLOCK_MIN, 2 * (t->len + need));
	pool_grow(pool, t->len + need);
	pool->next_size = BLOCK_MIN;
	t->data = pool->p;
	t->cap = (size_t)(pool->end - pool->p) - REDZONE;
	ASAN_UNPOISON_MEMORY_REGION(t->data, t->len);
	memcpy(t->data, old, t->len);
	ASAN_POISON_MEMORY_REGION(old, t->len);
}

/* Room for need more bytes; returns where they go. */
static char *
text_room(struct text *t, size_t need)
{
	if (_unlikely_(t->cap - t->len < need))
		text_move(t, need);
	ASAN_UNPOISON_MEMORY_REGION(t->data + t->len, need);
	return t->data + t->len;
}

/* Close a text: its NUL-terminated string is the pool's from now on. */
static char *
text_end(struct text *t)
{
	struct pool *pool = t->pool;
	char *ret;

	*text_room(t, 1) = '\0';
	pool->p = t->data;
	ret = pool_alloc(pool, t->len + 1); /* t->data itself: the room was checked */
	ASAN_POISON_MEMORY_REGION(ret + t->len + 1, (size_t)(pool->end - (ret + t->len + 1)));
	return ret;
}

static void
text_put(struct text *t, const char *s, size_t n)
{
	memcpy(text_room(t, n), s, n);
	t->len += n;
}

/*
 * Whether any of the 8 bytes in w needs an escape in a JSON string: below 0x20, '"' or '\\'.
 * Exact as a yes or no (a byte's borrow only reaches the bytes above one that is found already).
 */
static inline bool
word_needs_escape(uint64_t w)
{
	const uint64_t ones = UINT64_C(0x0101010101010101), high = ones << 7;
	uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');

	return (((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) |
	        ((backslash - ones) & ~backslash)) &
	       high;
}

/* A JSON string of n bytes. */
static void
text_put_string(struct text *t, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	char *p = text_room(t, 6 * n + 2), *start = p;
	size_t i = 0;

	*p++ = '"';
	for (;;) {
		unsigned char c;

		/* most strings need no escape at all: 8 bytes at a time while none does */
		for (; n - i >= 8; i += 8, p += 8) {
			uint64_t w;

			memcpy(&w, s + i, 8);
			if (word_needs_escape(w))
				break;
			memcpy(p, &w, 8);
		}
		if (i == n)
			break;
		c = (unsigned char)s[i++];
		if (_likely_(c >= 0x20 && c != '"' && c != '\\')) {
			*p++ = (char)c;
			continue;
		}
		*p++ = '\\';
		switch (c) {
		case '"':
		case '\\':
			*p++ = (char)c;
			break;
		case '\b':
			*p++ = 'b';
			break;
		case '\f':
			*p++ = 'f';
			break;
		case '\n':
			*p++ = 'n';
			break;
		case '\r':
			*p++ = 'r';
			break;
		case '\t':
			*p++ = 't';
			break;
		default:
			memcpy(p, "u00", 3);
			p[3] = hex[c >> 4];
			p[4] = hex[c & 0xf];
			p += 5;
			break;
		}
	}
	*p++ = '"';
	t->len += (size_t)(p - start);
}

/* A member name and its length, for sorting. */
struct member {
	const char *name;
	size_t size;
	json_t *value;
};

static int
member_cmp(const void *a, const void *b)
{
	const struct member *x = a, *y = b;
	int d = memcmp(x->name, y->name, MIN(x->size, y->size));

	if (d != 0)
		return d;
	return x->size < y->size ? -1 : x->size > y->size;
}

/* Write v; false when jansson cannot write a real (out of memory) or v is not a JSON value. */
static bool
text_put_value(struct text *t, json_t *v, bool sort)
{
	char number[32];

	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		size_t n = json_object_size(v), i = 0;
		struct member few[16], *m = n <= ARRAY_SIZE(few) ? few : xcalloc(n, sizeof(*m));
		bool ok = true;

		for (void *it = json_object_iter(v); it && i < n;
		     it = json_object_iter_next(v, it), i++)
			m[i] = (struct member){.name = json_object_iter_key(it),
			                       .size = json_object_iter_key_len(it),
			                       .value = json_object_iter_value(it)};
		n = i;
		if (sort && m == few) {
			/* few members (instanceData has a handful): an insertion sort, no calls */
			for (size_t j = 1; j < n; j++) {
				struct member x = m[j];
				size_t k = j;

				for (; k > 0 && member_cmp(&x, &m[k - 1]) < 0; k--)
					m[k] = m[k - 1];
				m[k] = x;
			}
		} else if (sort && n > 1)
			qsort(m, n, sizeof(*m), member_cmp);
		text_put(t, "{", 1);
		for (i = 0; ok && i < n; i++) {
			if (i > 0)
				text_put(t, ",", 1);
			text_put_string(t, m[i].name, m[i].size);
			text_put(t, ":", 1);
			ok = text_put_value(t, m[i].value, sort);
		}
		text_put(t, "}", 1);
		if (m != few)
			free(m);
		return ok;
	}
	case JSON_ARRAY: {
		size_t n = json_array_size(v);

		text_put(t, "[", 1);
		for (size_t i = 0; i < n; i++) {
			if (i > 0)
				text_put(t, ",", 1);
			if (!text_put_value(t, json_array_get(v, i), sort))
				return false;
		}
		text_put(t, "]", 1);
		return true;
	}
	case JSON_STRING:
		text_put_string(t, json_string_value(v), json_string_length(v));
		return true;
	case JSON_INTEGER:
		text_put(t, number,
		         (size_t)snprintf(number, sizeof(number), "%" JSON_INTEGER_FORMAT,
		                          json_integer_value(v)));
		return true;
	case JSON_REAL: {
		_cleanup_(jsonarena_freep) char *real =
		        json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

		if (!real)
			return false;
		text_put(t, real, strlen(real));
		return true;
	}
	case JSON_TRUE:
		text_put(t, "true", 4);
		return true;
	case JSON_FALSE:
		text_put(t, "false", 5);
		return true;
	case JSON_NULL:
		text_put(t, "null", 4);
		return true;
	}
	return false;
}

/* The compact text of v in the pool (sorted members with sort), or NULL. */
static char *
json_text(struct pool *pool, json_t *v, bool sort)
{
	struct text t;

	if (!v)
		return NULL;
	text_begin(&t, pool);
	if (!text_put_value(&t, v, sort)) {
		ASAN_POISON_MEMORY_REGION(t.data, t.len);
		return NULL;
	}
	return text_end(&t);
}

/* ---- the instanceData memo ---- */

/* Make a page's memo with room for the strings of n_records records. */
static void
memo_init(struct memo *memo, size_t n_records)
{
	size_t slots = 16;

	while (slots < 2 * n_records && slots < MEMO_MAX)
		slots *= 2;
	*memo = (struct memo){.entries = xcalloc(slots, sizeof(memo->entries[0])),
	                      .mask = slots - 1};
}

static void
memo_free(struct memo *memo)
{
	free(memo->entries);
	memo->entries = NULL;
}

/* A hash of size bytes at s, 8 at a time (for the memo: equal strings are still compared). */
static uint64_t
memo_hash(const char *s, size_t size)
{
	const uint64_t k = UINT64_C(0x9e3779b97f4a7c15);
	uint64_t h = size * k;
	size_t i = 0;

	for (; size - i >= 8; i += 8) {
		uint64_t w;

		memcpy(&w, s + i, 8);
		h = (h ^ w) * k;
		h ^= h >> 29;
	}
	for (; i < size; i++) {
		h = (h ^ (unsigned char)s[i]) * k;
		h ^= h >> 29;
	}
	return h;
}

/* The slot of the string s in the memo: its entry when it is there, else the free slot for it. */
static struct memo_entry *
memo_slot(const struct memo *memo, const char *s, size_t size, uint64_t hash)
{
	for (size_t i = hash & memo->mask;; i = (i + 1) & memo->mask) {
		struct memo_entry *e = &memo->entries[i];

		if (!e->text ||
		    (e->hash == hash && e->size == size && memcmp(e->text, s, size) == 0))
			return e;
	}
}

/* A copy of s in the pool, or NULL for NULL. */
static char *
pool_strdup_null(struct pool *pool, const char *s)
{
	return s ? pool_strndup(pool, s, strlen(s)) : NULL;
}

/* Parse instanceData: its canonical text and the members kept; problems go to the reason. */
static int
record_instance_data(struct pool *pool, struct memo *memo, json_t *props, struct stack_record *rec,
                     struct reason *why)
{
	/* the tree is read and copied here: its arena memory is taken back on return */
	_cleanup_(jsonarena_rewindp) _unused_ struct jsonarena_mark mark = jsonarena_mark();
	_cleanup_(json_dropp) json_t *inst = NULL;
	size_t size = 0;
	const char *s = required_string(props, "instanceData", why, &size);
	struct memo_entry *e;
	unsigned problems = why->n;
	json_error_t jerr;
	json_t *res, *v;
	uint64_t hash;

	if (!s)
		return 0;
	hash = memo_hash(s, size);
	e = memo_slot(memo, s, size, hash);
	if (e->text) {
		/* the same string as an earlier record's, which gave no problem: the same members
		 */
		const struct stack_record *first = e->rec;

		rec->instance_data = pool_strdup_null(pool, first->instance_data);
		rec->resource_uri = pool_strdup_null(pool, first->resource_uri);
		rec->location = pool_strdup_null(pool, first->location);
		rec->tags = pool_strdup_null(pool, first->tags);
		rec->additional_info = pool_strdup_null(pool, first->additional_info);
		return 0;
	}

	inst = json_loads(s, JSON_DECODE_ANY, &jerr);
	if (!inst) {
		reason_add(why, "instanceData: not JSON: column %d: %s", jerr.column, jerr.text);
		return 0;
	}
	if (!json_is_object(inst)) {
		reason_add(why, "instanceData: not a JSON object but %s", stack_type_name(inst));
		return 0;
	}
	/* JSON_ENSURE_ASCII is not given, so non-ASCII stays UTF-8 as section 4 wants */
	rec->instance_data = json_text(pool, inst, true);
	if (!rec->instance_data)
		return -ENOMEM;

	res = json_object_get(inst, "Microsoft.Resources");
	if (res && !json_is_object(res)) {
		reason_add(why, "instanceData: Microsoft.Resources: not an object but %s",
		           stack_type_name(res));
		return 0;
	}
	resource_string(pool, res, "resourceUri", why, &rec->resource_uri);
	resource_string(pool, res, "location", why, &rec->location);
	v = json_object_get(res, "tags");
	if (v && !json_is_null(v) && !(rec->tags = json_text(pool, v, false)))
		return -ENOMEM;
	v = json_object_get(res, "additionalInfo");
	if (v && !json_is_null(v) && !(rec->additional_info = json_text(pool, v, false)))
		return -ENOMEM;
	if (why->n == problems && 2 * (memo->used + 1) <= memo->mask + 1) {
		*e = (struct memo_entry){.text = s, .size = size, .hash = hash, .rec = rec};
		memo->used++;
	}
	return 0;
}

/*
 * Turn one element of the value array into a record: valid with its key, or quarantined with
 * every problem in its reason. Returns < 0 only for what refuses the whole page.
 */
static int
parse_record(struct pool *pool, struct memo *memo, json_t *item, const struct scan_record *sr,
             size_t index, int64_t reported_hour, bool ints_as_real, struct stack_record *rec,
             char error[static STACK_ERROR_MAX])
{
	struct reason why = {0};
	const char *s, *sub, *meter;
	size_t n_sub = 0, n_meter = 0, n;
	json_t *props;
	bool times_ok;
	int r;

	*rec = (struct stack_record){.raw = pool_strndup(pool, sr->start, sr->size)};
	if (sr->size > STACK_RECORD_MAX)
		reason_add(&why, "%zu bytes, more than the %d allowed", sr->size, STACK_RECORD_MAX);
	if (!json_is_object(item)) {
		reason_add(&why, "not a JSON object but %s", stack_type_name(item));
		goto done;
	}
	if ((s = stack_string_member(item, "id", &n)))
		rec->id = pool_strndup(pool, s, n);
	if ((s = stack_string_member(item, "name", &n)))
		rec->name = pool_strndup(pool, s, n);

	props = json_object_get(item, "properties");
	r = check_quantity_literal(json_is_object(props) ? json_object_get(props, "quantity")
	                                                 : NULL,
	                           sr, index, ints_as_real, error);
	if (r < 0)
		return r;
	if (sr->n_properties > 1) {
		/* jansson kept the last one; which one the service meant is not for us to guess */
		reason_add(&why, "properties: appears %u times", sr->n_properties);
		goto done;
	}
	if (!props) {
		reason_add(&why, "properties: missing");
		goto done;
	}
	if (!json_is_object(props)) {
		reason_add(&why, "properties: not an object but %s", stack_type_name(props));
		goto done;
	}

	sub = required_string(props, "subscriptionId", &why, &n_sub);
	if (sub && stack_is_guid(sub, false)) {
		rec->subscription_id = pool_strndup(pool, sub, n_sub);
		for (char *p = rec->subscription_id; *p; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p - 'A' + 'a');
	} else if (sub) {
		_cleanup_free_ char *quoted = quote(sub, strlen(sub));

		rec->subscription_id = pool_strndup(pool, sub, n_sub);
		reason_add(&why, "subscriptionId: not a GUID (%s)", quoted);
	}
	meter = required_string(props, "meterId", &why, &n_meter);
	if (meter) {
		rec->meter_id = pool_strndup(pool, meter, n_meter);
		if (!stack_is_guid(meter, true)) {
			_cleanup_free_ char *quoted = quote(meter, strlen(meter));

			reason_add(&why, "meterId: not a GUID (%s)", quoted);
		}
	}
	times_ok = record_time(props, "usageStartTime", &why, &rec->usage_start);
	times_ok &= record_time(props, "usageEndTime", &why, &rec->usage_end);
	if (times_ok && rec->usage_end <= rec->usage_start) {
		char a[TIME_RFC3339_LEN + 1], b[TIME_RFC3339_LEN + 1];

		reason_add(&why, "usageEndTime: %s is not after usageStartTime %s",
		           time_format_rfc3339(rec->usage_end, b),
		           time_format_rfc3339(rec->usage_start, a));
	}
	record_quantity(pool, props, sr, rec, &why);
	r = record_instance_data(pool, memo, props, rec, &why);
	if (r < 0) {
		free(why.text);
		stack_set_error(error, "record %zu: out of memory", index + 1);
		return r;
	}

done:
	if (why.text) {
		_cleanup_free_ char *reason = xasprintf("record %zu: %s", index + 1, why.text);

		free(why.text);
		rec->reason = pool_strndup(pool, reason, strlen(reason));
		return 0;
	}
	rec->key = pool_alloc(pool, HASH_SHA256_HEX_LEN + 1);
	r = stack_record_key(reported_hour, rec->subscription_id, rec->meter_id, rec->usage_start,
	                     rec->usage_end, rec->instance_data, rec->key);
	if (r < 0) {
		/* times that parse are within the years 0000 to 9999, so this cannot happen */
		stack_set_error(error, "record %zu: no record key", index + 1);
		return r;
	}
	return 0;
}

/* ---- the page's memory ---- */

/* The large blocks kept, per kind (see stack_block_get). */
static pthread_mutex_t blocks_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	void *p;
	size_t size;
} blocks_kept[_STACK_BLOCK_KIND_MAX][BLOCKS_KEPT];

/* A block of at least size bytes: the smallest kept one that fits, else a new one. */
void *
stack_block_get(enum stack_block_kind kind, size_t size, size_t *ret_size)
{
	size_t best = BLOCKS_KEPT;
	void *p = NULL;

	assert(kind < _STACK_BLOCK_KIND_MAX);
	pthread_mutex_lock(&blocks_lock);
	for (size_t i = 0; i < BLOCKS_KEPT; i++)
		if (blocks_kept[kind][i].p && blocks_kept[kind][i].size >= size &&
		    (best == BLOCKS_KEPT ||
		     blocks_kept[kind][i].size < blocks_kept[kind][best].size))
			best = i;
	if (best < BLOCKS_KEPT) {
		p = blocks_kept[kind][best].p;
		size = blocks_kept[kind][best].size;
		blocks_kept[kind][best].p = NULL;
	}
	pthread_mutex_unlock(&blocks_lock);
	if (p)
		ASAN_UNPOISON_MEMORY_REGION(p, size);
	else {
		/* room for a somewhat larger page next time, when the block is kept */
		if (size >= BLOCK_KEPT_MIN)
			size += size / 8;
		p = xmalloc(size);
	}
	*ret_size = size;
	return p;
}

/* Keep a freed block when it is large, in a free place or instead of a smaller one. */
void
stack_block_put(enum stack_block_kind kind, void *p, size_t size)
{
	size_t slot = BLOCKS_KEPT;

	assert(kind < _STACK_BLOCK_KIND_MAX);
	if (!p)
		return;
	if (size < BLOCK_KEPT_MIN || size > BLOCK_KEPT_MAX) {
		free(p);
		return;
	}
	ASAN_POISON_MEMORY_REGION(p, size);
	pthread_mutex_lock(&blocks_lock);
	/* a free place, else the place of the smallest kept block */
	for (size_t i = 0; i < BLOCKS_KEPT && slot == BLOCKS_KEPT; i++)
		if (!blocks_kept[kind][i].p)
			slot = i;
	if (slot == BLOCKS_KEPT) {
		slot = 0;
		for (size_t i = 1; i < BLOCKS_KEPT; i++)
			if (blocks_kept[kind][i].size < blocks_kept[kind][slot].size)
				slot = i;
	}
	if (!blocks_kept[kind][slot].p || blocks_kept[kind][slot].size < size) {
		void *old = blocks_kept[kind][slot].p;
		size_t old_size = blocks_kept[kind][slot].size;

		blocks_kept[kind][slot].p = p;
		blocks_kept[kind][slot].size = size;
		p = old;
		size = old_size;
	}
	pthread_mutex_unlock(&blocks_lock);
	if (p) {
		ASAN_UNPOISON_MEMORY_REGION(p, size);
		free(p);
	}
}

/* Start a new block in the pool with room for size bytes and a red zone at least. */
static void
pool_grow(struct pool *pool, size_t size)
{
	struct block *b;

	size = MAX(size + REDZONE, pool->next_size);
	b = stack_block_get(STACK_BLOCK_TEXT, offsetof(struct block, data) + size, &size);
	size -= offsetof(struct block, data);
	b->next = pool->blocks;
	b->size = size;
	pool->blocks = b;
	pool->p = b->data;
	pool->end = b->data + size;
	ASAN_POISON_MEMORY_REGION(b->data, size);
}

/* size bytes of the page's memory, for as long as the page lives. */
static char *
pool_alloc(struct pool *pool, size_t size)
{
	uintptr_t p = ((uintptr_t)pool->p + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1);
	char *ret;

	if (!pool->blocks || p > (uintptr_t)pool->end ||
	    (uintptr_t)pool->end - p < size + REDZONE) {
		pool_grow(pool, size);
		p = (uintptr_t)pool->p;
	}
	ret = (char *)p;
	pool->p = ret + size + REDZONE;
	ASAN_UNPOISON_MEMORY_REGION(ret, size);
	return ret;
}

/* A copy of n bytes of s and a NUL in the page's memory. */
static char *
pool_strndup(struct pool *pool, const char *s, size_t n)
{
	char *d = pool_alloc(pool, n + 1);

	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

/* ---- helpers ---- */

/* Append one problem to a reason. */
static void
reason_add(struct reason *r, const char *format, ...)
{
	_cleanup_free_ char *part = NULL;
	va_list ap;
	char *joined;

	va_start(ap, format);
	part = xvasprintf(format, ap);
	va_end(ap);
	r->n++;
	if (!r->text) {
		r->text = TAKE_PTR(part);
		return;
	}
	joined = xasprintf("%s; %s", r->text, part);
	free(r->text);
	r->text = joined;
}

/*
 * A value for a reason: in double quotes, '"' and '\' escaped, control bytes as \xNN, cut after
 * QUOTE_MAX bytes (at a UTF-8 character boundary) with "..." to show it was cut.
 */
static char *
quote(const char *s, size_t size)
{
	size_t n = MIN(size, (size_t)QUOTE_MAX), w = 0;
	char *out;

	/* do not cut inside a UTF-8 sequence */
	while (n < size && n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	out = xmalloc(4 * n + 8);
	out[w++] = '"';
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\') {
			out[w++] = '\\';
			out[w++] = (char)c;
		} else if (c < 0x20 || c == 0x7f)
			w += (size_t)sprintf(out + w, "\\x%02x", c);
		else
			out[w++] = (char)c;
	}
	out[w++] = '"';
	if (n < size) {
		memcpy(out + w, "...", 3);
		w += 3;
	}
	out[w] = '\0';
	return out;
}

/* True when the body holds nothing but JSON whitespace. */
static bool
body_blank(const char *body, size_t size)
{
	for (size_t i = 0; i < size; i++)
		if (body[i] != ' ' && body[i] != '\t' && body[i] != '\n' && body[i] != '\r')
			return false;
	return true;
}

/* ": Code: message" of an ARM error body for a message, or "" when there is none. */
static void
describe_arm_error(const char *body, size_t size, char *out, size_t out_size)
{
	struct stack_arm_error e;

	out[0] = '\0';
	if (stack_arm_error_parse(body, size, &e) < 0)
		return;
	snprintf(out, out_size, ": %.64s: %.120s", e.code, e.message ? e.message : "");
	stack_arm_error_done(&e);
}
