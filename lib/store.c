/*
 * The durable store: one SQLite file in WAL mode holding the usage records and their state
 * machine, the collection schedule, the subscription and registration caches, record history and
 * daemon facts (ARCHITECTURE.md section 7). The only file that includes sqlite3.h.
 *
 * Every public operation is one transaction; write transactions start with BEGIN IMMEDIATE and
 * roll back on any error, so a failed operation changes nothing. Counts by state live in a small
 * table and are changed by the same transaction that moves records, from deltas collected while
 * it runs (no trigger per row, no COUNT(*) scan). Statements are prepared once and cached.
 *
 * Conflict rows (same key, different quantity) carry the original's key and a conflict_of
 * reference; the unique index on (reported_hour, key) is partial (conflict_of IS NULL), so it
 * holds exactly the normal records. Resolved conflict rows stay, discarded, so that the same
 * changed quantity seen again is recognised as a duplicate.
 *
 * The row of a record is rewritten by every state change, so it stays small: the raw text lives
 * in records_raw (the forwarder never reads it) and the batch id in batches, the row holding the
 * batch's number (schema version 2; the figures are at the schema).
 *
 * The state enum's values are stored in the file: never renumber them.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "decimal.h"
#include "hash.h"
#include "macro.h"
#include "store.h"
#include "timeutil.h"
#include "xmalloc.h"

#define STORE_APPLICATION_ID  1096438613 /* 0x415a5355, "AZSU" */
#define STRINGIFY_(x)         #x
#define STRINGIFY(x)          STRINGIFY_(x)
#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_PAGE_SIZE       16384 /* for new files */
#define STORE_EVENT_OVERHEAD  640   /* JSON member names, registration id, charge fields */
#define SECONDS_PER_HOUR      3600

/* State numbers as they appear in SQL text (partial indexes, fixed filters). */
#define S_PENDING   "0"
#define S_HELD      "1"
#define S_INFLIGHT  "2"
#define S_FORWARDED "3"
#define S_DEAD      "4"
#define S_CONFLICT  "6"
/* lets a query use the partial index records_due */
#define NOT_FORWARDED " AND state <> " S_FORWARDED

_Static_assert(STORE_PENDING == 0 && STORE_HELD == 1 && STORE_INFLIGHT == 2 &&
                       STORE_FORWARDED == 3 && STORE_DEAD == 4 && STORE_QUARANTINED == 5 &&
                       STORE_CONFLICT == 6,
               "state numbers are stored in the database");

/* Schema version 1: records, schedule, caches, facts, counts. */
static const char schema_v1[] =
        "CREATE TABLE records ("
        " id INTEGER PRIMARY KEY,"
        " state INTEGER NOT NULL,"
        " key TEXT NOT NULL,"
        " reported_hour INTEGER NOT NULL,"
        " subscription_id TEXT,"
        " meter_id TEXT,"
        " quantity TEXT,"
        " usage_start INTEGER NOT NULL DEFAULT 0,"
        " usage_end INTEGER NOT NULL DEFAULT 0,"
        " resource_uri TEXT,"
        " location TEXT,"
        " tags TEXT,"
        " additional_info TEXT,"
        " raw TEXT,"
        " event_size INTEGER NOT NULL,"
        " tenant_id TEXT,"
        " charged_subscription TEXT,"
        " charge_reason TEXT,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt_at INTEGER NOT NULL,"
        " batch_id TEXT,"
        " error_code TEXT,"
        " error_message TEXT,"
        " forward_status TEXT,"
        " collected_at INTEGER NOT NULL,"
        " forwarded_at INTEGER,"
        " conflict_of INTEGER REFERENCES records(id) ON DELETE CASCADE,"
        " adjustment_of INTEGER REFERENCES records(id) ON DELETE SET NULL);\n"
        /* leads with the hour: keys are random, hours are not (ARCHITECTURE.md section 7) */
        "CREATE UNIQUE INDEX records_hour_key ON records(reported_hour, key)"
        " WHERE conflict_of IS NULL;\n"
        /* forwarded records, the bulk of the file, stay out of it: queries add "state <> 3" */
        "CREATE INDEX records_due ON records(state, next_attempt_at)"
        " WHERE state <> " S_FORWARDED ";\n"
        "CREATE INDEX records_batch ON records(batch_id) WHERE batch_id IS NOT NULL;\n"
        "CREATE INDEX records_pending_age ON records(state, collected_at)"
        " WHERE state = " S_PENDING ";\n"
        "CREATE INDEX records_forwarded ON records(state, forwarded_at)"
        " WHERE state = " S_FORWARDED ";\n"
        "CREATE INDEX records_conflict_of ON records(conflict_of) WHERE conflict_of IS NOT NULL;\n"
        "CREATE INDEX records_adjustment_of ON records(adjustment_of)"
        " WHERE adjustment_of IS NOT NULL;\n"
        "CREATE TABLE counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);\n"
        "INSERT INTO counts(state, n) VALUES (0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0),"
        " (6, 0);\n"
        "CREATE TABLE hours ("
        " hour INTEGER NOT NULL,"
        " scope TEXT NOT NULL,"
        " pass INTEGER NOT NULL,"
        " next_link TEXT,"
        " due_at INTEGER NOT NULL,"
        " PRIMARY KEY (hour, scope)) WITHOUT ROWID;\n"
        "CREATE INDEX hours_due ON hours(due_at);\n"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;\n"
        "CREATE TABLE subscriptions ("
        " subscription_id TEXT PRIMARY KEY,"
        " tenant_id TEXT,"
        " display_name TEXT,"
        " owner TEXT,"
        " state TEXT) WITHOUT ROWID;\n"
        "CREATE TABLE registration ("
        " id TEXT NOT NULL,"
        " default_subscription TEXT NOT NULL,"
        " raw TEXT,"
        " refreshed_at INTEGER NOT NULL);\n"
        "CREATE TABLE customer_subscriptions ("
        " subscription_id TEXT PRIMARY KEY,"
        " tenant_id TEXT NOT NULL) WITHOUT ROWID;\n"
        "CREATE INDEX customer_subscriptions_tenant ON customer_subscriptions(tenant_id);\n"
        "CREATE TABLE facts (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;\n";

/* Schema version 2: operator history, discarded dead letters, raw text beside the records,
 * batches by number. */
static const char schema_v2[] =
        "ALTER TABLE records ADD COLUMN discarded INTEGER NOT NULL DEFAULT 0;\n"
        "CREATE TABLE history ("
        " id INTEGER PRIMARY KEY,"
        " record_id INTEGER REFERENCES records(id) ON DELETE CASCADE,"
        " at INTEGER NOT NULL,"
        " actor TEXT NOT NULL,"
        " action TEXT NOT NULL,"
        " detail TEXT);\n"
        "CREATE INDEX history_record ON history(record_id, at) WHERE record_id IS NOT NULL;\n"
        /*
         * The raw text (about 600 of a record's 700 bytes) moves to a side table: claiming and
         * acknowledging rewrite the whole row, and the forwarder never reads raw. Measured with
         * bench-store, 200,000 records: claim 141,000 -> 175,000 records/s, ack 281,000 ->
         * 321,000, put 173,000 -> 185,000.
         */
        "CREATE TABLE records_raw ("
        " id INTEGER PRIMARY KEY,"
        " raw TEXT NOT NULL);\n"
        /* not a foreign key: checking the parent on every insert cost a third of put's speed
         * (185,000 -> 119,000 records/s); a trigger follows the rare deletions (pruning, and
         * conflict rows deleted with their original) */
        "CREATE TRIGGER records_raw_delete AFTER DELETE ON records"
        " BEGIN DELETE FROM records_raw WHERE id = old.id; END;\n"
        /*
         * A record names its batch by a number; the batch id (a UUID, 36 characters) is in the
         * batches table once. The index of claimed records holds small increasing integers
         * instead of random 36-character texts, which put every batch's 500 entries into a random
         * page of a big index (45 MB for 1,000,000 records, beyond the cache). Measured with
         * bench-store, 200,000 records, three runs: ack 320,000 -> 400,000 records/s, claim
         * 175,000 -> 185,000.
         */
        "CREATE TABLE batches (id INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE);\n"
        "INSERT INTO batches (uuid)"
        " SELECT DISTINCT batch_id FROM records WHERE batch_id IS NOT NULL ORDER BY batch_id;\n"
        "ALTER TABLE records ADD COLUMN batch INTEGER;\n"
        "UPDATE records SET batch = (SELECT id FROM batches WHERE uuid = records.batch_id)"
        " WHERE batch_id IS NOT NULL;\n"
        "DROP INDEX records_batch;\n"
        "ALTER TABLE records DROP COLUMN batch_id;\n"
        "CREATE INDEX records_batch ON records(batch) WHERE batch IS NOT NULL;\n"
        "INSERT INTO records_raw (id, raw) SELECT id, raw FROM records WHERE raw IS NOT NULL;\n"
        "ALTER TABLE records DROP COLUMN raw;\n"
        /*
         * One index fewer to change on every put and claim; only azs-usagectl status asks for
         * the oldest pending record, and records_due finds the pending ones. Measured with
         * bench-store, 200,000 records, four runs each: put 164,000-184,000 -> 198,000-204,000
         * records/s, claim 139,000-158,000 -> 184,000-202,000.
         */
        "DROP INDEX records_pending_age;\n";

/*
 * Schema version 3: the registration a record was mapped on, frozen with its charge, so that
 * every attempt of its event names the same registration (ARCHITECTURE.md section 5). A record
 * names it by a number; the resource id (about 130 characters, the same for nearly every
 * record) is in registrations once.
 */
static const char schema_v3[] =
        "CREATE TABLE registrations (id INTEGER PRIMARY KEY, resource_id TEXT NOT NULL UNIQUE);\n"
        "ALTER TABLE records ADD COLUMN registration INTEGER;\n";

/* migrations[v] takes a file from version v to v + 1 */
static const char *const migrations[] = {schema_v1, schema_v2, schema_v3};
_Static_assert(ARRAY_SIZE(migrations) == STORE_SCHEMA_VERSION, "one migration per version");

/* The record columns every record query selects, in the order record_load() reads them. */
#define RECORD_COLUMNS                                                                            \
	"id, state, key, reported_hour, subscription_id, meter_id, quantity, usage_start,"        \
	" usage_end, resource_uri, location, tags, additional_info,"                              \
	" (SELECT raw FROM records_raw WHERE records_raw.id = records.id), tenant_id,"            \
	" charged_subscription, charge_reason, attempts, next_attempt_at,"                        \
	" (SELECT uuid FROM batches WHERE batches.id = records.batch), error_code,"               \
	" error_message, forward_status, collected_at, forwarded_at, conflict_of, adjustment_of," \
	" discarded, event_size,"                                                                 \
	" (SELECT resource_id FROM registrations WHERE registrations.id = records.registration)"

/* The same for a claim: the forwarder does not need the raw text, so it is not copied; the claim
 * sets the batch id itself. */
#define CLAIM_COLUMNS                                                                             \
	"id, state, key, reported_hour, subscription_id, meter_id, quantity, usage_start,"        \
	" usage_end, resource_uri, location, tags, additional_info, NULL, tenant_id,"             \
	" charged_subscription, charge_reason, attempts, next_attempt_at, NULL, error_code,"      \
	" error_message, forward_status, collected_at, forwarded_at, conflict_of, adjustment_of," \
	" discarded, event_size,"                                                                 \
	" (SELECT resource_id FROM registrations WHERE registrations.id = records.registration)"

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
	COL_EVENT_SIZE,
	COL_REGISTRATION,
};

/* Cached statements. */
enum stmt_id {
	STMT_BEGIN,
	STMT_COMMIT,
	STMT_ROLLBACK,
	STMT_SAVEPOINT,
	STMT_RELEASE,
	STMT_ROLLBACK_TO,
	STMT_COUNTS_ADD,
	STMT_COUNTS_GET,
	STMT_INSERT,
	STMT_INSERT_RAW,
	STMT_LOOKUP,
	STMT_CONFLICTS_OF,
	STMT_HOUR_LINK,
	STMT_HOUR_FINISH,
	STMT_HOUR_DELETE,
	STMT_HOUR_SCHEDULE,
	STMT_HOURS_DUE,
	STMT_META_RAISE,
	STMT_META_SET,
	STMT_META_GET,
	STMT_CLAIM_HEAD,
	STMT_CLAIM_BATCH,
	STMT_CLAIM_FRESH,
	STMT_CLAIM_TAKE,
	STMT_CLAIM_HOLD,
	STMT_BATCH_ADD,
	STMT_REGISTRATION_NUMBER,
	STMT_BATCH_FIND,
	STMT_BATCH_UUID,
	STMT_BATCH_FORGET,
	STMT_NEXT_DUE,
	STMT_OUTCOME_FORWARDED,
	STMT_OUTCOME_DEAD,
	STMT_OUTCOME_RETRY,
	STMT_RESET_INFLIGHT,
	STMT_UNHOLD,
	STMT_OLDEST_PENDING,
	STMT_PRUNE,
	STMT_RECORD_GET,
	STMT_HISTORY_ADD,
	STMT_HISTORY_GET,
	STMT_FACT_SET,
	STMT_FACT_GET,
	STMT_SUBSCRIPTION_GET,
	STMT_REGISTRATION_GET,
	STMT_TENANT_CUSTOMER_SUBSCRIPTIONS,
	_STMT_MAX,
};

struct stmt_def {
	const char *sql;
	bool loop; /* run by the daemon's loop: must use indexes only */
};

