/*
 * The durable store (ARCHITECTURE.md section 7): one SQLite file in WAL mode holding usage records
 * and their state machine, the collection cursor, the user-subscription cache, the registration
 * cache and record history. The only module that includes sqlite3.h (lib/store*.c; the layout is
 * explained in store-private.h).
 *
 * Every public operation is one transaction. Times are seconds since the epoch (UTC). SQLite
 * errors are translated here: BUSY/LOCKED -> -EBUSY, FULL -> -ENOSPC, CORRUPT/NOTADB -> -EBADMSG,
 * READONLY -> -EROFS, CANTOPEN -> -ENOENT or -EACCES, constraint -> -EEXIST, anything else -> -EIO;
 * store_errmsg() returns SQLite's text of the last error for the caller's log line.
 *
 * Strings in the structs below are owned by the struct when the store fills it (free with the
 * matching *_done) and borrowed when the caller passes it in.
 *
 * Record states: pending -> (held) -> inflight -> forwarded | dead; quarantined and conflict move
 * only by an operator. See ARCHITECTURE.md sections 4 and 6.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_SCHEMA_VERSION 1 /* the version this build writes; older files are migrated */
#define STORE_BATCH_ID_LEN   36

enum store_state {
	STORE_PENDING,
	STORE_HELD,
	STORE_INFLIGHT,
	STORE_FORWARDED,
	STORE_DEAD,
	STORE_QUARANTINED,
	STORE_CONFLICT,
	_STORE_STATE_MAX,
	_STORE_STATE_INVALID = -EINVAL,
};

const char *store_state_to_string(enum store_state s);   /* "pending", "held", ... */
enum store_state store_state_from_string(const char *s); /* _STORE_STATE_INVALID if unknown */

struct store;

struct store_options {
	const char *path;
	bool readonly;             /* azs-usagectl read verbs: never creates, migrates or writes */
	unsigned busy_timeout_ms;  /* 0: 5000 */
	unsigned checkpoint_pages; /* WAL pages between automatic checkpoints; 0: 4000 (64 MB) */
	/* azs-usagectl read verbs: not even the bounded check of store_open(); the header,
	 * application id and schema version are still checked */
	bool skip_quick_check;
};

/*
 * Open (creating when absent and not readonly), check, migrate forward. The check (none with
 * skip_quick_check) reads of the records only a few thousand at the edges of their table:
 * quick_check of the schema, the freelist and every table but the records, and the records read
 * at their newest rows and after the claim head (store.c bounded_check() says what it leaves to
 * store_quick_check()). A corrupt or foreign file is -EBADMSG and is never modified; a file
 * written by a newer build is -EPROTO.
 * Readonly: a missing file is -ENOENT, a file with an older schema (or none) is -ESTALE (start
 * azs-usaged once to migrate it). A file this user may not write, opened for writing, is -EACCES.
 * ret_error (may be NULL) receives a message for the log on failure.
 */
int store_open(const struct store_options *options, struct store **ret, char **ret_error);
struct store *store_free(struct store *s); /* accepts NULL, returns NULL */
/* PRAGMA quick_check of the whole file, for an operator: reads every page (about 1 s per
 * million records from the page cache, 8 s from the disk); -EBADMSG with the first problem in
 * store_errmsg(). */
int store_quick_check(struct store *s);
const char *store_errmsg(struct store *s);
int store_schema_version(struct store *s, int *ret);

/* Cap the database size in bytes (0: no cap): growing past it fails with -ENOSPC like a full
 * disk. For tests of the full-disk path and for operators who want a quota. */
int store_set_size_limit(struct store *s, uint64_t max_bytes);

/* The SQL text of every statement the daemon's loop runs (for the query-plan test). */
const char *const *store_loop_queries(size_t *ret_n);

/* One usage record. */
struct store_record {
	int64_t id;             /* out: row id */
	enum store_state state; /* in: STORE_PENDING or STORE_QUARANTINED; out: current state */
	char *key;              /* 64 hex digits (ARCHITECTURE.md section 4) */
	int64_t reported_hour;
	char *subscription_id; /* the user subscription, lower-case (quarantined: as received or
	                          NULL) */
	char *meter_id;        /* as received */
	char *quantity;        /* exact decimal text */
	int64_t usage_start;
	int64_t usage_end;
	char *resource_uri;
	char *location;
	char *tags;            /* JSON text or NULL */
	char *additional_info; /* JSON text or NULL */
	char *raw;             /* the record's text as received (stored: see store_put_page) */

