/*
 * What the store's files share and nobody else sees: the handle, the cached statements, the
 * transaction helpers and the translation of SQLite's errors. Only lib/store*.c include this.
 *
 * How a record's state is kept (ARCHITECTURE.md section 7; the figures are in store.c):
 *
 *   records   one row per record, written once when it is collected and never rewritten (an
 *             accepted conflict replacing the quantity of an unforwarded record is the one
 *             exception). Its kind says what it is: a usage record, an adjustment, a quarantined
 *             record or a conflict row. Records are claimed in id order: every usage record
 *             above the meta value "claimed_through" is pending and has never been claimed.
 *   batches   one row per batch. A fresh claim takes the next run of pending ids into one new
 *             batch row (first..last); the row holds the state, attempts and schedule of its
 *             "members": the usage records and adjustments of that run that have no state row.
 *             Claiming and acknowledging a whole batch write this one row.
 *   charges   the mapping a fresh claim froze, once per batch and user subscription.
 *   states    one narrow row per record whose state differs from its batch's: held records,
 *             dead letters, per-record retries, split batches, operator actions, resolved
 *             conflicts. A state row is complete: it holds the record's batch and its frozen
 *             charge, and overrides the batch row.
 *
 * The effective state of a record is therefore: its state row if it has one; else by kind,
 * quarantined or conflict; else its batch row's if its id lies in a batch's run; else pending.
 * The view record_view computes exactly that for the operator's queries.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <sqlite3.h>

#include "macro.h"
#include "store.h"

#define SECONDS_PER_HOUR     3600
#define STORE_EVENT_OVERHEAD 640 /* JSON member names, registration id, charge fields */
#define STORE_KEY_BYTES      32  /* a record key is stored as the SHA-256's 32 bytes */

/* What a record row is; stored in the file: never renumber. */
enum store_kind {
	KIND_USAGE = 0,
	KIND_ADJUSTMENT = 1,
	KIND_QUARANTINED = 2,
	KIND_CONFLICT = 3,
};

/* Cached statements (their text and whether the loop runs them: store-sql.c). */
enum stmt_id {
	STMT_BEGIN,
	STMT_COMMIT,
	STMT_ROLLBACK,
	STMT_SAVEPOINT,
	STMT_RELEASE,
	STMT_ROLLBACK_TO,
	STMT_COUNTS_ADD,
	STMT_COUNTS_GET,
	STMT_META_RAISE,
	STMT_META_SET,
	STMT_META_GET,
	STMT_HOUR_LINK,
	STMT_HOUR_FINISH,
	STMT_HOUR_DELETE,
	STMT_HOUR_SCHEDULE,
	STMT_HOURS_DUE,
	STMT_INSERT,
	STMT_MAX_RECORD_ID,
	STMT_LOOKUP,
	STMT_LOOKUP_QUARANTINED,
	STMT_CONFLICTS_OF,
	STMT_RECORD_KIND,
	STMT_DUE_BATCH,
	STMT_DUE_STATE,
	STMT_FRESH,
	STMT_BATCH_MEMBERS,
	STMT_BATCH_STATES,
	STMT_BATCH_STATE_IDS,
	STMT_LOOSE,
	STMT_BATCH_ADD,
	STMT_BATCH_GET,
	STMT_BATCH_FIND,
	STMT_BATCH_SET,
	STMT_BATCH_DELETE,
	STMT_CHARGE_ADD,
	STMT_CHARGE_LATEST,
	STMT_STATE_GET,
	STMT_STATE_PUT,
	STMT_STATE_CLAIM,
	STMT_STATE_FORWARDED,
	STMT_STATE_DEAD,
	STMT_STATE_RETRY,
	STMT_STATE_DELETE,
	STMT_REGISTRATION_NUMBER,
	STMT_NEXT_DUE_BATCH,
	STMT_NEXT_DUE_STATE,
	STMT_OLDEST_FRESH,
	STMT_OLDEST_BATCH,
	STMT_OLDEST_STATE,
	STMT_RESET_BATCHES_COUNT,
	STMT_RESET_BATCHES,
	STMT_RESET_STATES,
	STMT_UNHOLD,
	STMT_PRUNE_BATCHES,
	STMT_PRUNE_MEMBERS,
	STMT_RANGE_MEMBERS,
	STMT_PRUNE_STATES,
	STMT_PRUNE_DELETE,
	STMT_PRUNE_CONFLICTS,
	STMT_PRUNE_HISTORY,
	STMT_RECORD_GET,
	STMT_HISTORY_ADD,
	STMT_HISTORY_GET,
	STMT_SUBSCRIPTION_GET,
	STMT_REGISTRATION_GET,
	STMT_TENANT_CUSTOMER_SUBSCRIPTIONS,
	_STMT_MAX,
};

