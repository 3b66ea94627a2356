/*
 * Claiming batches (ARCHITECTURE.md sections 5 and 7). A fresh claim takes the next run of
 * pending record ids into one new batch row and freezes their charges; a batch (or records of
 * one) due to be sent again is claimed whole under its batch id; records put back to pending
 * without a batch (unheld, retried by an operator, adjustments) form a batch of their own.
 *
 * Charges are frozen per subscription and epoch (table charges): a claim compares what map()
 * answers with the latest charge of each subscription, kept in memory, and writes a row (under
 * a new epoch) only when it changed, so a batch costs no charge row at all while the mapping
 * stands. A record whose charge differs from its subscription's in the same batch keeps its own
 * in a state row.
 *
 * A claimed record's strings are copied into one allocation (store_record.storage): a batch of
 * 500 records is 500 allocations, not 7,000.
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

static int claim_existing(struct store *s, int64_t batch, struct claim_set *set,
                          struct store_batch_row *ret);
static int claim_loose(struct store *s, const struct store_claim *claim, struct claim_set *set,
                       struct store_batch_row *ret);
static int claim_fresh(struct store *s, const struct store_claim *claim, struct claim_set *set,
                       struct store_batch_row *ret);
static int batch_new(struct store *s, int64_t first, int64_t last, int64_t members,
                     uint64_t members_fp, int64_t epoch, int64_t now, struct store_batch_row *ret);

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
	struct store_batch_row b = {0};
	struct store_batch out = {0};
	int64_t batch_due = 0, batch_at = 0, state_batch = 0, state_at = 0;
	bool state_due = false;
	int r;

	if (!claim || !ret)
		return -EINVAL;
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	/* the array of the last claim: 1,000 items are 256 KiB, which malloc would map afresh */
	set = (struct claim_set){.items = TAKE_PTR(s->claim_items), .cap = s->claim_items_cap};
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
			memcpy(rec->batch_id, b.uuid,
			       sizeof(b.uuid)); /* room kept in its storage */
			out.attempts = MAX(out.attempts, rec->attempts);
			out.records[out.n_records++] = *rec;
			*rec = (struct store_record){0};
		}
	}
	/* the array stays for the next claim (its records are freed) */
	for (size_t i = 0; i < set.n; i++)
		store_record_done(&set.items[i].rec);
	s->claim_items = set.items;
	s->claim_items_cap = set.cap;
	store_batch_row_done(&b);
	if (r < 0)
		return r;
	*ret = out;
	return 0;
}

/* Forget the charges kept in memory. */
void
store_charges_forget(struct store *s)
{
	for (size_t i = 0; i < s->charges_size; i++)
		free(s->charges[i].subscription_id); /* one allocation holds the entry's strings */
	if (s->charges)
		memset(s->charges, 0, s->charges_size * sizeof(*s->charges));
	s->charges_n = 0;
	s->charges_epoch = -1;
}

/* Length of a string with its NUL, 0 for NULL. */
static size_t
size0(const char *str)
{
	return str ? strlen(str) + 1 : 0;
}

/* Copy str to *p (advancing it); NULL stays NULL. */
static char *
pack(char **p, const char *str, size_t size)
{
	char *out = *p;

	if (!str)
		return NULL;
	memcpy(out, str, size);
	*p += size;
	return out;
}

/*
 * Make r own its strings in one allocation: they are borrowed (from SQLite's row, from map())
 * when it is called. The key comes as its 32 bytes and becomes hex; room is kept for the batch
 * id, which is known only at the end of the claim.
 */
