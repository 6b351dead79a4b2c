/*
 * bench_load.c — how fast a published version loads, against Faiss reading
 * the same index uncompressed, measured in one run.
 *
 *   bench_load --index DIR/NAME[/VERSION|/CURRENT] [--repeat N]
 *
 * For every part of every shard: lz4 decompression with the frame's content
 * checksum (cdx_shard_read_part), in GB/s of decompressed bytes, best of N
 * runs. Then a whole cdx_collection_load (whole-file xxh64 against the
 * manifest, decompression, faiss_read_index, ids, keys, refine store)
 * against the baseline: each shard's FAISS part written out uncompressed to
 * a plain file and read back with faiss_read_index, as a Faiss user loading
 * an index from a warm page cache would. Files are read twice first so both
 * sides start from the page cache.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_io_c.h>

#include "common/common.h"
#include "common/opt.h"
#include "search/search.h"
#include "shard/manifest.h"
#include "shard/shard.h"

#define MAX_SHARDS 1024

static char *strf(const char *fmt, ...) CDX_PRINTF(1, 2);

static char *
strf(const char *fmt, ...)
{
	va_list ap;
	char *out;
	va_start(ap, fmt);
	if (vasprintf(&out, fmt, ap) < 0)
		abort();
	va_end(ap);
	return out;
}

static double
secs(uint64_t t0, uint64_t t1)
{
	return (double) (t1 - t0) / 1e6;
}

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	struct load_opts {
		const char *index;
		uint32_t repeat;
	} o = { .repeat = 3 };
	static const struct cdx_opt options[] = {
		CDX_OPT_STR_("index", offsetof(struct load_opts, index), "DIR/NAME[/VERSION|/CURRENT]",
		    "the version to load (required)"),
		CDX_OPT_NUM_("repeat", CDX_OPT_U32, offsetof(struct load_opts, repeat), "N",
		    "loads of each kind; the best "
		    "counts [3]",
		    1, 1000),
	};
	static const struct cdx_opt_command command = {
		.prog = "bench_load",
		.head = "usage: bench_load --index DIR/NAME[/VERSION|/CURRENT] [--repeat N]\n\n"
		        "Loading a version against faiss_read_index of its uncompressed FAISS parts "
		        "(BENCHMARKS.md).\n",
		.opts = options,
		.nopts = CDX_ARRAY_LEN(options),
	};
	int prc = cdx_opt_command_parse(&command, &o, argc, argv, NULL, 0, NULL);
	if (prc >= 0)
		return prc;
	if (o.index == NULL)
		return cdx_opt_command_fail(&command, "--index is required");
	const char *index = o.index;
	int repeat = (int) o.repeat;
	cdx_log_set_level(CDX_LOG_WARN);

	/* the version directory (NAME resolves through CURRENT) and its shard
	 * files, as the manifest lists them */
	char vdir[PATH_MAX];
	struct cdx_manifest *m = NULL;
	if (cdx_version_path_resolve(index, vdir) != CDX_OK || cdx_manifest_load(&m, vdir) != CDX_OK
	    || m->nshards == 0 || m->nshards > MAX_SHARDS) {
		fprintf(stderr, "bench_load: %s\n", m ? "no shards, or too many" : cdx_last_error());
		return 1;
	}
	size_t nshards = m->nshards;
	char *paths[MAX_SHARDS];
	for (size_t i = 0; i < nshards; i++)
		paths[i] = strf("%s/%s", vdir, m->shards[i].file);
	cdx_manifest_free(m);
	printf("version %s: %zu shard file(s), best of %d\n\n", vdir, nshards, repeat);

	/* warm the page cache */
	for (int w = 0; w < 2; w++)
		for (size_t i = 0; i < nshards; i++) {
			cdx_shard *s;
			if (cdx_shard_open(&s, paths[i]) != CDX_OK || cdx_shard_verify(s, NULL) != CDX_OK) {
				fprintf(stderr, "bench_load: %s\n", cdx_last_error());
				return 1;
			}
			cdx_shard_close(s);
		}

	printf("| part | stored MiB | raw MiB | lz4 ratio | decompress + checksum GB/s |\n");
	printf("|---|---|---|---|---|\n");
	static const uint32_t kinds[] = { CDX_PART_FAISS, CDX_PART_IDS, CDX_PART_KEYS, CDX_PART_REFINE };
	double all_raw = 0, all_secs = 0;
	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		double stored = 0, raw = 0, best = 0;
		for (int r = 0; r < repeat; r++) {
			double t = 0;
			stored = raw = 0;
			for (size_t i = 0; i < nshards; i++) {
				cdx_shard *s;
				if (cdx_shard_open(&s, paths[i]) != CDX_OK)
					return 1;
				const struct cdx_part_desc *pd = cdx_shard_find_part(s, kinds[k]);
				if (pd != NULL) {
					void *data;
					size_t len;
					uint64_t t0 = cdx_now_us();
					if (cdx_shard_read_part(s, kinds[k], &data, &len) != CDX_OK) {
						fprintf(stderr, "bench_load: %s\n", cdx_last_error());
						return 1;
					}
					t += secs(t0, cdx_now_us());
					free(data);
					stored += (double) pd->stored_size;
					raw += (double) pd->raw_size;
				}
				cdx_shard_close(s);
			}
			if (r == 0 || t < best)
				best = t;
		}
		if (raw == 0)
			continue;
		all_raw += raw;
		all_secs += best;
		printf("| %s | %.1f | %.1f | %.2f | %.2f |\n", cdx_part_name((int) kinds[k]),
		    stored / 1048576.0, raw / 1048576.0, raw / stored, raw / best / 1e9);
	}
	printf("| all parts | | %.1f | | %.2f |\n\n", all_raw / 1048576.0, all_raw / all_secs / 1e9);

	/* baseline: the FAISS parts as plain files, read by faiss_read_index */
	char *tmp = strf("/tmp/candex-bench-load-%d", (int) getpid());
	double faiss_best = 0, load_best = 0;
	char **plain = calloc(nshards, sizeof(*plain));
	for (size_t i = 0; i < nshards; i++) {
		cdx_shard *s;
		void *data;
		size_t len;
		plain[i] = strf("%s-%zu.faissindex", tmp, i);
		FILE *f = fopen(plain[i], "wb");
		if (f == NULL || cdx_shard_open(&s, paths[i]) != CDX_OK
		    || cdx_shard_read_part(s, CDX_PART_FAISS, &data, &len) != CDX_OK
		    || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
			fprintf(stderr, "bench_load: cannot write %s\n", plain[i]);
			return 1;
		}
		free(data);
		cdx_shard_close(s);
	}
	for (int r = 0; r < repeat + 1; r++) { /* the first round warms the plain files */
		uint64_t t0 = cdx_now_us();
		for (size_t i = 0; i < nshards; i++) {
			FaissIndex *idx = NULL;
			if (faiss_read_index_fname(plain[i], 0, &idx) != 0) {
				fprintf(stderr, "bench_load: faiss_read_index %s failed\n", plain[i]);
				return 1;
			}
			faiss_Index_free(idx);
		}
		double t = secs(t0, cdx_now_us());
		if (r == 1 || (r > 1 && t < faiss_best))
			faiss_best = t;
		t0 = cdx_now_us();
		cdx_collection *c;
		if (cdx_collection_load(&c, vdir) != CDX_OK) {
			fprintf(stderr, "bench_load: %s\n", cdx_last_error());
			return 1;
		}
		t = secs(t0, cdx_now_us());
		cdx_collection_unref(c);
		if (r == 1 || (r > 1 && t < load_best))
			load_best = t;
	}
	for (size_t i = 0; i < nshards; i++) {
		unlink(plain[i]);
		free(plain[i]);
		free(paths[i]);
	}
	free(plain);
	free(tmp);
	printf("| load | seconds | vs faiss_read_index |\n|---|---|---|\n");
	printf("| faiss_read_index of the uncompressed FAISS parts (baseline) | %.3f | 1.00 |\n", faiss_best);
	printf("| cdx_collection_load (checksums, lz4, Faiss, ids, keys, refine store) | %.3f | %.2f |\n",
	    load_best, load_best / faiss_best);
	return 0;
}