static const struct stmt_def stmt_defs[_STMT_MAX] = {
        [STMT_BEGIN] = {"BEGIN IMMEDIATE", false},
        [STMT_COMMIT] = {"COMMIT", false},
        [STMT_ROLLBACK] = {"ROLLBACK", false},
        [STMT_SAVEPOINT] = {"SAVEPOINT store_nested", false},
        [STMT_RELEASE] = {"RELEASE store_nested", false},
        [STMT_ROLLBACK_TO] = {"ROLLBACK TO store_nested", false},
        [STMT_COUNTS_ADD] = {"UPDATE counts SET n = n + ?1 WHERE state = ?2", true},
        [STMT_COUNTS_GET] = {"SELECT state, n FROM counts", true},
        [STMT_INSERT] = {"INSERT INTO records (state, key, reported_hour, subscription_id,"
                         " meter_id, quantity, usage_start, usage_end, resource_uri, location,"
                         " tags, additional_info, event_size, error_code, error_message,"
                         " next_attempt_at, collected_at, conflict_of, adjustment_of, tenant_id,"
                         " charged_subscription, charge_reason, registration)"
                         " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
                         " ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23) ON CONFLICT DO NOTHING",
                         true},
        [STMT_INSERT_RAW] = {"INSERT INTO records_raw (id, raw) VALUES (?1, ?2)"
                             " ON CONFLICT (id) DO UPDATE SET raw = excluded.raw",
                             true},
        [STMT_LOOKUP] = {"SELECT id, state, quantity FROM records"
                         " WHERE reported_hour = ?1 AND key = ?2 AND conflict_of IS NULL",
                         true},
        [STMT_CONFLICTS_OF] = {"SELECT quantity FROM records WHERE conflict_of = ?1", true},
        [STMT_HOUR_LINK] = {"INSERT INTO hours (hour, scope, pass, next_link, due_at)"
                            " VALUES (?1, ?2, ?3, ?4, ?5)"
                            " ON CONFLICT (hour, scope) DO UPDATE SET pass = excluded.pass,"
                            " next_link = excluded.next_link",
                            true},
        [STMT_HOUR_FINISH] =
                {"INSERT INTO hours (hour, scope, pass, next_link, due_at)"
                 " VALUES (?1, ?2, ?3, NULL, ?4)"
                 " ON CONFLICT (hour, scope) DO UPDATE SET pass = excluded.pass, next_link = NULL,"
                 " due_at = excluded.due_at",
                 true},
        [STMT_HOUR_DELETE] = {"DELETE FROM hours WHERE hour = ?1 AND scope = ?2", true},
        [STMT_HOUR_SCHEDULE] = {"INSERT INTO hours (hour, scope, pass, next_link, due_at)"
                                " VALUES (?1, ?2, 0, NULL, ?3)"
                                " ON CONFLICT DO NOTHING",
                                true},
        [STMT_HOURS_DUE] =
                {"SELECT hour, scope, pass, next_link, due_at FROM hours INDEXED BY hours_due"
                 " WHERE due_at <= ?1"
                 " ORDER BY hour, scope LIMIT ?2",
                 true},
        [STMT_META_RAISE] = {"INSERT INTO meta (key, value) VALUES (?1, ?2)"
                             " ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                             true},
        [STMT_META_SET] = {"INSERT INTO meta (key, value) VALUES (?1, ?2)"
                           " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           true},
        [STMT_META_GET] = {"SELECT value FROM meta WHERE key = ?1", true},
        [STMT_CLAIM_HEAD] = {"SELECT id, batch FROM records WHERE state = " S_PENDING NOT_FORWARDED
                             " AND next_attempt_at <= ?1 ORDER BY next_attempt_at, id LIMIT 1",
                             true},
        [STMT_CLAIM_BATCH] = {"SELECT " CLAIM_COLUMNS
                              " FROM records WHERE batch = ?1 AND state = " S_PENDING
                              " ORDER BY id",
                              true},
        [STMT_CLAIM_FRESH] =
                {"SELECT " CLAIM_COLUMNS " FROM records WHERE state = " S_PENDING NOT_FORWARDED
                 " AND next_attempt_at <= ?1 AND batch IS NULL ORDER BY next_attempt_at, id",
                 true},
        [STMT_CLAIM_TAKE] = {"UPDATE records SET state = " S_INFLIGHT
                             ", batch = ?2, tenant_id = ?3,"
                             " charged_subscription = ?4, charge_reason = ?5, registration = ?6"
                             " WHERE id = ?1",
                             true},
        [STMT_CLAIM_HOLD] = {"UPDATE records SET state = " S_HELD
                             ", error_code = ?2, tenant_id = NULL,"
                             " charged_subscription = NULL, charge_reason = NULL,"
                             " registration = NULL WHERE id = ?1",
                             true},
        [STMT_BATCH_ADD] = {"INSERT INTO batches (uuid) VALUES (?1) ON CONFLICT (uuid) DO NOTHING",
                            true},
        [STMT_BATCH_FIND] = {"SELECT id FROM batches WHERE uuid = ?1", true},
        /* a no-op update, so that RETURNING answers for a row that exists already */
        [STMT_REGISTRATION_NUMBER] = {"INSERT INTO registrations (resource_id) VALUES (?1)"
                                      " ON CONFLICT (resource_id) DO UPDATE SET"
                                      " resource_id = excluded.resource_id RETURNING id",
                                      true},
        [STMT_BATCH_UUID] = {"SELECT uuid FROM batches WHERE id = ?1", true},
        [STMT_BATCH_FORGET] = {"DELETE FROM batches WHERE id = ?1"
                               " AND NOT EXISTS (SELECT 1 FROM records WHERE batch = ?1)",
                               true},
        [STMT_NEXT_DUE] = {"SELECT next_attempt_at FROM records WHERE state = " S_PENDING
                                   NOT_FORWARDED " ORDER BY next_attempt_at LIMIT 1",
                           true},
        [STMT_OUTCOME_FORWARDED] =
                {"UPDATE records SET state = " S_FORWARDED
                 ", forward_status = ?3, forwarded_at = ?4,"
                 " attempts = attempts + 1, error_code = NULL, error_message = NULL"
                 " WHERE id = ?1 AND state = " S_INFLIGHT " AND batch = ?2",
                 true},
        [STMT_OUTCOME_DEAD] = {"UPDATE records SET state = " S_DEAD
                               ", error_code = ?3, error_message = ?4,"
                               " attempts = attempts + 1 WHERE id = ?1 AND state = " S_INFLIGHT
                               " AND batch = ?2",
                               true},
        [STMT_OUTCOME_RETRY] =
                {"UPDATE records SET state = " S_PENDING ", attempts = attempts + 1,"
                 " next_attempt_at = ?3, batch = COALESCE(?4, batch), error_code = ?5,"
                 " error_message = ?6 WHERE id = ?1 AND state = " S_INFLIGHT " AND batch = ?2",
                 true},
        [STMT_RESET_INFLIGHT] = {"UPDATE records SET state = " S_PENDING
                                 " WHERE state = " S_INFLIGHT NOT_FORWARDED,
                                 true},
        [STMT_UNHOLD] = {"UPDATE records SET state = " S_PENDING
                         ", error_code = NULL, tenant_id = NULL,"
                         " charged_subscription = NULL, charge_reason = NULL, registration = NULL"
                         " WHERE state = " S_HELD NOT_FORWARDED,
                         true},
        /* off the loop (azs-usagectl status): reads every pending row through records_due */
        [STMT_OLDEST_PENDING] =
                {"SELECT min(collected_at) FROM records WHERE state = " S_PENDING NOT_FORWARDED,
                 false},
        [STMT_PRUNE] = {"DELETE FROM records WHERE id IN (SELECT r.id FROM records r"
                        " WHERE r.state = " S_FORWARDED " AND r.forwarded_at < ?1 AND NOT EXISTS"
                        " (SELECT 1 FROM records c WHERE c.conflict_of = r.id AND c.discarded = 0)"
                        " ORDER BY r.forwarded_at LIMIT ?2) RETURNING batch",
                        true},
        [STMT_RECORD_GET] = {"SELECT " RECORD_COLUMNS " FROM records WHERE id = ?1", false},
        [STMT_HISTORY_ADD] = {"INSERT INTO history (record_id, at, actor, action, detail)"
                              " VALUES (?1, ?2, ?3, ?4, ?5)",
                              false},
        [STMT_HISTORY_GET] = {"SELECT at, actor, action, detail FROM history WHERE record_id = ?1"
                              " ORDER BY at, id",
                              false},
        [STMT_FACT_SET] = {"INSERT INTO facts (key, value) VALUES (?1, ?2)"
                           " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           true},
        [STMT_FACT_GET] = {"SELECT value FROM facts WHERE key = ?1", true},
        /* the caches, read by map() inside a claim */
        [STMT_SUBSCRIPTION_GET] = {"SELECT subscription_id, tenant_id, display_name, owner, state"
                                   " FROM subscriptions WHERE subscription_id = ?1",
                                   true},
        [STMT_REGISTRATION_GET] = {"SELECT id, default_subscription, raw, refreshed_at"
                                   " FROM registration LIMIT 1",
                                   true},
        [STMT_TENANT_CUSTOMER_SUBSCRIPTIONS] = {"SELECT subscription_id FROM customer_subscriptions"
                                                " WHERE tenant_id = ?1 ORDER BY subscription_id",
                                                true},
};

struct store {
	sqlite3 *db;
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
};

static const char *const state_names[_STORE_STATE_MAX] = {
        [STORE_PENDING] = "pending",     [STORE_HELD] = "held", [STORE_INFLIGHT] = "inflight",
        [STORE_FORWARDED] = "forwarded", [STORE_DEAD] = "dead", [STORE_QUARANTINED] = "quarantined",
        [STORE_CONFLICT] = "conflict",
};

static void *grow(void *p, size_t *cap, size_t n, size_t size);
static int translate(int rc, int sys_errno);
static int fail(struct store *s, int rc);
static int fail_msg(struct store *s, int r, const char *format, ...) _printf_(3, 4);
static int stmt_get(struct store *s, enum stmt_id id, sqlite3_stmt **ret);
static void stmt_resetp(sqlite3_stmt **st);
static int step_done(struct store *s, sqlite3_stmt *st);
static int step_row(struct store *s, sqlite3_stmt *st);
static int registration_number(struct store *s, const char *resource_id, int64_t *ret);
static int tx_close(struct store *s, int r);
static int dead_discard_one(struct store *s, int64_t id, const char *actor, const char *action,
                            const char *detail, int64_t now);
static int bind_text(sqlite3_stmt *st, int i, const char *v);
static int tx_begin(struct store *s);
static int tx_end(struct store *s, int r);
static int exec_simple(struct store *s, enum stmt_id id);
static void record_load(sqlite3_stmt *st, struct store_record *r);
static char *col_dup(sqlite3_stmt *st, int i);
static int64_t col_int64_or0(sqlite3_stmt *st, int i);
static int history_add(struct store *s, int64_t record_id, int64_t at, const char *actor,
                       const char *action, const char *detail);
static int record_get(struct store *s, int64_t id, struct store_record *ret);
static void decimal_sum_step(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static void decimal_sum_final(sqlite3_context *ctx);

#define _cleanup_stmt_ _cleanup_(stmt_resetp)

DEFINE_TRIVIAL_CLEANUP_FUNC(struct store *, store_free)

/* Name of a state. */
const char *
store_state_to_string(enum store_state s)
{
	if (s < 0 || s >= _STORE_STATE_MAX)
		return NULL;
	return state_names[s];
}

/* State of a name, or _STORE_STATE_INVALID. */
enum store_state
store_state_from_string(const char *s)
{
	if (!s)
		return _STORE_STATE_INVALID;
	for (int i = 0; i < _STORE_STATE_MAX; i++)
		if (streq(s, state_names[i]))
			return (enum store_state)i;
	return _STORE_STATE_INVALID;
}

/* Set *ret_error to a formatted message when the caller asked for one. */
static _printf_(2, 3) void open_error(char **ret_error, const char *format, ...)
{
	va_list ap;

	if (!ret_error)
		return;
	va_start(ap, format);
	*ret_error = xvasprintf(format, ap);
	va_end(ap);
}

/* Run one pragma that returns a single integer. */
static int
pragma_int(struct store *s, const char *sql, int64_t *ret)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(s, rc);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		int r = rc == SQLITE_DONE ? -EIO : fail(s, rc);
		sqlite3_finalize(st);
		return r;
	}
	*ret = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return 0;
}

/* Run PRAGMA quick_check: 0 when the file is sound, -EBADMSG with the first problem otherwise. */
static int
quick_check(struct store *s)
{
	sqlite3_stmt *st = NULL;
	int rc, r = 0;

	rc = sqlite3_prepare_v2(s->db, "PRAGMA quick_check", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(s, rc);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *t = (const char *)sqlite3_column_text(st, 0);
		if (!t || !streq(t, "ok")) {
			free(s->errmsg);
			s->errmsg = xstrdup(t ? t : "quick_check failed");
			r = -EBADMSG;
		}
	} else
		r = rc == SQLITE_DONE ? -EIO : fail(s, rc);
	sqlite3_finalize(st);
	return r;
}

/* Bring the schema from version `from` to STORE_SCHEMA_VERSION in one transaction. */
static int
migrate(struct store *s, int64_t from)
{
	char *err = NULL;
	int64_t v = from;
	int rc, r;

	r = exec_simple(s, STMT_BEGIN);
	if (r < 0)
		return r;
	/* another process may have migrated between our check and the lock */
	r = pragma_int(s, "PRAGMA user_version", &v);
	if (r < 0)
		goto rollback;
	if (v >= STORE_SCHEMA_VERSION) {
		(void)exec_simple(s, STMT_ROLLBACK);
		return v > STORE_SCHEMA_VERSION ? fail_msg(s, -EPROTO, "migrated by a newer build")
		                                : 0;
	}
	if (v == 0) {
		rc = sqlite3_exec(s->db, "PRAGMA application_id = " STRINGIFY(STORE_APPLICATION_ID),
		                  NULL, NULL, &err);
		if (rc != SQLITE_OK)
			goto sql_error;
	}
	for (; v < STORE_SCHEMA_VERSION; v++) {
		rc = sqlite3_exec(s->db, migrations[v], NULL, NULL, &err);
		if (rc != SQLITE_OK)
			goto sql_error;
	}
	rc = sqlite3_exec(s->db, "PRAGMA user_version = " STRINGIFY(STORE_SCHEMA_VERSION), NULL,
	                  NULL, &err);
	if (rc != SQLITE_OK)
		goto sql_error;
	r = exec_simple(s, STMT_COMMIT);
	if (r < 0)
		goto rollback;
	return 0;

sql_error:
	r = translate(rc, sqlite3_system_errno(s->db));
	free(s->errmsg);
	s->errmsg = xstrdup(err ? err : sqlite3_errstr(rc));
	sqlite3_free(err);
rollback:
	if (!sqlite3_get_autocommit(s->db))
		(void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	return r;
}

/* Check that an opened file is ours and sound, and bring it to the current schema. */
static int
open_check(struct store *s, char **ret_error)
{
	int64_t version = 0, app_id = 0, n_objects = 0;
	int r;

	/* reads only the header: a text file or garbage fails here with NOTADB */
	r = pragma_int(s, "PRAGMA user_version", &version);
	if (r < 0)
		goto bad_file;
	r = pragma_int(s, "PRAGMA application_id", &app_id);
	if (r < 0)
		goto bad_file;
	r = pragma_int(s, "SELECT count(*) FROM sqlite_schema", &n_objects);
	if (r < 0)
		goto bad_file;
	if (app_id != STORE_APPLICATION_ID && (app_id != 0 || version != 0 || n_objects != 0)) {
		open_error(ret_error,
		           "%s: not an azs-usaged database (application id %" PRId64
		           ", schema version %" PRId64 "); refusing to touch it",
		           s->path, app_id, version);
		return -EBADMSG;
	}
	if (version > STORE_SCHEMA_VERSION) {
		open_error(ret_error,
		           "%s: schema version %" PRId64 " was written by a newer azs-usaged (this "
		           "build knows version %d); refusing to touch it",
		           s->path, version, STORE_SCHEMA_VERSION);
		return -EPROTO;
	}
	r = s->skip_quick_check ? 0 : quick_check(s);
	if (r < 0)
		goto bad_file;

	if (version < STORE_SCHEMA_VERSION && s->readonly) {
		open_error(
		        ret_error,
		        version == 0
		                ? "%s: the database is not initialised yet; start azs-usaged "
		                  "once to create it"
		                : "%s: the database has an older schema; start azs-usaged once to "
		                  "migrate it",
		        s->path);
		return -ESTALE;
	}
	if (s->readonly)
		return 0;

	if (version == 0 && n_objects == 0) {
		/* rows are over 1 KiB: bigger pages split less (measured: ~30 % faster puts) */
		int rc = sqlite3_exec(s->db, "PRAGMA page_size = " STRINGIFY(STORE_PAGE_SIZE), NULL,
		                      NULL, NULL);
		if (rc != SQLITE_OK) {
			r = fail(s, rc);
			goto bad_file;
		}
	}
	{
		sqlite3_stmt *st = NULL;
		int rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
		const char *mode;

		if (rc == SQLITE_OK)
			rc = sqlite3_step(st);
		mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
		if (!mode || strcasecmp(mode, "wal") != 0) {
			r = rc == SQLITE_ROW ? -EIO : fail(s, rc);
			sqlite3_finalize(st);
			open_error(ret_error, "%s: cannot switch to WAL mode: %s", s->path,
			           s->errmsg ? s->errmsg : "journal mode unchanged");
			return r;
		}
		sqlite3_finalize(st);
	}
	if (version < STORE_SCHEMA_VERSION) {
		r = migrate(s, version);
		if (r < 0) {
			open_error(ret_error,
			           "%s: migration from schema version %" PRId64 " failed: %s",
			           s->path, version, s->errmsg);
			return r;
		}
	}
	return 0;

bad_file:
	if (r == -EBADMSG)
		open_error(ret_error,
		           "%s: corrupt or not an SQLite database (%s); refusing to touch it",
		           s->path, s->errmsg);
	else
		open_error(ret_error, "%s: %s", s->path, s->errmsg);
	return r;
}

/*
 * Refuse a non-empty file that does not start with SQLite's header. SQLite itself would treat a
 * file shorter than one page as an empty database and write over it.
 */
static int
check_header(const char *path, char **ret_error)
{
	static const char magic[16] = "SQLite format 3";
	char buf[sizeof(magic)];
	_cleanup_fclose_ FILE *f = NULL;
	struct stat st;
	size_t n;

	if (stat(path, &st) < 0 || st.st_size == 0)
		return 0; /* absent or empty: a new database, or SQLite's error on open */
	f = fopen(path, "rbe");
	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf), f);
	if (n == sizeof(magic) && memcmp(buf, magic, sizeof(magic)) == 0)
		return 0;
	open_error(ret_error, "%s: not an SQLite database; refusing to touch it", path);
	return -EBADMSG;
}

/* Open the store (see store.h). */
int
store_open(const struct store_options *options, struct store **ret, char **ret_error)
{
	_cleanup_(store_freep) struct store *s = NULL;
	unsigned timeout;
	int flags, rc, r;

	if (!options || !options->path || !ret)
		return -EINVAL;

	s = xcalloc(1, sizeof(*s));
	s->readonly = options->readonly;
	s->skip_quick_check = options->skip_quick_check;
	s->path = xstrdup(options->path);
	r = check_header(s->path, ret_error);
	if (r < 0)
		return r;

	flags = SQLITE_OPEN_EXRESCODE | SQLITE_OPEN_NOMUTEX |
	        (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
	rc = sqlite3_open_v2(s->path, &s->db, flags, NULL);
	if (rc != SQLITE_OK) {
		int sys = s->db ? sqlite3_system_errno(s->db) : 0;
		r = translate(rc, sys);
		open_error(ret_error, "%s: cannot open: %s", s->path,
		           s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
		return r;
	}
	/* a refused file must stay as it is: no checkpoint when we close it */
	(void)sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
	if (!s->readonly && sqlite3_db_readonly(s->db, "main") == 1) {
		/* SQLite falls back to reading a file it may not write: say so now, not at a write
		 */
		open_error(ret_error, "%s: not writable by this user", s->path);
		return -EACCES;
	}
	timeout = options->busy_timeout_ms ? options->busy_timeout_ms : STORE_BUSY_TIMEOUT_MS;
	(void)sqlite3_busy_timeout(s->db, (int)MIN(timeout, (unsigned)INT32_MAX));

	r = open_check(s, ret_error);
	if (r < 0)
		return r;

	rc = sqlite3_exec(s->db,
	                  "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;"
	                  " PRAGMA cache_size = -32768; PRAGMA temp_store = MEMORY;"
	                  " PRAGMA journal_size_limit = 67108864;"
	                  /* checkpoint every 64 MB of WAL, not every 16 MB: index pages written by
	                   * many transactions are copied into the file once (bench-store, 1,000,000
	                   * records, two runs each: put 174,000-182,000 -> 191,000-209,000
	                   * records/s); the WAL stays within journal_size_limit. Tried and not
	                   * kept: 4 and 8 KiB pages (put 150,000 and 156,000 against 166,000 in the
	                   * same hour, claim slower too) and a 64 MiB cache (no faster, 33 MB more
	                   * memory). */
	                  " PRAGMA wal_autocheckpoint = 4000;",
	                  NULL, NULL, NULL);
	if (rc == SQLITE_OK && options->checkpoint_pages) {
		/* the crash test checkpoints often, so that its kills land inside checkpoints */
		char pragma[64];

		snprintf(pragma, sizeof(pragma), "PRAGMA wal_autocheckpoint = %u;",
		         options->checkpoint_pages);
		rc = sqlite3_exec(s->db, pragma, NULL, NULL, NULL);
	}
	if (rc != SQLITE_OK) {
		r = fail(s, rc);
		open_error(ret_error, "%s: %s", s->path, s->errmsg);
		return r;
	}
	rc = sqlite3_create_function_v2(s->db, "decimal_sum", 1,
	                                SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, NULL,
	                                NULL, decimal_sum_step, decimal_sum_final, NULL);
	if (rc != SQLITE_OK) {
		r = fail(s, rc);
		open_error(ret_error, "%s: %s", s->path, s->errmsg);
		return r;
	}
	if (!s->readonly)
		(void)sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);

	*ret = TAKE_PTR(s);
	return 0;
}

/* Close the store. */
struct store *
store_free(struct store *s)
{
	if (!s)
		return NULL;
	for (size_t i = 0; i < _STMT_MAX; i++)
		sqlite3_finalize(s->stmts[i]);
	if (s->db && !sqlite3_get_autocommit(s->db))
		(void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close_v2(s->db);
	free(s->path);
	free(s->errmsg);
	free(s->registration_id);
	free(s);
	return NULL;
}

/* The text of the last error. */
const char *
store_errmsg(struct store *s)
{
	return s && s->errmsg ? s->errmsg : "no error";
}

/* The schema version of the open file. */
int
store_schema_version(struct store *s, int *ret)
{
	int64_t v = 0;
	int r;

	r = pragma_int(s, "PRAGMA user_version", &v);
	if (r < 0)
		return r;
	*ret = (int)v;
	return 0;
}

/* Cap the database size. */
int
store_set_size_limit(struct store *s, uint64_t max_bytes)
{
	int64_t page_size = 0, pages;
	char sql[64];
	int r;

	r = pragma_int(s, "PRAGMA page_size", &page_size);
	if (r < 0)
		return r;
	pages = max_bytes ? (int64_t)MIN(max_bytes / (uint64_t)page_size, (uint64_t)INT32_MAX)
	                  : INT32_MAX - 1;
	snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %" PRId64, MAX(pages, 1));
	return pragma_int(s, sql, &pages);
}

/* The loop's statements, for the query-plan test. */
const char *const *
store_loop_queries(size_t *ret_n)
{
	static const char *list[_STMT_MAX];
	static size_t n;

	if (n == 0)
		for (size_t i = 0; i < _STMT_MAX; i++)
			if (stmt_defs[i].loop)
				list[n++] = stmt_defs[i].sql;
	if (ret_n)
		*ret_n = n;
	return list;
}

/* Free a record's strings and zero it. */
void
store_record_done(struct store_record *r)
{
	if (!r)
		return;
	free(r->key);
	free(r->subscription_id);
	free(r->meter_id);
	free(r->quantity);
	free(r->resource_uri);
	free(r->location);
	free(r->tags);
	free(r->additional_info);
	free(r->raw);
	free(r->tenant_id);
	free(r->charged_subscription);
	free(r->charge_reason);
	free(r->registration);
	free(r->batch_id);
	free(r->error_code);
	free(r->error_message);
	free(r->forward_status);
	*r = (struct store_record){0};
}

/* Free an hour's strings. */
void
store_hour_done(struct store_hour *h)
{
	if (!h)
		return;
	free(h->scope);
	free(h->next_link);
	*h = (struct store_hour){0};
}

/* Raise the collection cursor to hour if it is newer. */
static int
cursor_raise(struct store *s, int64_t hour)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, STMT_META_RAISE, &st);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, "cursor_hour", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, hour);
	return step_done(s, st);
}

