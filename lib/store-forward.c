/*
 * The forwarder's side of the store: claiming batches, applying their outcomes, and what moves
 * records in bulk (restart, unhold, pruning). The layout is in store-private.h: a fresh claim
 * writes one batch row for a run of record ids, an acknowledged batch updates that one row, and
 * only records whose state differs from their batch's get a narrow state row.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "store-private.h"
#include "xmalloc.h"

/* Columns of the claim statements (store-sql.c CLAIM_RECORD and what follows it). */
enum {
	CC_ID,
	CC_KIND,
	CC_KEY,
	CC_REPORTED_HOUR,
	CC_SUBSCRIPTION_ID,
	CC_METER_ID,
	CC_QUANTITY,
	CC_USAGE_START,
	CC_USAGE_END,
	CC_RESOURCE_URI,
	CC_LOCATION,
	CC_TAGS,
	CC_ADDITIONAL_INFO,
	CC_COLLECTED_AT,
	CC_EVENT_SIZE,
	CC_OF,
	CC_TENANT_ID,
	CC_CHARGED_SUBSCRIPTION,
	CC_CHARGE_REASON,
	CC_REGISTRATION,
	CC_ATTEMPTS,
};

/* A batch row. */
struct batch_row {
	int64_t id;
	char uuid[STORE_BATCH_ID_LEN + 1];
	int64_t first, last; /* 0: no run */
	int64_t members;
	enum store_state state;
	unsigned attempts;
	int64_t next_attempt_at;
	char *error_code;
	char *error_message;
	char *forward_status;
	int64_t forwarded_at;
};

/* A record the claim looked at: taken into the batch or held. */
struct claim_item {
	struct store_record rec;
	int64_t size;
	bool hold;
	bool own_charge; /* differs from the charge frozen for its subscription in this batch */
};

/* What a claim gathers. */
struct claim_set {
	struct claim_item *items;
	size_t n, cap;
	size_t taken;
	uint64_t bytes;
};

static void claim_set_done(struct claim_set *c);
static int claim_existing(struct store *s, int64_t batch, struct claim_set *set,
                          struct batch_row *ret);
static int claim_loose(struct store *s, const struct store_claim *claim, struct claim_set *set,
                       struct batch_row *ret);
static int claim_fresh(struct store *s, const struct store_claim *claim, struct claim_set *set,
                       struct batch_row *ret);
static int batch_load(struct store *s, int64_t id, struct batch_row *ret);
static int batch_save(struct store *s, const struct batch_row *b);
static void batch_row_done(struct batch_row *b);
static int batch_number(struct store *s, const char *uuid, bool create, int64_t *ret);
static int batch_new(struct store *s, int64_t first, int64_t last, int64_t members, int64_t now,
                     struct batch_row *ret);
static int apply_to_run(struct store *s, struct batch_row *b, const struct store_outcome **o,
                        size_t n, int64_t now, size_t *applied);
static int delete_record(struct store *s, int64_t id);

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

/*
 * Claim a batch (see store.h). What is due decides, oldest first: a batch (or records of one) to
 * be sent again; records without a batch put back to pending (unheld, retried by an operator,
 * adjustments); else the next run of fresh records.
 */
int
store_claim_batch(struct store *s, const struct store_claim *claim, struct store_batch *ret)
{
	struct claim_set set = {0};
	struct batch_row b = {0};
	struct store_batch out = {0};
	int64_t batch_due = 0, batch_at = 0, state_batch = 0, state_at = 0;
	bool state_due = false;
	int r;

	if (!claim || !ret)
		return -EINVAL;
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_DUE_BATCH, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, claim->now);
			r = store_step_row(s, st);
			if (r > 0) {
				batch_due = sqlite3_column_int64(st, 0);
				batch_at = sqlite3_column_int64(st, 1);
			}
		}
	}
	if (r >= 0) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_DUE_STATE, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, claim->now);
			r = store_step_row(s, st);
			if (r > 0) {
				state_due = true;
				state_batch = store_col_int64_or0(st, 1);
				state_at = sqlite3_column_int64(st, 2);
			}
		}
	}
	if (r >= 0) {
		if (batch_due && (!state_due || batch_at <= state_at))
			r = claim_existing(s, batch_due, &set, &b);
		else if (state_due && state_batch)
			r = claim_existing(s, state_batch, &set, &b);
		else if (state_due)
			r = claim_loose(s, claim, &set, &b);
		/* nothing due to be sent again, or all of it held again: the next fresh run */
		if (r >= 0 && set.taken == 0)
			r = claim_fresh(s, claim, &set, &b);
	}
	r = store_tx_end(s, r);
	if (r >= 0 && set.taken > 0) {
		memcpy(out.batch_id, b.uuid, sizeof(out.batch_id));
		out.records = xcalloc(set.taken, sizeof(*out.records));
		for (size_t i = 0; i < set.n; i++) {
			struct store_record *rec = &set.items[i].rec;

			if (set.items[i].hold)
				continue;
			rec->state = STORE_INFLIGHT;
			rec->batch_id = xstrdup(b.uuid);
			out.attempts = MAX(out.attempts, rec->attempts);
			out.records[out.n_records++] = *rec;
			*rec = (struct store_record){0};
		}
	}
	claim_set_done(&set);
	batch_row_done(&b);
	if (r < 0)
		return r;
	*ret = out;
	return 0;
}