	/* out only, set as the record moves */
	char *tenant_id;            /* directory tenant, set when mapped */
	char *charged_subscription; /* set when mapped, then frozen */
	char *charge_reason;        /* registered | default | unknown-subscription | ambiguous */
	char *registration;         /* the registration resource id it was mapped on, then frozen */
	unsigned attempts;
	int64_t next_attempt_at;
	char *batch_id;
	char *error_code; /* dead: Commerce code; quarantined: "invalid-record"; held: "ambiguous"
	                   */
	char *error_message;  /* dead: Commerce message; quarantined: the validation failure */
	char *forward_status; /* Accepted | Duplicate | Conflict (HTTP 409) once forwarded */
	int64_t collected_at;
	int64_t forwarded_at;
	int64_t conflict_of;   /* conflict rows: id of the original record; 0 otherwise */
	int64_t adjustment_of; /* adjustment events: id of the original record; 0 otherwise */
	bool discarded;        /* dead records an operator discarded */

	void *storage; /* when set, every string above lies in this one allocation (claimed
	                  records: one allocation instead of a dozen); store_record_done knows */
};

void store_record_done(struct store_record *r); /* frees the strings, zeroes the struct */

/* Collection schedule: one row per reported hour and scope. */
struct store_hour {
	int64_t hour;
	char *scope;     /* "" for the all-tenants query, else the user subscription */
	unsigned pass;   /* 0 first collection, 1 look-back, 2+ operator recollect */
	char *next_link; /* resume point inside the hour; NULL: from the first page */
	int64_t due_at;  /* may be collected at or after this time */
};

void store_hour_done(struct store_hour *h);

/* Add an hour to the schedule (pass 0) unless it is there already. */
int store_hour_schedule(struct store *s, int64_t hour, const char *scope, int64_t due_at);

/* Hours whose due time has come, oldest first, at most limit. */
int store_hours_due(struct store *s, int64_t now, size_t limit, struct store_hour **ret,
                    size_t *ret_n);

/* The newest hour ever scheduled (the collection cursor); -ENOENT when none. */
int store_cursor_hour(struct store *s, int64_t *ret);

/*
 * Schedule hours [from, to] (on the hour, not after the cursor: else -EINVAL) to be collected
 * again now, pass 2 or more; records who and why. A range that starts before the oldest hour ever
 * scheduled less lookback is -ERANGE unless force is set: nothing was ever collected there, so
 * it is most likely a typing error. ret_n: schedule rows touched.
 */
struct store_recollect {
	int64_t from, to;
	int64_t lookback; /* seconds */
	bool force;
	const char *actor;
	const char *reason; /* may be NULL */
	int64_t now;
};

int store_recollect(struct store *s, const struct store_recollect *rc, size_t *ret_n);

/*
 * One collected page and the cursor that follows it, in one transaction. Per record: a new key is
 * inserted (pending, or quarantined with error_message as the reason); the same key with an equal
 * quantity (by value) is a duplicate and only counted; the same key with a different quantity is
 * stored as a conflict row beside the original. Then the hour's next_link is set to next_link;
 * with next_link NULL the hour is finished for this pass: it becomes due again at next_due_at
 * with pass + 1, or leaves the schedule when next_due_at is 0.
 *
 * Records are stored under page->reported_hour. A pending record needs a key (64 lower-case hex
 * digits), a subscription, a meter and a quantity that lib/decimal parses and that is not
 * negative, else the whole page is -EINVAL (the collector quarantines such records). The quantity
 * is stored as lib/decimal formats it: the literal's own text when it is plain decimal notation
 * ("2.4000000000" stays so), the same value at the same scale otherwise ("1e3" -> "1000",
 * ".5" -> "0.5"), so that what is forwarded is never exponent notation. The raw text is stored
 * for quarantined records, conflict rows and a record whose quantity was written anew (it keeps
 * the literal); a usage record stored as received has its fields and key, not its raw text.
 * A quarantined record without a valid key gets SHA-256 of "quarantined\n", its raw
 * text, "\n" and its reason. A quarantined record seen again (same hour and key) counts as a
 * duplicate; a valid record under the key of a quarantined one is stored and forwarded (the
 * quarantined one stays for the audit). A changed quantity already stored as a conflict row is a
 * duplicate too.
 */