/* Schedule one hour, pass 0. */
int
store_hour_schedule(struct store *s, int64_t hour, const char *scope, int64_t due_at)
{
	int r;

	if (!time_on_hour(hour) || !scope)
		return fail_msg(s, -EINVAL, "hour %" PRId64 " is not on the hour", hour);
	r = tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = stmt_get(s, STMT_HOUR_SCHEDULE, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, hour);
			bind_text(st, 2, scope);
			sqlite3_bind_int64(st, 3, due_at);
			r = step_done(s, st);
		}
	}
	if (r >= 0)
		r = cursor_raise(s, hour);
	return tx_end(s, r);
}

/* Hours that are due, oldest first. */
int
store_hours_due(struct store *s, int64_t now, size_t limit, struct store_hour **ret, size_t *ret_n)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	struct store_hour *hours = NULL;
	size_t n = 0, cap = 0;
	int r;

	r = stmt_get(s, STMT_HOURS_DUE, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_int64(st, 2, limit ? (int64_t)MIN(limit, (size_t)INT64_MAX) : -1);
	while ((r = step_row(s, st)) > 0) {
		hours = grow(hours, &cap, n + 1, sizeof(*hours));
		hours[n++] = (struct store_hour){
		        .hour = sqlite3_column_int64(st, 0),
		        .scope = col_dup(st, 1),
		        .pass = (unsigned)sqlite3_column_int64(st, 2),
		        .next_link = col_dup(st, 3),
		        .due_at = sqlite3_column_int64(st, 4),
		};
	}
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			store_hour_done(&hours[i]);
		free(hours);
		return r;
	}
	*ret = hours;
	*ret_n = n;
	return 0;
}

/* Read an integer from the meta table; -ENOENT when absent. */
static int
meta_get(struct store *s, const char *key, int64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, STMT_META_GET, &st);
	if (r < 0)
		return r;
	bind_text(st, 1, key);
	r = step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0 || sqlite3_column_type(st, 0) == SQLITE_NULL)
		return -ENOENT;
	*ret = sqlite3_column_int64(st, 0);
	return 0;
}

/* Write an integer into the meta table. */
static int
meta_set(struct store *s, const char *key, int64_t value)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, STMT_META_SET, &st);
	if (r < 0)
		return r;
	bind_text(st, 1, key);
	sqlite3_bind_int64(st, 2, value);
	return step_done(s, st);
}

/* The newest hour ever scheduled. */
int
store_cursor_hour(struct store *s, int64_t *ret)
{
	return meta_get(s, "cursor_hour", ret);
}

