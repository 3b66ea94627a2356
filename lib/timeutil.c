/*
 * Clock seam and RFC 3339 conversions (UTC only; no locale, no time zone database).
 */
#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <time.h>

#include "timeutil.h"

/* What RFC 3339's four-digit years can write: 0000-01-01T00:00:00Z to 9999-12-31T23:59:59Z. */
#define TIME_FORMAT_MIN INT64_C(-62167219200)
#define TIME_FORMAT_MAX INT64_C(253402300799)

static const struct timeutil_clock *clock_override;

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d);
static void civil_from_days(int64_t days, unsigned *ret_y, unsigned *ret_m, unsigned *ret_d);
static char *put_digits(char *p, unsigned v, int n);
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

/*
 * Format seconds since the epoch as "YYYY-MM-DDTHH:MM:SSZ", or "invalid-time" outside the years
 * 0000 to 9999. By hand rather than gmtime_r and strftime: the daemon formats three times per
 * event, and this is several times faster.
 */
char *
time_format_rfc3339(int64_t t, char out[static TIME_RFC3339_LEN + 1])
{
	int64_t days, secs;
	unsigned y, m, d;
	char *p = out;

	if (t < TIME_FORMAT_MIN || t > TIME_FORMAT_MAX) {
		memcpy(out, "invalid-time", sizeof("invalid-time"));
		return out;
	}
	/* floor division: the seconds of the day are never negative */
	days = (t >= 0 ? t : t - 86399) / 86400;
	secs = t - days * 86400;
	civil_from_days(days, &y, &m, &d);
	p = put_digits(p, y, 4);
	*p++ = '-';
	p = put_digits(p, m, 2);
	*p++ = '-';
	p = put_digits(p, d, 2);
	*p++ = 'T';
	p = put_digits(p, (unsigned)(secs / 3600), 2);
	*p++ = ':';
	p = put_digits(p, (unsigned)(secs / 60 % 60), 2);
	*p++ = ':';
	p = put_digits(p, (unsigned)(secs % 60), 2);
	*p++ = 'Z';
	*p = '\0';
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

/*
 * The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm, the
 * inverse of days_from_civil); the caller keeps the year within 0 to 9999.
 */
static void
civil_from_days(int64_t days, unsigned *ret_y, unsigned *ret_m, unsigned *ret_d)
{
	int64_t z = days + 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	unsigned m = mp < 10 ? mp + 3 : mp - 9;

	*ret_y = (unsigned)((int64_t)yoe + era * 400 + (m <= 2));
	*ret_m = m;
	*ret_d = doy - (153 * mp + 2) / 5 + 1;
}

/* Write v as exactly n decimal digits at p; returns the end. */
static char *
put_digits(char *p, unsigned v, int n)
{
	for (int i = n - 1; i >= 0; i--) {
		p[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return p + n;
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