/* The earliest next attempt of a pending record. */
int
store_next_due(struct store *s, int64_t *ret)
{
	int64_t head = 0, best = INT64_MAX, t;
	enum stmt_id ids[] = {STMT_NEXT_DUE_BATCH, STMT_NEXT_DUE_STATE};
	int r;

	for (size_t i = 0; i < ARRAY_SIZE(ids); i++) {
		r = store_single_int64(s, ids[i], &t);
		if (r >= 0)
			best = MIN(best, t);
		else if (r != -ENOENT)
			return r;
	}
	r = store_meta_get(s, "claimed_through", &head);
	if (r < 0 && r != -ENOENT)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_OLDEST_FRESH, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, head);
		r = store_step_row(s, st);
		if (r < 0)
			return r;
		if (r > 0)
			best = MIN(best, sqlite3_column_int64(st, 0));
	}
	if (best == INT64_MAX)
		return -ENOENT;
	*ret = best;
	return 0;
}

/* collected_at of the oldest pending record: the first fresh one, or one due for a retry. */
int
store_oldest_pending(struct store *s, int64_t *ret)
{
	int64_t head = 0, best = INT64_MAX, t;
	enum stmt_id ids[] = {STMT_OLDEST_BATCH, STMT_OLDEST_STATE};
	int r;

	for (size_t i = 0; i < ARRAY_SIZE(ids); i++) {
		r = store_single_int64(s, ids[i], &t);
		if (r >= 0)
			best = MIN(best, t);
		else if (r != -ENOENT)
			return r;
	}
	r = store_meta_get(s, "claimed_through", &head);
	if (r < 0 && r != -ENOENT)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_OLDEST_FRESH, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, head);
		r = store_step_row(s, st);
		if (r < 0)
			return r;
		if (r > 0)
			best = MIN(best, sqlite3_column_int64(st, 0));
	}
	if (best == INT64_MAX)
		return -ENOENT;
	*ret = best;
	return 0;
}

/* Whether an outcome's id sorts before another's (for bsearch and qsort). */
static int
outcome_cmp(const void *a, const void *b)
{
	const struct store_outcome *x = *(const struct store_outcome *const *)a;
	const struct store_outcome *y = *(const struct store_outcome *const *)b;

	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return x < y ? -1 : x > y; /* qsort is not stable: the caller's order decides a tie */
}

static int
id_cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

/* Check one outcome's fields. */
static int
outcome_check(struct store *s, const struct store_outcome *o)
{
	switch (o->kind) {
	case STORE_OUTCOME_FORWARDED:
		if (!o->status)
			return store_fail_msg(s, -EINVAL, "forwarded outcome without a status");
		return 0;
	case STORE_OUTCOME_DEAD:
		return 0;
	case STORE_OUTCOME_RETRY:
		if (o->new_batch_id && strlen(o->new_batch_id) != STORE_BATCH_ID_LEN)
			return store_fail_msg(s, -EINVAL, "malformed batch id");
		return 0;
	default:
		return store_fail_msg(s, -EINVAL, "unknown outcome kind");
	}
}

/* The state an outcome moves a record to. */
static enum store_state
outcome_state(const struct store_outcome *o)
{
	return o->kind == STORE_OUTCOME_FORWARDED ? STORE_FORWARDED
	       : o->kind == STORE_OUTCOME_DEAD    ? STORE_DEAD
	                                          : STORE_PENDING;
}

/* Apply one outcome to a record's state row. */
static int
apply_to_state_row(struct store *s, int64_t batch, const struct store_outcome *o, int64_t now)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int64_t new_batch = 0;
	int r;

	if (o->kind == STORE_OUTCOME_RETRY && o->new_batch_id) {
		r = batch_number(s, o->new_batch_id, true, &new_batch);
		if (r < 0)
			return r;
	}
	r = store_stmt(s,
	               o->kind == STORE_OUTCOME_FORWARDED ? STMT_STATE_FORWARDED
	               : o->kind == STORE_OUTCOME_DEAD    ? STMT_STATE_DEAD
	                                                  : STMT_STATE_RETRY,
	               &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, o->id);
	sqlite3_bind_int64(st, 2, batch);
	switch (o->kind) {
	case STORE_OUTCOME_FORWARDED:
		store_bind_text(st, 3, o->status);
		sqlite3_bind_int64(st, 4, now);
		break;
	case STORE_OUTCOME_DEAD:
		store_bind_text(st, 3, o->error_code);
		store_bind_text(st, 4, o->error_message);
		break;
	default:
		sqlite3_bind_int64(st, 3, o->next_attempt_at);
		if (new_batch)
			sqlite3_bind_int64(st, 4, new_batch);
		else
			sqlite3_bind_null(st, 4);
		store_bind_text(st, 5, o->error_code);
		store_bind_text(st, 6, o->error_message);
		break;
	}
	r = store_step_done(s, st);
	if (r < 0)
		return r;
	s->delta[STORE_INFLIGHT]--;
	s->delta[outcome_state(o)]++;
	return 0;
}