static void
record_pack(struct store_record *r, const unsigned char *key, size_t key_size)
{
	static const char digits[] = "0123456789abcdef";
	const char *const fields[] = {
	        r->subscription_id, r->meter_id,     r->quantity,
	        r->resource_uri,    r->location,     r->tags,
	        r->additional_info, r->tenant_id,    r->charged_subscription,
	        r->charge_reason,   r->registration, r->error_code,
	};
	size_t sizes[ARRAY_SIZE(fields)], total = 2 * key_size + 1 + STORE_BATCH_ID_LEN + 1;
	char *p;

	for (size_t i = 0; i < ARRAY_SIZE(fields); i++)
		total += sizes[i] = size0(fields[i]);
	p = r->storage = xmalloc(total);
	r->key = p;
	for (size_t i = 0; i < key_size; i++) {
		*p++ = digits[key[i] >> 4];
		*p++ = digits[key[i] & 15];
	}
	*p++ = '\0';
	r->batch_id = p;
	*p = '\0';
	p += STORE_BATCH_ID_LEN + 1;
	r->subscription_id = pack(&p, fields[0], sizes[0]);
	r->meter_id = pack(&p, fields[1], sizes[1]);
	r->quantity = pack(&p, fields[2], sizes[2]);
	r->resource_uri = pack(&p, fields[3], sizes[3]);
	r->location = pack(&p, fields[4], sizes[4]);
	r->tags = pack(&p, fields[5], sizes[5]);
	r->additional_info = pack(&p, fields[6], sizes[6]);
	r->tenant_id = pack(&p, fields[7], sizes[7]);
	r->charged_subscription = pack(&p, fields[8], sizes[8]);
	r->charge_reason = pack(&p, fields[9], sizes[9]);
	r->registration = pack(&p, fields[10], sizes[10]);
	r->error_code = pack(&p, fields[11], sizes[11]);
}

/*
 * A record of a claim statement's row, its strings borrowed from the row. A fresh record
 * (STMT_FRESH) has no charge and no attempts yet: those columns are not read.
 */
static struct claim_item
claim_row(sqlite3_stmt *st, bool fresh)
{
#define COL_TEXT(st, i) ((char *)sqlite3_column_text(st, i))
	struct claim_item it = {
	        .rec =
	                {
	                        .id = sqlite3_column_int64(st, CC_ID),
	                        .state = STORE_PENDING,
	                        .reported_hour = sqlite3_column_int64(st, CC_REPORTED_HOUR),
	                        .subscription_id = COL_TEXT(st, CC_SUBSCRIPTION_ID),
	                        .meter_id = COL_TEXT(st, CC_METER_ID),
	                        .quantity = COL_TEXT(st, CC_QUANTITY),
	                        .usage_start = sqlite3_column_int64(st, CC_USAGE_START),
	                        .usage_end = sqlite3_column_int64(st, CC_USAGE_END),
	                        .resource_uri = COL_TEXT(st, CC_RESOURCE_URI),
	                        .location = COL_TEXT(st, CC_LOCATION),
	                        .tags = COL_TEXT(st, CC_TAGS),
	                        .additional_info = COL_TEXT(st, CC_ADDITIONAL_INFO),
	                        .collected_at = sqlite3_column_int64(st, CC_COLLECTED_AT),
	                        .adjustment_of = sqlite3_column_int(st, CC_KIND) == KIND_ADJUSTMENT
	                                                 ? store_col_int64_or0(st, CC_OF)
	                                                 : 0,
	                },
	        .size = sqlite3_column_int64(st, CC_EVENT_SIZE),
	};

	if (!fresh) {
		it.rec.tenant_id = COL_TEXT(st, CC_TENANT_ID);
		it.rec.charged_subscription = COL_TEXT(st, CC_CHARGED_SUBSCRIPTION);
		it.rec.charge_reason = COL_TEXT(st, CC_CHARGE_REASON);
		it.rec.registration = COL_TEXT(st, CC_REGISTRATION);
		it.rec.attempts = (unsigned)sqlite3_column_int64(st, CC_ATTEMPTS);
	}
	return it;
#undef COL_TEXT
}

/*
 * Look at the row of a claim statement: map it when it has no charge yet, then keep it in the
 * set with its own copy of its strings. *ret (may be NULL) points at the kept item.
 */
