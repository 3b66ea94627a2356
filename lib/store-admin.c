/*
 * What azs-usagectl asks of the store and does to it (ARCHITECTURE.md section 9): records as
 * the operator sees them (record_view), their history, dead letters, conflicts and reports.
 * Nothing here runs on the daemon's loop; every write is one transaction with a history line
 * naming who did it and why.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "hash.h"
#include "store-private.h"
#include "timeutil.h"
#include "xmalloc.h"

static void history_load(sqlite3_stmt *st, void *elem);
static void history_done(void *elem);
static int dead_discard_one(struct store *s, const struct store_record *rec, const char *actor,
                            const char *action, const char *detail, int64_t now);

/* Records matching a query, newest first. */
int
store_records_query(struct store *s, const struct store_query *q, store_record_fn fn,
                    void *userdata)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	char sql[1024];
	int r;

	if (!q || !fn)
		return -EINVAL;
	snprintf(sql, sizeof(sql),
	         "SELECT " RECORD_COLUMNS " FROM record_view WHERE 1%s%s%s%s%s ORDER BY id DESC%s",
	         q->state >= 0 ? " AND state = ?1" : "", q->tenant_id ? " AND tenant_id = ?2" : "",
	         q->subscription_id ? " AND (subscription_id = ?3 OR charged_subscription = ?3)"
	                            : "",
	         q->since ? " AND collected_at >= ?4" : "",
	         q->include_discarded ? "" : " AND discarded = 0", q->limit ? " LIMIT ?5" : "");
	r = store_prepare(s, sql, &st);
	if (r < 0)
		return r;
	if (q->state >= 0)
		sqlite3_bind_int(st, 1, q->state);
	if (q->tenant_id)
		store_bind_text(st, 2, q->tenant_id);
	if (q->subscription_id)
		store_bind_text(st, 3, q->subscription_id);
	if (q->since)
		sqlite3_bind_int64(st, 4, q->since);
	if (q->limit)
		sqlite3_bind_int64(st, 5, (int64_t)MIN(q->limit, (size_t)INT64_MAX));
	while ((r = store_step_row(s, st)) > 0) {
		struct store_record rec;

		store_record_load(st, &rec);
		r = fn(userdata, &rec);
		store_record_done(&rec);
		if (r < 0)
			break;
	}
	return r < 0 ? r : 0;
}

/* One record by its row id (a conflict row's own id). */
int
store_record_by_id(struct store *s, int64_t id, struct store_record *ret)
{
	if (!ret)
		return -EINVAL;
	return store_record_get(s, id, ret);
}

