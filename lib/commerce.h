/*
 * The Commerce ingestion API (ARCHITECTURE.md section 6), without I/O: a batch of store records
 * with their frozen charge becomes the request (JSON body, optionally gzip, header values), and an
 * answer (HTTP status and body) becomes one result for the batch plus, where the answer decides
 * per record, one struct store_outcome per record that the forwarder hands to
 * store_apply_outcomes().
 *
 * The body is written directly into one growing buffer and the answer read without building a
 * jansson tree: a small fraction of jansson's cost (tests/bench/bench-commerce.c measures both),
 * with jansson's grammar and escapes (the tests compare with jansson). Strings are escaped as JSON
 * requires (", \ and control characters); valid UTF-8 passes through unchanged; text that is not
 * valid UTF-8, and tags or additionalInfo that are not exactly one JSON value as jansson reads it,
 * make the record unencodable (-EBADMSG).
 *
 * Ownership: struct commerce_request and struct commerce_response own everything they point to
 * (free with the matching *_done); the records passed in are borrowed for the call only.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define COMMERCE_BATCH_MAX          1000 /* events per request (section 6) */
#define COMMERCE_ID_LEN             36   /* request and correlation ids: a UUID */
#define COMMERCE_HEADER_REQUEST_ID  "x-ms-requestid"
#define COMMERCE_HEADER_CORRELATION "x-ms-correlationid"
#define COMMERCE_CONTENT_TYPE       "application/json"
#define COMMERCE_CONTENT_ENCODING   "gzip" /* with commerce_options.gzip */
#define COMMERCE_GZIP_LEVEL         1
#define COMMERCE_ERROR_CODE_MAX     128  /* longer codes from an answer are cut (bytes) */
#define COMMERCE_ERROR_MESSAGE_MAX  1024 /* longer messages from an answer are cut (bytes) */

/*
 * What one build of a gzip body leaves for the next: the buffer of the JSON before compression
 * and zlib's state (about 1.3 MB together for 1,000 events). Without it each build maps these
 * afresh and the kernel hands out and zeroes every page of them again. Used by one thread at a
 * time; free with commerce_scratch_free().
 */
struct commerce_scratch;

struct commerce_options {
	/* The registration resource id for a record that carries none (the store freezes one on
	 * every record it maps; this is a guard): the configured registration. NULL: such a record
	 * is refused. */
	const char *registration;
	bool gzip; /* compress the body (Content-Encoding: gzip) */
	/* buffers kept between builds (commerce_scratch_new()); NULL: each build its own */
	struct commerce_scratch *scratch;
};

struct commerce_scratch *commerce_scratch_new(void);
struct commerce_scratch *commerce_scratch_free(struct commerce_scratch *s);

/* One attempt of one batch: what goes on the wire. */
struct commerce_request {
	char *body;       /* {"request":[...]}, gzip when gzip is set */
	size_t body_size; /* bytes of body */
	size_t json_size; /* bytes of the JSON before compression (== body_size without gzip) */
	bool gzip;        /* send Content-Encoding: gzip */
	char request_id[COMMERCE_ID_LEN + 1];     /* x-ms-requestid: a new random UUID */
	char correlation_id[COMMERCE_ID_LEN + 1]; /* x-ms-correlationid: the batch id */
};

/*
 * Whether a record can be encoded: it has a key, a charged subscription, a charge reason that is
 * registered, default or unknown-subscription (never ambiguous: held records are not sent), a user
 * subscription, a meter, a quantity and a registration (its own or options->registration), times
 * within the years 0000 to 9999, text in valid UTF-8, and tags and additionalInfo that are NULL or
 * exactly one JSON value. tenant_id, resource_uri and location may be NULL (sent as null).
 * Returns 0, or -EINVAL (missing or out-of-range member) or -EBADMSG (bad text) with ret_error
 * (may be NULL) pointing at a static reason. The forwarder calls it to find the record that made
 * commerce_request_build() fail.
 */
int commerce_check_record(const struct commerce_options *o, const struct store_record *r,
                          const char **ret_error);

/*
 * Build the request for one attempt of a batch: the section-6 body for records[0..n) in that
 * order (usageEventId = key; GUIDs the daemon writes in lower case, meterId as received;
 * quantity exactly the stored text, as a JSON string; times "YYYY-MM-DDTHH:MM:SSZ"; tags and
 * additionalInfo embedded as JSON or null), gzip-compressed in one call when o->gzip, a new
 * request id and batch_id as the correlation id. -EINVAL: n is 0, batch_id is empty, longer
 * than COMMERCE_ID_LEN or not made of letters, digits and '-', or a record misses a member;
 * -E2BIG: n > COMMERCE_BATCH_MAX; -EBADMSG: a record's text cannot be encoded (see
 * commerce_check_record); -EIO: no random bytes; -ENOMEM: zlib failed.
 */
