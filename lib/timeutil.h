/*
 * Time: the clock seam, RFC 3339 parsing and formatting in UTC. Times in the program are
 * int64_t seconds since the epoch (UTC) unless a name says _usec.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define USEC_PER_SEC     UINT64_C(1000000)
#define USEC_PER_MSEC    UINT64_C(1000)
#define TIME_RFC3339_LEN 20 /* "YYYY-MM-DDTHH:MM:SSZ" */

/* The clock seam: tests replace it to move time. */
struct timeutil_clock {
	uint64_t (*realtime_usec)(void *userdata);
	uint64_t (*monotonic_usec)(void *userdata);
	void *userdata;
};

void timeutil_set_clock(const struct timeutil_clock *clock); /* NULL restores the system clock */
uint64_t now_realtime_usec(void);
uint64_t now_monotonic_usec(void);
int64_t now_seconds(void); /* realtime, whole seconds */

/*
 * Parse an RFC 3339 date-time: "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)". Fractions must be
 * zero (usage times are whole seconds); lower-case 't'/'z' are accepted. Returns 0 or -EINVAL.
 */
int time_parse_rfc3339(const char *s, int64_t *ret);

/*
 * Write "YYYY-MM-DDTHH:MM:SSZ", or "invalid-time" for a time outside the years 0000 to 9999; out
 * must hold TIME_RFC3339_LEN + 1 bytes. Returns out.
 */
char *time_format_rfc3339(int64_t t, char out[static TIME_RFC3339_LEN + 1]);

/*
 * The last time formatted and its text, for a caller that formats the same few times again and
 * again (a page's records share the reported hour and mostly their usage hour): start it zeroed,
 * keep one per value formatted (a thread's own: it is not locked).
 */
struct time_rfc3339_cache {
	int64_t t;
	bool valid;
	char text[TIME_RFC3339_LEN + 1];
};

/* time_format_rfc3339() of t, written again only when t is not the cache's last; the cache's text.
 */
static inline const char *
time_format_rfc3339_cached(struct time_rfc3339_cache *c, int64_t t)
{
	if (!c->valid || c->t != t) {
		time_format_rfc3339(t, c->text);
		c->t = t;
		c->valid = true;
	}
	return c->text;
}

/* True when t is on the hour. */
static inline bool
time_on_hour(int64_t t)
{
	return t % 3600 == 0;
}
