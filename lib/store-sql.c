/*
 * The store's schema and every statement the store caches, in one place so that the layout can
 * be read at once (store-private.h explains it; store.c has the measurements behind it).
 *
 * The state enum's values and enum store_kind's are stored in the file: never renumber them.
 */
#include <pthread.h>

#include "store-private.h"

/* State and kind numbers as they appear in SQL text. */
#define S_PENDING   "0"
#define S_HELD      "1"
#define S_INFLIGHT  "2"
#define S_FORWARDED "3"
#define S_DEAD      "4"

_Static_assert(STORE_PENDING == 0 && STORE_HELD == 1 && STORE_INFLIGHT == 2 &&
                       STORE_FORWARDED == 3 && STORE_DEAD == 4 && STORE_QUARANTINED == 5 &&
                       STORE_CONFLICT == 6,
               "state numbers are stored in the database");
_Static_assert(KIND_USAGE == 0 && KIND_ADJUSTMENT == 1 && KIND_QUARANTINED == 2 &&
                       KIND_CONFLICT == 3,
               "kind numbers are stored in the database");

/* Partial-index conditions; a query names the same terms so that SQLite can use the index. */
#define BATCH_LIVE    "state <> " S_FORWARDED " AND members > 0"
#define STATE_LIVE    "state <> " S_FORWARDED
#define BATCH_PENDING "state = " S_PENDING " AND members > 0"
#define CLAIMS_KIND   "kind < 2" /* usage records and adjustments: what is forwarded */

/* A claimed record: the record's columns, then its charge (NULL when not frozen yet). */
#define CLAIM_RECORD                                                                       \
	"r.id, r.kind, r.key, r.reported_hour, r.subscription_id, r.meter_id, r.quantity," \
	" r.usage_start, r.usage_end, r.resource_uri, r.location, r.tags,"                 \
	" r.additional_info, r.collected_at, r.event_size, r.of"
#define REGISTRATION_OF(col) "(SELECT resource_id FROM registrations g WHERE g.id = " col ")"
/* A charge's columns (the registration by its resource id) from charges or from states. */
#define CHARGE_COLUMNS(t)                              \
	t ".tenant_id, " t ".charged_subscription, " t \
	  ".reason, " REGISTRATION_OF(t ".registration")
#define STATE_CHARGE_COLUMNS \
	"x.tenant_id, x.charged_subscription, x.charge_reason, " REGISTRATION_OF("x.registration")
/* The charge of record r in a batch of the given epoch. */
#define CHARGE_AT(epoch)                                                                      \
	"LEFT JOIN charges c ON c.subscription_id = r.subscription_id AND c.epoch ="          \
	" (SELECT max(cc.epoch) FROM charges cc WHERE cc.subscription_id = r.subscription_id" \
	" AND cc.epoch <= " epoch ")"

