/*
 * Clock seam and RFC 3339 conversions (UTC only; no locale, no time zone database).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "timeutil.h"

static const struct timeutil_clock *clock_override;

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d);
static int parse_digits(const char **p, int n, int *ret);

/* Replace the clock (tests); NULL goes back to the system clock. */
void
timeutil_set_clock(const struct timeutil_clock *clock)
{
	clock_override = clock;
}

/* Wall-clock time in microseconds. */
uint64_t
now_realtime_usec(void)
{
	struct timespec ts;

	if (clock_override)
		return clock_override->realtime_usec(clock_override->userdata);
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

/* Monotonic time in microseconds. */
uint64_t
now_monotonic_usec(void)
{
	struct timespec ts;

	if (clock_override)
		return clock_override->monotonic_usec(clock_override->userdata);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

/* Wall-clock time in whole seconds. */
int64_t
now_seconds(void)
{
	return (int64_t)(now_realtime_usec() / USEC_PER_SEC);
}

/* Parse an RFC 3339 date-time into seconds since the epoch. */
int
time_parse_rfc3339(const char *s, int64_t *ret)
{
	const char *p = s;
	int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0;
	static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int64_t t;

	if (!s)
		return -EINVAL;
	if (parse_digits(&p, 4, &y) < 0 || *p++ != '-' || parse_digits(&p, 2, &mo) < 0 ||
	    *p++ != '-' || parse_digits(&p, 2, &d) < 0 || (*p != 'T' && *p != 't'))
		return -EINVAL;
	p++;
	if (parse_digits(&p, 2, &h) < 0 || *p++ != ':' || parse_digits(&p, 2, &mi) < 0 ||
	    *p++ != ':' || parse_digits(&p, 2, &sec) < 0)
		return -EINVAL;
	if (*p == '.') {
		p++;
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		for (; isdigit((unsigned char)*p); p++)
			if (*p != '0')
				return -EINVAL;
	}
	if (*p == 'Z' || *p == 'z')
		p++;
	else if (*p == '+' || *p == '-') {
		sign = *p++ == '+' ? 1 : -1;
		if (parse_digits(&p, 2, &oh) < 0 || *p++ != ':' || parse_digits(&p, 2, &om) < 0)
			return -EINVAL;
		if (oh > 23 || om > 59)
			return -EINVAL;
	} else
		return -EINVAL;
	if (*p)
		return -EINVAL;
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 59)
		return -EINVAL;
	if (d > mdays[mo - 1] + (mo == 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))))
		return -EINVAL;
	t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + sec;
	t -= sign * (oh * 3600 + om * 60);
	*ret = t;
	return 0;
}

/* Format seconds since the epoch as "YYYY-MM-DDTHH:MM:SSZ". */
char *
time_format_rfc3339(int64_t t, char out[static TIME_RFC3339_LEN + 1])
{
	struct tm tm;
	time_t tt = (time_t)t;

	if (!gmtime_r(&tt, &tm) ||
	    strftime(out, TIME_RFC3339_LEN + 1, "%Y-%m-%dT%H:%M:%SZ", &tm) != TIME_RFC3339_LEN)
		snprintf(out, TIME_RFC3339_LEN + 1, "invalid-time");
	return out;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t
days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

	return era * 146097 + (int64_t)doe - 719468;
}

/* Read exactly n decimal digits at *p and move *p past them. */
static int
parse_digits(const char **p, int n, int *ret)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)(*p)[i]))
			return -EINVAL;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*ret = v;
	return 0;
}
