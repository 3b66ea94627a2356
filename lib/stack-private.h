/*
 * What lib/stack.c (usage pages, the record key, quantity literals) and lib/stack-lists.c (the
 * other documents, URLs, the link authority) share. Private to them; defined in stack-lists.c.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "macro.h"
#include "stack.h"

/* The value of one hex digit, or -1 (inline: the scanner and the GUID check call it per byte). */
static inline int
stack_hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The JSON type of v, for messages. */
const char *stack_type_name(const json_t *v);
/* A GUID 8-4-4-4-12 in hex digits of either case; dashes_optional: also the 32 digits alone. */
bool stack_is_guid(const char *s, bool dashes_optional);
/* A copy of s in ASCII lower case. */
char *stack_lower_dup(const char *s);
/* A member of obj that is a string without NUL characters, or NULL. */
const char *stack_string_member(json_t *obj, const char *name, size_t *ret_size);
/* Read an optional nextLink: absent, null or "" is the last page (*ret NULL). */
int stack_next_link_get(json_t *root, char **ret, char error[static STACK_ERROR_MAX]);
/* Write a message into an error buffer. */
void stack_set_error(char error[static STACK_ERROR_MAX], const char *format, ...) _printf_(2, 3);
