/*
 * The stamp's APIs as data (ARCHITECTURE.md section 4): usage pages parsed and validated into
 * records with their exact quantity text and record key, the user-subscriptions list, the
 * metadata endpoints document, ARM error bodies, the URLs the collector asks for and the nextLink
 * authority check. Pure functions: no I/O, no clock, no logging, no global state that a caller
 * can see.
 *
 * Ownership: every parsed result owns its strings; a page or list is freed with its _free, a
 * struct filled in place is emptied with its _done. A page keeps its records and all their
 * strings in a few blocks of its own memory: never free() one of them, nor keep one past
 * stack_usage_page_free(). A caller may borrow the strings of a record into a struct
 * store_record (the field names are the same) while the page lives.
 *
 * Messages for the log are written into a caller's buffer of STACK_ERROR_MAX bytes on failure
 * (the usual rule "ret_* only on success" holds for the results; the message buffer is there
 * precisely for the failures). They name what was wrong and where and never hold a record's
 * content beyond a short quoted value.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hash.h"

#define STACK_RECORD_MAX                (64 * 1024) /* bytes of one usage record's text */
#define STACK_ERROR_MAX                 256         /* an error message buffer */
#define STACK_USAGE_API_VERSION         "2015-06-01-preview"
#define STACK_SUBSCRIPTIONS_API_VERSION "2015-11-01"
#define STACK_METADATA_API_VERSION      "2015-01-01"

/*
 * One usage record. A valid one (reason NULL) has every field but id, name, resource_uri,
 * location, tags and additional_info set. A quarantined one (reason set) has what could be read
 * and always raw; its key is NULL, so the store derives a key from the raw text and the reason,
 * and a valid record arriving later under the section 4 key is never mistaken for it.
 */
struct stack_record {
	char *key;             /* section 4 record key, 64 lower-case hex digits */
	char *id;              /* as received; NULL when absent or not a string */
	char *name;            /* as received; NULL when absent or not a string */
	char *subscription_id; /* lower-case (as received when it is not a GUID) */
	char *meter_id;        /* as received */
	char *quantity;        /* the literal exactly as written in the page */
	int64_t usage_start;   /* seconds since the epoch; 0 when it did not parse */
	int64_t usage_end;
	char *instance_data; /* canonical instanceData (sorted members, compact, UTF-8) */
	char *resource_uri;  /* instanceData's Microsoft.Resources members, as received */
	char *location;
	char *tags;            /* compact JSON text; NULL when absent or null */
	char *additional_info; /* compact JSON text; NULL when absent or null */
	char *raw;             /* the record's text exactly as in the page */
	char *reason; /* NULL: valid; else "record N: what: why (value)[; ...]", N from 1 */
};

struct stack_usage_page {
	int64_t reported_hour;
	struct stack_record *records; /* in page order */
	size_t n_records;
	size_t n_quarantined; /* records with a reason */
	char *next_link;      /* verbatim; NULL on the last page */
};

/*
 * Parse the body of a 2xx answer of the usage API for reported hour reported_hour. Returns 0 and a
 * page (quarantined records included); -EAGAIN when the hour is not ready yet (HTTP 202, or a 2xx
 * body without a "value" array: never an empty page); -EBADMSG for a malformed page (not JSON,
 * not an object, a quantity literal that does not match what jansson parsed, ...), the whole page
 * is refused; -EINVAL for a status outside 2xx or an hour not on the hour. error gets the reason
 * on every failure.
 */
int stack_usage_page_parse(long http_status, const char *body, size_t size, int64_t reported_hour,
                           struct stack_usage_page **ret, char error[static STACK_ERROR_MAX]);
struct stack_usage_page *stack_usage_page_free(struct stack_usage_page *page);

/*
 * Large blocks of memory that come and go with every page at about the same sizes: the copy of a
 * page's body on its way to the parse, and a parsed page's text. A block freed with
 * stack_block_put() is kept (a few of each kind, from any thread) for the next stack_block_get()
 * of its kind that it fits, instead of going back to glibc, which maps such a block afresh each
 * time (azs-usaged fixes its mmap threshold) and has the kernel zero every page of it again.
 */
enum stack_block_kind {
	STACK_BLOCK_BODY,
	STACK_BLOCK_TEXT,
	_STACK_BLOCK_KIND_MAX,
};