/* Apply a batch's outcomes in one transaction. */
int
store_apply_outcomes(struct store *s, const char *batch_id, const struct store_outcome *o, size_t n,
                     int64_t now, size_t *ret_applied)
{
	_cleanup_free_ const struct store_outcome **sorted = NULL, **run = NULL;
	_cleanup_free_ int64_t *state_ids = NULL;
	struct batch_row b = {0};
	size_t applied = 0, n_state = 0, n_run = 0;
	int64_t batch = 0;
	int r;

	if (!batch_id || (n && !o))
		return -EINVAL;
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	for (size_t i = 0; r >= 0 && i < n; i++)
		r = outcome_check(s, &o[i]);
	/* an unknown batch id: nothing is inflight in it */
	if (r >= 0) {
		r = batch_number(s, batch_id, false, &batch);
		if (r == -ENOENT) {
			r = 0;
			goto finish;
		}
	}
	if (r >= 0)
		r = batch_load(s, batch, &b);
	if (r >= 0) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_BATCH_STATE_IDS, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, batch);
			sqlite3_bind_int(st, 2, STORE_INFLIGHT);
			r = store_collect_ids(s, st, &state_ids, &n_state);
		}
	}
	if (r < 0)
		goto finish;

	sorted = xcalloc(n + 1, sizeof(*sorted));
	run = xcalloc(n + 1, sizeof(*run));
	for (size_t i = 0; i < n; i++)
		sorted[i] = &o[i];
	qsort(sorted, n, sizeof(*sorted), outcome_cmp);
	for (size_t i = 0; r >= 0 && i < n; i++) {
		const struct store_outcome *oi = sorted[i];

		if (i > 0 && sorted[i - 1]->id == oi->id)
			continue; /* the first outcome of a record counts */
		if (n_state > 0 &&
		    bsearch(&oi->id, state_ids, n_state, sizeof(*state_ids), id_cmp)) {
			r = apply_to_state_row(s, batch, oi, now);
			applied++;
		} else if (b.state == STORE_INFLIGHT && b.members > 0 && oi->id >= b.first &&
		           oi->id <= b.last)
			run[n_run++] = oi; /* checked against the run's members below */
	}
	if (r >= 0 && n_run > 0)
		r = apply_to_run(s, &b, run, n_run, now, &applied);
finish:
	batch_row_done(&b);
	r = store_tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_applied)
		*ret_applied = applied;
	return 0;
}

/* Two outcomes that leave their records in the same state (the batch row can hold it). */
static bool
outcome_same(const struct store_outcome *a, const struct store_outcome *b)
{
	if (a->kind != b->kind)
		return false;
	if (a->kind == STORE_OUTCOME_FORWARDED)
		return streq(a->status, b->status);
	return a->next_attempt_at == b->next_attempt_at &&
	       streq_ptr(a->error_code, b->error_code) &&
	       streq_ptr(a->error_message, b->error_message) &&
	       streq_ptr(a->new_batch_id, b->new_batch_id);
}

/* Whether the batch row can hold an outcome for its members (dead letters and split batches
 * are state rows). */
static bool
outcome_batchable(const struct store_outcome *o)
{
	return o->kind == STORE_OUTCOME_FORWARDED ||
	       (o->kind == STORE_OUTCOME_RETRY && !o->new_batch_id);
}

/* Give one member of a run a state row: as it is now, or with an outcome applied. */
static int
member_to_state_row(struct store *s, const struct batch_row *b, int64_t id,
                    const struct store_outcome *o, int64_t now)
{
	struct store_record rec = {0};
	struct store_state_row row;
	int r;

	r = store_record_get(s, id, &rec);
	if (r < 0)
		return r;
	row = store_state_row_of(&rec);
	row.batch = b->id;
	if (o) {
		row.state = outcome_state(o);
		row.attempts++;
		if (o->kind == STORE_OUTCOME_FORWARDED) {
			row.forward_status = o->status;
			row.forwarded_at = now;
			row.error_code = row.error_message = NULL;
		} else {
			row.error_code = o->error_code;
			row.error_message = o->error_message;
		}
		if (o->kind == STORE_OUTCOME_RETRY) {
			row.next_attempt_at = o->next_attempt_at;
			if (o->new_batch_id) {
				r = batch_number(s, o->new_batch_id, true, &row.batch);
				if (r < 0)
					goto finish;
			}
		}
	}
	r = store_state_put(s, &row);
finish:
	store_record_done(&rec);
	return r;
}

/*
 * Apply outcomes to the members of the batch's run. The outcome most of them share (when the
 * batch row can hold it) becomes the batch row's; every other member gets a state row: with its
 * own outcome, or inflight as it was when it has none.
 */