struct store_page {
	int64_t reported_hour;
	const char *scope;
	unsigned pass;
	const char *next_link;
	int64_t next_due_at;
	const struct store_record *records;
	size_t n_records;
	int64_t now;
};

struct store_page_result {
	size_t inserted;
	size_t duplicates;
	size_t conflicts;
	size_t quarantined;
};

int store_put_page(struct store *s, const struct store_page *page, struct store_page_result *ret);

/*
 * Claiming a batch for forwarding. The oldest due pending record decides: if it carries a batch id
 * (a batch retried, or re-sent after a restart) the batch is its pending records with that id, so
 * the batch id (x-ms-correlationid) stays the same on every attempt; otherwise due pending records
 * without a batch id are taken oldest first up to max_records and max_bytes, under a new batch id.
 * Records that have no charge yet are passed to map() inside the transaction; its answer is frozen
 * on the record. hold = true parks the record in "held" with error_code = reason instead (held
 * records do not count against the limits). max_records 0 and max_bytes 0 mean no limit; a new
 * batch always takes at least one record. The batch's records carry no raw text (raw is NULL).
 */
struct store_charge {
	const char *charged_subscription;
	const char *tenant_id; /* NULL when unknown */
	const char *reason;    /* registered | default | unknown-subscription | ambiguous */
	bool hold;
	const char
	        *registration; /* the registration resource id (lower case); needed unless hold */
};

typedef int (*store_map_fn)(void *userdata, const struct store_record *r, struct store_charge *ret);

struct store_claim {
	size_t max_records;
	uint64_t max_bytes; /* sum of the records' estimated event sizes */
	int64_t now;
	store_map_fn map;
	void *userdata;
};

struct store_batch {
	char batch_id[STORE_BATCH_ID_LEN + 1];
	struct store_record *records;
	size_t n_records;  /* 0: nothing due */
	unsigned attempts; /* the batch's attempts so far */
};

int store_claim_batch(struct store *s, const struct store_claim *claim, struct store_batch *ret);
void store_batch_done(struct store_batch *b);

/* The earliest next_attempt_at of a pending record; -ENOENT when nothing is pending. */
int store_next_due(struct store *s, int64_t *ret);

/* Per-record outcome of a batch. */
enum store_outcome_kind {
	STORE_OUTCOME_FORWARDED, /* status: Accepted | Duplicate | Conflict */
	STORE_OUTCOME_DEAD,      /* error_code, error_message */
	STORE_OUTCOME_RETRY,     /* back to pending, attempts + 1, next_attempt_at */
};

struct store_outcome {
	int64_t id;
	enum store_outcome_kind kind;
	const char *status;
	const char *error_code;
	const char *error_message;
	int64_t next_attempt_at;
	const char *new_batch_id; /* RETRY: replaces the batch id (a split batch); NULL keeps it */
};

/* Apply outcomes of batch_id in one transaction; records not inflight in that batch are skipped.
 * Every applied outcome counts one attempt. */
int store_apply_outcomes(struct store *s, const char *batch_id, const struct store_outcome *o,
                         size_t n, int64_t now, size_t *ret_applied);

/* At start: every inflight record back to pending, batch id kept. */
int store_reset_inflight(struct store *s, size_t *ret_n);

/* Held records back to pending (after the registration changed), charge cleared. */
int store_unhold_all(struct store *s, int64_t now, size_t *ret_n);

/* Counts by state, kept incrementally (no scan). Discarded records are not counted. */
struct store_counts {
	uint64_t by_state[_STORE_STATE_MAX];
};

int store_counts(struct store *s, struct store_counts *ret);

