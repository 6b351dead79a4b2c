/*
 * bench_hash.c — candex's XXH64 (cdx_xxh64, used for shard checksums, input
 * fingerprints and key deduplication) against Debian's libxxhash
 * (XXH64 from libxxhash.so), on the sizes candex hashes: 24-byte keys,
 * 4 KiB shard headers, a 64 MiB part in one call and in 64 KiB updates.
 * The two alternate, best of --repeat rounds each, and every line prints
 * the ratio cdx / libxxhash (below 1: candex's is faster).
 *
 *   build/bench_hash [--repeat N] [--mib N]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "common/common.h"
#include "common/opt.h"

struct opts {
	uint32_t repeat, mib;
};

static const struct cdx_opt options[] = {
	{ "repeat", 0, CDX_OPT_U32, offsetof(struct opts, repeat), "N",
	    "rounds of each measurement; the best counts", 1, 1000, NULL },
	{ "mib", 0, CDX_OPT_U32, offsetof(struct opts, mib), "N", "size of the large buffer in MiB", 1, 4096,
	    NULL },
};

static volatile uint64_t sink;

typedef uint64_t (*hash_fn)(const void *p, size_t len, uint64_t seed);

static uint64_t
cdx_oneshot(const void *p, size_t len, uint64_t seed)
{
	return cdx_xxh64(p, len, seed);
}

static uint64_t
lib_oneshot(const void *p, size_t len, uint64_t seed)
{
	return XXH64(p, len, seed);
}

/* Streaming in 64 KiB updates, the way shard parts are hashed. */
static uint64_t
cdx_stream(const void *p, size_t len, uint64_t seed)
{
	cdx_xxh64_state st;
	cdx_xxh64_init(&st, seed);
	for (size_t off = 0; off < len; off += 65536)
		cdx_xxh64_update(&st, (const char *) p + off, CDX_MIN((size_t) 65536, len - off));
	return cdx_xxh64_digest(&st);
}

static uint64_t
lib_stream(const void *p, size_t len, uint64_t seed)
{
	XXH64_state_t *st = XXH64_createState();
	XXH64_reset(st, seed);
	for (size_t off = 0; off < len; off += 65536)
		XXH64_update(st, (const char *) p + off, CDX_MIN((size_t) 65536, len - off));
	uint64_t h = XXH64_digest(st);
	XXH64_freeState(st);
	return h;
}

/* seconds for calls hashes of len bytes at successive offsets of buf */
static double
run(hash_fn f, const char *buf, size_t len, size_t calls)
{
	uint64_t t0 = cdx_now_us(), acc = 0;
	for (size_t i = 0; i < calls; i++)
		acc += f(buf + (i * 8) % 4096, len, i);
	sink += acc;
	return (double) (cdx_now_us() - t0) / 1e6;
}

int
main(int argc, char **argv)
{
	struct opts o = { .repeat = 7, .mib = 64 };
	static const struct cdx_opt_command command = {
		.prog = "bench_hash",
		.head = "usage: bench_hash [--repeat N] [--mib N]\n\n"
		        "Times cdx_xxh64 against libxxhash's XXH64 (BENCHMARKS.md, Hashing).\n",
		.opts = options,
		.nopts = CDX_ARRAY_LEN(options),
	};
	int prc = cdx_opt_command_parse(&command, &o, argc, argv, NULL, 0, NULL);
	if (prc >= 0)
		return prc;
	size_t big = (size_t) o.mib << 20;
	char *buf = malloc(big + 4096);
	if (buf == NULL)
		return 1;
	cdx_rng r;
	cdx_rng_seed(&r, 1);
	for (size_t i = 0; i < big + 4096; i++)
		buf[i] = (char) cdx_rng_next(&r);
	/* the two must agree before their speed matters */
	for (size_t len = 0; len < 300; len++)
		if (cdx_xxh64(buf, len, len) != XXH64(buf, len, len)
		    || cdx_stream(buf, len * 1000, 7) != lib_stream(buf, len * 1000, 7)) {
			fprintf(stderr, "bench_hash: cdx_xxh64 and XXH64 differ at %zu bytes\n", len);
			return 1;
		}
	struct {
		const char *what;
		size_t len, calls;
		hash_fn cdx, lib;
	} cases[] = {
		{ "24-byte keys", 24, 4000000, cdx_oneshot, lib_oneshot },
		{ "4 KiB headers", 4096, 200000, cdx_oneshot, lib_oneshot },
		{ "one call", big, 4, cdx_oneshot, lib_oneshot },
		{ "64 KiB updates", big, 4, cdx_stream, lib_stream },
	};
	printf("| input | cdx_xxh64 GB/s | libxxhash GB/s | cdx / libxxhash time |\n|---|---|---|---|\n");
	for (size_t c = 0; c < CDX_ARRAY_LEN(cases); c++) {
		double best_cdx = 1e30, best_lib = 1e30;
		for (uint32_t i = 0; i < o.repeat; i++) {
			best_cdx = CDX_MIN(best_cdx, run(cases[c].cdx, buf, cases[c].len, cases[c].calls));
			best_lib = CDX_MIN(best_lib, run(cases[c].lib, buf, cases[c].len, cases[c].calls));
		}
		double bytes = (double) cases[c].len * (double) cases[c].calls;
		char label[64];
		snprintf(label, sizeof(label), "%s%s", cases[c].what,
		    cases[c].len == big ? " (large buffer)" : "");
		printf("| %s | %.2f | %.2f | %.3f |\n", label, bytes / best_cdx / 1e9, bytes / best_lib / 1e9,
		    best_cdx / best_lib);
	}
	free(buf);
	return 0;
}
