/*
 * Hashes and identifiers: SHA-256 in lower-case hex (record keys), random UUIDs (batch and request
 * ids). OpenSSL does the work.
 */
#pragma once

#include <stddef.h>

#define HASH_SHA256_HEX_LEN 64
#define HASH_UUID_LEN       36

/* out must hold HASH_SHA256_HEX_LEN + 1 bytes. */
void hash_sha256_hex(const void *data, size_t size, char out[static HASH_SHA256_HEX_LEN + 1]);

/* A random version-4 UUID in lower case; out must hold HASH_UUID_LEN + 1 bytes. */
int hash_uuid4(char out[static HASH_UUID_LEN + 1]);
