/*
 * The collector's side of the store: the schedule of reported hours (with the collection cursor)
 * and collected pages, each page written in one transaction with the cursor that follows it
 * (ARCHITECTURE.md sections 4 and 7).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "hash.h"
#include "store-private.h"
#include "timeutil.h"
#include "xmalloc.h"

static int put_record(struct store *s, const struct store_page *page, const struct store_record *r,
                      struct store_page_result *res);
static int page_cursor(struct store *s, const struct store_page *page);
static int recollect_hour(struct store *s, int64_t hour, int64_t now, size_t *n);
static void hour_load(sqlite3_stmt *st, void *elem);
static void hour_done(void *elem);

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

/* Schedule one hour, pass 0. */
int
store_hour_schedule(struct store *s, int64_t hour, const char *scope, int64_t due_at)
{
	int r;

	if (!time_on_hour(hour) || !scope)
		return store_fail_msg(s, -EINVAL, "hour %" PRId64 " is not on the hour", hour);
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	{
		_cleanup_stmt_ sqlite3_stmt *st = NULL;

		r = store_stmt(s, STMT_HOUR_SCHEDULE, &st);
		if (r >= 0) {
			sqlite3_bind_int64(st, 1, hour);
			store_bind_text(st, 2, scope);
			sqlite3_bind_int64(st, 3, due_at);
			r = store_step_done(s, st);
		}
	}
	if (r >= 0)
		r = store_meta_raise(s, "cursor_hour", hour);
	if (r >= 0)
		/* the oldest hour ever scheduled, against which recollect checks its range */
		r = store_meta_raise(s, "first_hour", -hour);
	return store_tx_end(s, r);
}

/* Hours that are due, oldest first. */
int
store_hours_due(struct store *s, int64_t now, size_t limit, struct store_hour **ret, size_t *ret_n)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_HOURS_DUE, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_int64(st, 2, limit ? (int64_t)MIN(limit, (size_t)INT64_MAX) : -1);
	return store_collect_rows(s, st, sizeof(**ret), hour_load, hour_done, ret, ret_n);
}

/* An hour of the schedule, and freeing it (row loaders). */
static void
hour_load(sqlite3_stmt *st, void *elem)
{
	*(struct store_hour *)elem = (struct store_hour){
	        .hour = sqlite3_column_int64(st, 0),
	        .scope = store_col_dup(st, 1),
	        .pass = (unsigned)sqlite3_column_int64(st, 2),
	        .next_link = store_col_dup(st, 3),
	        .due_at = sqlite3_column_int64(st, 4),
	};
}

static void
hour_done(void *elem)
{
	store_hour_done(elem);
}

/* The newest hour ever scheduled. */
int
store_cursor_hour(struct store *s, int64_t *ret)
{
	return store_meta_get(s, "cursor_hour", ret);
}

/* Schedule hours [from, to] to be collected again now. */
int
store_recollect(struct store *s, const struct store_recollect *rc, size_t *ret_n)
{
	int64_t cursor = 0, first = 0;
	size_t n = 0;
	int r;

	if (!rc || !rc->actor || !time_on_hour(rc->from) || !time_on_hour(rc->to) ||
	    rc->from > rc->to || rc->lookback < 0)
		return store_fail_msg(s, -EINVAL, "recollect needs hours on the hour, from <= to");
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	r = store_meta_get(s, "cursor_hour", &cursor);
	if (r == -ENOENT || (r >= 0 && rc->to > cursor))
		r = store_fail_msg(s, -EINVAL,
		                   "hours after the collection cursor were never collected");
	if (r >= 0)
		r = store_meta_get(s, "first_hour", &first);
	/* before the first hour ever collected (less the look-back the stamp may still report
	 * late usage for) there was never anything to collect: most likely a typing error */
	if (r >= 0 && !rc->force && rc->from < -first - rc->lookback) {
		char a[TIME_RFC3339_LEN + 1];

		r = store_fail_msg(s, -ERANGE,
		                   "hours before %s were never collected here (give --force to "
		                   "collect them anyway)",
		                   time_format_rfc3339(-first - rc->lookback, a));
	}
	for (int64_t h = rc->from; r >= 0 && h <= rc->to; h += SECONDS_PER_HOUR)
		r = recollect_hour(s, h, rc->now, &n);
	if (r >= 0)
		r = store_meta_raise(s, "first_hour", -rc->from);
	if (r >= 0) {
		_cleanup_free_ char *detail = NULL;
		char a[TIME_RFC3339_LEN + 1], b[TIME_RFC3339_LEN + 1];

		detail = xasprintf("hours %s to %s%s%s", time_format_rfc3339(rc->from, a),
		                   time_format_rfc3339(rc->to, b), rc->reason ? ": " : "",
		                   rc->reason ? rc->reason : "");
		r = store_history_add(s, 0, rc->now, rc->actor, "recollect", detail);
	}
	return store_tx_end_n(s, r, n, ret_n);
}