/* Schedule hours [from, to] to be collected again now. */
int
store_recollect(struct store *s, int64_t from, int64_t to, const char *actor, const char *reason,
                int64_t now, size_t *ret_n)
{
	int64_t cursor = 0;
	size_t n = 0;
	int r;

	if (!actor || !time_on_hour(from) || !time_on_hour(to) || from > to)
		return fail_msg(s, -EINVAL, "recollect needs hours on the hour, from <= to");
	r = tx_begin(s);
	if (r < 0)
		return r;
	r = meta_get(s, "cursor_hour", &cursor);
	if (r == -ENOENT || (r >= 0 && to > cursor))
		r = fail_msg(s, -EINVAL, "hours after the collection cursor were never collected");
	for (int64_t h = from; r >= 0 && h <= to; h += SECONDS_PER_HOUR) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;
		int changed;

		r = sqlite3_prepare_v2(
		        s->db,
		        "UPDATE hours SET pass = CASE WHEN pass < 2 THEN 2 ELSE"
		        " pass + 1 END, next_link = NULL, due_at = ?2 WHERE hour = ?1",
		        -1, &st, NULL);
		if (r != SQLITE_OK) {
			r = fail(s, r);
			break;
		}
		sqlite3_bind_int64(st, 1, h);
		sqlite3_bind_int64(st, 2, now);
		r = step_done(s, st);
		sqlite3_finalize(TAKE_PTR(st));
		if (r < 0)
			break;
		changed = sqlite3_changes(s->db);
		if (changed > 0) {
			n += (size_t)changed;
			continue;
		}
		r = sqlite3_prepare_v2(s->db,
		                       "INSERT INTO hours (hour, scope, pass, next_link, due_at)"
		                       " VALUES (?1, '', 2, NULL, ?2)",
		                       -1, &st, NULL);
		if (r != SQLITE_OK) {
			r = fail(s, r);
			break;
		}
		sqlite3_bind_int64(st, 1, h);
		sqlite3_bind_int64(st, 2, now);
		r = step_done(s, st);
		sqlite3_finalize(TAKE_PTR(st));
		n++;
	}
	if (r >= 0) {
		_cleanup_free_ char *detail = NULL;
		char a[TIME_RFC3339_LEN + 1], b[TIME_RFC3339_LEN + 1];

		detail = xasprintf("hours %s to %s%s%s", time_format_rfc3339(from, a),
		                   time_format_rfc3339(to, b), reason ? ": " : "",
		                   reason ? reason : "");
		r = history_add(s, 0, now, actor, "recollect", detail);
	}
	r = tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_n)
		*ret_n = n;
	return 0;
}

/* Compare two quantity texts by value; text equality when either does not parse. */
static bool
quantity_equal(const char *a, const char *b)
{
	struct decimal da, db;

	if (!a || !b)
		return a == b;
	if (decimal_parse_string(a, &da) < 0 || decimal_parse_string(b, &db) < 0)
		return streq(a, b);
	return decimal_cmp(&da, &db) == 0;
}

/* Length of a string, 0 for NULL. */
static size_t
len0(const char *s)
{
	return s ? strlen(s) : 0;
}

/* Estimated size of a record's Commerce event. */
static int64_t
event_size(const struct store_record *r)
{
	return (int64_t)(STORE_EVENT_OVERHEAD + len0(r->key) + 2 * len0(r->subscription_id) +
	                 len0(r->meter_id) + len0(r->quantity) + len0(r->resource_uri) +
	                 len0(r->location) + len0(r->tags) + len0(r->additional_info));
}

/* Store a record's raw text in the side table (insert or replace). */
static int
raw_set(struct store *s, int64_t id, const char *raw)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, STMT_INSERT_RAW, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	bind_text(st, 2, raw);
	return step_done(s, st);
}

/* Insert one row; *ret_new tells whether it was new (not an existing key). */
static int
insert_row(struct store *s, const struct store_record *r, enum store_state state,
           int64_t reported_hour, int64_t now, int64_t conflict_of, int64_t adjustment_of,
           bool *ret_new)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, r2;

	r2 = stmt_get(s, STMT_INSERT, &st);
	if (r2 < 0)
		return r2;
	rc |= sqlite3_bind_int(st, 1, state);
	rc |= bind_text(st, 2, r->key);
	rc |= sqlite3_bind_int64(st, 3, reported_hour);
	rc |= bind_text(st, 4, r->subscription_id);
	rc |= bind_text(st, 5, r->meter_id);
	rc |= bind_text(st, 6, r->quantity);
	rc |= sqlite3_bind_int64(st, 7, r->usage_start);
	rc |= sqlite3_bind_int64(st, 8, r->usage_end);
	rc |= bind_text(st, 9, r->resource_uri);
	rc |= bind_text(st, 10, r->location);
	rc |= bind_text(st, 11, r->tags);
	rc |= bind_text(st, 12, r->additional_info);
	rc |= sqlite3_bind_int64(st, 13, event_size(r));
	rc |= bind_text(st, 14, state == STORE_QUARANTINED ? "invalid-record" : NULL);
	rc |= bind_text(st, 15, state == STORE_QUARANTINED ? r->error_message : NULL);
	rc |= sqlite3_bind_int64(st, 16, now);
	rc |= sqlite3_bind_int64(st, 17, now);
	rc |= conflict_of ? sqlite3_bind_int64(st, 18, conflict_of) : sqlite3_bind_null(st, 18);
	rc |= adjustment_of ? sqlite3_bind_int64(st, 19, adjustment_of) : sqlite3_bind_null(st, 19);
	rc |= bind_text(st, 20, r->tenant_id);
	rc |= bind_text(st, 21, r->charged_subscription);
	rc |= bind_text(st, 22, r->charge_reason);
	if (r->registration) {
		int64_t number = 0;

		r2 = registration_number(s, r->registration, &number);
		if (r2 < 0)
			return r2;
		rc |= sqlite3_bind_int64(st, 23, number);
	} else
		rc |= sqlite3_bind_null(st, 23);
	if (rc != SQLITE_OK)
		return fail(s, SQLITE_ERROR);
	r2 = step_done(s, st);
	if (r2 < 0)
		return r2;
	*ret_new = sqlite3_changes(s->db) > 0;
	if (!*ret_new)
		return 0;
	s->delta[state]++;
	if (r->raw)
		return raw_set(s, sqlite3_last_insert_rowid(s->db), r->raw);
	return 0;
}

/* True for a record key: 64 lower-case hex digits. */
static bool
key_valid(const char *key)
{
	return key && strlen(key) == HASH_SHA256_HEX_LEN &&
	       strspn(key, "0123456789abcdef") == HASH_SHA256_HEX_LEN;
}

/* Store one record of a page: new, duplicate or conflict. */
static int
put_record(struct store *s, const struct store_page *page, const struct store_record *r,
           struct store_page_result *res)
{
	char qkey[HASH_SHA256_HEX_LEN + 1], qtext[DECIMAL_STRING_MAX];
	struct store_record copy;
	struct decimal q;
	int64_t orig_id;
	bool is_new, orig_quarantined, same;
	int rr;

	if (r->state == STORE_QUARANTINED && !key_valid(r->key)) {
		/* too broken for a key of section 4: a stable one from what was received */
		_cleanup_free_ char *in = xasprintf("quarantined\n%s\n%s", r->raw ? r->raw : "",
		                                    r->error_message ? r->error_message : "");

		hash_sha256_hex(in, strlen(in), qkey);
		copy = *r;
		copy.key = qkey;
		r = &copy;
	}
	if (!key_valid(r->key))
		return fail_msg(s, -EINVAL, "record without a valid key");
	if (r->state == STORE_PENDING) {
		if (isempty(r->subscription_id) || isempty(r->meter_id))
			return fail_msg(s, -EINVAL, "pending record without subscription or meter");
		if (!r->quantity || decimal_parse_string(r->quantity, &q) < 0 || q.negative)
			return fail_msg(s, -EINVAL,
			                "pending record %s: quantity is not a decimal >= 0",
			                r->key);
		decimal_format(&q, qtext);
		if (strcmp(qtext, r->quantity) != 0) {
			/* exponent, sign or missing digit around the point: the plain text */
			copy = *r;
			copy.quantity = qtext;
			r = &copy;
		}
	} else if (r->state != STORE_QUARANTINED)
		return fail_msg(s, -EINVAL, "a record enters the store pending or quarantined");

	rr = insert_row(s, r, r->state, page->reported_hour, page->now, 0, 0, &is_new);
	if (rr < 0)
		return rr;
	if (is_new) {
		if (r->state == STORE_QUARANTINED)
			res->quarantined++;
		else
			res->inserted++;
		return 0;
	}

	/* the key exists: the rare path, look at what is stored */
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		rr = stmt_get(s, STMT_LOOKUP, &st);
		if (rr < 0)
			return rr;
		sqlite3_bind_int64(st, 1, page->reported_hour);
		bind_text(st, 2, r->key);
		rr = step_row(s, st);
		if (rr < 0)
			return rr;
		if (rr == 0)
			return fail_msg(s, -EIO, "key conflict without a stored record");
		orig_id = sqlite3_column_int64(st, 0);
		orig_quarantined = sqlite3_column_int(st, 1) == STORE_QUARANTINED;
		same = orig_quarantined || r->state == STORE_QUARANTINED ||
		       quantity_equal((const char *)sqlite3_column_text(st, 2), r->quantity);
	}
	if (!same) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		rr = stmt_get(s, STMT_CONFLICTS_OF, &st);
		if (rr < 0)
			return rr;
		sqlite3_bind_int64(st, 1, orig_id);
		while (!same && (rr = step_row(s, st)) > 0)
			same = quantity_equal((const char *)sqlite3_column_text(st, 0),
			                      r->quantity);
		if (rr < 0)
			return rr;
	}
	if (same) {
		res->duplicates++;
		return 0;
	}
	rr = insert_row(s, r, STORE_CONFLICT, page->reported_hour, page->now, orig_id, 0, &is_new);
	if (rr < 0)
		return rr;
	if (!is_new)
		return fail_msg(s, -EIO, "conflict row was not stored");
	res->conflicts++;
	return 0;
}

/* Move the hour's cursor after a page. */
static int
page_cursor(struct store *s, const struct store_page *page)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	if (page->next_link) {
		r = stmt_get(s, STMT_HOUR_LINK, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, page->reported_hour);
		bind_text(st, 2, page->scope);
		sqlite3_bind_int64(st, 3, page->pass);
		bind_text(st, 4, page->next_link);
		sqlite3_bind_int64(st, 5, page->now);
	} else if (page->next_due_at) {
		r = stmt_get(s, STMT_HOUR_FINISH, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, page->reported_hour);
		bind_text(st, 2, page->scope);
		sqlite3_bind_int64(st, 3, (int64_t)page->pass + 1);
		sqlite3_bind_int64(st, 4, page->next_due_at);
	} else {
		r = stmt_get(s, STMT_HOUR_DELETE, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, page->reported_hour);
		bind_text(st, 2, page->scope);
	}
	r = step_done(s, st);
	if (r < 0)
		return r;
	return cursor_raise(s, page->reported_hour);
}

/* Store a page and its cursor in one transaction. */
int
store_put_page(struct store *s, const struct store_page *page, struct store_page_result *ret)
{
	struct store_page_result res = {0};
	int r;

	if (!page || !page->scope || (page->n_records && !page->records) ||
	    !time_on_hour(page->reported_hour))
		return fail_msg(s, -EINVAL, "invalid page");
	r = tx_begin(s);
	if (r < 0)
		return r;
	for (size_t i = 0; r >= 0 && i < page->n_records; i++)
		r = put_record(s, page, &page->records[i], &res);
	if (r >= 0)
		r = page_cursor(s, page);
	r = tx_end(s, r);
	if (r < 0)
		return r;
	if (ret)
		*ret = res;
	return 0;
}

/* Free a batch. */
void
store_batch_done(struct store_batch *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->n_records; i++)
		store_record_done(&b->records[i]);
	free(b->records);
	*b = (struct store_batch){0};
}

/* A record the claim looked at: taken into the batch or held. */
struct claim_item {
	struct store_record rec;
	bool hold;
};

/* Map a record without a charge; fills its charge fields or marks it held. */
static int
claim_map(struct store *s, const struct store_claim *claim, struct claim_item *it)
{
	struct store_charge charge = {0};
	int r;

	if (it->rec.charged_subscription)
		return 0; /* frozen by an earlier claim */
	if (!claim->map)
		return fail_msg(s, -EINVAL, "record %" PRId64 " has no charge and no mapping",
		                it->rec.id);
	r = claim->map(claim->userdata, &it->rec, &charge);
	if (r < 0)
		return fail_msg(s, r, "mapping record %" PRId64 " failed", it->rec.id);
	if (charge.hold) {
		it->hold = true;
		free(it->rec.error_code);
		it->rec.error_code = xstrdup(charge.reason ? charge.reason : "ambiguous");
		return 0;
	}
	if (!charge.charged_subscription || !charge.reason || isempty(charge.registration))
		return fail_msg(s, -EINVAL,
		                "mapping gave no charged subscription, reason or registration");
	it->rec.charged_subscription = xstrdup(charge.charged_subscription);
	it->rec.charge_reason = xstrdup(charge.reason);
	free(it->rec.registration);
	it->rec.registration = xstrdup(charge.registration);
	free(it->rec.tenant_id);
	it->rec.tenant_id = charge.tenant_id ? xstrdup(charge.tenant_id) : NULL;
	return 0;
}

/*
 * The number of the batch with this id. With create, an unknown id is given the next number;
 * without, an unknown id is -ENOENT.
 */