static int
apply_to_run(struct store *s, struct batch_row *b, const struct store_outcome **o, size_t n,
             int64_t now, size_t *applied)
{
	_cleanup_free_ int64_t *members = NULL;
	const struct store_outcome *major = NULL;
	size_t n_members = 0, n_major = 0, k = 0;
	int r;

	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_RANGE_MEMBERS, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, b->first);
		sqlite3_bind_int64(st, 2, b->last);
		r = store_collect_ids(s, st, &members, &n_members);
		if (r < 0)
			return r;
	}
	/* keep the outcomes of members only (o is sorted by id, as members are) */
	for (size_t i = 0, j = 0; i < n; i++) {
		while (j < n_members && members[j] < o[i]->id)
			j++;
		if (j < n_members && members[j] == o[i]->id)
			o[k++] = o[i];
	}
	n = k;
	if (n == 0)
		return 0;

	/* the most common outcome the batch row can hold; usually all share the first */
	for (size_t i = 0; i < n && n_major * 2 <= n; i++) {
		size_t c = 0;

		if (!outcome_batchable(o[i]) || (major && outcome_same(o[i], major)))
			continue;
		for (size_t j = i; j < n; j++)
			c += outcome_same(o[i], o[j]);
		if (c > n_major) {
			major = o[i];
			n_major = c;
		}
	}

	/* state rows first: they read the member's current state through the batch row */
	for (size_t i = 0, j = 0; i < n_members; i++) {
		const struct store_outcome *oi = j < n && o[j]->id == members[i] ? o[j++] : NULL;

		if (major && oi && outcome_same(oi, major))
			continue;
		if (!major && !oi)
			continue; /* no outcome and the batch row stays: still inflight with it */
		r = member_to_state_row(s, b, members[i], oi, now);
		if (r < 0)
			return r;
		b->members--;
	}
	for (size_t j = 0; j < n; j++) {
		s->delta[STORE_INFLIGHT]--;
		s->delta[outcome_state(o[j])]++;
	}
	*applied += n;
	if (major) {
		b->state = outcome_state(major);
		b->attempts++;
		if (major->kind == STORE_OUTCOME_FORWARDED) {
			free(b->forward_status);
			b->forward_status = xstrdup(major->status);
			b->forwarded_at = now;
			free(b->error_code);
			free(b->error_message);
			b->error_code = b->error_message = NULL;
		} else {
			b->next_attempt_at = major->next_attempt_at;
			free(b->error_code);
			free(b->error_message);
			b->error_code = major->error_code ? xstrdup(major->error_code) : NULL;
			b->error_message =
			        major->error_message ? xstrdup(major->error_message) : NULL;
		}
	}
	return batch_save(s, b);
}

/* Every inflight record back to pending, batch id kept. */
int
store_reset_inflight(struct store *s, size_t *ret_n)
{
	int64_t in_batches = 0;
	size_t n = 0;
	int r;

	r = store_tx_begin(s);
	if (r < 0)
		return r;
	r = store_single_int64(s, STMT_RESET_BATCHES_COUNT, &in_batches);
	if (r >= 0)
		r = store_exec(s, STMT_RESET_BATCHES);
	if (r >= 0)
		r = store_exec(s, STMT_RESET_STATES);
	if (r >= 0) {
		n = (size_t)in_batches + (size_t)sqlite3_changes(s->db);
		s->delta[STORE_INFLIGHT] -= (int64_t)n;
		s->delta[STORE_PENDING] += (int64_t)n;
	}
	r = store_tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_n)
		*ret_n = n;
	return 0;
}

/* Held records back to pending with their charge cleared. */
int
store_unhold_all(struct store *s, int64_t now, size_t *ret_n)
{
	size_t n = 0;
	int r;

	r = store_tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_UNHOLD, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, now);
			r = store_step_done(s, st);
		}
	}
	if (r >= 0) {
		n = (size_t)sqlite3_changes(s->db);
		s->delta[STORE_HELD] -= (int64_t)n;
		s->delta[STORE_PENDING] += (int64_t)n;
	}
	if (r >= 0 && n > 0) {
		_cleanup_free_ char *detail = xasprintf("%zu held records back to pending", n);

		r = store_history_add(s, 0, now, "azs-usaged", "unhold", detail);
	}
	r = store_tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_n)
		*ret_n = n;
	return 0;
}

/* Prune the members of the oldest forwarded batch, at most budget; *ret_n: how many went.
 * Returns 1 when there was such a batch, 0 when there was none. */
static int
prune_batch(struct store *s, int64_t before, size_t budget, size_t *ret_n)
{
	_cleanup_free_ int64_t *ids = NULL;
	struct batch_row b = {0};
	int64_t id = 0;
	size_t n = 0;
	int r;

	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_PRUNE_BATCHES, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, before);
		r = store_step_row(s, st);
		if (r <= 0)
			return r;
		id = sqlite3_column_int64(st, 0);
	}
	r = batch_load(s, id, &b);
	if (r < 0)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_PRUNE_MEMBERS, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, b.first);
			sqlite3_bind_int64(st, 2, b.last);
			sqlite3_bind_int64(st, 3, (int64_t)MIN(budget, (size_t)INT64_MAX));
			r = store_collect_ids(s, st, &ids, &n);
		}
	}
	for (size_t i = 0; r >= 0 && i < n; i++)
		r = delete_record(s, ids[i]);
	if (r < 0)
		goto finish;
	b.members -= (int64_t)n;
	if (n < budget) {
		/* what is left is kept for an undecided conflict: a state row of its own */
		_cleanup_free_ int64_t *kept = NULL;
		size_t n_kept = 0;
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_RANGE_MEMBERS, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, b.first);
			sqlite3_bind_int64(st, 2, b.last);
			r = store_collect_ids(s, st, &kept, &n_kept);
		}
		for (size_t i = 0; r >= 0 && i < n_kept; i++)
			r = member_to_state_row(s, &b, kept[i], NULL, 0);
		b.members -= (int64_t)n_kept;
	}
	if (r >= 0)
		r = batch_save(s, &b);
	if (r >= 0 && b.members <= 0) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_CHARGES_DELETE, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, b.id);
			r = store_step_done(s, st);
		}
		store_stmt_resetp(&st);
		if (r >= 0)
			r = store_stmt(s, STMT_BATCH_DELETE, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, b.id);
			r = store_step_done(s, st);
		}
	}
	if (r >= 0)
		*ret_n = n;