/* Schema version 1, in pieces (ISO C caps a string literal at 4095 characters). */
const char *const store_schema_v1[] = {
        /* the queue */
        "CREATE TABLE records ("
        " id INTEGER PRIMARY KEY," /* never given twice: store.c next_record_id() */
        " kind INTEGER NOT NULL,"
        " reported_hour INTEGER NOT NULL,"
        " key BLOB NOT NULL,"
        " of INTEGER," /* conflict row or adjustment: the original's id */
        " subscription_id TEXT,"
        " meter_id TEXT,"
        " quantity TEXT,"
        " usage_start INTEGER NOT NULL,"
        " usage_end INTEGER NOT NULL,"
        " resource_uri TEXT,"
        " location TEXT,"
        " tags TEXT,"
        " additional_info TEXT,"
        " event_size INTEGER NOT NULL,"
        " collected_at INTEGER NOT NULL,"
        " reason TEXT," /* quarantined: why */
        " raw TEXT);\n"
        /* leads with the hour: keys are random, hours are not (ARCHITECTURE.md section 7) */
        "CREATE UNIQUE INDEX records_key ON records(reported_hour, key) WHERE " CLAIMS_KIND ";\n"
        "CREATE INDEX records_aside ON records(reported_hour, key) WHERE kind >= 2;\n"
        "CREATE INDEX records_of ON records(of) WHERE of IS NOT NULL;\n"
        "CREATE TABLE batches ("
        " id INTEGER PRIMARY KEY,"
        " uuid TEXT NOT NULL UNIQUE,"
        " first INTEGER," /* the run of record ids a fresh claim took; NULL: none */
        " last INTEGER,"
        " members INTEGER NOT NULL,"    /* records of the run without a state row */
        " members_fp INTEGER NOT NULL," /* their fingerprint (store_member_mix) */
        " epoch INTEGER NOT NULL,"      /* the charges of the run (table charges) */
        " state INTEGER NOT NULL,"
        " attempts INTEGER NOT NULL,"
        " next_attempt_at INTEGER NOT NULL,"
        " error_code TEXT,"
        " error_message TEXT,"
        " forward_status TEXT,"
        " forwarded_at INTEGER);\n"
        "CREATE INDEX batches_live ON batches(state, next_attempt_at) WHERE " BATCH_LIVE ";\n"
        "CREATE INDEX batches_forwarded ON batches(forwarded_at)"
        " WHERE state = " S_FORWARDED " AND members > 0;\n"
        "CREATE INDEX batches_first ON batches(first) WHERE first IS NOT NULL;\n"
        /* the oldest pending run without reading every pending batch (a long outage leaves
         * one per 500 records); rows enter it only while a batch waits for a retry */
        "CREATE INDEX batches_pending ON batches(first) WHERE " BATCH_PENDING ";\n"
        /* a row per subscription and change of its charge: a batch's charge for a
         * subscription is the latest up to the batch's epoch */
        "CREATE TABLE charges ("
        " subscription_id TEXT NOT NULL,"
        " epoch INTEGER NOT NULL,"
        " tenant_id TEXT,"
        " charged_subscription TEXT NOT NULL,"
        " reason TEXT NOT NULL,"
        " registration INTEGER,"
        " PRIMARY KEY (subscription_id, epoch)) WITHOUT ROWID;\n"
        "CREATE TABLE states ("
        " id INTEGER PRIMARY KEY," /* the record's id */
        " state INTEGER NOT NULL,"
        " batch INTEGER,"
        " attempts INTEGER NOT NULL,"
        " next_attempt_at INTEGER NOT NULL,"
        " tenant_id TEXT,"
        " charged_subscription TEXT,"
        " charge_reason TEXT,"
        " registration INTEGER,"
        " error_code TEXT,"
        " error_message TEXT,"
        " forward_status TEXT,"
        " forwarded_at INTEGER,"
        " discarded INTEGER NOT NULL);\n"
        "CREATE INDEX states_live ON states(state, next_attempt_at) WHERE " STATE_LIVE ";\n"
        "CREATE INDEX states_batch ON states(batch, state) WHERE batch IS NOT NULL;\n"
        "CREATE INDEX states_forwarded ON states(forwarded_at) WHERE state = " S_FORWARDED ";\n"
        "CREATE INDEX states_pending ON states(id) WHERE state = " S_PENDING ";\n"
        "CREATE TABLE registrations (id INTEGER PRIMARY KEY, resource_id TEXT NOT NULL UNIQUE);\n",
        /* the schedule, the caches, the history */
        "CREATE TABLE hours ("
        " hour INTEGER NOT NULL,"
        " scope TEXT NOT NULL,"
        " pass INTEGER NOT NULL,"
        " next_link TEXT,"
        " due_at INTEGER NOT NULL,"
        " PRIMARY KEY (hour, scope)) WITHOUT ROWID;\n"
        "CREATE INDEX hours_due ON hours(due_at);\n"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;\n"
        /* the counts by state live beside the claim head and the cursor: a claim or an
         * acknowledgement then dirties one page fewer (pages are 16 KiB) */
        "INSERT INTO meta (key, value) VALUES ('count/0', 0), ('count/1', 0), ('count/2', 0),"
        " ('count/3', 0), ('count/4', 0), ('count/5', 0), ('count/6', 0);\n"
        "CREATE TABLE subscriptions ("
        " subscription_id TEXT PRIMARY KEY,"
        " tenant_id TEXT,"
        " display_name TEXT,"
        " owner TEXT,"
        " state TEXT,"
        " delegated_provider TEXT,"
        " gone INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;\n"
        "CREATE TABLE registration ("
        " id TEXT NOT NULL,"
        " default_subscription TEXT NOT NULL,"
        " raw TEXT,"
        " refreshed_at INTEGER NOT NULL);\n"
        "CREATE TABLE customer_subscriptions ("
        " subscription_id TEXT PRIMARY KEY,"
        " tenant_id TEXT NOT NULL) WITHOUT ROWID;\n"
        "CREATE INDEX customer_subscriptions_tenant ON customer_subscriptions(tenant_id);\n"
        "CREATE TABLE history ("
        " id INTEGER PRIMARY KEY,"
        " record_id INTEGER,"
        " at INTEGER NOT NULL,"
        " actor TEXT NOT NULL,"
        " action TEXT NOT NULL,"
        " detail TEXT);\n"
        "CREATE INDEX history_record ON history(record_id, at) WHERE record_id IS NOT NULL;\n",
        /* every record as the operator sees it: the rule of store-private.h */
        "CREATE VIEW record_view AS SELECT r.id AS id,"
        " CASE WHEN x.id IS NOT NULL THEN x.state WHEN r.kind = 2 THEN 5"
        "  WHEN r.kind = 3 THEN 6 WHEN b.id IS NOT NULL THEN b.state ELSE 0 END AS state,"
        " lower(hex(r.key)) AS key, r.reported_hour AS reported_hour,"
        " r.subscription_id AS subscription_id, r.meter_id AS meter_id,"
        " r.quantity AS quantity, r.usage_start AS usage_start, r.usage_end AS usage_end,"
        " r.resource_uri AS resource_uri, r.location AS location, r.tags AS tags,"
        " r.additional_info AS additional_info, r.raw AS raw,"
        " CASE WHEN x.id IS NOT NULL THEN x.tenant_id ELSE c.tenant_id END AS tenant_id,"
        " CASE WHEN x.id IS NOT NULL THEN x.charged_subscription"
        "  ELSE c.charged_subscription END AS charged_subscription,"
        " CASE WHEN x.id IS NOT NULL THEN x.charge_reason ELSE c.reason END AS charge_reason,"
        " CASE WHEN x.id IS NOT NULL THEN x.attempts ELSE COALESCE(b.attempts, 0) END"
        "  AS attempts,"
        " CASE WHEN x.id IS NOT NULL THEN x.next_attempt_at"
        "  ELSE COALESCE(b.next_attempt_at, r.collected_at) END AS next_attempt_at,"
        " (SELECT uuid FROM batches u WHERE u.id ="
        "  CASE WHEN x.id IS NOT NULL THEN x.batch ELSE b.id END) AS batch_id,"
        " CASE WHEN x.id IS NOT NULL THEN x.error_code WHEN r.kind = 2 THEN 'invalid-record'"
        "  ELSE b.error_code END AS error_code,"
        " CASE WHEN x.id IS NOT NULL THEN x.error_message WHEN r.kind = 2 THEN r.reason"
        "  ELSE b.error_message END AS error_message,"
        " CASE WHEN x.id IS NOT NULL THEN x.forward_status ELSE b.forward_status END"
        "  AS forward_status,"
        " r.collected_at AS collected_at,"
        " CASE WHEN x.id IS NOT NULL THEN x.forwarded_at ELSE b.forwarded_at END"
        "  AS forwarded_at,"
        " CASE WHEN r.kind = 3 THEN r.of END AS conflict_of,"
        " CASE WHEN r.kind = 1 THEN r.of END AS adjustment_of,"
        " COALESCE(x.discarded, 0) AS discarded,"
        " (SELECT resource_id FROM registrations g WHERE g.id ="
        "  CASE WHEN x.id IS NOT NULL THEN x.registration ELSE c.registration END)"
        "  AS registration,"
        " r.kind AS kind, r.event_size AS event_size"
        " FROM records r"
        " LEFT JOIN states x ON x.id = r.id"
        " LEFT JOIN batches b ON x.id IS NULL AND r.kind < 2 AND b.id ="
        "  (SELECT bb.id FROM batches bb WHERE bb.first <= r.id ORDER BY bb.first DESC LIMIT 1)"
        "  AND b.last >= r.id"
        " LEFT JOIN charges c ON c.subscription_id = r.subscription_id AND c.epoch ="
        "  (SELECT max(cc.epoch) FROM charges cc WHERE cc.subscription_id = r.subscription_id"
        "  AND cc.epoch <= b.epoch);\n",
        NULL,
};