static int
claim_add(struct store *s, const struct store_claim *claim, struct claim_set *set, sqlite3_stmt *st,
          bool fresh, struct claim_item **ret)
{
	struct claim_item it = claim_row(st, fresh);
	struct store_charge charge = {0};
	int r;

	if (!it.rec.charged_subscription) {
		if (!claim || !claim->map)
			return store_fail_msg(s, -EBADMSG, "record %" PRId64 " has no charge",
			                      it.rec.id);
		r = claim->map(claim->userdata, &it.rec, &charge);
		if (r < 0)
			return store_fail_msg(s, r, "mapping record %" PRId64 " failed", it.rec.id);
		if (charge.hold) {
			it.hold = true;
			it.rec.error_code = (char *)(charge.reason ? charge.reason : "ambiguous");
		} else if (!charge.charged_subscription || !charge.reason ||
		           isempty(charge.registration)) {
			return store_fail_msg(
			        s, -EINVAL,
			        "mapping gave no charged subscription, reason or registration");
		} else {
			/* borrowed until record_pack() copies them */
			it.rec.charged_subscription = (char *)charge.charged_subscription;
			it.rec.charge_reason = (char *)charge.reason;
			it.rec.registration = (char *)charge.registration;
			it.rec.tenant_id = (char *)charge.tenant_id;
		}
	}
	record_pack(&it.rec, sqlite3_column_blob(st, CC_KEY),
	            (size_t)sqlite3_column_bytes(st, CC_KEY));
	set->items = store_grow(set->items, &set->cap, set->n + 1, sizeof(*set->items));
	set->items[set->n] = it;
	if (ret)
		*ret = &set->items[set->n];
	set->n++;
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
claim_hold(struct store *s, const struct claim_item *it, int64_t now)
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
claim_existing(struct store *s, int64_t batch, struct claim_set *set, struct store_batch_row *ret)
{
	int r;

	r = store_batch_row_load(s, batch, ret);
	if (r < 0)
		return r;
	if (ret->state == STORE_PENDING && ret->members > 0) {
		_cleanup_stmt_ sqlite3_stmt *st = NULL;
		size_t before = set->n;

		r = store_stmt(s, STMT_BATCH_MEMBERS, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, ret->epoch);
		sqlite3_bind_int64(st, 2, ret->first);
		sqlite3_bind_int64(st, 3, ret->last);
		ret->members_fp = 0;
		while ((r = store_step_row(s, st)) > 0) {
			struct claim_item *it = NULL;

			r = claim_add(s, NULL, set, st, false, &it);
			if (r < 0)
				return r;
			it->rec.attempts = ret->attempts;
			ret->members_fp += store_member_mix(it->rec.id);
		}
		if (r < 0)
			return r;
		ret->members = (int64_t)(set->n - before);
		ret->state = STORE_INFLIGHT;
		s->delta[STORE_PENDING] -= ret->members;
		s->delta[STORE_INFLIGHT] += ret->members;
		r = store_batch_row_save(s, ret);
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
		while ((r = store_step_row(s, st)) > 0) {
			r = claim_add(s, NULL, set, st, false, NULL);
			if (r < 0)
				return r;
		}
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
	set->taken = set->n;
	return 0;
}

/* Records back to pending without a batch (unheld, retried, adjustments): a new batch. */
static int
claim_loose(struct store *s, const struct store_claim *claim, struct claim_set *set,
            struct store_batch_row *ret)
{
	int r;

	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_LOOSE, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, claim->now);
		while ((r = store_step_row(s, st)) > 0) {
			struct claim_item *it = NULL;

			if (!claim_fits(claim, set, sqlite3_column_int64(st, CC_EVENT_SIZE)))
				break;
			r = claim_add(s, claim, set, st, false, &it);
			if (r < 0)
				return r;
			if (it->hold)
				continue;
			set->taken++;
			set->bytes += (uint64_t)it->size;
		}
		if (r < 0)
			return r;
	}
	if (set->taken > 0) {
		r = batch_new(s, 0, 0, 0, 0, 0, claim->now, ret);
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

/* Two charges, compared. */
static bool
charge_equal(const char *tenant_a, const char *charged_a, const char *reason_a,
             const char *registration_a, const struct store_record *b)
{
	return streq_ptr(tenant_a, b->tenant_id) && streq_ptr(charged_a, b->charged_subscription) &&
	       streq_ptr(reason_a, b->charge_reason) && streq_ptr(registration_a, b->registration);
}

/* FNV-1a of a string, for the table of charges. */
static uint32_t
hash_string(const char *str)
{
	uint32_t h = 2166136261u;

	for (; *str; str++)
		h = (h ^ (unsigned char)*str) * 16777619u;
	return h;
}

/* The slot of a subscription in the table of charges: its entry, or the empty slot for it. */
static struct store_charge_entry *
charges_slot(struct store *s, const char *subscription_id)
{
	size_t mask = s->charges_size - 1, i = hash_string(subscription_id) & mask;

	while (s->charges[i].subscription_id &&
	       !streq(s->charges[i].subscription_id, subscription_id))
		i = (i + 1) & mask;
	return &s->charges[i];
}

/* Keep a subscription's latest charge in memory (the table stays at most half full). */
static struct store_charge_entry *
charges_remember(struct store *s, const char *subscription_id, const struct store_record *c)
{
	const char *const fields[] = {subscription_id, c->tenant_id, c->charged_subscription,
	                              c->charge_reason, c->registration};
	size_t sizes[ARRAY_SIZE(fields)], total = 0;
	struct store_charge_entry *e;
	char *p;

	if (2 * (s->charges_n + 1) > s->charges_size) {
		struct store_charge_entry *old = s->charges;
		size_t old_size = s->charges_size;

		s->charges_size = MAX(old_size * 2, (size_t)64);
		s->charges = xcalloc(s->charges_size, sizeof(*s->charges));
		for (size_t i = 0; i < old_size; i++)
			if (old[i].subscription_id)
				*charges_slot(s, old[i].subscription_id) = old[i];
		free(old);
	}
	e = charges_slot(s, subscription_id);
	if (e->subscription_id)
		free(e->subscription_id);
	else
		s->charges_n++;
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++)
		total += sizes[i] = size0(fields[i]);
	p = xmalloc(total);
	e->subscription_id = pack(&p, fields[0], sizes[0]);
	e->tenant_id = pack(&p, fields[1], sizes[1]);
	e->charged_subscription = pack(&p, fields[2], sizes[2]);
	e->reason = pack(&p, fields[3], sizes[3]);
	e->registration = pack(&p, fields[4], sizes[4]);
	e->seen = 0;
	return e;
}

/* A subscription's latest charge, from memory or (once) from the charges table; NULL: none. */
static int
charges_latest(struct store *s, const char *subscription_id, struct store_charge_entry **ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	struct store_charge_entry *e;
	int r;

	if (s->charges_size > 0) {
		e = charges_slot(s, subscription_id);
		if (e->subscription_id) {
			*ret = e;
			return 0;
		}
	}
	r = store_stmt(s, STMT_CHARGE_LATEST, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, subscription_id);
	r = store_step_row(s, st);
	if (r <= 0) {
		*ret = NULL;
		return r;
	}
	(void)charges_remember(s, subscription_id,
	                       &(struct store_record){
	                               .tenant_id = (char *)sqlite3_column_text(st, 0),
	                               .charged_subscription = (char *)sqlite3_column_text(st, 1),
	                               .charge_reason = (char *)sqlite3_column_text(st, 2),
	                               .registration = (char *)sqlite3_column_text(st, 3),
	                       });
	*ret = charges_slot(s, subscription_id);
	return 0;
}

/*
 * Freeze the charges of a fresh batch: for each subscription the charge of its first record,
 * written under a new epoch when it is not the latest one already; the batch takes the epoch.
 * A record whose charge differs from its subscription's first is marked for a state row.
 */
static int
claim_charges(struct store *s, struct claim_set *set, int64_t *ret_epoch)
{
	int64_t epoch = 0;
	bool changed = false;
	int r;

	r = store_meta_get(s, "charge_epoch", &epoch);
	if (r < 0 && r != -ENOENT)
		return r;
	if (epoch != s->charges_epoch) {
		/* another writer moved on (or nothing is known yet) */
		store_charges_forget(s);
		s->charges_epoch = epoch;
	}
	s->claim_seq++;
	for (size_t i = 0; i < set->n; i++) {
		struct claim_item *it = &set->items[i];
		struct store_charge_entry *e = NULL;

		if (it->hold)
			continue;
		r = charges_latest(s, it->rec.subscription_id, &e);
		if (r < 0)
			return r;
		if (e && e->seen == s->claim_seq) {
			/* decided by an earlier record of this batch: an odd one keeps its own */
			it->own_charge = !charge_equal(e->tenant_id, e->charged_subscription,
			                               e->reason, e->registration, &it->rec);
			continue;
		}
		if (e && charge_equal(e->tenant_id, e->charged_subscription, e->reason,
		                      e->registration, &it->rec)) {
			e->seen = s->claim_seq;
			continue;
		}
		/* the first record of its subscription here, charged otherwise than before */
		if (!changed) {
			epoch++;
			changed = true;
		}
		{
			_cleanup_stmt_ sqlite3_stmt *st = NULL;
			int64_t number = 0;

			r = store_stmt(s, STMT_CHARGE_ADD, &st);
			if (r < 0)
				return r;
			r = store_registration_number(s, it->rec.registration, &number);
			if (r < 0)
				return r;
			store_bind_text(st, 1, it->rec.subscription_id);
			sqlite3_bind_int64(st, 2, epoch);
			store_bind_text(st, 3, it->rec.tenant_id);
			store_bind_text(st, 4, it->rec.charged_subscription);
			store_bind_text(st, 5, it->rec.charge_reason);
			sqlite3_bind_int64(st, 6, number);
			r = store_step_done(s, st);
			if (r < 0)
				return r;
		}
		charges_remember(s, it->rec.subscription_id, &it->rec)->seen = s->claim_seq;
	}
	if (changed) {
		r = store_meta_set(s, "charge_epoch", epoch);
		if (r < 0)
			return r;
		s->charges_epoch = epoch;
	}
	*ret_epoch = epoch;
	return 0;
}

/* The next run of pending records, from the claim head on, into a new batch. */
static int
claim_fresh(struct store *s, const struct store_claim *claim, struct claim_set *set,
            struct store_batch_row *ret)
{
	int64_t head = 0, first = 0, last = 0, members = 0, epoch = 0;
	uint64_t members_fp = 0;
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
			struct claim_item *it = NULL;

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
			r = claim_add(s, claim, set, st, true, &it);
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
	if (r >= 0)
		s->claim_head = head;
	if (r < 0 || set->taken == 0)
		return r;

	/* the charges first: the batch row is then written once, complete */
	r = claim_charges(s, set, &epoch);
	if (r < 0)
		return r;
	for (size_t i = 0; i < set->n; i++)
		if (!set->items[i].hold && !set->items[i].own_charge) {
			members++;
			members_fp += store_member_mix(set->items[i].rec.id);
		}
	r = batch_new(s, first, last, members, members_fp, epoch, claim->now, ret);
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
	}
	if (r < 0)
		return r;
	s->delta[STORE_PENDING] -= (int64_t)set->taken;
	s->delta[STORE_INFLIGHT] += (int64_t)set->taken;
	return 0;
}