finish:
	batch_row_done(&b);
	return r < 0 ? r : 1;
}

/* Delete old forwarded records, at most max_rows. */
int
store_prune(struct store *s, int64_t before, size_t max_rows, size_t *ret_deleted)
{
	size_t n = 0;
	int r;

	r = store_tx_begin(s);
	if (r < 0)
		return r;
	/* the members of forwarded batches, oldest batch first; a batch whose members are all
	 * gone (or kept in state rows) leaves the index, so each round makes progress */
	while (r >= 0 && n < max_rows) {
		size_t k = 0;

		r = prune_batch(s, before, max_rows - n, &k);
		if (r <= 0)
			break;
		n += k;
		r = 0;
	}
	/* then records forwarded on their own */
	if (r >= 0 && n < max_rows) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;
		_cleanup_free_ int64_t *ids = NULL, *batches = NULL;
		size_t k = 0, cap = 0;

		r = store_stmt(s, STMT_PRUNE_STATES, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, before);
			sqlite3_bind_int64(st, 2, (int64_t)MIN(max_rows - n, (size_t)INT64_MAX));
			while ((r = store_step_row(s, st)) > 0) {
				ids = store_grow(ids, &cap, k + 1, sizeof(*ids));
				batches = xreallocarray(batches, cap, sizeof(*batches));
				ids[k] = sqlite3_column_int64(st, 0);
				batches[k++] = store_col_int64_or0(st, 1);
			}
		}
		store_stmt_resetp(&st);
		for (size_t i = 0; r >= 0 && i < k; i++)
			r = delete_record(s, ids[i]);
		/* a batch row with no member left and no state row naming it goes too */
		for (size_t i = 0; r >= 0 && i < k; i++) {
			_cleanup_stmt_ sqlite3_stmt *del = NULL;

			if (!batches[i] || (i > 0 && batches[i] == batches[i - 1]))
				continue;
			r = store_stmt(s, STMT_BATCH_DELETE, &del);
			if (r >= 0) {
				sqlite3_bind_int64(del, 1, batches[i]);
				r = store_step_done(s, del);
			}
		}
		n += k;
	}
	if (r >= 0)
		s->delta[STORE_FORWARDED] -= (int64_t)n;
	r = store_tx_end(s, r);
	if (r < 0)
		return r;
	if (ret_deleted)
		*ret_deleted = n;
	return 0;
}

