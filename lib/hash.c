/*
 * SHA-256 hex digests and random UUIDs through OpenSSL.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "hash.h"
#include "macro.h"

static void hash_sha256_fetch(void);
static EVP_MD_CTX *hash_sha256_ctx(void);
static void hash_ctx_free(void *ctx);

/*
 * In OpenSSL 3, EVP_sha256() is a static description, not an implementation: every EVP_Digest()
 * with it fetches the implementation from the provider store again (a lookup under a lock). Fetch
 * it once for the process instead. The fetched
 * object is immutable and may be shared by threads. It is never freed: it lives as long as the
 * process, and this pointer keeps it reachable, so a leak checker does not count it.
 *
 * EVP_Digest() also makes and frees a context (two allocations and the provider's own) per call:
 * each thread keeps one instead, which EVP_DigestInit_ex2() only resets. A thread's context is
 * freed when the thread ends (the key's destructor); the main thread's lives with the process.
 */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256;
static pthread_key_t ctx_key;
static _Thread_local EVP_MD_CTX *thread_ctx;

/* Hash data with SHA-256 and write the digest as lower-case hex. */
void
hash_sha256_hex(const void *data, size_t size, char out[static HASH_SHA256_HEX_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	EVP_MD_CTX *ctx = hash_sha256_ctx();
	unsigned char md[32];
	unsigned int n = 0;

	/* with the algorithm fetched, these fail only on allocation failure */
	if (!EVP_DigestInit_ex2(ctx, sha256, NULL) || !EVP_DigestUpdate(ctx, data, size) ||
	    !EVP_DigestFinal_ex(ctx, md, &n) || n != sizeof(md))
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

/* This thread's digest context, made on its first use. */
static EVP_MD_CTX *
hash_sha256_ctx(void)
{
	if (_likely_(thread_ctx))
		return thread_ctx;
	if (pthread_once(&sha256_once, hash_sha256_fetch) != 0)
		abort();
	thread_ctx = EVP_MD_CTX_new();
	if (!thread_ctx || pthread_setspecific(ctx_key, thread_ctx) != 0)
		abort();
	return thread_ctx;
}

/* The key's destructor: a thread that hashed ends. */
static void
hash_ctx_free(void *ctx)
{
	EVP_MD_CTX_free(ctx);
	thread_ctx = NULL;
}

/* Fetch the SHA-256 implementation and make the context key; runs once per process. */
static void
hash_sha256_fetch(void)
{
	/* the default provider always has SHA-256; without it nothing here can work */
	sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (!sha256 || pthread_key_create(&ctx_key, hash_ctx_free) != 0)
		abort();
}