int commerce_request_build(const struct commerce_options *o, const char *batch_id,
                           const struct store_record *records, size_t n,
                           struct commerce_request *ret);
void commerce_request_done(struct commerce_request *r); /* frees the body, zeroes the struct */

/* A new x-ms-requestid (random version-4 UUID, lower case), for re-sending a built request. */
int commerce_request_id_new(char out[static COMMERCE_ID_LEN + 1]);

/* What the answer means for the batch as a whole (the outcome table of section 6). */
enum commerce_result {
	COMMERCE_RESULT_OUTCOMES,  /* 2xx with a result list: see outcomes, record by record */
	COMMERCE_RESULT_CONFLICT,  /* 409, a duplicate batch: every record forwarded ("Conflict") */
	COMMERCE_RESULT_SPLIT,     /* 400: something in the batch is malformed; bisect it */
	COMMERCE_RESULT_TOO_LARGE, /* 413: halve the batch */
	COMMERCE_RESULT_AUTH,      /* 401, 403: refresh the token once and retry, then back off */
	/* 408, 429, 5xx, no answer (status 0), a 2xx body that is not a result list, and any
	 * status the contract does not name: retry the whole batch after backoff */
	COMMERCE_RESULT_TRANSIENT,
	_COMMERCE_RESULT_MAX,
};

/* "outcomes", "conflict", "split", "too-large", "auth", "transient" (for logs and metrics). */
const char *commerce_result_to_string(enum commerce_result r);

struct commerce_strings; /* the copies of codes and messages the outcomes point to */

/*
 * A parsed answer. For COMMERCE_RESULT_OUTCOMES and COMMERCE_RESULT_CONFLICT, outcomes[i] is
 * the outcome of records[i] as passed to commerce_parse_response() (id copied, status and error
 * texts owned here); RETRY outcomes have next_attempt_at 0 for the forwarder to fill. Per-record
 * rules (section 6):
 *   - Accepted, Duplicate: FORWARDED with that status;
 *   - Expired, ResourceNotFound, ResourceNotAuthorized, ResourceNotActive, InvalidQuantity,
 *     InvalidDimension, BadArgument: DEAD, error_code the status, error_message the answer's
 *     error.message (prefixed with "<error.code>: " when that code differs from the status);
 *   - Error, any other or no status, and a record with no result: RETRY (a re-send is safe: the
 *     usageEventId makes Commerce answer Duplicate for one it stored);
 *   - several results for one record: kept when they agree on FORWARDED, DEAD or RETRY (the
 *     first one's status and texts), else RETRY, since only a re-send settles which was true;
 *   - results naming an id that was not sent, or none: ignored and counted.
 * Event ids are compared without regard to ASCII case; statuses likewise. Statuses and the
 * result list's order do not matter; "count" is not used. Should a key occur twice in a batch
 * (the store makes keys unique; Commerce could only store one of them), every record with that
 * key takes the key's outcome.
 */
struct commerce_response {
	enum commerce_result result;
	int http_status;
	/* 429 or 503: a Retry-After on this answer throttles the whole endpoint (section 6) */
	bool throttle;
	/* whole-batch error: the body's {"error":{"code","message"}} or {"code","message"} when
	 * present, else code "http-<status>" ("no-answer" for status 0, "unparsable-answer" for a
	 * 2xx that is not a result list) and message NULL or a description. Set for every result
	 * except OUTCOMES; for a batch of one record that ends dead, these are its code and
	 * message. */
	char *error_code;
	char *error_message;

	struct store_outcome *outcomes; /* OUTCOMES, CONFLICT: n_outcomes == the records sent */
	size_t n_outcomes;
	size_t n_forwarded, n_dead, n_retry; /* outcomes by kind */

	size_t n_results;        /* entries in the answer's result list */
	size_t n_missing;        /* records the answer has no result for (retried) */
	size_t n_unknown;        /* results naming an id that was not sent (ignored) */
	size_t n_malformed;      /* results that are not objects or name no id (ignored) */
	size_t n_duplicate;      /* results for a record that already had one */
	size_t n_contradicting;  /* records whose several results disagreed (retried) */
	size_t n_unknown_status; /* results with a status outside the table (retried) */
	char *unknown_id;        /* the first id not sent, cut to COMMERCE_ERROR_CODE_MAX bytes */

	struct commerce_strings *strings;
};

/*
 * Classify Commerce's answer to records[0..n): the HTTP status (0 when no answer came: a
 * time-out or a connection error) and the body as received (decompressed; may be NULL when
 * size is 0). Never fails on the answer's content: anything unexpected is a result. -EINVAL only
 * for n == 0 or n > COMMERCE_BATCH_MAX, or NULL records; ret is written only on success.
 */
int commerce_parse_response(const struct store_record *records, size_t n, int http_status,
                            const void *body, size_t size, struct commerce_response *ret);
void commerce_response_done(struct commerce_response *r); /* frees everything, zeroes the struct */