/* Find a record by key prefix. */
int
store_record_find(struct store *s, const char *prefix, int state, struct store_record *ret)
{
	unsigned char lo[STORE_KEY_BYTES], hi[STORE_KEY_BYTES];
	char lower[HASH_SHA256_HEX_LEN + 1], sql[1024];
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	struct store_record first = {0};
	size_t len;
	int r, n = 0;
	bool ambiguous = false;

	if (!prefix || !ret)
		return -EINVAL;
	len = strlen(prefix);
	if (len < 8 || len > HASH_SHA256_HEX_LEN || strspn(prefix, "0123456789abcdefABCDEF") != len)
		return store_fail_msg(s, -EINVAL, "a key prefix is 8 to 64 hex digits");
	/* the keys that start with the prefix lie between it padded with 0s and with fs */
	memset(lo, 0, sizeof(lo));
	memset(hi, 0xff, sizeof(hi));
	for (size_t i = 0; i < len; i++) {
		char c = prefix[i];
		unsigned v = (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);

		lower[i] = (char)(c >= 'A' && c <= 'F' ? c + 32 : c);
		if (i % 2 == 0) {
			lo[i / 2] = (unsigned char)(v << 4);
			hi[i / 2] = (unsigned char)(v << 4 | 0xf);
		} else {
			lo[i / 2] |= (unsigned char)v;
			hi[i / 2] = (unsigned char)((hi[i / 2] & 0xf0) | v);
		}
	}
	lower[len] = '\0';

	/* discarded rows (resolved conflicts, discarded dead letters) yield to live ones */
	snprintf(sql, sizeof(sql),
	         "SELECT " RECORD_COLUMNS " FROM record_view WHERE id IN"
	         " (SELECT id FROM records WHERE key BETWEEN ?1 AND ?2)%s"
	         " ORDER BY discarded, id LIMIT 2",
	         state >= 0 ? " AND state = ?3" : "");
	r = store_prepare(s, sql, &st);
	if (r < 0)
		return r;
	sqlite3_bind_blob(st, 1, lo, sizeof(lo), SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 2, hi, sizeof(hi), SQLITE_TRANSIENT);
	if (state >= 0)
		sqlite3_bind_int(st, 3, state);
	while ((r = store_step_row(s, st)) > 0) {
		if (n++ == 0)
			store_record_load(st, &first);
		else
			ambiguous = first.discarded == (sqlite3_column_int(st, COL_DISCARDED) != 0);
	}
	if (r < 0 || n == 0 || ambiguous) {
		store_record_done(&first);
		if (r < 0)
			return r;
		return n == 0 ? store_fail_msg(s, -ENOENT, "no record with key %s", lower)
		              : store_fail_msg(s, -ENOTUNIQ, "several records match key %s", lower);
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
	int r;

	r = store_stmt(s, STMT_HISTORY_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	return store_collect_rows(s, st, sizeof(**ret), history_load, history_done, ret, ret_n);
}

/* A history row, and freeing it (row loaders). */
static void
history_load(sqlite3_stmt *st, void *elem)
{
	*(struct store_history *)elem = (struct store_history){
	        .at = sqlite3_column_int64(st, 0),
	        .actor = store_col_dup(st, 1),
	        .action = store_col_dup(st, 2),
	        .detail = store_col_dup(st, 3),
	};
}

static void
history_done(void *elem)
{
	store_history_done(elem);
}

/* Check that a record is an open dead letter that may be retried. */
static int
dead_retry_check(struct store *s, const struct store_record *rec)
{
	if (rec->state != STORE_DEAD || rec->discarded)
		return store_fail_msg(s, -ENOENT, "record %s is not a dead letter", rec->key);
	if (rec->conflict_of)
		return store_fail_msg(s, -EPERM,
		                      "record %s is a rejected change (%s), not a usage record; "
		                      "discard it",
		                      rec->key, rec->error_code ? rec->error_code : "conflict");
	return 0;
}

/* A dead letter back to pending, to be mapped and batched again. */
static int
dead_retry_one(struct store *s, int64_t id, const char *actor, const char *reason, int64_t now)
{
	_cleanup_free_ char *detail = NULL;
	struct store_record rec = {0};
	int r;

	r = store_record_get(s, id, &rec);
	if (r >= 0)
		r = dead_retry_check(s, &rec);
	if (r >= 0) {
		struct store_state_row row = {
		        .id = rec.id,
		        .state = STORE_PENDING,
		        .attempts = rec.attempts,
		        .next_attempt_at = now,
		};

		/* an adjustment is more of its original's usage: it keeps the original's charge;
		 * a usage record is mapped again with the registration of now */
		if (rec.adjustment_of) {
			row.tenant_id = rec.tenant_id;
			row.charged_subscription = rec.charged_subscription;
			row.charge_reason = rec.charge_reason;
			row.registration = rec.registration;
		}
		r = store_state_put(s, &row);
	}
	if (r >= 0) {
		s->delta[STORE_DEAD]--;
		s->delta[STORE_PENDING]++;
		detail = xasprintf("was dead: %s%s%s%s%s", rec.error_code ? rec.error_code : "-",
		                   rec.error_message ? " " : "",
		                   rec.error_message ? rec.error_message : "",
		                   reason ? "; reason: " : "", reason ? reason : "");
		r = store_history_add(s, rec.id, now, actor, "dead-retry", detail);
	}
	store_record_done(&rec);
	return r;
}

/* Retry dead letters: all of them or none. */
int
store_dead_retry(struct store *s, const int64_t *ids, size_t n, const char *actor,
                 const char *reason, int64_t now)
{
	int r;

	if (!actor || (n && !ids))
		return -EINVAL;
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	for (size_t i = 0; r >= 0 && i < n; i++)
		r = dead_retry_one(s, ids[i], actor, reason, now);
	return store_tx_end(s, r);
}

/* Retry every dead letter that is a usage record. */
int
store_dead_retry_all(struct store *s, const char *actor, const char *reason, int64_t now,
                     size_t *ret_n)
{
	_cleanup_free_ int64_t *ids = NULL;
	size_t n = 0;
	int r;

	if (!actor)
		return -EINVAL;
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_finalize_ sqlite3_stmt *st = NULL;

		r = store_prepare(s,
		                  "SELECT x.id FROM states x JOIN records r ON r.id = x.id"
		                  " WHERE x.state = 4 AND x.state <> 3 AND x.discarded = 0"
		                  " AND r.kind < 2 ORDER BY x.id",
		                  &st);
		if (r >= 0)
			r = store_collect_ids(s, st, &ids, &n);
	}
	for (size_t i = 0; r >= 0 && i < n; i++)
		r = dead_retry_one(s, ids[i], actor, reason, now);
	return store_tx_end_n(s, r, n, ret_n);
}

/* Discard dead letters, all of them or none. */
int
store_dead_discard(struct store *s, const int64_t *ids, size_t n, const char *actor,
                   const char *reason, int64_t now)
{
	int r;

	if (!actor || isempty(reason) || (n && !ids))
		return store_fail_msg(s, -EINVAL, "discarding a dead letter needs a reason");
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	for (size_t i = 0; r >= 0 && i < n; i++) {
		struct store_record rec = {0};

		r = store_record_get(s, ids[i], &rec);
		if (r >= 0 && (rec.state != STORE_DEAD || rec.discarded))
			r = store_fail_msg(s, -ENOENT, "record %s is not a dead letter", rec.key);
		if (r >= 0) {
			_cleanup_free_ char *detail =
			        xasprintf("was dead: %s; reason: %s",
			                  rec.error_code ? rec.error_code : "-", reason);

			r = dead_discard_one(s, &rec, actor, "dead-discard", detail, now);
		}
		store_record_done(&rec);
	}
	return store_tx_end(s, r);
}

/* Take a dead letter off the dead list, kept for audit, with a history line. */
static int
dead_discard_one(struct store *s, const struct store_record *rec, const char *actor,
                 const char *action, const char *detail, int64_t now)
{
	struct store_state_row row = store_state_row_of(rec);
	int r;

	row.discarded = true;
	if (rec->batch_id) {
		_cleanup_finalize_ sqlite3_stmt *st = NULL;

		r = store_prepare(s, "SELECT id FROM batches WHERE uuid = ?1", &st);
		if (r < 0)
			return r;
		store_bind_text(st, 1, rec->batch_id);
		r = store_step_row(s, st);
		if (r < 0)
			return r;
		row.batch = r > 0 ? sqlite3_column_int64(st, 0) : 0;
	}
	r = store_state_put(s, &row);
	if (r < 0)
		return r;
	s->delta[STORE_DEAD]--;
	return store_history_add(s, rec->id, now, actor, action, detail);
}

/* Close a conflict row: dead, and discarded unless it stays an open dead letter. */
static int
conflict_close(struct store *s, const struct store_record *c, const char *code, const char *message,
               bool discarded, int64_t now)
{
	struct store_state_row row = {
	        .id = c->id,
	        .state = STORE_DEAD,
	        .next_attempt_at = now,
	        .error_code = code,
	        .error_message = message,
	        .discarded = discarded,
	};

	s->delta[STORE_CONFLICT]--;
	if (!discarded)
		s->delta[STORE_DEAD]++;
	return store_state_put(s, &row);
}

/* Load a conflict row and its original inside the transaction. */
static int
conflict_load(struct store *s, int64_t id, struct store_record *c, struct store_record *o)
{
	int r;

	r = store_record_get(s, id, c);
	if (r < 0)
		return r;
	if (c->state != STORE_CONFLICT || !c->conflict_of)
		return store_fail_msg(s, -ENOENT, "record %" PRId64 " is not an open conflict", id);
	return store_record_get(s, c->conflict_of, o);
}

/* The adjustments of a forwarded original as records (in id order). */
static int
adjustments_of(struct store *s, int64_t original, struct store_record **ret, size_t *ret_n)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	int r;

	r = store_prepare(s,
	                  "SELECT " RECORD_COLUMNS " FROM record_view WHERE id IN"
	                  " (SELECT id FROM records WHERE of = ?1 AND kind = 1) ORDER BY id",
	                  &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, original);
	return store_collect_rows(s, st, sizeof(**ret), store_record_load_row,
	                          store_record_done_row, ret, ret_n);
}