/* Records waiting to be forwarded (pending + held + inflight): the max_pending check. */
int store_backlog(struct store *s, uint64_t *ret);

/* collected_at of the oldest pending record; -ENOENT when none. Cheap enough for the loop (a
 * metric): records are claimed in id order, so the oldest never-claimed one is the first after
 * the claim head, and records due for a retry are few. */
int store_oldest_pending(struct store *s, int64_t *ret);

/* Delete forwarded records forwarded before `before`, at most max_rows in this transaction. */
int store_prune(struct store *s, int64_t before, size_t max_rows, size_t *ret_deleted);

/* User-subscription cache. */
struct store_subscription {
	char *subscription_id; /* lower-case */
	char *tenant_id;       /* lower-case */
	char *display_name;
	char *owner;
	char *state;
	char *delegated_provider; /* delegatedProviderSubscriptionId, lower-case, or NULL */
	bool gone;                /* out: no longer listed; its tenant is kept (section 4) */
};

void store_subscription_done(struct store_subscription *s);
/* Refresh from the complete list: listed ones are written, unlisted ones marked gone (never
 * forgotten). */
int store_subscriptions_replace(struct store *s, const struct store_subscription *subs, size_t n,
                                int64_t now);
int store_subscription_get(struct store *s, const char *subscription_id,
                           struct store_subscription *ret);          /* -ENOENT */
int store_subscriptions_refreshed_at(struct store *s, int64_t *ret); /* -ENOENT: never */

/* Registration cache. */
struct store_registration {
	char *id;                   /* the registration resource id, lower-case */
	char *default_subscription; /* lower-case */
	char *raw;                  /* the registration JSON as received */
	int64_t refreshed_at;
};

struct store_customer_subscription {
	char *subscription_id; /* lower-case: last segment of the entry's id */
	char *tenant_id;       /* lower-case */
};

void store_registration_done(struct store_registration *r);
void store_customer_subscription_done(struct store_customer_subscription *c);
int store_registration_replace(struct store *s, const struct store_registration *reg,
                               const struct store_customer_subscription *cs, size_t n);
int store_registration_get(struct store *s, struct store_registration *ret); /* -ENOENT */
/* How many times the registration cache was written (0: never): a change to look for that does
 * not depend on the clock. */
int store_registration_generation(struct store *s, int64_t *ret);
int store_customer_subscriptions(struct store *s, struct store_customer_subscription **ret,
                                 size_t *ret_n);
/* The customer subscriptions registered for a tenant (more than one: ambiguous). */
int store_customer_subscriptions_for_tenant(struct store *s, const char *tenant_id, char ***ret,
                                            size_t *ret_n);

/* Every cached user subscription (gone ones too) in id order, for azs-usagectl tenants; fn
 * returning < 0 stops and is returned. The struct is borrowed for the call. */
typedef int (*store_subscription_fn)(void *userdata, const struct store_subscription *sub);
int store_subscriptions_list(struct store *s, store_subscription_fn fn, void *userdata);

/* Queries for azs-usagectl (off the loop). */
struct store_query {
	int state;                   /* -1: any */
	const char *tenant_id;       /* NULL: any */
	const char *subscription_id; /* matches the user or the charged subscription */
	int64_t since;               /* collected_at >= since; 0: any */
	size_t limit;                /* 0: no limit */
	bool include_discarded;
};

typedef int (*store_record_fn)(void *userdata, const struct store_record *r);

/* Calls fn per matching record, newest first; fn returning < 0 stops and is returned. */
int store_records_query(struct store *s, const struct store_query *q, store_record_fn fn,
                        void *userdata);

/* The record in `state` (-1: any) whose key starts with prefix (>= 8 hex digits): -ENOENT,
 * -ENOTUNIQ when several match, -EINVAL for a bad prefix. A conflict row shares its original's
 * key (two open conflicts of one record are found by their ids, store_record_by_id); discarded
 * rows yield to a live one. */
int store_record_find(struct store *s, const char *prefix, int state, struct store_record *ret);

/* A record by its own id (what azs-usagectl shows as a conflict's id); -ENOENT. */
int store_record_by_id(struct store *s, int64_t id, struct store_record *ret);