/* Delete a pruned record with its state row, history and resolved conflict rows. */
static int
delete_record(struct store *s, int64_t id)
{
	_cleanup_free_ int64_t *conflicts = NULL;
	size_t n = 0;
	int r;

	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_PRUNE_CONFLICTS, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, id);
		r = store_collect_ids(s, st, &conflicts, &n);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i <= n; i++) {
		int64_t victim = i < n ? conflicts[i] : id;
		enum stmt_id stmts[] = {STMT_PRUNE_HISTORY, STMT_STATE_DELETE, STMT_PRUNE_DELETE};

		for (size_t k = 0; k < ARRAY_SIZE(stmts); k++) {
			_cleanup_stmt_ sqlite3_stmt *st = NULL;

			/* the conflict rows themselves went with RETURNING */
			if (i < n && stmts[k] == STMT_PRUNE_DELETE)
				continue;
			r = store_stmt(s, stmts[k], &st);
			if (r < 0)
				return r;
			sqlite3_bind_int64(st, 1, victim);
			r = store_step_done(s, st);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

/* Free what a claim gathered. */
static void
claim_set_done(struct claim_set *c)
{
	for (size_t i = 0; i < c->n; i++)
		store_record_done(&c->items[i].rec);
	free(c->items);
	*c = (struct claim_set){0};
}

/* Hex text of a 32-byte key column. */
static char *
key_hex(sqlite3_stmt *st, int i)
{
	static const char digits[] = "0123456789abcdef";
	const unsigned char *k = sqlite3_column_blob(st, i);
	int n = sqlite3_column_bytes(st, i);
	char *out = xmalloc((size_t)n * 2 + 1);

	for (int j = 0; j < n; j++) {
		out[2 * j] = digits[k[j] >> 4];
		out[2 * j + 1] = digits[k[j] & 15];
	}
	out[2 * n] = '\0';
	return out;
}

/* Append the row of a claim statement to the set. */
static struct claim_item *
claim_add(struct claim_set *set, sqlite3_stmt *st)
{
	struct claim_item *it;

	set->items = store_grow(set->items, &set->cap, set->n + 1, sizeof(*set->items));
	it = &set->items[set->n++];
	*it = (struct claim_item){
	        .rec =
	                {
	                        .id = sqlite3_column_int64(st, CC_ID),
	                        .state = STORE_PENDING,
	                        .key = key_hex(st, CC_KEY),
	                        .reported_hour = sqlite3_column_int64(st, CC_REPORTED_HOUR),
	                        .subscription_id = store_col_dup(st, CC_SUBSCRIPTION_ID),
	                        .meter_id = store_col_dup(st, CC_METER_ID),
	                        .quantity = store_col_dup(st, CC_QUANTITY),
	                        .usage_start = sqlite3_column_int64(st, CC_USAGE_START),
	                        .usage_end = sqlite3_column_int64(st, CC_USAGE_END),
	                        .resource_uri = store_col_dup(st, CC_RESOURCE_URI),
	                        .location = store_col_dup(st, CC_LOCATION),
	                        .tags = store_col_dup(st, CC_TAGS),
	                        .additional_info = store_col_dup(st, CC_ADDITIONAL_INFO),
	                        .collected_at = sqlite3_column_int64(st, CC_COLLECTED_AT),
	                        .tenant_id = store_col_dup(st, CC_TENANT_ID),
	                        .charged_subscription = store_col_dup(st, CC_CHARGED_SUBSCRIPTION),
	                        .charge_reason = store_col_dup(st, CC_CHARGE_REASON),
	                        .registration = store_col_dup(st, CC_REGISTRATION),
	                        .attempts = (unsigned)sqlite3_column_int64(st, CC_ATTEMPTS),
	                        .adjustment_of = sqlite3_column_int(st, CC_KIND) == KIND_ADJUSTMENT
	                                                 ? store_col_int64_or0(st, CC_OF)
	                                                 : 0,
	                },
	        .size = sqlite3_column_int64(st, CC_EVENT_SIZE),
	};
	return it;
}

/* Map a record without a charge; fills its charge fields or marks it held. */
static int
claim_map(struct store *s, const struct store_claim *claim, struct claim_item *it)
{
	struct store_charge charge = {0};
	int r;

	if (it->rec.charged_subscription)
		return 0; /* frozen by an earlier claim */
	if (!claim->map)
		return store_fail_msg(s, -EINVAL, "record %" PRId64 " has no charge and no mapping",
		                      it->rec.id);
	r = claim->map(claim->userdata, &it->rec, &charge);
	if (r < 0)
		return store_fail_msg(s, r, "mapping record %" PRId64 " failed", it->rec.id);
	if (charge.hold) {
		it->hold = true;
		free(it->rec.error_code);
		it->rec.error_code = xstrdup(charge.reason ? charge.reason : "ambiguous");
		return 0;
	}
	if (!charge.charged_subscription || !charge.reason || isempty(charge.registration))
		return store_fail_msg(
		        s, -EINVAL, "mapping gave no charged subscription, reason or registration");
	it->rec.charged_subscription = xstrdup(charge.charged_subscription);
	it->rec.charge_reason = xstrdup(charge.reason);
	free(it->rec.registration);
	it->rec.registration = xstrdup(charge.registration);
	free(it->rec.tenant_id);
	it->rec.tenant_id = charge.tenant_id ? xstrdup(charge.tenant_id) : NULL;
	return 0;
}

/* Whether a new record still fits a new batch (which takes one at least). */
static bool
claim_fits(const struct store_claim *claim, const struct claim_set *set, int64_t size)
{
	if (set->taken == 0)
		return true;
	if (claim->max_records && set->taken >= claim->max_records)
		return false;
	return !claim->max_bytes || set->bytes + (uint64_t)size <= claim->max_bytes;
}

/* Park a record in "held", charge cleared. */
static int
claim_hold(struct store *s, struct claim_item *it, int64_t now)
{
	struct store_state_row row = {
	        .id = it->rec.id,
	        .state = STORE_HELD,
	        .attempts = it->rec.attempts,
	        .next_attempt_at = now,
	        .error_code = it->rec.error_code,
	};

	s->delta[STORE_PENDING]--;
	s->delta[STORE_HELD]++;
	return store_state_put(s, &row);
}

/* The records of a batch that is sent again: the run's members and its pending state rows. */
static int
claim_existing(struct store *s, int64_t batch, struct claim_set *set, struct batch_row *ret)
{
	int r;

	r = batch_load(s, batch, ret);
	if (r < 0)
		return r;
	if (ret->state == STORE_PENDING && ret->members > 0) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;
		size_t before = set->n;

		r = store_stmt(s, STMT_BATCH_MEMBERS, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, batch);
		sqlite3_bind_int64(st, 2, ret->first);
		sqlite3_bind_int64(st, 3, ret->last);
		while ((r = store_step_row(s, st)) > 0)
			claim_add(set, st)->rec.attempts = ret->attempts;
		if (r < 0)
			return r;
		ret->members = (int64_t)(set->n - before);
		ret->state = STORE_INFLIGHT;
		s->delta[STORE_PENDING] -= ret->members;
		s->delta[STORE_INFLIGHT] += ret->members;
		r = batch_save(s, ret);
		if (r < 0)
			return r;
	}
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_BATCH_STATES, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, batch);
		sqlite3_bind_int(st, 2, STORE_PENDING);
		while ((r = store_step_row(s, st)) > 0)
			claim_add(set, st);
		if (r < 0)
			return r;
	}
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_STATE_CLAIM, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, batch);
		r = store_step_done(s, st);
		if (r < 0)
			return r;
		s->delta[STORE_PENDING] -= sqlite3_changes(s->db);
		s->delta[STORE_INFLIGHT] += sqlite3_changes(s->db);
	}
	for (size_t i = 0; i < set->n; i++)
		if (!set->items[i].rec.charged_subscription)
			return store_fail_msg(s, -EBADMSG,
			                      "record %" PRId64 " of batch %s has no charge",
			                      set->items[i].rec.id, ret->uuid);
	set->taken = set->n;
	return 0;
}