static int
batch_number(struct store *s, const char *uuid, bool create, int64_t *ret)
{
	int r;

	if (create) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = stmt_get(s, STMT_BATCH_ADD, &st);
		if (r < 0)
			return r;
		bind_text(st, 1, uuid);
		r = step_done(s, st);
		if (r < 0)
			return r;
		if (sqlite3_changes(s->db) > 0) {
			*ret = sqlite3_last_insert_rowid(s->db);
			return 0;
		}
	}
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = stmt_get(s, STMT_BATCH_FIND, &st);
		if (r < 0)
			return r;
		bind_text(st, 1, uuid);
		r = step_row(s, st);
		if (r < 0)
			return r;
		if (r == 0)
			return -ENOENT;
		*ret = sqlite3_column_int64(st, 0);
	}
	return 0;
}

/*
 * The number of a registration resource id, given one when new. The last one is remembered:
 * nearly every record of a stamp names the same registration.
 */
static int
registration_number(struct store *s, const char *resource_id, int64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	if (s->registration_id && streq(s->registration_id, resource_id)) {
		*ret = s->registration_number;
		return 0;
	}
	r = stmt_get(s, STMT_REGISTRATION_NUMBER, &st);
	if (r < 0)
		return r;
	bind_text(st, 1, resource_id);
	r = step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0)
		return fail_msg(s, -EIO, "registration was not stored");
	*ret = sqlite3_column_int64(st, 0);
	free(s->registration_id);
	s->registration_id = xstrdup(resource_id);
	s->registration_number = *ret;
	return 0;
}

/* The id of batch number n. */
static int
batch_uuid(struct store *s, int64_t n, char ret[static STORE_BATCH_ID_LEN + 1])
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	const char *t;
	int r;

	r = stmt_get(s, STMT_BATCH_UUID, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, n);
	r = step_row(s, st);
	if (r < 0)
		return r;
	t = r > 0 ? (const char *)sqlite3_column_text(st, 0) : NULL;
	if (!t || strlen(t) != STORE_BATCH_ID_LEN)
		return fail_msg(s, -EBADMSG, "batch %" PRId64 " has no valid id", n);
	memcpy(ret, t, STORE_BATCH_ID_LEN + 1);
	return 0;
}

/* Select the batch's records (batch 0: a new batch) and map them (no writes yet). */
static int
claim_collect(struct store *s, const struct store_claim *claim, int64_t batch,
              struct claim_item **items, size_t *cap, size_t *n_items, size_t *n_taken)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	size_t max_records = claim->max_records ? claim->max_records : SIZE_MAX;
	uint64_t bytes = 0;
	int r;

	r = stmt_get(s, batch ? STMT_CLAIM_BATCH : STMT_CLAIM_FRESH, &st);
	if (r < 0)
		return r;
	if (batch)
		sqlite3_bind_int64(st, 1, batch);
	else
		sqlite3_bind_int64(st, 1, claim->now);
	while ((r = step_row(s, st)) > 0) {
		struct claim_item *it;
		uint64_t size = (uint64_t)sqlite3_column_int64(st, COL_EVENT_SIZE);

		/* a retried batch is re-sent whole; a new one stops at the limits (one at least) */
		if (!batch && *n_taken > 0 &&
		    (*n_taken >= max_records ||
		     (claim->max_bytes && bytes + size > claim->max_bytes)))
			break;
		*items = grow(*items, cap, *n_items + 1, sizeof(**items));
		it = &(*items)[(*n_items)++];
		*it = (struct claim_item){0};
		record_load(st, &it->rec);
		r = claim_map(s, claim, it);
		if (r < 0)
			return r;
		if (!it->hold) {
			(*n_taken)++;
			bytes += size;
		}
	}
	return r;
}

/* Write the claim: taken records inflight in batch number `batch`, the others held. */
static int
claim_write(struct store *s, struct claim_item *items, size_t n, int64_t batch)
{
	for (size_t i = 0; i < n; i++) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;
		struct store_record *rec = &items[i].rec;
		int64_t number = 0;
		int r;

		r = stmt_get(s, items[i].hold ? STMT_CLAIM_HOLD : STMT_CLAIM_TAKE, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, rec->id);
		if (items[i].hold) {
			bind_text(st, 2, rec->error_code);
		} else {
			sqlite3_bind_int64(st, 2, batch);
			bind_text(st, 3, rec->tenant_id);
			bind_text(st, 4, rec->charged_subscription);
			bind_text(st, 5, rec->charge_reason);
			/* NULL: mapped before schema version 3 and frozen without one */
			if (rec->registration) {
				r = registration_number(s, rec->registration, &number);
				if (r < 0)
					return r;
				sqlite3_bind_int64(st, 6, number);
			} else
				sqlite3_bind_null(st, 6);
		}
		r = step_done(s, st);
		if (r < 0)
			return r;
		s->delta[STORE_PENDING]--;
		s->delta[items[i].hold ? STORE_HELD : STORE_INFLIGHT]++;
		rec->state = items[i].hold ? STORE_HELD : STORE_INFLIGHT;
	}
	return 0;
}

/* Claim a batch (see store.h). */
int
store_claim_batch(struct store *s, const struct store_claim *claim, struct store_batch *ret)
{
	struct store_batch b = {0};
	struct claim_item *items = NULL;
	size_t n_items = 0, n_taken = 0, cap = 0;
	int64_t batch = 0; /* the head's batch number; 0: a new batch */
	bool found = false;
	int r;

	if (!claim || !ret)
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = stmt_get(s, STMT_CLAIM_HEAD, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, claim->now);
			r = step_row(s, st);
			found = r > 0;
			if (found)
				batch = col_int64_or0(st, 1);
		}
	}
	if (r >= 0 && batch)
		r = batch_uuid(s, batch, b.batch_id);
	if (r >= 0 && found)
		r = claim_collect(s, claim, batch, &items, &cap, &n_items, &n_taken);
	/* a new batch is numbered once it has records (all may be held) */
	if (r >= 0 && found && !batch && n_taken > 0) {
		r = hash_uuid4(b.batch_id);
		if (r >= 0)
			r = batch_number(s, b.batch_id, true, &batch);
	}
	if (r >= 0 && found)
		r = claim_write(s, items, n_items, batch);
	r = tx_end(s, r);
	if (r >= 0 && n_taken > 0) {
		b.records = xcalloc(n_taken, sizeof(*b.records));
		for (size_t i = 0; i < n_items; i++) {
			if (items[i].hold)
				continue;
			free(items[i].rec.batch_id);
			items[i].rec.batch_id = xstrdup(b.batch_id);
			b.attempts = MAX(b.attempts, items[i].rec.attempts);
			b.records[b.n_records++] = items[i].rec;
			items[i].rec = (struct store_record){0};
		}
	}
	for (size_t i = 0; i < n_items; i++)
		store_record_done(&items[i].rec);
	free(items);
	if (r < 0)
		return r;
	if (b.n_records == 0)
		b.batch_id[0] = '\0';
	*ret = b;
	return 0;
}

/* Read a single integer row from a cached statement; -ENOENT when there is none. */
static int
single_int64(struct store *s, enum stmt_id id, int64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, id, &st);
	if (r < 0)
		return r;
	r = step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0 || sqlite3_column_type(st, 0) == SQLITE_NULL)
		return -ENOENT;
	*ret = sqlite3_column_int64(st, 0);
	return 0;
}

/* The earliest next attempt of a pending record. */
int
store_next_due(struct store *s, int64_t *ret)
{
	return single_int64(s, STMT_NEXT_DUE, ret);
}

/* Apply one outcome; *ret_applied tells whether the record was inflight in the batch. */
static int
apply_outcome(struct store *s, int64_t batch, const struct store_outcome *o, int64_t now,
              bool *ret_applied)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	enum store_state to;
	int64_t new_batch = 0;
	int r;

	switch (o->kind) {
	case STORE_OUTCOME_FORWARDED:
		if (!o->status)
			return fail_msg(s, -EINVAL, "forwarded outcome without a status");
		r = stmt_get(s, STMT_OUTCOME_FORWARDED, &st);
		if (r < 0)
			return r;
		bind_text(st, 3, o->status);
		sqlite3_bind_int64(st, 4, now);
		to = STORE_FORWARDED;
		break;
	case STORE_OUTCOME_DEAD:
		r = stmt_get(s, STMT_OUTCOME_DEAD, &st);
		if (r < 0)
			return r;
		bind_text(st, 3, o->error_code);
		bind_text(st, 4, o->error_message);
		to = STORE_DEAD;
		break;
	case STORE_OUTCOME_RETRY:
		if (o->new_batch_id && strlen(o->new_batch_id) != STORE_BATCH_ID_LEN)
			return fail_msg(s, -EINVAL, "malformed batch id");
		if (o->new_batch_id) {
			r = batch_number(s, o->new_batch_id, true, &new_batch);
			if (r < 0)
				return r;
		}
		r = stmt_get(s, STMT_OUTCOME_RETRY, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 3, o->next_attempt_at);
		if (new_batch)
			sqlite3_bind_int64(st, 4, new_batch);
		else
			sqlite3_bind_null(st, 4);
		bind_text(st, 5, o->error_code);
		bind_text(st, 6, o->error_message);
		to = STORE_PENDING;
		break;
	default:
		return fail_msg(s, -EINVAL, "unknown outcome kind");
	}
	sqlite3_bind_int64(st, 1, o->id);
	sqlite3_bind_int64(st, 2, batch);
	r = step_done(s, st);
	if (r < 0)
		return r;
	*ret_applied = sqlite3_changes(s->db) > 0;
	if (*ret_applied) {
		s->delta[STORE_INFLIGHT]--;
		s->delta[to]++;
	}
	return 0;
}

/* Apply a batch's outcomes in one transaction. */
int
store_apply_outcomes(struct store *s, const char *batch_id, const struct store_outcome *o, size_t n,
                     int64_t now, size_t *ret_applied)
{
	size_t applied = 0;
	int64_t batch = 0;
	int r;

	if (!batch_id || (n && !o))
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	/* an unknown batch id keeps number 0, which no record carries: nothing applies */
	r = batch_number(s, batch_id, false, &batch);
	if (r == -ENOENT)
		r = 0;
	for (size_t i = 0; r >= 0 && i < n; i++) {
		bool a = false;

		r = apply_outcome(s, batch, &o[i], now, &a);
		applied += a;
	}
	r = tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_applied)
		*ret_applied = applied;
	return 0;
}

/* Run a bulk state change from one state to another, count it and (with action) record it. */
static int
bulk_move(struct store *s, enum stmt_id id, enum store_state from, enum store_state to,
          const char *action, int64_t now, size_t *ret_n)
{
	size_t n = 0;
	int r;

	r = tx_begin(s);
	if (r < 0)
		return r;
	r = exec_simple(s, id);
	if (r >= 0) {
		n = (size_t)sqlite3_changes(s->db);
		s->delta[from] -= (int64_t)n;
		s->delta[to] += (int64_t)n;
	}
	if (r >= 0 && n > 0 && action) {
		_cleanup_free_ char *detail = xasprintf("%zu %s records back to %s", n,
		                                        state_names[from], state_names[to]);

		r = history_add(s, 0, now, "azs-usaged", action, detail);
	}
	r = tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_n)
		*ret_n = n;
	return 0;
}

/* Every inflight record back to pending, batch id kept. */
int
store_reset_inflight(struct store *s, size_t *ret_n)
{
	return bulk_move(s, STMT_RESET_INFLIGHT, STORE_INFLIGHT, STORE_PENDING, NULL, 0, ret_n);
}

/* Held records back to pending with their charge cleared. */
int
store_unhold_all(struct store *s, int64_t now, size_t *ret_n)
{
	return bulk_move(s, STMT_UNHOLD, STORE_HELD, STORE_PENDING, "unhold", now, ret_n);
}

/* Counts by state from the counts table. */
int
store_counts(struct store *s, struct store_counts *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	struct store_counts c = {0};
	int r;

	r = stmt_get(s, STMT_COUNTS_GET, &st);
	if (r < 0)
		return r;
	while ((r = step_row(s, st)) > 0) {
		int64_t state = sqlite3_column_int64(st, 0);
		int64_t n = sqlite3_column_int64(st, 1);

		if (state >= 0 && state < _STORE_STATE_MAX)
			c.by_state[state] = n > 0 ? (uint64_t)n : 0;
	}
	if (r < 0)
		return r;
	*ret = c;
	return 0;
}

/* Records waiting to be forwarded. */
int
store_backlog(struct store *s, uint64_t *ret)
{
	struct store_counts c;
	int r;

	r = store_counts(s, &c);
	if (r < 0)
		return r;
	*ret = c.by_state[STORE_PENDING] + c.by_state[STORE_HELD] + c.by_state[STORE_INFLIGHT];
	return 0;
}

/* collected_at of the oldest pending record. */
int
store_oldest_pending(struct store *s, int64_t *ret)
{
	return single_int64(s, STMT_OLDEST_PENDING, ret);
}

/* Delete old forwarded records, at most max_rows. */
int
store_prune(struct store *s, int64_t before, size_t max_rows, size_t *ret_deleted)
{
	_cleanup_free_ int64_t *batches = NULL;
	size_t n = 0, n_batches = 0, cap = 0;
	int r;

	r = tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = stmt_get(s, STMT_PRUNE, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, before);
			sqlite3_bind_int64(st, 2, (int64_t)MIN(max_rows, (size_t)INT64_MAX));
		}
		/* one row per deleted record (cascaded deletions, discarded conflict rows and
		 * history, are not counted here), with the batch it was forwarded in */
		while (r >= 0 && (r = step_row(s, st)) > 0) {
			int64_t batch = col_int64_or0(st, 0);

			n++;
			/* a batch's records are forwarded together: mostly runs of one number */
			if (batch && (n_batches == 0 || batches[n_batches - 1] != batch)) {
				batches = grow(batches, &cap, n_batches + 1, sizeof(*batches));
				batches[n_batches++] = batch;
			}
		}
	}
	if (r >= 0)
		s->delta[STORE_FORWARDED] -= (int64_t)n;
	/* forget the batches no record names any more */
	for (size_t i = 0; r >= 0 && i < n_batches; i++) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = stmt_get(s, STMT_BATCH_FORGET, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, batches[i]);
			r = step_done(s, st);
		}
	}
	r = tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_deleted)
		*ret_deleted = n;
	return 0;
}