struct store_history {
	int64_t at;
	char *actor;  /* "azs-usaged" or "azs-usagectl:<user>" */
	char *action; /* e.g. "dead-retry", "conflict-accept", "recollect" */
	char *detail;
};

void store_history_done(struct store_history *h);
int store_record_history(struct store *s, int64_t id, struct store_history **ret, size_t *ret_n);

/*
 * Operator actions; each writes history with actor and reason, and acts on all the records given
 * or (on any error) on none. Retry puts a dead letter back to pending, due at now, with its batch
 * id and charge cleared (it is mapped again with the current registration); a credit-required
 * conflict row cannot be retried (-EPERM), only discarded. Discard needs a reason. -ENOENT when a
 * record is not a (non-discarded) dead letter.
 */
int store_dead_retry(struct store *s, const int64_t *ids, size_t n, const char *actor,
                     const char *reason, int64_t now);
int store_dead_retry_all(struct store *s, const char *actor, const char *reason, int64_t now,
                         size_t *ret_n);
int store_dead_discard(struct store *s, const int64_t *ids, size_t n, const char *actor,
                       const char *reason, int64_t now);

/*
 * Resolve a conflict row (ARCHITECTURE.md section 4). Accept: original not forwarded -> its
 * quantity is replaced; forwarded and the new quantity larger -> an adjustment record for the
 * difference is queued (key: SHA-256 of original key + "\nadjustment\n" + sequence); smaller ->
 * the conflict becomes dead with error_code "credit-required". Reject: the original stands.
 * Resolved conflict rows stay, discarded (error_code "conflict-accepted" / "conflict-rejected"),
 * so the same changed quantity seen again is a duplicate. The quantity charged for a forwarded
 * original is its own plus its adjustments. -EBUSY while the original is being forwarded
 * (inflight, or pending in a batch that was sent: Commerce may hold the old quantity already);
 * -ENOENT when id is not an open conflict.
 */
int store_conflict_accept(struct store *s, int64_t id, const char *actor, const char *reason,
                          int64_t now);
int store_conflict_reject(struct store *s, int64_t id, const char *actor, const char *reason,
                          int64_t now);

/* Exact totals of forwarded records with usage_start in [from, to), grouped. */
enum store_report_by {
	STORE_REPORT_BY_SUBSCRIPTION, /* charged subscription, meter */
	STORE_REPORT_BY_TENANT,       /* tenant, meter */
	STORE_REPORT_BY_METER,        /* meter */
};

struct store_report_row {
	const char *group; /* charged subscription or tenant ("" when none); NULL by meter */
	const char *meter_id;
	uint64_t records;
	const char *total; /* exact decimal text */
};

typedef int (*store_report_fn)(void *userdata, const struct store_report_row *row);
int store_report(struct store *s, int64_t from, int64_t to, enum store_report_by by,
                 store_report_fn fn, void *userdata);

/*
 * Usage per directory tenant and meter, for azs-usagectl tenants: every usage record and
 * adjustment in any state (not quarantined records, not conflict rows), its tenant taken from the
 * user-subscription cache ("" for subscriptions the cache does not know), with the number of
 * records and their exact total. A full scan: never on the loop.
 */
struct store_tenant_usage_row {
	const char *tenant_id; /* "": not in the tenant cache */
	const char *meter_id;
	uint64_t records;
	const char *total; /* exact decimal text */
};

typedef int (*store_tenant_usage_fn)(void *userdata, const struct store_tenant_usage_row *row);
int store_tenant_usage(struct store *s, store_tenant_usage_fn fn, void *userdata);

/*
 * Whether the store can be written, for readiness, without writing: the error of the last write
 * transaction when it failed for want of space or of the right to write, or on an I/O error
 * (-ENOSPC, -EROFS, -EACCES, -EIO), with the time (ret_since, may be NULL) of the first such
 * failure in a row; 0 once a write transaction commits again.
 */
int store_write_error(struct store *s, int64_t *ret_since);

/* Held records whose reason is "ambiguous" (the registration names their tenant twice); held
 * records waiting for the tenant cache (unknown-subscription) are not counted. */
int store_held_ambiguous(struct store *s, uint64_t *ret);