static void
records_free(struct store_record *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		store_record_done(&list[i]);
	free(list);
}

/*
 * The quantity already charged for a forwarded original: its own plus its adjustments that are
 * not dead. Every adjustment took a sequence number, whatever became of it.
 */
static int
charged_quantity(struct store *s, const struct store_record *o, const struct store_record *adj,
                 size_t n_adj, struct decimal *ret)
{
	struct decimal total, q;

	if (decimal_parse_string(o->quantity, &total) < 0)
		return store_fail_msg(s, -EINVAL, "record %s has no valid quantity", o->key);
	for (size_t i = 0; i < n_adj; i++) {
		if (adj[i].discarded || adj[i].state == STORE_DEAD)
			continue;
		if (decimal_parse_string(adj[i].quantity, &q) < 0 ||
		    decimal_add(&total, &q, &total) < 0)
			return store_fail_msg(s, -ERANGE, "adjustments of record %s do not add up",
			                      o->key);
	}
	*ret = total;
	return 0;
}

/*
 * Discard the dead adjustments of a forwarded original. An accept counts what they asked for as
 * not charged (charged_quantity skips them), so its own adjustment or credit already covers that
 * amount: retrying one of them afterwards would charge the same usage twice.
 */
static int
adjustments_supersede(struct store *s, const struct store_record *adj, size_t n_adj,
                      int64_t conflict_id, const char *actor, int64_t now)
{
	_cleanup_free_ char *detail = NULL;
	int r = 0;

	detail = xasprintf("superseded: accepting conflict %" PRId64
	                   " counts this adjustment as not charged",
	                   conflict_id);
	for (size_t i = 0; r >= 0 && i < n_adj; i++)
		if (adj[i].state == STORE_DEAD && !adj[i].discarded)
			r = dead_discard_one(s, &adj[i], actor, "superseded", detail, now);
	return r;
}