/* Free a subscription's strings. */
void
store_subscription_done(struct store_subscription *sub)
{
	if (!sub)
		return;
	free(sub->subscription_id);
	free(sub->tenant_id);
	free(sub->display_name);
	free(sub->owner);
	free(sub->state);
	*sub = (struct store_subscription){0};
}

/* Prepare an uncached statement (off the loop); -errno on failure. */
static int
prepare_once(struct store *s, const char *sql, sqlite3_stmt **ret)
{
	int rc;

	rc = sqlite3_prepare_v2(s->db, sql, -1, ret, NULL);
	if (rc != SQLITE_OK)
		return fail(s, rc);
	return 0;
}

/* Step an uncached statement to completion and finalize it. */
static int
run_once(struct store *s, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st), r = 0;

	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		r = fail(s, rc);
	sqlite3_finalize(st);
	return r;
}

/* Replace the user-subscription cache. */
int
store_subscriptions_replace(struct store *s, const struct store_subscription *subs, size_t n,
                            int64_t now)
{
	sqlite3_stmt *st = NULL;
	int r;

	if (n && !subs)
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	r = prepare_once(s, "DELETE FROM subscriptions", &st);
	if (r >= 0)
		r = run_once(s, st);
	if (r >= 0)
		r = prepare_once(s,
		                 "INSERT INTO subscriptions (subscription_id, tenant_id,"
		                 " display_name, owner, state) VALUES (?1, ?2, ?3, ?4, ?5)"
		                 " ON CONFLICT DO UPDATE SET tenant_id = excluded.tenant_id,"
		                 " display_name = excluded.display_name, owner = excluded.owner,"
		                 " state = excluded.state",
		                 &st);
	for (size_t i = 0; r >= 0 && i < n; i++) {
		if (!subs[i].subscription_id) {
			r = fail_msg(s, -EINVAL, "subscription without an id");
			break;
		}
		bind_text(st, 1, subs[i].subscription_id);
		bind_text(st, 2, subs[i].tenant_id);
		bind_text(st, 3, subs[i].display_name);
		bind_text(st, 4, subs[i].owner);
		bind_text(st, 5, subs[i].state);
		r = step_done(s, st);
		sqlite3_reset(st);
	}
	if (st)
		sqlite3_finalize(st);
	if (r >= 0)
		r = meta_set(s, "subscriptions_refreshed_at", now);
	return tx_end(s, r);
}

/* One cached user subscription. */
int
store_subscription_get(struct store *s, const char *subscription_id, struct store_subscription *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	if (!subscription_id || !ret)
		return -EINVAL;
	r = stmt_get(s, STMT_SUBSCRIPTION_GET, &st);
	if (r < 0)
		return r;
	bind_text(st, 1, subscription_id);
	r = step_row(s, st);
	if (r > 0)
		*ret = (struct store_subscription){
		        .subscription_id = col_dup(st, 0),
		        .tenant_id = col_dup(st, 1),
		        .display_name = col_dup(st, 2),
		        .owner = col_dup(st, 3),
		        .state = col_dup(st, 4),
		};
	return r < 0 ? r : r == 0 ? -ENOENT : 0;
}

/* When the subscription cache was last replaced. */
int
store_subscriptions_refreshed_at(struct store *s, int64_t *ret)
{
	return meta_get(s, "subscriptions_refreshed_at", ret);
}

/* Free a registration's strings. */
void
store_registration_done(struct store_registration *reg)
{
	if (!reg)
		return;
	free(reg->id);
	free(reg->default_subscription);
	free(reg->raw);
	*reg = (struct store_registration){0};
}

/* Free a customer subscription's strings. */
void
store_customer_subscription_done(struct store_customer_subscription *c)
{
	if (!c)
		return;
	free(c->subscription_id);
	free(c->tenant_id);
	*c = (struct store_customer_subscription){0};
}

/* Replace the registration cache. */
int
store_registration_replace(struct store *s, const struct store_registration *reg,
                           const struct store_customer_subscription *cs, size_t n)
{
	sqlite3_stmt *st = NULL;
	int r;

	if (!reg || !reg->id || !reg->default_subscription || (n && !cs))
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	r = prepare_once(s, "DELETE FROM registration", &st);
	if (r >= 0)
		r = run_once(s, st);
	if (r >= 0)
		r = prepare_once(s, "DELETE FROM customer_subscriptions", &st);
	if (r >= 0)
		r = run_once(s, st);
	if (r >= 0)
		r = prepare_once(s,
		                 "INSERT INTO registration (id, default_subscription, raw,"
		                 " refreshed_at) VALUES (?1, ?2, ?3, ?4)",
		                 &st);
	if (r >= 0) {
		bind_text(st, 1, reg->id);
		bind_text(st, 2, reg->default_subscription);
		bind_text(st, 3, reg->raw);
		sqlite3_bind_int64(st, 4, reg->refreshed_at);
		r = run_once(s, st);
	}
	st = NULL;
	if (r >= 0)
		r = prepare_once(s,
		                 "INSERT INTO customer_subscriptions (subscription_id, tenant_id)"
		                 " VALUES (?1, ?2)",
		                 &st);
	for (size_t i = 0; r >= 0 && i < n; i++) {
		if (!cs[i].subscription_id || !cs[i].tenant_id) {
			r = fail_msg(s, -EINVAL, "customer subscription without id or tenant");
			break;
		}
		bind_text(st, 1, cs[i].subscription_id);
		bind_text(st, 2, cs[i].tenant_id);
		r = step_done(s, st);
		sqlite3_reset(st);
	}
	if (st)
		sqlite3_finalize(st);
	return tx_end(s, r);
}

/* The cached registration. */
int
store_registration_get(struct store *s, struct store_registration *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, STMT_REGISTRATION_GET, &st);
	if (r < 0)
		return r;
	r = step_row(s, st);
	if (r > 0)
		*ret = (struct store_registration){
		        .id = col_dup(st, 0),
		        .default_subscription = col_dup(st, 1),
		        .raw = col_dup(st, 2),
		        .refreshed_at = sqlite3_column_int64(st, 3),
		};
	return r < 0 ? r : r == 0 ? -ENOENT : 0;
}

/* All cached customer subscriptions. */
int
store_customer_subscriptions(struct store *s, struct store_customer_subscription **ret,
                             size_t *ret_n)
{
	struct store_customer_subscription *list = NULL;
	sqlite3_stmt *st = NULL;
	size_t n = 0, cap = 0;
	int r;

	r = prepare_once(s,
	                 "SELECT subscription_id, tenant_id FROM customer_subscriptions"
	                 " ORDER BY subscription_id",
	                 &st);
	if (r < 0)
		return r;
	while ((r = step_row(s, st)) > 0) {
		list = grow(list, &cap, n + 1, sizeof(*list));
		list[n++] = (struct store_customer_subscription){
		        .subscription_id = col_dup(st, 0),
		        .tenant_id = col_dup(st, 1),
		};
	}
	sqlite3_finalize(st);
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			store_customer_subscription_done(&list[i]);
		free(list);
		return r;
	}
	*ret = list;
	*ret_n = n;
	return 0;
}

/* The customer subscriptions registered for one tenant. */
int
store_customer_subscriptions_for_tenant(struct store *s, const char *tenant_id, char ***ret,
                                        size_t *ret_n)
{
	char **list = NULL;
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	size_t n = 0, cap = 0;
	int r;

	if (!tenant_id)
		return -EINVAL;
	r = stmt_get(s, STMT_TENANT_CUSTOMER_SUBSCRIPTIONS, &st);
	if (r < 0)
		return r;
	bind_text(st, 1, tenant_id);
	while ((r = step_row(s, st)) > 0) {
		list = grow(list, &cap, n + 2, sizeof(*list));
		list[n++] = col_dup(st, 0);
		list[n] = NULL;
	}
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			free(list[i]);
		free(list);
		return r;
	}
	*ret = list;
	*ret_n = n;
	return 0;
}

/* Set a daemon fact. */
int
store_fact_set(struct store *s, const char *key, const char *value)
{
	int r;

	if (!key || !value)
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = stmt_get(s, STMT_FACT_SET, &st);
		if (r >= 0) {
			bind_text(st, 1, key);
			bind_text(st, 2, value);
			r = step_done(s, st);
		}
	}
	return tx_end(s, r);
}

/* Read a daemon fact. */
int
store_fact_get(struct store *s, const char *key, char **ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	if (!key || !ret)
		return -EINVAL;
	r = stmt_get(s, STMT_FACT_GET, &st);
	if (r < 0)
		return r;
	bind_text(st, 1, key);
	r = step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0)
		return -ENOENT;
	*ret = col_dup(st, 0);
	return 0;
}

/* Records matching a query, newest first. */
int
store_records_query(struct store *s, const struct store_query *q, store_record_fn fn,
                    void *userdata)
{
	char sql[1024];
	sqlite3_stmt *st = NULL;
	int r;

	if (!q || !fn)
		return -EINVAL;
	snprintf(sql, sizeof(sql),
	         "SELECT " RECORD_COLUMNS " FROM records WHERE 1%s%s%s%s%s%s"
	         " ORDER BY id DESC%s",
	         q->state >= 0 ? " AND state = ?1" : "",
	         q->state >= 0 && q->state != STORE_FORWARDED ? NOT_FORWARDED : "",
	         q->tenant_id ? " AND tenant_id = ?2" : "",
	         q->subscription_id ? " AND (subscription_id = ?3 OR charged_subscription = ?3)"
	                            : "",
	         q->since ? " AND collected_at >= ?4" : "",
	         q->include_discarded ? "" : " AND discarded = 0", q->limit ? " LIMIT ?5" : "");
	r = prepare_once(s, sql, &st);
	if (r < 0)
		return r;
	if (q->state >= 0)
		sqlite3_bind_int(st, 1, q->state);
	if (q->tenant_id)
		bind_text(st, 2, q->tenant_id);
	if (q->subscription_id)
		bind_text(st, 3, q->subscription_id);
	if (q->since)
		sqlite3_bind_int64(st, 4, q->since);
	if (q->limit)
		sqlite3_bind_int64(st, 5, (int64_t)MIN(q->limit, (size_t)INT64_MAX));
	while ((r = step_row(s, st)) > 0) {
		struct store_record rec;

		record_load(st, &rec);
		r = fn(userdata, &rec);
		store_record_done(&rec);
		if (r < 0)
			break;
	}
	sqlite3_finalize(st);
	return r < 0 ? r : 0;
}

/* Find a record by key prefix. */
int
store_record_find(struct store *s, const char *prefix, int state, struct store_record *ret)
{
	char lower[HASH_SHA256_HEX_LEN + 1], sql[1024];
	struct store_record first = {0};
	sqlite3_stmt *st = NULL;
	size_t len;
	int r, n = 0;
	bool ambiguous = false;

	if (!prefix || !ret)
		return -EINVAL;
	len = strlen(prefix);
	if (len < 8 || len > HASH_SHA256_HEX_LEN || strspn(prefix, "0123456789abcdefABCDEF") != len)
		return fail_msg(s, -EINVAL, "a key prefix is 8 to 64 hex digits");
	for (size_t i = 0; i <= len; i++)
		lower[i] =
		        (char)(prefix[i] >= 'A' && prefix[i] <= 'F' ? prefix[i] + 32 : prefix[i]);

	/* discarded rows (resolved conflicts, discarded dead letters) yield to live ones */
	snprintf(sql, sizeof(sql),
	         "SELECT " RECORD_COLUMNS " FROM records WHERE substr(key, 1, ?1) = ?2%s%s"
	         " ORDER BY discarded, id LIMIT 2",
	         state >= 0 ? " AND state = ?3" : "",
	         state >= 0 && state != STORE_FORWARDED ? NOT_FORWARDED : "");
	r = prepare_once(s, sql, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)len);
	bind_text(st, 2, lower);
	if (state >= 0)
		sqlite3_bind_int(st, 3, state);
	while ((r = step_row(s, st)) > 0) {
		if (n++ == 0)
			record_load(st, &first);
		else
			ambiguous = first.discarded == (sqlite3_column_int(st, COL_DISCARDED) != 0);
	}
	sqlite3_finalize(st);
	if (r < 0 || n == 0 || ambiguous) {
		store_record_done(&first);
		if (r < 0)
			return r;
		return n == 0 ? fail_msg(s, -ENOENT, "no record with key %s", lower)
		              : fail_msg(s, -ENOTUNIQ, "several records match key %s", lower);
	}
	*ret = first;
	return 0;
}

/* Free a history entry's strings. */
void
store_history_done(struct store_history *h)
{
	if (!h)
		return;
	free(h->actor);
	free(h->action);
	free(h->detail);
	*h = (struct store_history){0};
}

/* A record's history, oldest first. */
int
store_record_history(struct store *s, int64_t id, struct store_history **ret, size_t *ret_n)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	struct store_history *list = NULL;
	size_t n = 0, cap = 0;
	int r;

	r = stmt_get(s, STMT_HISTORY_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	while ((r = step_row(s, st)) > 0) {
		list = grow(list, &cap, n + 1, sizeof(*list));
		list[n++] = (struct store_history){
		        .at = sqlite3_column_int64(st, 0),
		        .actor = col_dup(st, 1),
		        .action = col_dup(st, 2),
		        .detail = col_dup(st, 3),
		};
	}
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			store_history_done(&list[i]);
		free(list);
		return r;
	}
	*ret = list;
	*ret_n = n;
	return 0;
}

