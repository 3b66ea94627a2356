/*
 * The rows of a record: inserting a record row (with ids never given twice), writing its state
 * row, and reading a record as the operator sees it (record_view), with its history. What the
 * other store files share about single records.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "store-private.h"
#include "xmalloc.h"

/* Fill a record from a row of RECORD_COLUMNS. */
void
store_record_load(sqlite3_stmt *st, struct store_record *r)
{
	*r = (struct store_record){
	        .id = sqlite3_column_int64(st, COL_ID),
	        .state = (enum store_state)sqlite3_column_int(st, COL_STATE),
	        .key = store_col_dup(st, COL_KEY),
	        .reported_hour = sqlite3_column_int64(st, COL_REPORTED_HOUR),
	        .subscription_id = store_col_dup(st, COL_SUBSCRIPTION_ID),
	        .meter_id = store_col_dup(st, COL_METER_ID),
	        .quantity = store_col_dup(st, COL_QUANTITY),
	        .usage_start = sqlite3_column_int64(st, COL_USAGE_START),
	        .usage_end = sqlite3_column_int64(st, COL_USAGE_END),
	        .resource_uri = store_col_dup(st, COL_RESOURCE_URI),
	        .location = store_col_dup(st, COL_LOCATION),
	        .tags = store_col_dup(st, COL_TAGS),
	        .additional_info = store_col_dup(st, COL_ADDITIONAL_INFO),
	        .raw = store_col_dup(st, COL_RAW),
	        .tenant_id = store_col_dup(st, COL_TENANT_ID),
	        .charged_subscription = store_col_dup(st, COL_CHARGED_SUBSCRIPTION),
	        .charge_reason = store_col_dup(st, COL_CHARGE_REASON),
	        .attempts = (unsigned)sqlite3_column_int64(st, COL_ATTEMPTS),
	        .next_attempt_at = sqlite3_column_int64(st, COL_NEXT_ATTEMPT_AT),
	        .batch_id = store_col_dup(st, COL_BATCH_ID),
	        .error_code = store_col_dup(st, COL_ERROR_CODE),
	        .error_message = store_col_dup(st, COL_ERROR_MESSAGE),
	        .forward_status = store_col_dup(st, COL_FORWARD_STATUS),
	        .collected_at = sqlite3_column_int64(st, COL_COLLECTED_AT),
	        .forwarded_at = store_col_int64_or0(st, COL_FORWARDED_AT),
	        .conflict_of = store_col_int64_or0(st, COL_CONFLICT_OF),
	        .adjustment_of = store_col_int64_or0(st, COL_ADJUSTMENT_OF),
	        .discarded = sqlite3_column_int(st, COL_DISCARDED) != 0,
	        .registration = store_col_dup(st, COL_REGISTRATION),
	};
}

/* One record by id as the operator sees it; -ENOENT when there is none. */
int
store_record_get(struct store *s, int64_t id, struct store_record *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_RECORD_GET, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0)
		return store_fail_msg(s, -ENOENT, "no record %" PRId64, id);
	store_record_load(st, ret);
	return 0;
}

/* Append a history entry (record_id 0: store-wide). */
int
store_history_add(struct store *s, int64_t record_id, int64_t at, const char *actor,
                  const char *action, const char *detail)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_HISTORY_ADD, &st);
	if (r < 0)
		return r;
	if (record_id)
		sqlite3_bind_int64(st, 1, record_id);
	else
		sqlite3_bind_null(st, 1);
	sqlite3_bind_int64(st, 2, at);
	store_bind_text(st, 3, actor);
	store_bind_text(st, 4, action);
	store_bind_text(st, 5, detail);
	return store_step_done(s, st);
}

/*
 * The number of a registration resource id, given one when new. The last one is remembered:
 * nearly every record of a stamp names the same registration.
 */