struct stmt_def {
	const char *sql;
	bool loop; /* run by the daemon's loop: must use indexes only */
};

extern const struct stmt_def store_stmt_defs[_STMT_MAX];
extern const char *const store_schema_v1[]; /* NULL-terminated pieces */

/* The columns of record_view in the order record_load() reads them. */
#define RECORD_COLUMNS                                                                     \
	"id, state, key, reported_hour, subscription_id, meter_id, quantity, usage_start," \
	" usage_end, resource_uri, location, tags, additional_info, raw, tenant_id,"       \
	" charged_subscription, charge_reason, attempts, next_attempt_at, batch_id,"       \
	" error_code, error_message, forward_status, collected_at, forwarded_at,"          \
	" conflict_of, adjustment_of, discarded, registration, kind, event_size"

enum {
	COL_ID,
	COL_STATE,
	COL_KEY,
	COL_REPORTED_HOUR,
	COL_SUBSCRIPTION_ID,
	COL_METER_ID,
	COL_QUANTITY,
	COL_USAGE_START,
	COL_USAGE_END,
	COL_RESOURCE_URI,
	COL_LOCATION,
	COL_TAGS,
	COL_ADDITIONAL_INFO,
	COL_RAW,
	COL_TENANT_ID,
	COL_CHARGED_SUBSCRIPTION,
	COL_CHARGE_REASON,
	COL_ATTEMPTS,
	COL_NEXT_ATTEMPT_AT,
	COL_BATCH_ID,
	COL_ERROR_CODE,
	COL_ERROR_MESSAGE,
	COL_FORWARD_STATUS,
	COL_COLLECTED_AT,
	COL_FORWARDED_AT,
	COL_CONFLICT_OF,
	COL_ADJUSTMENT_OF,
	COL_DISCARDED,
	COL_REGISTRATION,
	COL_KIND,
	COL_EVENT_SIZE,
};

/* The charge last frozen for a user subscription (store-claim.c keeps these in memory). */
struct store_charge_entry {
	char *subscription_id; /* NULL: an empty slot */
	char *tenant_id;
	char *charged_subscription;
	char *reason;
	char *registration;
	uint64_t seen; /* the claim that last decided it (store.claim_seq) */
};

struct store_checkpointer;