/* A dead letter back to pending, to be mapped and batched again. */
static int
dead_retry_one(struct store *s, const struct store_record *rec, const char *actor,
               const char *reason, int64_t now)
{
	_cleanup_free_ char *detail = NULL;
	sqlite3_stmt *st = NULL;
	int r;

	r = prepare_once(s,
	                 "UPDATE records SET state = " S_PENDING ", next_attempt_at = ?2,"
	                 " batch = NULL, error_code = NULL, error_message = NULL,"
	                 " tenant_id = NULL, charged_subscription = NULL, charge_reason = NULL,"
	                 " registration = NULL"
	                 " WHERE id = ?1 AND state = " S_DEAD " AND discarded = 0",
	                 &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, rec->id);
	sqlite3_bind_int64(st, 2, now);
	r = run_once(s, st);
	if (r < 0)
		return r;
	s->delta[STORE_DEAD]--;
	s->delta[STORE_PENDING]++;
	detail = xasprintf("was dead: %s%s%s%s%s", rec->error_code ? rec->error_code : "-",
	                   rec->error_message ? " " : "",
	                   rec->error_message ? rec->error_message : "", reason ? "; reason: " : "",
	                   reason ? reason : "");
	return history_add(s, rec->id, now, actor, "dead-retry", detail);
}

/* Check that a record may be retried. */
static int
dead_retry_check(struct store *s, const struct store_record *rec)
{
	if (rec->state != STORE_DEAD || rec->discarded)
		return fail_msg(s, -ENOENT, "record %" PRId64 " is not a dead letter", rec->id);
	if (rec->conflict_of)
		return fail_msg(s, -EPERM,
		                "record %" PRId64 " is a rejected change (%s), not a usage record; "
		                "discard it",
		                rec->id, rec->error_code ? rec->error_code : "conflict");
	return 0;
}

/* Retry one dead letter. */
int
store_dead_retry(struct store *s, int64_t id, const char *actor, const char *reason, int64_t now)
{
	struct store_record rec = {0};
	int r;

	if (!actor)
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	r = record_get(s, id, &rec);
	if (r >= 0)
		r = dead_retry_check(s, &rec);
	if (r >= 0)
		r = dead_retry_one(s, &rec, actor, reason, now);
	store_record_done(&rec);
	return tx_end(s, r);
}

/* Retry every dead letter that is a usage record. */
int
store_dead_retry_all(struct store *s, const char *actor, const char *reason, int64_t now,
                     size_t *ret_n)
{
	int64_t *ids = NULL;
	sqlite3_stmt *st = NULL;
	size_t n = 0, cap = 0;
	int r;

	if (!actor)
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	r = prepare_once(s,
	                 "SELECT id FROM records WHERE state = " S_DEAD " AND discarded = 0"
	                 " AND conflict_of IS NULL ORDER BY id",
	                 &st);
	if (r >= 0) {
		while ((r = step_row(s, st)) > 0) {
			ids = grow(ids, &cap, n + 1, sizeof(*ids));
			ids[n++] = sqlite3_column_int64(st, 0);
		}
		sqlite3_finalize(st);
	}
	for (size_t i = 0; r >= 0 && i < n; i++) {
		struct store_record rec = {0};

		r = record_get(s, ids[i], &rec);
		if (r >= 0)
			r = dead_retry_one(s, &rec, actor, reason, now);
		store_record_done(&rec);
	}
	free(ids);
	r = tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_n)
		*ret_n = n;
	return 0;
}

/* Discard one dead letter. */
int
store_dead_discard(struct store *s, int64_t id, const char *actor, const char *reason, int64_t now)
{
	struct store_record rec = {0};
	int r;

	if (!actor || isempty(reason))
		return fail_msg(s, -EINVAL, "discarding a dead letter needs a reason");
	r = tx_begin(s);
	if (r < 0)
		return r;
	r = record_get(s, id, &rec);
	if (r >= 0 && (rec.state != STORE_DEAD || rec.discarded))
		r = fail_msg(s, -ENOENT, "record %" PRId64 " is not a dead letter", id);
	if (r >= 0) {
		_cleanup_free_ char *detail = xasprintf(
		        "was dead: %s; reason: %s", rec.error_code ? rec.error_code : "-", reason);

		r = dead_discard_one(s, id, actor, "dead-discard", detail, now);
	}
	store_record_done(&rec);
	return tx_end(s, r);
}

/* Take a dead letter off the dead list, kept for audit, with a history line. */
static int
dead_discard_one(struct store *s, int64_t id, const char *actor, const char *action,
                 const char *detail, int64_t now)
{
	sqlite3_stmt *st = NULL;
	int r;

	r = prepare_once(s, "UPDATE records SET discarded = 1 WHERE id = ?1", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	r = run_once(s, st);
	if (r < 0)
		return r;
	s->delta[STORE_DEAD]--;
	return history_add(s, id, now, actor, action, detail);
}

/* Close a conflict row: dead, and discarded unless it stays an open dead letter. */
static int
conflict_close(struct store *s, int64_t id, const char *code, const char *message, bool discarded)
{
	sqlite3_stmt *st = NULL;
	int r;

	r = prepare_once(
	        s,
	        "UPDATE records SET state = " S_DEAD ", error_code = ?2,"
	        " error_message = ?3, discarded = ?4 WHERE id = ?1 AND state = " S_CONFLICT,
	        &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	bind_text(st, 2, code);
	bind_text(st, 3, message);
	sqlite3_bind_int(st, 4, discarded);
	r = run_once(s, st);
	if (r < 0)
		return r;
	s->delta[STORE_CONFLICT]--;
	if (!discarded)
		s->delta[STORE_DEAD]++;
	return 0;
}

/* Load a conflict row and its original inside the transaction. */
static int
conflict_load(struct store *s, int64_t id, struct store_record *c, struct store_record *o)
{
	int r;

	r = record_get(s, id, c);
	if (r < 0)
		return r;
	if (c->state != STORE_CONFLICT || !c->conflict_of)
		return fail_msg(s, -ENOENT, "record %" PRId64 " is not an open conflict", id);
	r = record_get(s, c->conflict_of, o);
	if (r < 0)
		return r;
	return 0;
}

/* The quantity already charged for a forwarded original: its own plus its adjustments. */
static int
charged_quantity(struct store *s, const struct store_record *o, struct decimal *ret,
                 unsigned *ret_adjustments)
{
	sqlite3_stmt *st = NULL;
	struct decimal total, q;
	unsigned n = 0;
	int r;

	if (decimal_parse_string(o->quantity, &total) < 0)
		return fail_msg(s, -EINVAL, "record %" PRId64 " has no valid quantity", o->id);
	r = prepare_once(
	        s, "SELECT quantity, state, discarded FROM records WHERE adjustment_of = ?1", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, o->id);
	while ((r = step_row(s, st)) > 0) {
		n++; /* every adjustment takes a sequence number, whatever became of it */
		if (sqlite3_column_int(st, 2) || sqlite3_column_int(st, 1) == STORE_DEAD)
			continue;
		if (decimal_parse_string((const char *)sqlite3_column_text(st, 0), &q) < 0 ||
		    decimal_add(&total, &q, &total) < 0) {
			r = fail_msg(s, -ERANGE, "adjustments of record %" PRId64 " do not add up",
			             o->id);
			break;
		}
	}
	sqlite3_finalize(st);
	if (r < 0)
		return r;
	*ret = total;
	*ret_adjustments = n;
	return 0;
}

/*
 * Discard the dead adjustments of a forwarded original. An accept counts what they asked for as
 * not charged (charged_quantity skips them), so its own adjustment or credit already covers that
 * amount: retrying one of them afterwards would charge the same usage twice.
 */
static int
adjustments_supersede(struct store *s, const struct store_record *o, int64_t conflict_id,
                      const char *actor, int64_t now)
{
	_cleanup_free_ char *detail = NULL;
	sqlite3_stmt *st = NULL;
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	int r;

	r = prepare_once(s,
	                 "SELECT id FROM records WHERE adjustment_of = ?1 AND state = " S_DEAD
	                 " AND discarded = 0",
	                 &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, o->id);
	while ((r = step_row(s, st)) > 0) {
		ids = grow(ids, &cap, n + 1, sizeof(*ids));
		ids[n++] = sqlite3_column_int64(st, 0);
	}
	sqlite3_finalize(st);
	detail = xasprintf("superseded: accepting conflict %" PRId64
	                   " counts this adjustment as not charged",
	                   conflict_id);
	for (size_t i = 0; r >= 0 && i < n; i++)
		r = dead_discard_one(s, ids[i], actor, "superseded", detail, now);
	free(ids);
	return r < 0 ? r : 0;
}

/* Queue an adjustment event for a forwarded original. */
static int
adjustment_add(struct store *s, const struct store_record *o, const struct decimal *diff,
               unsigned seq, int64_t now, int64_t *ret_id)
{
	char key[HASH_SHA256_HEX_LEN + 1], text[DECIMAL_STRING_MAX];
	_cleanup_free_ char *input = NULL;
	struct store_record a;
	bool is_new = false;
	int r;

	input = xasprintf("%s\nadjustment\n%u", o->key, seq);
	hash_sha256_hex(input, strlen(input), key);
	decimal_format(diff, text);
	a = *o;
	a.key = key;
	a.quantity = text;
	a.raw = NULL;
	r = insert_row(s, &a, STORE_PENDING, o->reported_hour, now, 0, o->id, &is_new);
	if (r < 0)
		return r;
	if (!is_new)
		return fail_msg(s, -EEXIST, "adjustment %u of record %" PRId64 " exists already",
		                seq, o->id);
	*ret_id = sqlite3_last_insert_rowid(s->db);
	return 0;
}

/* Accept a conflict (see store.h). */
int
store_conflict_accept(struct store *s, int64_t id, const char *actor, const char *reason,
                      int64_t now)
{
	struct store_record c = {0}, o = {0};
	_cleanup_free_ char *detail = NULL;
	struct decimal newq, charged, diff;
	int r;

	if (!actor)
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	r = conflict_load(s, id, &c, &o);
	if (r >= 0 && decimal_parse_string(c.quantity, &newq) < 0)
		r = fail_msg(s, -EINVAL, "conflict %" PRId64 " has no valid quantity", id);
	if (r < 0)
		goto finish;

	if (o.state == STORE_INFLIGHT || (o.state == STORE_PENDING && o.batch_id)) {
		/* sent at least once: Commerce may hold the old quantity under this key already */
		r = fail_msg(s, -EBUSY,
		             "record %" PRId64 " is being forwarded; accept once it is forwarded",
		             o.id);
	} else if (o.state != STORE_FORWARDED) {
		/* not charged yet: the original simply takes the new quantity */
		sqlite3_stmt *st = NULL;
		struct store_record sized = o;

		sized.quantity = c.quantity;
		r = prepare_once(
		        s, "UPDATE records SET quantity = ?2, event_size = ?3 WHERE id = ?1", &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, o.id);
			bind_text(st, 2, c.quantity);
			sqlite3_bind_int64(st, 3, event_size(&sized));
			r = run_once(s, st);
		}
		if (r >= 0 && c.raw)
			r = raw_set(s, o.id, c.raw);
		detail = xasprintf("quantity %s replaced by %s%s%s", o.quantity, c.quantity,
		                   reason ? "; reason: " : "", reason ? reason : "");
		if (r >= 0)
			r = conflict_close(s, c.id, "conflict-accepted", NULL, true);
	} else {
		unsigned n_adj = 0;
		char from[DECIMAL_STRING_MAX];

		r = charged_quantity(s, &o, &charged, &n_adj);
		if (r < 0)
			goto finish;
		r = adjustments_supersede(s, &o, c.id, actor, now);
		if (r < 0)
			goto finish;
		decimal_format(&charged, from);
		if (decimal_cmp(&newq, &charged) > 0) {
			char dtext[DECIMAL_STRING_MAX];
			int64_t adj_id = 0;

			r = decimal_sub(&newq, &charged, &diff);
			if (r < 0) {
				r = fail_msg(s, r, "difference out of range");
				goto finish;
			}
			decimal_format(&diff, dtext);
			r = adjustment_add(s, &o, &diff, n_adj + 1, now, &adj_id);
			detail = xasprintf("charged %s, accepted %s: adjustment %s queued%s%s",
			                   from, c.quantity, dtext, reason ? "; reason: " : "",
			                   reason ? reason : "");
			if (r >= 0)
				r = history_add(s, adj_id, now, actor, "conflict-accept", detail);
			if (r >= 0)
				r = conflict_close(s, c.id, "conflict-accepted", NULL, true);
		} else if (decimal_cmp(&newq, &charged) < 0) {
			_cleanup_free_ char *msg = NULL;

			msg = xasprintf("charged %s, accepted %s: a credit must be issued outside "
			                "this system",
			                from, c.quantity);
			detail = xasprintf("%s%s%s", msg, reason ? "; reason: " : "",
			                   reason ? reason : "");
			r = conflict_close(s, c.id, "credit-required", msg, false);
		} else {
			detail = xasprintf("charged %s equals the accepted quantity%s%s", from,
			                   reason ? "; reason: " : "", reason ? reason : "");
			r = conflict_close(s, c.id, "conflict-accepted", NULL, true);
		}
	}
	if (r >= 0)
		r = history_add(s, c.id, now, actor, "conflict-accept", detail);
	if (r >= 0)
		r = history_add(s, o.id, now, actor, "conflict-accept", detail);
finish:
	store_record_done(&c);
	store_record_done(&o);
	return tx_end(s, r);
}

/* Reject a conflict: the original stands. */
int
store_conflict_reject(struct store *s, int64_t id, const char *actor, const char *reason,
                      int64_t now)
{
	struct store_record c = {0}, o = {0};
	_cleanup_free_ char *detail = NULL;
	int r;

	if (!actor)
		return -EINVAL;
	r = tx_begin(s);
	if (r < 0)
		return r;
	r = conflict_load(s, id, &c, &o);
	if (r >= 0) {
		detail = xasprintf("quantity %s rejected, %s stands%s%s", c.quantity, o.quantity,
		                   reason ? "; reason: " : "", reason ? reason : "");
		r = conflict_close(s, c.id, "conflict-rejected", NULL, true);
	}
	if (r >= 0)
		r = history_add(s, c.id, now, actor, "conflict-reject", detail);
	if (r >= 0)
		r = history_add(s, o.id, now, actor, "conflict-reject", detail);
	store_record_done(&c);
	store_record_done(&o);
	return tx_end(s, r);
}

/* Exact totals of forwarded records, grouped. */
int
store_report(struct store *s, int64_t from, int64_t to, enum store_report_by by, store_report_fn fn,
             void *userdata)
{
	static const char *const sql[] = {
	        [STORE_REPORT_BY_SUBSCRIPTION] =
	                "SELECT COALESCE(charged_subscription, ''), meter_id, count(*),"
	                " decimal_sum(quantity) FROM records WHERE state = " S_FORWARDED
	                " AND usage_start >= ?1 AND usage_start < ?2 GROUP BY 1, 2 ORDER BY 1, 2",
	        [STORE_REPORT_BY_TENANT] =
	                "SELECT COALESCE(tenant_id, ''), meter_id, count(*), decimal_sum(quantity)"
	                " FROM records WHERE state = " S_FORWARDED
	                " AND usage_start >= ?1 AND usage_start < ?2 GROUP BY 1, 2 ORDER BY 1, 2",
	        [STORE_REPORT_BY_METER] =
	                "SELECT NULL, meter_id, count(*), decimal_sum(quantity) FROM records"
	                " WHERE state = " S_FORWARDED " AND usage_start >= ?1 AND usage_start < ?2"
	                " GROUP BY 2 ORDER BY 2",
	};
	sqlite3_stmt *st = NULL;
	int r;

	if ((unsigned)by >= ARRAY_SIZE(sql) || !fn)
		return -EINVAL;
	r = prepare_once(s, sql[by], &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, from);
	sqlite3_bind_int64(st, 2, to);
	while ((r = step_row(s, st)) > 0) {
		struct store_report_row row = {
		        .group = (const char *)sqlite3_column_text(st, 0),
		        .meter_id = (const char *)sqlite3_column_text(st, 1),
		        .records = (uint64_t)sqlite3_column_int64(st, 2),
		        .total = (const char *)sqlite3_column_text(st, 3),
		};

		r = fn(userdata, &row);
		if (r < 0)
			break;
	}
	sqlite3_finalize(st);
	return r < 0 ? r : 0;
}

/* Make room for n elements of size in p (capacity *cap), growing geometrically. */
static void *
grow(void *p, size_t *cap, size_t n, size_t size)
{
	if (n <= *cap)
		return p;
	*cap = MAX(n, MAX(*cap * 2, (size_t)16));
	return xreallocarray(p, *cap, size);
}

/* Translate an SQLite result code into -errno. */
static int
translate(int rc, int sys_errno)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_ROW:
	case SQLITE_DONE:
		return 0;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EBADMSG;
	case SQLITE_READONLY:
		return -EROFS;
	case SQLITE_CANTOPEN:
		return sys_errno == EACCES || sys_errno == EPERM ? -EACCES : -ENOENT;
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_NOMEM:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

/* Remember SQLite's message for rc and return its translation. */
static int
fail(struct store *s, int rc)
{
	free(s->errmsg);
	s->errmsg = xstrdup(sqlite3_errcode(s->db) == rc || sqlite3_extended_errcode(s->db) == rc
	                            ? sqlite3_errmsg(s->db)
	                            : sqlite3_errstr(rc));
	return translate(rc, sqlite3_system_errno(s->db));
}

/* Remember a message of our own and return r. */
static int
fail_msg(struct store *s, int r, const char *format, ...)
{
	va_list ap;

	free(s->errmsg);
	va_start(ap, format);
	s->errmsg = xvasprintf(format, ap);
	va_end(ap);
	return r;
}

/* The cached statement id, prepared on first use. */
static int
stmt_get(struct store *s, enum stmt_id id, sqlite3_stmt **ret)
{
	int rc;

	if (!s->stmts[id]) {
		rc = sqlite3_prepare_v3(s->db, stmt_defs[id].sql, -1, SQLITE_PREPARE_PERSISTENT,
		                        &s->stmts[id], NULL);
		if (rc != SQLITE_OK)
			return fail(s, rc);
	}
	*ret = s->stmts[id];
	return 0;
}

/* Reset a statement when it goes out of scope (cleanup helper). */
static void
stmt_resetp(sqlite3_stmt **st)
{
	if (*st)
		(void)sqlite3_reset(*st);
}

/* Step a statement that returns no rows. */
static int
step_done(struct store *s, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	if (rc == SQLITE_DONE || rc == SQLITE_ROW)
		return 0;
	return fail(s, rc);
}

/* Step a query: 1 with a row, 0 at the end, -errno on failure. */
static int
step_row(struct store *s, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	return fail(s, rc);
}

/* Bind a borrowed string (it outlives the step) or NULL. */
static int
bind_text(sqlite3_stmt *st, int i, const char *v)
{
	return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Run a cached statement that takes no parameters and returns no rows. */
static int
exec_simple(struct store *s, enum stmt_id id)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, id, &st);
	if (r < 0)
		return r;
	return step_done(s, st);
}