int
store_registration_number(struct store *s, const char *resource_id, int64_t *ret)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	if (s->registration_id && streq(s->registration_id, resource_id)) {
		*ret = s->registration_number;
		return 0;
	}
	r = store_stmt(s, STMT_REGISTRATION_NUMBER, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, resource_id);
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0)
		return store_fail_msg(s, -EIO, "registration was not stored");
	*ret = sqlite3_column_int64(st, 0);
	free(s->registration_id);
	s->registration_id = xstrdup(resource_id);
	s->registration_number = *ret;
	return 0;
}

/* Bind a registration resource id as its number, or NULL. */
static int
bind_registration(struct store *s, sqlite3_stmt *st, int i, const char *resource_id)
{
	int64_t number = 0;
	int r;

	if (!resource_id)
		return sqlite3_bind_null(st, i) == SQLITE_OK ? 0 : -EIO;
	r = store_registration_number(s, resource_id, &number);
	if (r < 0)
		return r;
	return sqlite3_bind_int64(st, i, number) == SQLITE_OK ? 0 : -EIO;
}

/* Length of a string, 0 for NULL. */
static size_t
len0(const char *s)
{
	return s ? strlen(s) : 0;
}

/* Estimated size of a record's Commerce event. */
int64_t
store_event_size(const struct store_record *r)
{
	return (int64_t)(STORE_EVENT_OVERHEAD + len0(r->key) + 2 * len0(r->subscription_id) +
	                 len0(r->meter_id) + len0(r->quantity) + len0(r->resource_uri) +
	                 len0(r->location) + len0(r->tags) + len0(r->additional_info));
}

