/*
 * SHA-256 hex digests and random UUIDs through OpenSSL.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "hash.h"

/* Hash data with SHA-256 and write the digest as lower-case hex. */
void
hash_sha256_hex(const void *data, size_t size, char out[static HASH_SHA256_HEX_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[32];
	unsigned int n = 0;

	/* EVP_Digest with a fixed algorithm fails only on allocation failure */
	if (!EVP_Digest(data, size, md, &n, EVP_sha256(), NULL) || n != sizeof(md))
		abort();
	for (size_t i = 0; i < sizeof(md); i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 0xf];
	}
	out[HASH_SHA256_HEX_LEN] = '\0';
}

/* Make a random (version 4) UUID. */
int
hash_uuid4(char out[static HASH_UUID_LEN + 1])
{
	unsigned char b[16];

	if (RAND_bytes(b, sizeof(b)) != 1)
		return -EIO;
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, HASH_UUID_LEN + 1,
	         "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
	         b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
	         b[15]);
	return 0;
}