/* Queue an adjustment event for a forwarded original, with the original's charge. */
static int
adjustment_add(struct store *s, const struct store_record *o, const struct decimal *diff,
               size_t seq, int64_t now, int64_t *ret_id)
{
	char key[HASH_SHA256_HEX_LEN + 1], text[DECIMAL_STRING_MAX];
	_cleanup_free_ char *input = NULL;
	struct store_state_row row;
	struct store_record a;
	int64_t id = 0;
	int r;

	input = xasprintf("%s\nadjustment\n%zu", o->key, seq);
	hash_sha256_hex(input, strlen(input), key);
	decimal_format(diff, text);
	a = *o;
	a.key = key;
	a.quantity = text;
	a.raw = NULL;
	r = store_record_insert(s, &a, KIND_ADJUSTMENT, o->reported_hour, now, o->id, &id);
	if (r < 0)
		return r;
	if (!id)
		return store_fail_msg(s, -EEXIST, "adjustment %zu of record %s exists already", seq,
		                      o->key);
	row = (struct store_state_row){
	        .id = id,
	        .state = STORE_PENDING,
	        .next_attempt_at = now,
	        .tenant_id = o->tenant_id,
	        .charged_subscription = o->charged_subscription,
	        .charge_reason = o->charge_reason,
	        .registration = o->registration,
	};
	r = store_state_put(s, &row);
	if (r < 0)
		return r;
	s->delta[STORE_PENDING]++;
	*ret_id = id;
	return 0;
}

/* Accept a conflict whose original is forwarded: adjust up, or ask for a credit. */
static int
accept_forwarded(struct store *s, const struct store_record *c, const struct store_record *o,
                 const char *actor, const char *reason, int64_t now, char **ret_detail)
{
	struct store_record *adj = NULL;
	struct decimal newq, charged, diff;
	char from[DECIMAL_STRING_MAX];
	size_t n_adj = 0;
	int r;

	if (decimal_parse_string(c->quantity, &newq) < 0)
		return store_fail_msg(s, -EINVAL, "conflict %" PRId64 " has no valid quantity",
		                      c->id);
	r = adjustments_of(s, o->id, &adj, &n_adj);
	if (r < 0)
		return r;
	r = charged_quantity(s, o, adj, n_adj, &charged);
	if (r >= 0)
		r = adjustments_supersede(s, adj, n_adj, c->id, actor, now);
	if (r < 0)
		goto finish;
	decimal_format(&charged, from);
	if (decimal_cmp(&newq, &charged) > 0) {
		char dtext[DECIMAL_STRING_MAX];
		int64_t adj_id = 0;

		r = decimal_sub(&newq, &charged, &diff);
		if (r < 0) {
			r = store_fail_msg(s, r, "difference out of range");
			goto finish;
		}
		decimal_format(&diff, dtext);
		r = adjustment_add(s, o, &diff, n_adj + 1, now, &adj_id);
		*ret_detail = xasprintf("charged %s, accepted %s: adjustment %s queued%s%s", from,
		                        c->quantity, dtext, reason ? "; reason: " : "",
		                        reason ? reason : "");
		if (r >= 0)
			r = store_history_add(s, adj_id, now, actor, "conflict-accept",
			                      *ret_detail);
		if (r >= 0)
			r = conflict_close(s, c, "conflict-accepted", NULL, true, now);
	} else if (decimal_cmp(&newq, &charged) < 0) {
		_cleanup_free_ char *msg = xasprintf("charged %s, accepted %s: a credit must be "
		                                     "issued outside this system",
		                                     from, c->quantity);

		*ret_detail =
		        xasprintf("%s%s%s", msg, reason ? "; reason: " : "", reason ? reason : "");
		r = conflict_close(s, c, "credit-required", msg, false, now);
	} else {
		*ret_detail = xasprintf("charged %s equals the accepted quantity%s%s", from,
		                        reason ? "; reason: " : "", reason ? reason : "");
		r = conflict_close(s, c, "conflict-accepted", NULL, true, now);
	}
finish:
	records_free(adj, n_adj);
	return r;
}