/*
 * Start a write transaction. Called again inside one (a map() callback that writes, a query
 * callback), it opens a savepoint instead, so the inner operation can fail on its own.
 */
static int
tx_begin(struct store *s)
{
	int r;

	if (s->readonly)
		return fail_msg(s, -EROFS, "the store is open read-only");
	if (s->tx_depth >= ARRAY_SIZE(s->saved_delta))
		return fail_msg(s, -EBUSY, "store operations nested too deeply");
	if (s->tx_depth > 0) {
		memcpy(s->saved_delta[s->tx_depth], s->delta, sizeof(s->delta));
		r = exec_simple(s, STMT_SAVEPOINT);
	} else {
		memset(s->delta, 0, sizeof(s->delta));
		r = exec_simple(s, STMT_BEGIN);
	}
	if (r >= 0)
		s->tx_depth++;
	return r;
}

/* Apply the transaction's count deltas. */
static int
counts_flush(struct store *s)
{
	for (int i = 0; i < _STORE_STATE_MAX; i++) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;
		int r;

		if (s->delta[i] == 0)
			continue;
		r = stmt_get(s, STMT_COUNTS_ADD, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, s->delta[i]);
		sqlite3_bind_int(st, 2, i);
		r = step_done(s, st);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Finish a write transaction: commit when r >= 0, else (or when committing fails) roll back. */
static int
tx_end(struct store *s, int r)
{
	r = tx_close(s, r);
	if (r < 0) {
		/* rolled back, also when only the commit failed: the cached registration number may
		 * name a row that went with it */
		free(s->registration_id);
		s->registration_id = NULL;
	}
	return r;
}

/* Commit or release, or roll back (to the savepoint); the result of the whole. */
static int
tx_close(struct store *s, int r)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;

	assert(s->tx_depth > 0);
	if (--s->tx_depth > 0) {
		/* a savepoint inside the caller's transaction */
		if (r < 0) {
			memcpy(s->delta, s->saved_delta[s->tx_depth], sizeof(s->delta));
			if (stmt_get(s, STMT_ROLLBACK_TO, &st) >= 0)
				(void)sqlite3_step(st);
		}
		if (r >= 0)
			return exec_simple(s, STMT_RELEASE);
		(void)exec_simple(s, STMT_RELEASE);
		return r;
	}
	if (r >= 0)
		r = counts_flush(s);
	if (r >= 0)
		r = exec_simple(s, STMT_COMMIT);
	if (r < 0 && !sqlite3_get_autocommit(s->db)) {
		/* keep the first error's message: ROLLBACK would overwrite SQLite's */
		if (stmt_get(s, STMT_ROLLBACK, &st) >= 0)
			(void)sqlite3_step(st);
	}
	memset(s->delta, 0, sizeof(s->delta));
	return r;
}

/* A column as a new string, NULL for NULL. */
static char *
col_dup(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);

	return t ? xstrndup((const char *)t, (size_t)sqlite3_column_bytes(st, i)) : NULL;
}

/* An integer column, 0 for NULL. */
static int64_t
col_int64_or0(sqlite3_stmt *st, int i)
{
	return sqlite3_column_type(st, i) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, i);
}

/* Fill a record from a row of RECORD_COLUMNS. */
static void
record_load(sqlite3_stmt *st, struct store_record *r)
{
	*r = (struct store_record){
	        .id = sqlite3_column_int64(st, COL_ID),
	        .state = (enum store_state)sqlite3_column_int(st, COL_STATE),
	        .key = col_dup(st, COL_KEY),
	        .reported_hour = sqlite3_column_int64(st, COL_REPORTED_HOUR),
	        .subscription_id = col_dup(st, COL_SUBSCRIPTION_ID),
	        .meter_id = col_dup(st, COL_METER_ID),
	        .quantity = col_dup(st, COL_QUANTITY),
	        .usage_start = sqlite3_column_int64(st, COL_USAGE_START),
	        .usage_end = sqlite3_column_int64(st, COL_USAGE_END),
	        .resource_uri = col_dup(st, COL_RESOURCE_URI),
	        .location = col_dup(st, COL_LOCATION),
	        .tags = col_dup(st, COL_TAGS),
	        .additional_info = col_dup(st, COL_ADDITIONAL_INFO),
	        .raw = col_dup(st, COL_RAW),
	        .tenant_id = col_dup(st, COL_TENANT_ID),
	        .charged_subscription = col_dup(st, COL_CHARGED_SUBSCRIPTION),
	        .charge_reason = col_dup(st, COL_CHARGE_REASON),
	        .attempts = (unsigned)sqlite3_column_int64(st, COL_ATTEMPTS),
	        .next_attempt_at = sqlite3_column_int64(st, COL_NEXT_ATTEMPT_AT),
	        .batch_id = col_dup(st, COL_BATCH_ID),
	        .error_code = col_dup(st, COL_ERROR_CODE),
	        .error_message = col_dup(st, COL_ERROR_MESSAGE),
	        .forward_status = col_dup(st, COL_FORWARD_STATUS),
	        .collected_at = sqlite3_column_int64(st, COL_COLLECTED_AT),
	        .forwarded_at = col_int64_or0(st, COL_FORWARDED_AT),
	        .conflict_of = col_int64_or0(st, COL_CONFLICT_OF),
	        .adjustment_of = col_int64_or0(st, COL_ADJUSTMENT_OF),
	        .discarded = sqlite3_column_int(st, COL_DISCARDED) != 0,
	        .registration = col_dup(st, COL_REGISTRATION),
	};
}

/* One record by id; -ENOENT when there is none. */
static int
record_get(struct store *s, int64_t id, struct store_record *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, STMT_RECORD_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	r = step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0)
		return fail_msg(s, -ENOENT, "no record %" PRId64, id);
	record_load(st, ret);
	return 0;
}

/* Append a history entry (record_id 0: store-wide). */
static int
history_add(struct store *s, int64_t record_id, int64_t at, const char *actor, const char *action,
            const char *detail)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = stmt_get(s, STMT_HISTORY_ADD, &st);
	if (r < 0)
		return r;
	if (record_id)
		sqlite3_bind_int64(st, 1, record_id);
	else
		sqlite3_bind_null(st, 1);
	sqlite3_bind_int64(st, 2, at);
	bind_text(st, 3, actor);
	bind_text(st, 4, action);
	bind_text(st, 5, detail);
	return step_done(s, st);
}

/*
 * The running state of decimal_sum(). SQLite's aggregate context is only 8-byte aligned and a
 * struct decimal holds a 128-bit integer, so the total is kept as bytes and copied in and out.
 */
struct decimal_sum {
	unsigned char total[sizeof(struct decimal)];
	bool started;
	bool failed;
};

/* decimal_sum() step: add one quantity exactly. */
static void
decimal_sum_step(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	struct decimal_sum *sum = sqlite3_aggregate_context(ctx, sizeof(*sum));
	const unsigned char *text;
	struct decimal d, total;

	(void)argc; /* registered with one argument */
	if (!sum) {
		sqlite3_result_error_nomem(ctx);
		return;
	}
	if (sum->failed || sqlite3_value_type(argv[0]) == SQLITE_NULL)
		return;
	text = sqlite3_value_text(argv[0]);
	if (!text || decimal_parse_string((const char *)text, &d) < 0) {
		sum->failed = true;
		return;
	}
	if (sum->started) {
		memcpy(&total, sum->total, sizeof(total));
		if (decimal_add(&total, &d, &d) < 0) {
			sum->failed = true;
			return;
		}
	}
	memcpy(sum->total, &d, sizeof(d));
	sum->started = true;
}

/* decimal_sum() result: the exact total as text ("0" for no rows). */
static void
decimal_sum_final(sqlite3_context *ctx)
{
	struct decimal_sum *sum = sqlite3_aggregate_context(ctx, 0);
	char out[DECIMAL_STRING_MAX];
	struct decimal total;
	size_t n;

	if (sum && sum->failed) {
		sqlite3_result_error(ctx, "decimal_sum: quantity malformed or total out of range",
		                     -1);
		return;
	}
	if (!sum || !sum->started) {
		sqlite3_result_text(ctx, "0", 1, SQLITE_STATIC);
		return;
	}
	memcpy(&total, sum->total, sizeof(total));
	n = decimal_format(&total, out);
	sqlite3_result_text(ctx, out, (int)n, SQLITE_TRANSIENT);
}