/* A block of at least size bytes; *ret_size gets its size. Aborts when out of memory. */
void *stack_block_get(enum stack_block_kind kind, size_t size, size_t *ret_size);
/* Give back a block of stack_block_get() with the size it had (p may be NULL). */
void stack_block_put(enum stack_block_kind kind, void *p, size_t size);

/*
 * The record key of section 4 from its fields: subscription and meter ids are lower-cased and
 * the meter loses its dashes here; instance_data must already be canonical. -EINVAL for a NULL
 * field or a time outside the years 0000 to 9999.
 */
int stack_record_key(int64_t reported_hour, const char *subscription_id, const char *meter_id,
                     int64_t usage_start, int64_t usage_end, const char *instance_data,
                     char ret[static HASH_SHA256_HEX_LEN + 1]);

/* An ARM error body, {"error":{"code","message"}} or {"code","message"}. */
struct stack_arm_error {
	char *code;    /* e.g. RequestEndTimeIsInFuture */
	char *message; /* NULL when the body has none */
};

/* Parse an ARM error body; -EBADMSG when it is neither shape (or has no string code). */
int stack_arm_error_parse(const char *body, size_t size, struct stack_arm_error *ret);
void stack_arm_error_done(struct stack_arm_error *e);

/* One user subscription of the stamp (fields at the top level of each entry). */
struct stack_subscription {
	char *subscription_id; /* lower-case GUID */
	char *tenant_id;       /* lower-case */
	char *display_name;    /* as received; NULL when absent */
	char *owner;
	char *state;                              /* Enabled, Disabled, ...; NULL when absent */
	char *delegated_provider_subscription_id; /* lower-case; NULL when absent */
};

struct stack_subscription_list {
	struct stack_subscription *subscriptions;
	size_t n_subscriptions;
	size_t n_skipped;     /* entries without a GUID subscriptionId or without a tenantId */
	char *skipped_reason; /* the first skipped entry's problem, for the log; NULL when none */
	char *next_link;      /* verbatim; NULL on the last page */
};

/*
 * Parse one page of the user-subscriptions list. -EBADMSG when the body is not a JSON object
 * with a "value" array or its nextLink is not a string; unusable entries are skipped and counted.
 */
int stack_subscriptions_parse(const char *body, size_t size, struct stack_subscription_list **ret,
                              char error[static STACK_ERROR_MAX]);
struct stack_subscription_list *stack_subscription_list_free(struct stack_subscription_list *list);

/* The stamp's {arm_endpoint}/metadata/endpoints document. */
struct stack_metadata {
	char *login_endpoint; /* https URL, trailing slashes removed as config does for its own */
	char *audience;       /* authentication.audiences[0] */
};

/*
 * Parse the metadata document: authentication.loginEndpoint (or a top-level loginEndpoint) and
 * authentication.audiences[0]. -EBADMSG when either is missing or the login endpoint is not https.
 */
int stack_metadata_parse(const char *body, size_t size, struct stack_metadata *ret,
                         char error[static STACK_ERROR_MAX]);
void stack_metadata_done(struct stack_metadata *m);

/*
 * The usage URL of reported hour [hour, hour + 1h) (section 4), times percent-encoded, with
 * &subscriberId= when subscriber_id is not NULL. -EINVAL unless arm_endpoint is an https URL,
 * the subscriptions are GUIDs and hour is on the hour.
 */
int stack_usage_url(const char *arm_endpoint, const char *provider_subscription, int64_t hour,
                    const char *subscriber_id, char **ret);

/* The user-subscriptions URL (section 4); -EINVAL as above. */
int stack_subscriptions_url(const char *arm_endpoint, const char *provider_subscription,
                            char **ret);

/* The metadata endpoints URL; -EINVAL unless arm_endpoint is an https URL. */
int stack_metadata_url(const char *arm_endpoint, char **ret);

/*
 * True when a nextLink may carry the stamp's bearer token: its scheme is https and its host and
 * port are those of arm_endpoint (host without regard to case, no port = 443). A link with user
 * information, a backslash, a space, a control or non-ASCII byte in its authority is never
 * trusted.
 */
bool stack_link_authority_ok(const char *link, const char *arm_endpoint);

/*
 * The host[:port] of an absolute URL as written, without any user information, for the log line
 * of a refused link. -EINVAL when the URL has no "scheme://".
 */
int stack_url_host(const char *url, char **ret);