/* Accept a loaded conflict: the original takes the new quantity, or is adjusted. */
static int
accept(struct store *s, const struct store_record *c, const struct store_record *o,
       const char *actor, const char *reason, int64_t now, char **ret_detail)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	struct store_record sized = *o;
	struct decimal newq;
	int r;

	if (decimal_parse_string(c->quantity, &newq) < 0)
		return store_fail_msg(s, -EINVAL, "conflict %" PRId64 " has no valid quantity",
		                      c->id);
	if (o->state == STORE_INFLIGHT || (o->state == STORE_PENDING && o->batch_id))
		/* sent at least once: Commerce may hold the old quantity under this key already */
		return store_fail_msg(s, -EBUSY,
		                      "record %s is being forwarded; accept once it is forwarded",
		                      o->key);
	if (o->state == STORE_FORWARDED)
		return accept_forwarded(s, c, o, actor, reason, now, ret_detail);

	/* not charged yet: the original simply takes the new quantity (the one rewrite a record
	 * row ever gets) */
	sized.quantity = c->quantity;
	r = store_prepare(s,
	                  "UPDATE records SET quantity = ?2, event_size = ?3,"
	                  " raw = COALESCE(?4, raw) WHERE id = ?1",
	                  &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, o->id);
	store_bind_text(st, 2, c->quantity);
	sqlite3_bind_int64(st, 3, store_event_size(&sized));
	store_bind_text(st, 4, c->raw);
	r = store_step_done(s, st);
	if (r < 0)
		return r;
	*ret_detail = xasprintf("quantity %s replaced by %s%s%s", o->quantity, c->quantity,
	                        reason ? "; reason: " : "", reason ? reason : "");
	return conflict_close(s, c, "conflict-accepted", NULL, true, now);
}

/* Resolve an open conflict (accept or reject), with a history line on both records. */
static int
conflict_resolve(struct store *s, int64_t id, bool take, const char *actor, const char *reason,
                 int64_t now)
{
	struct store_record c = {0}, o = {0};
	_cleanup_free_ char *detail = NULL;
	const char *action = take ? "conflict-accept" : "conflict-reject";
	int r;

	if (!actor)
		return -EINVAL;
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	r = conflict_load(s, id, &c, &o);
	if (r >= 0 && take)
		r = accept(s, &c, &o, actor, reason, now, &detail);
	else if (r >= 0) {
		/* reject: the original stands */
		detail = xasprintf("quantity %s rejected, %s stands%s%s", c.quantity, o.quantity,
		                   reason ? "; reason: " : "", reason ? reason : "");
		r = conflict_close(s, &c, "conflict-rejected", NULL, true, now);
	}
	if (r >= 0)
		r = store_history_add(s, c.id, now, actor, action, detail);
	if (r >= 0)
		r = store_history_add(s, o.id, now, actor, action, detail);
	store_record_done(&c);
	store_record_done(&o);
	return store_tx_end(s, r);
}

/* Accept a conflict (see store.h). */
int
store_conflict_accept(struct store *s, int64_t id, const char *actor, const char *reason,
                      int64_t now)
{
	return conflict_resolve(s, id, true, actor, reason, now);
}

/* Reject a conflict: the original stands. */
int
store_conflict_reject(struct store *s, int64_t id, const char *actor, const char *reason,
                      int64_t now)
{
	return conflict_resolve(s, id, false, actor, reason, now);
}