/* Bind a text of known length, or NULL. */
static int
bind_text_len(sqlite3_stmt *st, int i, const char *v, size_t len)
{
	return v ? sqlite3_bind_text(st, i, v, (int)len, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/*
 * The id of the next record. Ids are never given twice, also when the newest records were
 * pruned: a record id above the claim head that once was a batch's would be taken for that
 * batch's, or never claimed. SQLite's AUTOINCREMENT does the same but reads and writes its
 * sequence table with every insert; this keeps the high-water mark in memory and writes it once
 * per transaction.
 */
static int
next_record_id(struct store *s, int64_t *ret)
{
	int64_t saved = 0, max_id = 0;
	int r;

	if (s->next_record_id == 0) {
		r = store_meta_get(s, "next_record_id", &saved);
		if (r < 0 && r != -ENOENT)
			return r;
		r = store_single_int64(s, STMT_MAX_RECORD_ID, &max_id);
		if (r < 0 && r != -ENOENT)
			return r;
		s->next_record_id = MAX(saved, max_id + 1);
	}
	*ret = s->next_record_id;
	return 0;
}

/* Insert one record row; *ret_id is its id, or 0 when its key was there already. */
int
store_record_insert(struct store *s, const struct store_record *r, enum store_kind kind,
                    int64_t reported_hour, int64_t now, int64_t of, int64_t *ret_id)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int rc = SQLITE_OK, r2;

	unsigned char key[STORE_KEY_BYTES];
	int64_t id = 0;
	/* each text measured once, for the event size and the binds (SQLite would measure again) */
	size_t l_sub = len0(r->subscription_id), l_meter = len0(r->meter_id),
	       l_qty = len0(r->quantity), l_uri = len0(r->resource_uri), l_loc = len0(r->location),
	       l_tags = len0(r->tags), l_info = len0(r->additional_info);
	int64_t event_size = (int64_t)(STORE_EVENT_OVERHEAD + len0(r->key) + 2 * l_sub + l_meter +
	                               l_qty + l_uri + l_loc + l_tags + l_info);

	r2 = next_record_id(s, &id);
	if (r2 < 0)
		return r2;
	r2 = store_stmt(s, STMT_INSERT, &st);
	if (r2 < 0)
		return r2;
	rc |= sqlite3_bind_int64(st, 18, id);
	rc |= sqlite3_bind_int(st, 1, kind);
	rc |= sqlite3_bind_int64(st, 2, reported_hour);
	rc |= store_bind_key(st, 3, r->key, key);
	rc |= of ? sqlite3_bind_int64(st, 4, of) : sqlite3_bind_null(st, 4);
	rc |= bind_text_len(st, 5, r->subscription_id, l_sub);
	rc |= bind_text_len(st, 6, r->meter_id, l_meter);
	rc |= bind_text_len(st, 7, r->quantity, l_qty);
	rc |= sqlite3_bind_int64(st, 8, r->usage_start);
	rc |= sqlite3_bind_int64(st, 9, r->usage_end);
	rc |= bind_text_len(st, 10, r->resource_uri, l_uri);
	rc |= bind_text_len(st, 11, r->location, l_loc);
	rc |= bind_text_len(st, 12, r->tags, l_tags);
	rc |= bind_text_len(st, 13, r->additional_info, l_info);
	rc |= sqlite3_bind_int64(st, 14, event_size);
	rc |= sqlite3_bind_int64(st, 15, now);
	rc |= store_bind_text(st, 16, kind == KIND_QUARANTINED ? r->error_message : NULL);
	rc |= store_bind_text(st, 17, r->raw);
	if (rc != SQLITE_OK)
		return store_fail_msg(s, -EINVAL, "record %s cannot be bound", r->key);
	r2 = store_step_done(s, st);
	if (r2 < 0)
		return r2;
	*ret_id = 0;
	if (sqlite3_changes(s->db) > 0) {
		*ret_id = id;
		s->next_record_id = id + 1;
		s->next_record_id_dirty = true;
		s->newest_record_id = id;
	}
	return 0;
}

/* Write a record's state row. */
int
store_state_put(struct store *s, const struct store_state_row *row)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_STATE_PUT, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, row->id);
	sqlite3_bind_int(st, 2, row->state);
	if (row->batch)
		sqlite3_bind_int64(st, 3, row->batch);
	else
		sqlite3_bind_null(st, 3);
	sqlite3_bind_int64(st, 4, row->attempts);
	sqlite3_bind_int64(st, 5, row->next_attempt_at);
	store_bind_text(st, 6, row->tenant_id);
	store_bind_text(st, 7, row->charged_subscription);
	store_bind_text(st, 8, row->charge_reason);
	r = bind_registration(s, st, 9, row->registration);
	if (r < 0)
		return r;
	store_bind_text(st, 10, row->error_code);
	store_bind_text(st, 11, row->error_message);
	store_bind_text(st, 12, row->forward_status);
	if (row->forwarded_at)
		sqlite3_bind_int64(st, 13, row->forwarded_at);
	else
		sqlite3_bind_null(st, 13);
	sqlite3_bind_int(st, 14, row->discarded);
	return store_step_done(s, st);
}

/* A state row holding what record_view says of a record (its batch by number). */
struct store_state_row
store_state_row_of(const struct store_record *r)
{
	return (struct store_state_row){
	        .id = r->id,
	        .state = r->state,
	        .attempts = r->attempts,
	        .next_attempt_at = r->next_attempt_at,
	        .tenant_id = r->tenant_id,
	        .charged_subscription = r->charged_subscription,
	        .charge_reason = r->charge_reason,
	        .registration = r->registration,
	        .error_code = r->error_code,
	        .error_message = r->error_message,
	        .forward_status = r->forward_status,
	        .forwarded_at = r->forwarded_at,
	        .discarded = r->discarded,
	};
}

/* Compare two quantity texts by value; text equality when either does not parse. */
bool
store_quantity_equal(const char *a, const char *b)
{
	struct decimal da, db;

	if (!a || !b)
		return a == b;
	if (decimal_parse_string(a, &da) < 0 || decimal_parse_string(b, &db) < 0)
		return streq(a, b);
	return decimal_cmp(&da, &db) == 0;
}

/* A row of RECORD_COLUMNS as a record, and freeing it (row loaders). */
void
store_record_load_row(sqlite3_stmt *st, void *elem)
{
	store_record_load(st, elem);
}

void
store_record_done_row(void *elem)
{
	store_record_done(elem);
}
