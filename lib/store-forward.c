/*
 * The forwarder's side of the store after a claim (store-claim.c): applying outcomes, and what
 * moves records in bulk (restart, unhold, pruning), and what is due next. The layout is in
 * store-private.h: an acknowledged batch updates its one batch row, and only records whose
 * state differs from their batch's get a narrow state row.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "store-private.h"
#include "xmalloc.h"

static int apply_to_run(struct store *s, struct store_batch_row *b, const struct store_outcome **o,
                        size_t n, int64_t now, size_t *applied);
static int delete_record(struct store *s, int64_t id);

/*
 * The least value that the single-value statements ids answer, and the collection time of the
 * first record after the claim head (a fresh record is due, and pending, since it came);
 * -ENOENT when there is none.
 */
static int
least_of(struct store *s, const enum stmt_id *ids, size_t n, int64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int64_t head = 0, best = INT64_MAX, t;
	int r;

	for (size_t i = 0; i < n; i++) {
		r = store_single_int64(s, ids[i], &t);
		if (r >= 0)
			best = MIN(best, t);
		else if (r != -ENOENT)
			return r;
	}
	r = store_meta_get(s, "claimed_through", &head);
	if (r < 0 && r != -ENOENT)
		return r;
	r = store_stmt(s, STMT_OLDEST_FRESH, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, head);
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	if (r > 0)
		best = MIN(best, sqlite3_column_int64(st, 0));
	if (best == INT64_MAX)
		return -ENOENT;
	*ret = best;
	return 0;
}

/* The earliest next attempt of a pending record. */
int
store_next_due(struct store *s, int64_t *ret)
{
	static const enum stmt_id ids[] = {STMT_NEXT_DUE_BATCH, STMT_NEXT_DUE_STATE};

	return least_of(s, ids, ARRAY_SIZE(ids), ret);
}

/* collected_at of the oldest pending record: the first fresh one, or one due for a retry. */
int
store_oldest_pending(struct store *s, int64_t *ret)
{
	static const enum stmt_id ids[] = {STMT_OLDEST_BATCH, STMT_OLDEST_STATE};

	return least_of(s, ids, ARRAY_SIZE(ids), ret);
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
		r = store_batch_number(s, o->new_batch_id, true, &new_batch);
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
	struct store_batch_row b = {0};
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
		r = store_batch_number(s, batch_id, false, &batch);
		if (r == -ENOENT) {
			r = 0;
			goto finish;
		}
	}
	if (r >= 0)
		r = store_batch_row_load(s, batch, &b);
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
	store_batch_row_done(&b);
	return store_tx_end_n(s, r, applied, ret_applied);
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

/* Give one member of a run a state row: as it is now, or with an outcome applied. It leaves
 * the run's members. */
static int
member_to_state_row(struct store *s, struct store_batch_row *b, int64_t id,
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
				r = store_batch_number(s, o->new_batch_id, true, &row.batch);
				if (r < 0)
					goto finish;
			}
		}
	}
	r = store_state_put(s, &row);
	if (r >= 0) {
		b->members--;
		b->members_fp -= store_member_mix(id);
	}
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
apply_to_run(struct store *s, struct store_batch_row *b, const struct store_outcome **o, size_t n,
             int64_t now, size_t *applied)
{
	_cleanup_free_ int64_t *members = NULL;
	const struct store_outcome *major = NULL;
	size_t n_members = 0, n_major = 0, k = 0;
	uint64_t fp = 0;
	int r;

	/* the common acknowledgement names exactly the members (o is sorted, each id once) */
	for (size_t i = 0; i < n; i++)
		fp += store_member_mix(o[i]->id);
	if ((int64_t)n == b->members && fp == b->members_fp) {
		members = xcalloc(n, sizeof(*members));
		for (size_t i = 0; i < n; i++)
			members[i] = o[i]->id;
		n_members = n;
	} else {
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
	return store_batch_row_save(s, b);
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
	return store_tx_end_n(s, r, n, ret_n);
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
	return store_tx_end_n(s, r, n, ret_n);
}

/* Prune the members of the oldest forwarded batch, at most budget; *ret_n: how many went.
 * Returns 1 when there was such a batch, 0 when there was none. */
static int
prune_batch(struct store *s, int64_t before, size_t budget, size_t *ret_n)
{
	_cleanup_free_ int64_t *ids = NULL;
	struct store_batch_row b = {0};
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
	r = store_batch_row_load(s, id, &b);
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
	for (size_t i = 0; r >= 0 && i < n; i++) {
		r = delete_record(s, ids[i]);
		b.members--;
		b.members_fp -= store_member_mix(ids[i]);
	}
	if (r < 0)
		goto finish;
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
	}
	if (r >= 0)
		r = store_batch_row_save(s, &b);
	if (r >= 0 && b.members <= 0) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_BATCH_DELETE, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, b.id);
			r = store_step_done(s, st);
		}
	}
	if (r >= 0)
		*ret_n = n;
finish:
	store_batch_row_done(&b);
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
	return store_tx_end_n(s, r, n, ret_deleted);
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
