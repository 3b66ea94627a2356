/*
 * What lib/commerce.c (request bodies) and lib/commerce-answer.c (answers read and classified)
 * share: the JSON grammar of both, as jansson accepts it (see the top of commerce.c). Private to
 * them; defined in commerce.c.
 */
#pragma once

#include <stddef.h>

/* strlen that takes NULL as empty. */
size_t commerce_len0(const char *s);

/*
 * Skip one JSON value at p (whitespace before it allowed), inside depth open containers; returns
 * the byte after it, or NULL when it is not valid.
 */
const unsigned char *commerce_json_skip_value(const unsigned char *p, const unsigned char *end,
                                              size_t depth);

/* Skip JSON whitespace. */
const unsigned char *commerce_skip_ws(const unsigned char *p, const unsigned char *end);

/* Scan a JSON string starting at its quote; returns the byte after the closing quote or NULL. */
const unsigned char *commerce_scan_string(const unsigned char *p, const unsigned char *end);

/* Four hex digits at p. */
int commerce_hex4(const unsigned char *p, const unsigned char *end, unsigned *ret);