const struct stmt_def store_stmt_defs[_STMT_MAX] = {
        [STMT_BEGIN] = {"BEGIN IMMEDIATE", false},
        [STMT_COMMIT] = {"COMMIT", false},
        [STMT_ROLLBACK] = {"ROLLBACK", false},
        [STMT_SAVEPOINT] = {"SAVEPOINT store_nested", false},
        [STMT_RELEASE] = {"RELEASE store_nested", false},
        [STMT_ROLLBACK_TO] = {"ROLLBACK TO store_nested", false},
        [STMT_COUNTS_ADD] = {"UPDATE meta SET value = value + ?1 WHERE key = 'count/' || ?2", true},
        [STMT_COUNTS_GET] = {"SELECT substr(key, 7), value FROM meta"
                             " WHERE key >= 'count/' AND key < 'count0'",
                             true},
        [STMT_META_RAISE] = {"INSERT INTO meta (key, value) VALUES (?1, ?2)"
                             " ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                             true},
        [STMT_META_SET] = {"INSERT INTO meta (key, value) VALUES (?1, ?2)"
                           " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           true},
        [STMT_META_GET] = {"SELECT value FROM meta WHERE key = ?1", true},
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
        [STMT_INSERT] = {"INSERT INTO records (kind, reported_hour, key, of, subscription_id,"
                         " meter_id, quantity, usage_start, usage_end, resource_uri, location,"
                         " tags, additional_info, event_size, collected_at, reason, raw, id)"
                         " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,"
                         " ?15, ?16, ?17, ?18) ON CONFLICT DO NOTHING",
                         true},
        [STMT_MAX_RECORD_ID] = {"SELECT max(id) FROM records", true},
        [STMT_LOOKUP] = {"SELECT id, quantity FROM records"
                         " WHERE reported_hour = ?1 AND key = ?2 AND " CLAIMS_KIND,
                         true},
        [STMT_LOOKUP_QUARANTINED] = {"SELECT id FROM records WHERE reported_hour = ?1"
                                     " AND key = ?2 AND kind >= 2 AND kind = 2",
                                     true},
        [STMT_CONFLICTS_OF] = {"SELECT quantity FROM records WHERE of = ?1 AND kind = 3", true},
        [STMT_RECORD_KIND] = {"SELECT kind FROM records WHERE id = ?1", true},
        [STMT_DUE_BATCH] = {"SELECT id, next_attempt_at FROM batches WHERE state = " S_PENDING
                            " AND " BATCH_LIVE " AND next_attempt_at <= ?1"
                            " ORDER BY next_attempt_at LIMIT 1",
                            true},
        [STMT_DUE_STATE] = {"SELECT id, batch, next_attempt_at FROM states WHERE state = " S_PENDING
                            " AND " STATE_LIVE " AND next_attempt_at <= ?1"
                            " ORDER BY next_attempt_at LIMIT 1",
                            true},
        [STMT_FRESH] = {"SELECT " CLAIM_RECORD ", NULL, NULL, NULL, NULL, 0"
                        " FROM records r WHERE r.id > ?1 ORDER BY r.id",
                        true},
        [STMT_BATCH_MEMBERS] =
                {"SELECT " CLAIM_RECORD ", " CHARGE_COLUMNS(
                         "c") ", 0"
                              " FROM records r " CHARGE_AT(
                                      "?1") " WHERE r.id BETWEEN ?2 AND ?3 AND r." CLAIMS_KIND
                                            " AND NOT EXISTS (SELECT 1 FROM states x WHERE x.id = r.id)"
                                            " ORDER BY r.id",
                 true},
        [STMT_BATCH_STATES] = {"SELECT " CLAIM_RECORD ", " STATE_CHARGE_COLUMNS ", x.attempts"
                               " FROM states x JOIN records r ON r.id = x.id"
                               " WHERE x.batch = ?1 AND x.state = ?2 ORDER BY x.id",
                               true},
        [STMT_BATCH_STATE_IDS] = {"SELECT id FROM states WHERE batch = ?1 AND state = ?2"
                                  " ORDER BY id",
                                  true},
        [STMT_LOOSE] = {"SELECT " CLAIM_RECORD ", " STATE_CHARGE_COLUMNS ", x.attempts"
                        " FROM states x JOIN records r ON r.id = x.id"
                        " WHERE x.state = " S_PENDING " AND x." STATE_LIVE
                        " AND x.next_attempt_at <= ?1 AND x.batch IS NULL"
                        " ORDER BY x.next_attempt_at, x.id",
                        true},
        [STMT_BATCH_ADD] = {"INSERT INTO batches (uuid, first, last, members, members_fp,"
                            " epoch, state, attempts, next_attempt_at)"
                            " VALUES (?1, ?2, ?3, ?4, ?5, ?6, " S_INFLIGHT ", 0, ?7)"
                            " ON CONFLICT (uuid) DO NOTHING",
                            true},
        [STMT_BATCH_GET] = {"SELECT uuid, first, last, members, members_fp, epoch, state,"
                            " attempts,"
                            " next_attempt_at, error_code, error_message, forward_status,"
                            " forwarded_at FROM batches WHERE id = ?1",
                            true},
        [STMT_BATCH_FIND] = {"SELECT id FROM batches WHERE uuid = ?1", true},
        [STMT_BATCH_SET] = {"UPDATE batches SET members = ?2, state = ?3, attempts = ?4,"
                            " next_attempt_at = ?5, error_code = ?6, error_message = ?7,"
                            " forward_status = ?8, forwarded_at = ?9, epoch = ?10, members_fp = ?11"
                            " WHERE id = ?1",
                            true},
        [STMT_BATCH_DELETE] =
                {"DELETE FROM batches WHERE id = ?1"
                 " AND members = 0 AND NOT EXISTS (SELECT 1 FROM states WHERE batch = ?1)",
                 true},
        [STMT_CHARGE_ADD] = {"INSERT INTO charges (subscription_id, epoch, tenant_id,"
                             " charged_subscription, reason, registration)"
                             " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                             true},
        [STMT_CHARGE_LATEST] =
                {"SELECT " CHARGE_COLUMNS(
                         "c") " FROM charges c"
                              " WHERE c.subscription_id = ?1 ORDER BY c.epoch DESC LIMIT 1",
                 true},
        [STMT_STATE_GET] = {"SELECT state, batch FROM states WHERE id = ?1", true},
        [STMT_STATE_PUT] = {"INSERT OR REPLACE INTO states (id, state, batch, attempts,"
                            " next_attempt_at, tenant_id, charged_subscription, charge_reason,"
                            " registration, error_code, error_message, forward_status,"
                            " forwarded_at, discarded)"
                            " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                            true},
        [STMT_STATE_CLAIM] = {"UPDATE states SET state = " S_INFLIGHT " WHERE batch = ?1"
                              " AND state = " S_PENDING,
                              true},
        [STMT_STATE_FORWARDED] = {"UPDATE states SET state = " S_FORWARDED ", forward_status = ?3,"
                                  " forwarded_at = ?4, attempts = attempts + 1, error_code = NULL,"
                                  " error_message = NULL WHERE id = ?1 AND batch = ?2"
                                  " AND state = " S_INFLIGHT,
                                  true},
        [STMT_STATE_DEAD] = {"UPDATE states SET state = " S_DEAD ", error_code = ?3,"
                             " error_message = ?4, attempts = attempts + 1 WHERE id = ?1"
                             " AND batch = ?2 AND state = " S_INFLIGHT,
                             true},
        [STMT_STATE_RETRY] = {"UPDATE states SET state = " S_PENDING ", attempts = attempts + 1,"
                              " next_attempt_at = ?3, batch = COALESCE(?4, batch),"
                              " error_code = ?5, error_message = ?6 WHERE id = ?1"
                              " AND batch = ?2 AND state = " S_INFLIGHT,
                              true},
        [STMT_STATE_DELETE] = {"DELETE FROM states WHERE id = ?1", true},
        /* a no-op update, so that RETURNING answers for a row that exists already */
        [STMT_REGISTRATION_NUMBER] = {"INSERT INTO registrations (resource_id) VALUES (?1)"
                                      " ON CONFLICT (resource_id) DO UPDATE SET"
                                      " resource_id = excluded.resource_id RETURNING id",
                                      true},
        [STMT_NEXT_DUE_BATCH] = {"SELECT min(next_attempt_at) FROM batches"
                                 " WHERE state = " S_PENDING " AND " BATCH_LIVE,
                                 true},
        [STMT_NEXT_DUE_STATE] = {"SELECT min(next_attempt_at) FROM states"
                                 " WHERE state = " S_PENDING " AND " STATE_LIVE,
                                 true},
        [STMT_OLDEST_FRESH] = {"SELECT collected_at FROM records WHERE id > ?1 AND " CLAIMS_KIND
                               " ORDER BY id LIMIT 1",
                               true},
        /* record ids grow with collected_at: the oldest pending run is the one that starts
         * first (min(): one step into its index), and its first record left (one may have
         * gone: a state row, pruned) the oldest */
        [STMT_OLDEST_BATCH] = {"SELECT (SELECT r.collected_at FROM records r"
                               " WHERE r.id BETWEEN b.first AND b.last ORDER BY r.id LIMIT 1)"
                               " FROM batches b WHERE b.first = (SELECT min(first) FROM batches"
                               " WHERE " BATCH_PENDING ") AND b." BATCH_PENDING " LIMIT 1",
                               true},
        [STMT_OLDEST_STATE] = {"SELECT collected_at FROM records WHERE id ="
                               " (SELECT min(id) FROM states WHERE state = " S_PENDING ")",
                               true},
        [STMT_RESET_BATCHES_COUNT] = {"SELECT COALESCE(sum(members), 0) FROM batches"
                                      " WHERE state = " S_INFLIGHT " AND " BATCH_LIVE,
                                      true},
        [STMT_RESET_BATCHES] = {"UPDATE batches SET state = " S_PENDING " WHERE state = " S_INFLIGHT
                                " AND " BATCH_LIVE,
                                true},
        [STMT_RESET_STATES] = {"UPDATE states SET state = " S_PENDING " WHERE state = " S_INFLIGHT
                               " AND " STATE_LIVE,
                               true},
        [STMT_UNHOLD] = {"UPDATE states SET state = " S_PENDING ", batch = NULL,"
                         " error_code = NULL, tenant_id = NULL, charged_subscription = NULL,"
                         " charge_reason = NULL, registration = NULL, next_attempt_at = ?1"
                         " WHERE state = " S_HELD " AND " STATE_LIVE,
                         true},
        [STMT_PRUNE_BATCHES] = {"SELECT id, first, last FROM batches WHERE state = " S_FORWARDED
                                " AND members > 0 AND forwarded_at < ?1"
                                " ORDER BY forwarded_at LIMIT 1",
                                true},
        /* members of a forwarded batch that may go: no open conflict names them */
        [STMT_PRUNE_MEMBERS] = {"SELECT r.id FROM records r WHERE r.id BETWEEN ?1 AND ?2"
                                " AND r." CLAIMS_KIND
                                " AND NOT EXISTS (SELECT 1 FROM states x WHERE x.id = r.id)"
                                " AND NOT EXISTS (SELECT 1 FROM records c"
                                " LEFT JOIN states cx ON cx.id = c.id WHERE c.of = r.id"
                                " AND c.kind = 3 AND COALESCE(cx.discarded, 0) = 0)"
                                " ORDER BY r.id LIMIT ?3",
                                true},
        [STMT_RANGE_MEMBERS] = {"SELECT r.id FROM records r WHERE r.id BETWEEN ?1 AND ?2"
                                " AND r." CLAIMS_KIND
                                " AND NOT EXISTS (SELECT 1 FROM states x WHERE x.id = r.id)"
                                " ORDER BY r.id",
                                true},
        [STMT_PRUNE_STATES] = {"SELECT x.id, x.batch FROM states x WHERE x.state = " S_FORWARDED
                               " AND x.forwarded_at < ?1"
                               " AND NOT EXISTS (SELECT 1 FROM records c"
                               " LEFT JOIN states cx ON cx.id = c.id WHERE c.of = x.id"
                               " AND c.kind = 3 AND COALESCE(cx.discarded, 0) = 0)"
                               /* an adjustment stays as long as its original: an accept
                                * counts what its adjustments charged, and numbers them */
                               " AND NOT EXISTS (SELECT 1 FROM records a JOIN records o"
                               " ON o.id = a.of WHERE a.id = x.id AND a.kind = 1)"
                               " ORDER BY x.forwarded_at LIMIT ?2",
                               true},
        [STMT_PRUNE_DELETE] = {"DELETE FROM records WHERE id = ?1", true},
        /* the resolved conflict rows of a pruned original go with it */
        [STMT_PRUNE_CONFLICTS] = {"DELETE FROM records WHERE of = ?1 AND kind = 3 RETURNING id",
                                  true},
        [STMT_PRUNE_HISTORY] = {"DELETE FROM history WHERE record_id = ?1", true},
        [STMT_RECORD_GET] = {"SELECT " RECORD_COLUMNS " FROM record_view WHERE id = ?1", false},
        [STMT_HISTORY_ADD] = {"INSERT INTO history (record_id, at, actor, action, detail)"
                              " VALUES (?1, ?2, ?3, ?4, ?5)",
                              false},
        [STMT_HISTORY_GET] = {"SELECT at, actor, action, detail FROM history WHERE record_id = ?1"
                              " ORDER BY at, id",
                              false},
        /* the caches, read by map() inside a claim */
        [STMT_SUBSCRIPTION_GET] = {"SELECT subscription_id, tenant_id, display_name, owner, state,"
                                   " delegated_provider, gone"
                                   " FROM subscriptions WHERE subscription_id = ?1",
                                   true},
        [STMT_REGISTRATION_GET] = {"SELECT id, default_subscription, raw, refreshed_at"
                                   " FROM registration LIMIT 1",
                                   true},
        [STMT_TENANT_CUSTOMER_SUBSCRIPTIONS] = {"SELECT subscription_id FROM customer_subscriptions"
                                                " WHERE tenant_id = ?1 ORDER BY subscription_id",
                                                true},
};

/*
 * SQLite counts its memory for sqlite3_status() under a process-wide mutex that it takes in every
 * sqlite3_malloc() and sqlite3_free(), also on connections opened SQLITE_OPEN_NOMUTEX; nothing
 * reads those statistics here (perf, the daemon's loop thread during scripts/bench catchup: that
 * mutex was about 1.3 % of its samples).
 */
static void
sqlite_configure(void)
{
	/* refused (SQLITE_MISUSE) when SQLite is initialised already: then it stays as it is */
	(void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

/* Process-wide SQLite settings, once, before the process's first connection. */
void
store_sqlite_configure(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	(void)pthread_once(&once, sqlite_configure);
}