struct store {
	sqlite3 *db;
	/* the thread that copies the WAL into the file (store.c); NULL: SQLite's checkpoints */
	struct store_checkpointer *checkpointer;
	unsigned checkpoint_pages; /* WAL pages that start a checkpoint */
	/* the latest charge per subscription as of charges_epoch (-1: nothing known), an open
	 * addressing table of charges_size slots; forgotten with every rollback */
	struct store_charge_entry *charges;
	size_t charges_size, charges_n;
	int64_t charges_epoch;
	uint64_t claim_seq;     /* counts claims, for store_charge_entry.seen */
	int64_t next_record_id; /* 0: to be read from the file (store.c next_record_id()) */
	bool next_record_id_dirty;
	/* what this process last saw of the newest record id inserted and of the claim head
	 * (0: not yet), for the checkpointer's cache advice only (store.c) */
	int64_t newest_record_id, claim_head;
	/* the array a claim gathers its records in, kept for the next claim (store-claim.c) */
	void *claim_items;
	size_t claim_items_cap;
	char *registration_id; /* the last registration_number() answered, and its number */
	int64_t registration_number;
	bool readonly;
	bool skip_quick_check;
	char *path;
	char *errmsg;
	sqlite3_stmt *stmts[_STMT_MAX];
	int64_t delta[_STORE_STATE_MAX]; /* count changes of the open transaction */
	unsigned tx_depth;               /* 1: in a transaction, 2+: in savepoints inside it */
	int64_t saved_delta[4][_STORE_STATE_MAX]; /* delta when each savepoint began */
	/* store_write_error(): the last write transaction failed with this (0: one that changed a
	 * row committed since; a transaction that wrote nothing proves nothing) */
	int write_error;
	int64_t write_error_since;
	int tx_total_changes; /* sqlite3_total_changes() when the transaction began */
};

/* A batch row. */
struct store_batch_row {
	int64_t id;
	char uuid[STORE_BATCH_ID_LEN + 1];
	int64_t first, last; /* 0: no run */
	int64_t members;
	uint64_t members_fp; /* the sum of store_member_mix() of the members' ids */
	int64_t epoch; /* the charges of the run: the latest of each subscription up to this */
	enum store_state state;
	unsigned attempts;
	int64_t next_attempt_at;
	char *error_code;
	char *error_message;
	char *forward_status;
	int64_t forwarded_at;
};

/*
 * A record id mixed (splitmix64's finaliser) for the fingerprint of a run's members: the sum over
 * the members, kept with the batch row, tells an acknowledgement naming exactly the members from
 * any other set of ids of the same size (two sets agree by chance with probability 2^-64), so
 * that it need not read the run again.
 */
