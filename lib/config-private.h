/*
 * What lib/config.c (reading the file, problems, the key table) and lib/config-values.c
 * (checking each value, the secret files, the combinations of keys) share. Private to them.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "macro.h"
#include "timeutil.h"

#define CONFIG_MAX_FILE_SIZE   (1024 * 1024) /* the configuration file itself */
#define CONFIG_MAX_SECRET_SIZE (1024 * 1024) /* a secret or certificate file */
#define CONFIG_MAX_NAME        64            /* longest key or section name we echo */
#define USEC_PER_MINUTE        (60 * USEC_PER_SEC)
#define USEC_PER_HOUR          (60 * USEC_PER_MINUTE)
#define USEC_PER_DAY           (24 * USEC_PER_HOUR)
#define CONFIG_MAX_DURATION    (3650 * USEC_PER_DAY)

enum key_type {
	KEY_ENDPOINT,       /* https:// URL without query; trailing slashes removed */
	KEY_URL,            /* https:// URL, query allowed */
	KEY_PROXY,          /* http:// or https:// URL without credentials */
	KEY_GUID,           /* lower-cased */
	KEY_TENANT,         /* GUID or domain name, lower-cased */
	KEY_IDENTITY,       /* aad | adfs */
	KEY_COMPRESS,       /* gzip | none */
	KEY_LOG_LEVEL,      /* int: LOG_ERR .. LOG_DEBUG */
	KEY_SECRET_FILE,    /* struct config_client: secret, secret_file */
	KEY_CERT_FILE,      /* struct config_client: certificate, certificate_file */
	KEY_CA_FILE,        /* resolved path of a readable, non-empty file */
	KEY_TIME_HOUR,      /* RFC 3339, on the hour */
	KEY_DURATION,       /* uint64_t microseconds */
	KEY_SIZE,           /* uint64_t bytes */
	KEY_UINT,           /* unsigned */
	KEY_UINT64,         /* uint64_t */
	KEY_BOOL,           /* bool */
	KEY_TOKEN,          /* printable ASCII without spaces (audiences) */
	KEY_API_VERSION,    /* YYYY-MM-DD[-preview] */
	KEY_RESOURCE_GROUP, /* ARM resource group name */
	KEY_RESOURCE_NAME,  /* ARM resource name */
	KEY_TEXT,           /* printable ASCII (user agent) */
	KEY_PATH,           /* a path; relative: beside the configuration file */
	KEY_LISTEN,         /* ip:port or [ipv6]:port */
};

struct key {
	const char *section;
	const char *name;
	enum key_type type;
	size_t offset;   /* into struct config */
	const char *def; /* NULL: none (the field stays NULL/0 unless required) */
	bool required;
	bool restart;      /* a change needs a restart (config_restart_needed) */
	uint64_t min, max; /* numbers, durations, sizes */
};

/* The known keys, in file order (config.c). */
#define CONFIG_N_KEYS 46
extern const struct key config_keys[];

struct problem {
	unsigned line; /* 0: none (missing key) */
	size_t seq;    /* order of discovery, to keep the sort stable */
	bool warning;
	char *text;
};

struct slot {
	char *value; /* as written; NULL: not given */
	unsigned line;
};

struct parse {
	const char *name; /* the file, for messages */
	char *dir;        /* its directory, for relative names */
	const char *p, *end;
	unsigned line;
	int section;             /* index into sections[]; -1: none or unknown */
	bool in_unknown_section; /* the current section was reported unknown */
	struct slot slots[CONFIG_N_KEYS];
	struct problem *problems;
	size_t n_problems;
	size_t n_errors;
	unsigned flags; /* CONFIG_SKIP_SECRETS */
};

/*
 * A resolved *_file name. Messages say where the file is (or was looked for), never its name:
 * whatever was written after "=" may be the secret itself, pasted by mistake.
 */
struct file_ref {
	char *path;  /* what is opened */
	char *where; /* "in DIR", "in $CREDENTIALS_DIRECTORY (DIR)", "at the absolute path given" */
	char *searched; /* for a missing file: every place it was looked for */
};

void config_problem_add(struct parse *ps, unsigned line, bool warning, const char *format, ...)
        _printf_(4, 5);
void config_key_problem(struct parse *ps, const struct key *k, unsigned line, bool warning,
                        const char *format, ...) _printf_(5, 6);
size_t config_key_index(const char *section, const char *name); /* SIZE_MAX: unknown */
const struct key *config_key_find(const char *section, const char *name);
void config_register_pem(const char *pem);
void config_register_lines(const char *text);
int config_read_whole_fd(int fd, size_t max, char **ret, size_t *ret_size);

/* config-values.c: every key's value (or default) into c, then the keys' combinations. */
void config_apply_keys(struct parse *ps, struct config *c);
void config_check_combinations(struct parse *ps, struct config *c);