/* Records back to pending without a batch (unheld, retried, adjustments): a new batch. */
static int
claim_loose(struct store *s, const struct store_claim *claim, struct claim_set *set,
            struct batch_row *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_LOOSE, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, claim->now);
	while ((r = store_step_row(s, st)) > 0) {
		struct claim_item *it;

		if (!claim_fits(claim, set, sqlite3_column_int64(st, CC_EVENT_SIZE)))
			break;
		it = claim_add(set, st);
		r = claim_map(s, claim, it);
		if (r < 0)
			return r;
		if (it->hold)
			continue;
		set->taken++;
		set->bytes += (uint64_t)it->size;
	}
	store_stmt_resetp(&st);
	if (r < 0)
		return r;
	if (set->taken > 0) {
		r = batch_new(s, 0, 0, 0, claim->now, ret);
		if (r < 0)
			return r;
	}
	for (size_t i = 0; i < set->n; i++) {
		struct claim_item *it = &set->items[i];
		struct store_state_row row;

		if (it->hold) {
			r = claim_hold(s, it, claim->now);
		} else {
			row = store_state_row_of(&it->rec);
			row.state = STORE_INFLIGHT;
			row.batch = ret->id;
			row.next_attempt_at = claim->now;
			s->delta[STORE_PENDING]--;
			s->delta[STORE_INFLIGHT]++;
			r = store_state_put(s, &row);
		}
		if (r < 0)
			return r;
	}
	return 0;
}

/* The charge of a claimed record, compared with another's. */
static bool
charge_equal(const struct store_record *a, const struct store_record *b)
{
	return streq_ptr(a->tenant_id, b->tenant_id) &&
	       streq_ptr(a->charged_subscription, b->charged_subscription) &&
	       streq_ptr(a->charge_reason, b->charge_reason) &&
	       streq_ptr(a->registration, b->registration);
}

/* FNV-1a of a string, for the small hash table of claim_charges(). */
static uint32_t
hash_string(const char *str)
{
	uint32_t h = 2166136261u;

	for (; *str; str++)
		h = (h ^ (unsigned char)*str) * 16777619u;
	return h;
}

/* Freeze the charges of a fresh batch: one row per subscription, state rows for the odd ones. */
static int
claim_charges(struct store *s, struct claim_set *set, const struct batch_row *b)
{
	/* the first record of each subscription, by open addressing (at most half full) */
	size_t size = 16;
	_cleanup_free_ struct store_record **first = NULL;
	int r;

	while (size < 2 * set->n)
		size *= 2;
	first = xcalloc(size, sizeof(*first));
	for (size_t i = 0; i < set->n; i++) {
		struct claim_item *it = &set->items[i];
		size_t slot;

		if (it->hold)
			continue;
		slot = hash_string(it->rec.subscription_id) & (size - 1);
		while (first[slot] && !streq(first[slot]->subscription_id, it->rec.subscription_id))
			slot = (slot + 1) & (size - 1);
		if (first[slot]) {
			it->own_charge = !charge_equal(first[slot], &it->rec);
			continue;
		}
		first[slot] = &it->rec;
		{
			_cleanup_stmt_ sqlite3_stmt *st = NULL;
			int64_t number = 0;

			r = store_stmt(s, STMT_CHARGE_ADD, &st);
			if (r < 0)
				return r;
			r = store_registration_number(s, it->rec.registration, &number);
			if (r < 0)
				return r;
			sqlite3_bind_int64(st, 1, b->id);
			store_bind_text(st, 2, it->rec.subscription_id);
			store_bind_text(st, 3, it->rec.tenant_id);
			store_bind_text(st, 4, it->rec.charged_subscription);
			store_bind_text(st, 5, it->rec.charge_reason);
			sqlite3_bind_int64(st, 6, number);
			r = store_step_done(s, st);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

/* The next run of pending records, from the claim head on, into a new batch. */
static int
claim_fresh(struct store *s, const struct store_claim *claim, struct claim_set *set,
            struct batch_row *ret)
{
	int64_t head = 0, first = 0, last = 0, own = 0;
	int r;

	r = store_meta_get(s, "claimed_through", &head);
	if (r < 0 && r != -ENOENT)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_FRESH, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, head);
		while ((r = store_step_row(s, st)) > 0) {
			int64_t id = sqlite3_column_int64(st, CC_ID);
			int kind = sqlite3_column_int(st, CC_KIND);
			struct claim_item *it;

			if (kind == KIND_QUARANTINED || kind == KIND_CONFLICT) {
				head = id;
				continue;
			}
			if (kind == KIND_ADJUSTMENT) {
				/* an adjustment carries its original's charge in a state row and is
				 * claimed as a loose record */
				_cleanup_stmt_ sqlite3_stmt *sg = NULL;

				r = store_stmt(s, STMT_STATE_GET, &sg);
				if (r < 0)
					return r;
				sqlite3_bind_int64(sg, 1, id);
				r = store_step_row(s, sg);
				if (r < 0)
					return r;
				if (r > 0) {
					head = id;
					continue;
				}
			}
			if (!claim_fits(claim, set, sqlite3_column_int64(st, CC_EVENT_SIZE)))
				break;
			it = claim_add(set, st);
			r = claim_map(s, claim, it);
			if (r < 0)
				return r;
			head = id;
			if (it->hold) {
				r = claim_hold(s, it, claim->now);
				if (r < 0)
					return r;
				continue;
			}
			first = first ? first : id;
			last = id;
			set->taken++;
			set->bytes += (uint64_t)it->size;
		}
		if (r < 0)
			return r;
	}
	r = store_meta_set(s, "claimed_through", head);
	if (r < 0 || set->taken == 0)
		return r;

	r = batch_new(s, first, last, 0, claim->now, ret);
	if (r >= 0)
		r = claim_charges(s, set, ret);
	for (size_t i = 0; r >= 0 && i < set->n; i++) {
		struct claim_item *it = &set->items[i];
		struct store_state_row row;

		if (it->hold || !it->own_charge)
			continue;
		row = store_state_row_of(&it->rec);
		row.state = STORE_INFLIGHT;
		row.batch = ret->id;
		row.next_attempt_at = claim->now;
		r = store_state_put(s, &row);
		own++;
	}
	if (r < 0)
		return r;
	ret->members = (int64_t)set->taken - own;
	s->delta[STORE_PENDING] -= (int64_t)set->taken;
	s->delta[STORE_INFLIGHT] += (int64_t)set->taken;
	return batch_save(s, ret);
}

/* Create a batch row, inflight, under a new id. */
static int
batch_new(struct store *s, int64_t first, int64_t last, int64_t members, int64_t now,
          struct batch_row *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	*ret = (struct batch_row){
	        .first = first,
	        .last = last,
	        .members = members,
	        .state = STORE_INFLIGHT,
	        .next_attempt_at = now,
	};
	r = hash_uuid4(ret->uuid);
	if (r < 0)
		return store_fail_msg(s, r, "no random batch id");
	r = store_stmt(s, STMT_BATCH_ADD, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, ret->uuid);
	if (first) {
		sqlite3_bind_int64(st, 2, first);
		sqlite3_bind_int64(st, 3, last);
	} else {
		sqlite3_bind_null(st, 2);
		sqlite3_bind_null(st, 3);
	}
	sqlite3_bind_int64(st, 4, members);
	sqlite3_bind_int64(st, 5, now);
	r = store_step_done(s, st);
	if (r < 0)
		return r;
	if (sqlite3_changes(s->db) == 0)
		return store_fail_msg(s, -EEXIST, "batch id %s exists already", ret->uuid);
	ret->id = sqlite3_last_insert_rowid(s->db);
	return 0;
}

/*
 * The number of the batch with this id. With create, an unknown id is given a row of its own
 * (a split batch: its records are state rows); without, an unknown id is -ENOENT.
 */
static int
batch_number(struct store *s, const char *uuid, bool create, int64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_BATCH_FIND, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, uuid);
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	if (r > 0) {
		*ret = sqlite3_column_int64(st, 0);
		return 0;
	}
	if (!create)
		return -ENOENT;
	store_stmt_resetp(&st);
	r = store_stmt(s, STMT_BATCH_ADD, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, uuid);
	sqlite3_bind_null(st, 2);
	sqlite3_bind_null(st, 3);
	sqlite3_bind_int64(st, 4, 0);
	sqlite3_bind_int64(st, 5, 0);
	r = store_step_done(s, st);
	if (r < 0)
		return r;
	*ret = sqlite3_last_insert_rowid(s->db);
	return 0;
}