static inline uint64_t
store_member_mix(int64_t id)
{
	uint64_t z = (uint64_t)id + 0x9e3779b97f4a7c15u;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

int store_batch_row_load(struct store *s, int64_t id, struct store_batch_row *ret);
int store_batch_row_save(struct store *s, const struct store_batch_row *b);
void store_batch_row_done(struct store_batch_row *b);
/* The number of the batch with this id; create: an unknown id gets a row of its own (a split
 * batch, whose records are state rows); else an unknown id is -ENOENT. */
int store_batch_number(struct store *s, const char *uuid, bool create, int64_t *ret);

/* Forget the charges kept in memory (after a rollback, or when another writer moved on). */
void store_charges_forget(struct store *s);

/* Errors: remember a message and return the translated -errno. */
int store_translate(int rc, int sys_errno);
int store_fail(struct store *s, int rc);
int store_fail_msg(struct store *s, int r, const char *format, ...) _printf_(3, 4);

/* Statements: cached ones are reset when they go out of scope (_cleanup_stmt_); uncached ones
 * (off the loop) are finalized (_cleanup_finalize_). */
int store_stmt(struct store *s, enum stmt_id id, sqlite3_stmt **ret);
int store_prepare(struct store *s, const char *sql, sqlite3_stmt **ret);
void store_sqlite_configure(void); /* store-sql.c: before the first connection */
void store_stmt_resetp(sqlite3_stmt **st);
void store_stmt_finalizep(sqlite3_stmt **st);
#define _cleanup_stmt_     _cleanup_(store_stmt_resetp)
#define _cleanup_finalize_ _cleanup_(store_stmt_finalizep)

int store_step_done(struct store *s, sqlite3_stmt *st); /* 0, or -errno */
int store_step_row(struct store *s, sqlite3_stmt *st);  /* 1 row, 0 end, or -errno */
int store_exec(struct store *s, enum stmt_id id);       /* no parameters, no rows */
int store_bind_text(sqlite3_stmt *st, int i, const char *v);
/* Bind a key (64 hex digits) as its 32 bytes, which buf holds until the statement has run. */
int store_bind_key(sqlite3_stmt *st, int i, const char *hex,
                   unsigned char buf[static STORE_KEY_BYTES]);
char *store_col_dup(sqlite3_stmt *st, int i);
int64_t store_col_int64_or0(sqlite3_stmt *st, int i);

/* Run a cached single-value query (parameters bound by the caller through bind). */
int store_single_int64(struct store *s, enum stmt_id id, int64_t *ret); /* -ENOENT: none */

/*
 * Collect every row of st into a new array of elements of size bytes, each filled by load; *ret
 * (a pointer to the array pointer) and *ret_n are written on success. On failure the elements
 * loaded so far are released with done (NULL: nothing to release) and the array freed.
 */
typedef void (*store_row_load_fn)(sqlite3_stmt *st, void *elem);
typedef void (*store_row_done_fn)(void *elem);
int store_collect_rows(struct store *s, sqlite3_stmt *st, size_t size, store_row_load_fn load,
                       store_row_done_fn done, void *ret, size_t *ret_n);

/* Collect the first column of every row of st as integers. */
int store_collect_ids(struct store *s, sqlite3_stmt *st, int64_t **ret, size_t *ret_n);

/* Row loaders for RECORD_COLUMNS. */
void store_record_load_row(sqlite3_stmt *st, void *elem);
void store_record_done_row(void *elem);

/* Make room for n elements of size in p (capacity *cap), growing geometrically. */
void *store_grow(void *p, size_t *cap, size_t n, size_t size);

/* Note the outcome of a write transaction (r: its result) for store_write_error(). */
void store_write_note(struct store *s, int r);

/* Transactions: begin (a savepoint when nested), end (commit, or roll back when r < 0). */
int store_tx_begin(struct store *s);
int store_tx_end(struct store *s, int r);
int store_tx_end_n(struct store *s, int r, size_t n, size_t *ret_n); /* *ret_n = n on commit */

/* The meta table of integers. */
int store_meta_get(struct store *s, const char *key, int64_t *ret); /* -ENOENT */
int store_meta_set(struct store *s, const char *key, int64_t value);
int store_meta_raise(struct store *s, const char *key, int64_t value); /* keeps the larger */

/* Records as the operator sees them (record_view). */
void store_record_load(sqlite3_stmt *st, struct store_record *r);
int store_record_get(struct store *s, int64_t id, struct store_record *ret); /* -ENOENT */
int store_history_add(struct store *s, int64_t record_id, int64_t at, const char *actor,
                      const char *action, const char *detail);

/* Numbers for registration resource ids (the last one is cached on the handle). */
int store_registration_number(struct store *s, const char *resource_id, int64_t *ret);

/* Insert a record row of the given kind; *ret_id is 0 when its key existed already. */
int store_record_insert(struct store *s, const struct store_record *r, enum store_kind kind,
                        int64_t reported_hour, int64_t now, int64_t of, int64_t *ret_id);

/* Write a record's state row (insert or replace); its fields as in the struct, with the
 * state, batch number and charge as given. Counts are the caller's. */
struct store_state_row {
	int64_t id;
	enum store_state state;
	int64_t batch; /* 0: none */
	unsigned attempts;
	int64_t next_attempt_at;
	const char *tenant_id;
	const char *charged_subscription;
	const char *charge_reason;
	const char *registration; /* resource id, NULL: none */
	const char *error_code;
	const char *error_message;
	const char *forward_status;
	int64_t forwarded_at;
	bool discarded;
};

int store_state_put(struct store *s, const struct store_state_row *row);

/* A state row from a record as record_view loaded it. */
struct store_state_row store_state_row_of(const struct store_record *r);

/* Estimated size of a record's Commerce event. */
int64_t store_event_size(const struct store_record *r);

/* Compare two quantity texts by value; text equality when either does not parse. */
bool store_quantity_equal(const char *a, const char *b);