/* Exact totals of forwarded records, grouped. */
int
store_report(struct store *s, int64_t from, int64_t to, enum store_report_by by, store_report_fn fn,
             void *userdata)
{
	static const char *const sql[] = {
	        [STORE_REPORT_BY_SUBSCRIPTION] =
	                "SELECT COALESCE(charged_subscription, ''), meter_id, count(*),"
	                " decimal_sum(quantity) FROM record_view WHERE state = 3"
	                " AND usage_start >= ?1 AND usage_start < ?2 GROUP BY 1, 2 ORDER BY 1, 2",
	        [STORE_REPORT_BY_TENANT] =
	                "SELECT COALESCE(tenant_id, ''), meter_id, count(*), decimal_sum(quantity)"
	                " FROM record_view WHERE state = 3"
	                " AND usage_start >= ?1 AND usage_start < ?2 GROUP BY 1, 2 ORDER BY 1, 2",
	        [STORE_REPORT_BY_METER] =
	                "SELECT NULL, meter_id, count(*), decimal_sum(quantity) FROM record_view"
	                " WHERE state = 3 AND usage_start >= ?1 AND usage_start < ?2"
	                " GROUP BY 2 ORDER BY 2",
	};
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	int r;

	if ((unsigned)by >= ARRAY_SIZE(sql) || !fn)
		return -EINVAL;
	r = store_prepare(s, sql[by], &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, from);
	sqlite3_bind_int64(st, 2, to);
	while ((r = store_step_row(s, st)) > 0) {
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
	return r < 0 ? r : 0;
}

/* Usage per tenant (from the user-subscription cache) and meter. */
int
store_tenant_usage(struct store *s, store_tenant_usage_fn fn, void *userdata)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	int r;

	if (!fn)
		return -EINVAL;
	r = store_prepare(s,
	                  "SELECT COALESCE(c.tenant_id, ''), r.meter_id, count(*),"
	                  " decimal_sum(r.quantity)"
	                  " FROM records r LEFT JOIN subscriptions c"
	                  " ON c.subscription_id = r.subscription_id"
	                  " WHERE r.kind < 2 GROUP BY 1, 2 ORDER BY 1, 2",
	                  &st);
	if (r < 0)
		return r;
	while ((r = store_step_row(s, st)) > 0) {
		const struct store_tenant_usage_row row = {
		        .tenant_id = (const char *)sqlite3_column_text(st, 0),
		        .meter_id = (const char *)sqlite3_column_text(st, 1),
		        .records = (uint64_t)sqlite3_column_int64(st, 2),
		        .total = (const char *)sqlite3_column_text(st, 3),
		};

		r = fn(userdata, &row);
		if (r < 0)
			break;
	}
	return r < 0 ? r : 0;
}

/* A write transaction ended (or could not begin) with r: keep what readiness needs to know. */
void
store_write_note(struct store *s, int r)
{
	if (s->readonly)
		return;
	if (r >= 0) {
		s->write_error = 0;
		s->write_error_since = 0;
		return;
	}
	/* the caller's own errors (a bad page, an unknown record) and a busy lock say nothing
	 * about whether the file can be written */
	if (r != -ENOSPC && r != -EROFS && r != -EACCES && r != -EIO)
		return;
	if (s->write_error == 0)
		s->write_error_since = now_seconds();
	s->write_error = r;
}

/* The last write transaction's error, when the store could not be written. */
int
store_write_error(struct store *s, int64_t *ret_since)
{
	if (ret_since)
		*ret_since = s->write_error_since;
	return s->write_error;
}

/* Held records whose reason is ambiguous. */
int
store_held_ambiguous(struct store *s, uint64_t *ret)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	struct store_counts counts;
	int r;

	/* the kept counts first: nearly always nothing is held, and then nothing is read */
	r = store_counts(s, &counts);
	if (r < 0)
		return r;
	*ret = 0;
	if (counts.by_state[STORE_HELD] == 0)
		return 0;
	/* "state <> 3" names the partial index states_live: only held rows are visited */
	r = store_prepare(s,
	                  "SELECT count(*) FROM states WHERE state = 1 AND state <> 3"
	                  " AND error_code = 'ambiguous'",
	                  &st);
	if (r < 0)
		return r;
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	*ret = (uint64_t)sqlite3_column_int64(st, 0);
	return 0;
}