/* Run one statement that takes an hour and a time; the rows it changed. */
static int
hour_run(struct store *s, const char *sql, int64_t hour, int64_t now, size_t *ret_changed)
{
	_cleanup_finalize_ sqlite3_stmt *st = NULL;
	int r;

	r = store_prepare(s, sql, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, hour);
	sqlite3_bind_int64(st, 2, now);
	r = store_step_done(s, st);
	if (r < 0)
		return r;
	*ret_changed = (size_t)sqlite3_changes(s->db);
	return 0;
}

/* Make one hour due now with the next pass (every scope of it), or schedule it afresh. */
static int
recollect_hour(struct store *s, int64_t hour, int64_t now, size_t *n)
{
	size_t changed = 0;
	int r;

	r = hour_run(s,
	             "UPDATE hours SET pass = CASE WHEN pass < 2 THEN 2 ELSE pass + 1 END,"
	             " next_link = NULL, due_at = ?2 WHERE hour = ?1",
	             hour, now, &changed);
	if (r >= 0 && changed == 0)
		r = hour_run(s,
		             "INSERT INTO hours (hour, scope, pass, next_link, due_at)"
		             " VALUES (?1, '', 2, NULL, ?2)",
		             hour, now, &changed);
	if (r >= 0)
		*n += changed;
	return r;
}

/* Store a page and its cursor in one transaction. */
int
store_put_page(struct store *s, const struct store_page *page, struct store_page_result *ret)
{
	struct store_page_result res = {0};
	int r;

	if (!page || !page->scope || (page->n_records && !page->records) ||
	    !time_on_hour(page->reported_hour))
		return store_fail_msg(s, -EINVAL, "invalid page");
	r = store_tx_begin(s);
	if (r < 0)
		return r;
	for (size_t i = 0; r >= 0 && i < page->n_records; i++)
		r = put_record(s, page, &page->records[i], &res);
	if (r >= 0)
		r = page_cursor(s, page);
	r = store_tx_end(s, r);
	if (r < 0)
		return r;
	if (ret)
		*ret = res;
	return 0;
}

/*
 * True for a short quantity in the plain notation that lib/decimal writes: digits, at most one
 * point with digits on both sides, no sign, no exponent, no leading zero before other digits.
 * Short (19 digits at most) so that it is surely within the 38 significant digits.
 */
static bool
plain_decimal(const char *q)
{
	size_t digits = strspn(q, "0123456789"), n = digits;

	if (digits == 0 || (q[0] == '0' && digits > 1))
		return false;
	if (q[n] == '.') {
		size_t frac = strspn(q + n + 1, "0123456789");

		if (frac == 0)
			return false;
		n += 1 + frac;
		digits += frac;
	}
	return q[n] == '\0' && digits <= 19;
}

/* True for a record key: 64 lower-case hex digits. */
static bool
key_valid(const char *key)
{
	return key && strlen(key) == HASH_SHA256_HEX_LEN &&
	       strspn(key, "0123456789abcdef") == HASH_SHA256_HEX_LEN;
}

/* The stored usage record (or adjustment) of this hour and key: id and quantity, or -ENOENT. */
static int
lookup(struct store *s, int64_t hour, const char *key, int64_t *ret_id, char **ret_quantity)
{
	unsigned char key_bytes[STORE_KEY_BYTES];
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_LOOKUP, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, hour);
	store_bind_key(st, 2, key, key_bytes);
	r = store_step_row(s, st);
	if (r < 0)
		return r;
	if (r == 0)
		return -ENOENT;
	*ret_id = sqlite3_column_int64(st, 0);
	*ret_quantity = store_col_dup(st, 1);
	return 0;
}

/* Whether a quantity differing from the original's was stored as a conflict already. */
static int
conflict_seen(struct store *s, int64_t original, const char *quantity)
{
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int r;

	r = store_stmt(s, STMT_CONFLICTS_OF, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, original);
	while ((r = store_step_row(s, st)) > 0)
		if (store_quantity_equal((const char *)sqlite3_column_text(st, 0), quantity))
			return 1;
	return r;
}

/* Store a quarantined record unless the same one (hour and key) is there already. */
static int
put_quarantined(struct store *s, const struct store_page *page, const struct store_record *r,
                struct store_page_result *res)
{
	unsigned char key_bytes[STORE_KEY_BYTES];
	_cleanup_stmt_ sqlite3_stmt *st = NULL;
	int64_t id = 0;
	int rr;

	rr = store_stmt(s, STMT_LOOKUP_QUARANTINED, &st);
	if (rr < 0)
		return rr;
	sqlite3_bind_int64(st, 1, page->reported_hour);
	store_bind_key(st, 2, r->key, key_bytes);
	rr = store_step_row(s, st);
	if (rr < 0)
		return rr;
	if (rr > 0) {
		res->duplicates++;
		return 0;
	}
	rr = store_record_insert(s, r, KIND_QUARANTINED, page->reported_hour, page->now, 0, &id);
	if (rr < 0)
		return rr;
	s->delta[STORE_QUARANTINED]++;
	res->quarantined++;
	return 0;
}