/* Create a batch row, inflight, under a new id. */
static int
batch_new(struct store *s, int64_t first, int64_t last, int64_t members, uint64_t members_fp,
          int64_t epoch, int64_t now, struct store_batch_row *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	*ret = (struct store_batch_row){
	        .first = first,
	        .last = last,
	        .members = members,
	        .members_fp = members_fp,
	        .epoch = epoch,
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
	sqlite3_bind_int64(st, 5, (int64_t)members_fp);
	sqlite3_bind_int64(st, 6, epoch);
	sqlite3_bind_int64(st, 7, now);
	r = store_step_done(s, st);
	if (r < 0)
		return r;
	if (sqlite3_changes(s->db) == 0)
		return store_fail_msg(s, -EEXIST, "batch id %s exists already", ret->uuid);
	ret->id = sqlite3_last_insert_rowid(s->db);
	return 0;
}

/* The number of the batch with this id (see store-private.h). */
int
store_batch_number(struct store *s, const char *uuid, bool create, int64_t *ret)
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
	for (int i = 4; i <= 7; i++)
		sqlite3_bind_int64(st, i, 0);
	r = store_step_done(s, st);
	if (r < 0)
		return r;
	*ret = sqlite3_last_insert_rowid(s->db);
	return 0;
}

/* Load a batch row. */
int
store_batch_row_load(struct store *s, int64_t id, struct store_batch_row *ret)
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
	*ret = (struct store_batch_row){
	        .id = id,
	        .first = store_col_int64_or0(st, 1),
	        .last = store_col_int64_or0(st, 2),
	        .members = sqlite3_column_int64(st, 3),
	        .members_fp = (uint64_t)sqlite3_column_int64(st, 4),
	        .epoch = sqlite3_column_int64(st, 5),
	        .state = (enum store_state)sqlite3_column_int(st, 6),
	        .attempts = (unsigned)sqlite3_column_int64(st, 7),
	        .next_attempt_at = sqlite3_column_int64(st, 8),
	        .error_code = store_col_dup(st, 9),
	        .error_message = store_col_dup(st, 10),
	        .forward_status = store_col_dup(st, 11),
	        .forwarded_at = store_col_int64_or0(st, 12),
	};
	memcpy(ret->uuid, uuid, sizeof(ret->uuid));
	return 0;
}

/* Write a batch row back. */
int
store_batch_row_save(struct store *s, const struct store_batch_row *b)
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
	sqlite3_bind_int64(st, 10, b->epoch);
	sqlite3_bind_int64(st, 11, (int64_t)b->members_fp);
	return store_step_done(s, st);
}

/* Free a batch row's strings. */
void
store_batch_row_done(struct store_batch_row *b)
{
	free(b->error_code);
	free(b->error_message);
	free(b->forward_status);
	*b = (struct store_batch_row){0};
}