/* Load a batch row. */
static int
batch_load(struct store *s, int64_t id, struct batch_row *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	const char *uuid;
	int r;

	r = store_stmt(s, STMT_BATCH_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	uuid = r > 0 ? (const char *)sqlite3_column_text(st, 0) : NULL;
	if (!uuid || strlen(uuid) != STORE_BATCH_ID_LEN)
		return store_fail_msg(s, -EBADMSG, "batch %" PRId64 " has no valid id", id);
	*ret = (struct batch_row){
	        .id = id,
	        .first = store_col_int64_or0(st, 1),
	        .last = store_col_int64_or0(st, 2),
	        .members = sqlite3_column_int64(st, 3),
	        .state = (enum store_state)sqlite3_column_int(st, 4),
	        .attempts = (unsigned)sqlite3_column_int64(st, 5),
	        .next_attempt_at = sqlite3_column_int64(st, 6),
	        .error_code = store_col_dup(st, 7),
	        .error_message = store_col_dup(st, 8),
	        .forward_status = store_col_dup(st, 9),
	        .forwarded_at = store_col_int64_or0(st, 10),
	};
	memcpy(ret->uuid, uuid, sizeof(ret->uuid));
	return 0;
}

/* Write a batch row back. */
static int
batch_save(struct store *s, const struct batch_row *b)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_BATCH_SET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, b->id);
	sqlite3_bind_int64(st, 2, MAX(b->members, 0));
	sqlite3_bind_int(st, 3, b->state);
	sqlite3_bind_int64(st, 4, b->attempts);
	sqlite3_bind_int64(st, 5, b->next_attempt_at);
	store_bind_text(st, 6, b->error_code);
	store_bind_text(st, 7, b->error_message);
	store_bind_text(st, 8, b->forward_status);
	if (b->forwarded_at)
		sqlite3_bind_int64(st, 9, b->forwarded_at);
	else
		sqlite3_bind_null(st, 9);
	return store_step_done(s, st);
}

static void
batch_row_done(struct batch_row *b)
{
	free(b->error_code);
	free(b->error_message);
	free(b->forward_status);
	*b = (struct batch_row){0};
}