/*
 * Store one record of a page: new, duplicate or conflict. A first pass inserts and looks only
 * when the key exists; a look-back pass, whose records are mostly stored already, looks first.
 */
static int
put_record(struct store *s, const struct store_page *page, const struct store_record *r,
           struct store_page_result *res)
{
	char qkey[HASH_SHA256_HEX_LEN + 1], qtext[DECIMAL_STRING_MAX];
	_cleanup_free_ char *stored = NULL;
	struct store_record copy, row;
	struct decimal q;
	bool rewritten = false;
	int64_t id = 0;
	int rr;

	if (r->state == STORE_QUARANTINED) {
		if (!key_valid(r->key)) {
			/* too broken for a key of section 4: a stable one from what was received */
			_cleanup_free_ char *in =
			        xasprintf("quarantined\n%s\n%s", r->raw ? r->raw : "",
			                  r->error_message ? r->error_message : "");

			hash_sha256_hex(in, strlen(in), qkey);
			copy = *r;
			copy.key = qkey;
			r = &copy;
		}
		return put_quarantined(s, page, r, res);
	}
	if (r->state != STORE_PENDING)
		return store_fail_msg(s, -EINVAL,
		                      "a record enters the store pending or quarantined");
	if (!key_valid(r->key))
		return store_fail_msg(s, -EINVAL, "record without a valid key");
	if (isempty(r->subscription_id) || isempty(r->meter_id))
		return store_fail_msg(s, -EINVAL, "pending record without subscription or meter");
	if (!r->quantity)
		return store_fail_msg(s, -EINVAL, "pending record %s: no quantity", r->key);
	if (plain_decimal(r->quantity)) {
		/* already what decimal_format() would write: the common case, kept cheap */
	} else if (decimal_parse_string(r->quantity, &q) < 0 || q.negative) {
		return store_fail_msg(s, -EINVAL,
		                      "pending record %s: quantity is not a decimal >= 0", r->key);
	} else {
		decimal_format(&q, qtext);
		if (strcmp(qtext, r->quantity) != 0) {
			/* exponent, sign or missing digit around the point: the plain text */
			copy = *r;
			copy.quantity = qtext;
			r = &copy;
			rewritten = true;
		}
	}

	rr = page->pass > 0 ? lookup(s, page->reported_hour, r->key, &id, &stored) : -ENOENT;
	if (rr == -ENOENT) {
		/* The usage row keeps the fields, not the text they came in (which is most of a
		 * row's bytes, written again by the WAL and the checkpoint): the raw text stays
		 * where an operator reads it, in quarantined and conflict rows, and where the
		 * stored quantity is not the literal that was received. */
		row = *r;
		if (!rewritten)
			row.raw = NULL;
		rr = store_record_insert(s, &row, KIND_USAGE, page->reported_hour, page->now, 0,
		                         &id);
		if (rr < 0)
			return rr;
		if (id) {
			s->delta[STORE_PENDING]++;
			res->inserted++;
			return 0;
		}
		rr = lookup(s, page->reported_hour, r->key, &id, &stored);
		if (rr == -ENOENT)
			return store_fail_msg(s, -EIO, "key conflict without a stored record");
	}
	if (rr < 0)
		return rr;

	/* the key exists: the same quantity, or a changed one seen before, is a duplicate */
	if (store_quantity_equal(stored, r->quantity)) {
		res->duplicates++;
		return 0;
	}
	rr = conflict_seen(s, id, r->quantity);
	if (rr < 0)
		return rr;
	if (rr > 0) {
		res->duplicates++;
		return 0;
	}
	rr = store_record_insert(s, r, KIND_CONFLICT, page->reported_hour, page->now, id, &id);
	if (rr < 0)
		return rr;
	if (!id)
		return store_fail_msg(s, -EIO, "conflict row was not stored");
	s->delta[STORE_CONFLICT]++;
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
		r = store_stmt(s, STMT_HOUR_LINK, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, page->reported_hour);
		store_bind_text(st, 2, page->scope);
		sqlite3_bind_int64(st, 3, page->pass);
		store_bind_text(st, 4, page->next_link);
		sqlite3_bind_int64(st, 5, page->now);
	} else if (page->next_due_at) {
		r = store_stmt(s, STMT_HOUR_FINISH, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, page->reported_hour);
		store_bind_text(st, 2, page->scope);
		sqlite3_bind_int64(st, 3, (int64_t)page->pass + 1);
		sqlite3_bind_int64(st, 4, page->next_due_at);
	} else {
		r = store_stmt(s, STMT_HOUR_DELETE, &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, page->reported_hour);
		store_bind_text(st, 2, page->scope);
	}
	r = store_step_done(s, st);
	if (r < 0)
		return r;
	r = store_meta_raise(s, "cursor_hour", page->reported_hour);
	if (r >= 0)
		r = store_meta_raise(s, "first_hour", -page->reported_hour);
	return r;
}
