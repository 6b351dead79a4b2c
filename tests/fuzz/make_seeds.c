/*
 * make_seeds.c — writes the seed corpora of the fuzz targets from valid
 * inputs, so that no binary seed is committed:
 *
 *   make_seeds request DIR        packed candex.v1.Request messages of every
 *                                 kind (searches by vector and by key, with
 *                                 exclusions and targets; info, health,
 *                                 reload, drop)
 *   make_seeds files VDIR DIR     a published version's manifest.json into
 *                                 DIR/manifest/ and each shard, prefixed with
 *                                 the fuzz_shard mode byte (0 and 1), into
 *                                 DIR/shard/
 *   make_seeds data DIR           a small clustered .fvecs and keys file for
 *                                 `candex build` to make VDIR from
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "candex.pb-c.h"
#include "common/common.h"
#include "shard/manifest.h"

static int
write_file(const char *dir, const char *name, const void *a, size_t alen, const void *b, size_t blen)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (f == NULL || fwrite(a, 1, alen, f) != alen || (blen && fwrite(b, 1, blen, f) != blen)) {
		perror(path);
		if (f)
			fclose(f);
		return 1;
	}
	return fclose(f) != 0;
}

static int
write_request(const char *dir, const char *name, Candex__V1__Request *req)
{
	size_t len = candex__v1__request__get_packed_size(req);
	uint8_t *buf = malloc(len + 1);
	candex__v1__request__pack(req, buf);
	int rc = write_file(dir, name, buf, len, NULL, 0);
	free(buf);
	return rc;
}

static int
requests(const char *dir)
{
	int rc = 0;
	float v[32];
	for (int i = 0; i < 32; i++)
		v[i] = (float) i / 7.0f - 2.0f;
	char *keys[2] = { (char *) "t:1", (char *) "t:\xe2\x82\xac" };
	int64_t ex[3] = { 1, -5, 1LL << 40 };
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
	req.protocol_version = 1;
	req.request_id = (char *) "seed-1";
	req.timeout_ms = 100;
	req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
	req.search = &sr;
	sr.collection = (char *) "tracks";
	sr.dim = 16;
	sr.n_vectors = 32;
	sr.vectors = v;
	sr.k = 10;
	rc |= write_request(dir, "search-vectors", &req);
	sr.nprobe = 8;
	sr.refine_factor = 4;
	sr.n_exclude_ids = 3;
	sr.exclude_ids = ex;
	sr.n_exclude_keys = 1;
	sr.exclude_keys = keys;
	sr.model_version = (char *) "model-a";
	rc |= write_request(dir, "search-options", &req);
	sr.n_vectors = 0;
	sr.vectors = NULL;
	sr.n_query_keys = 2;
	sr.query_keys = keys;
	sr.nprobe = 0;
	sr.recall_target = 0.9f;
	rc |= write_request(dir, "search-keys", &req);

	Candex__V1__Request other = CANDEX__V1__REQUEST__INIT;
	other.protocol_version = 1;
	other.request_id = (char *) "seed-\xe2\x82\xac";
	Candex__V1__InfoRequest ir = CANDEX__V1__INFO_REQUEST__INIT;
	ir.collection = (char *) "tracks";
	other.body_case = CANDEX__V1__REQUEST__BODY_INFO;
	other.info = &ir;
	rc |= write_request(dir, "info", &other);
	Candex__V1__HealthRequest hr = CANDEX__V1__HEALTH_REQUEST__INIT;
	other.body_case = CANDEX__V1__REQUEST__BODY_HEALTH;
	other.health = &hr;
	rc |= write_request(dir, "health", &other);
	Candex__V1__ReloadRequest rr = CANDEX__V1__RELOAD_REQUEST__INIT;
	other.body_case = CANDEX__V1__REQUEST__BODY_RELOAD;
	other.reload = &rr;
	rc |= write_request(dir, "reload", &other);
	Candex__V1__DropRequest dr = CANDEX__V1__DROP_REQUEST__INIT;
	dr.collection = (char *) "podcasts";
	other.body_case = CANDEX__V1__REQUEST__BODY_DROP;
	other.drop = &dr;
	rc |= write_request(dir, "drop", &other);
	return rc;
}

static int
files(const char *vdir, const char *out)
{
	char mdir[4096], sdir[4096], path[4096];
	snprintf(mdir, sizeof(mdir), "%s/manifest", out);
	snprintf(sdir, sizeof(sdir), "%s/shard", out);
	if (cdx_mkdir_p(mdir, 0755) != CDX_OK || cdx_mkdir_p(sdir, 0755) != CDX_OK)
		return 1;
	DIR *d = opendir(vdir);
	if (d == NULL) {
		perror(vdir);
		return 1;
	}
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		int shard = n > 4 && strcmp(e->d_name + n - 4, ".cdx") == 0;
		if (!shard && strcmp(e->d_name, CDX_MANIFEST_FILE) != 0)
			continue;
		char *text = NULL;
		size_t len;
		snprintf(path, sizeof(path), "%s/%s", vdir, e->d_name);
		if (cdx_read_file(path, &text, &len) != CDX_OK) {
			fprintf(stderr, "%s\n", cdx_last_error());
			rc = 1;
			continue;
		}
		if (shard) {
			char name[300];
			for (uint8_t mode = 0; mode < 2; mode++) {
				snprintf(name, sizeof(name), "mode%u-%s", mode, e->d_name);
				rc |= write_file(sdir, name, &mode, 1, text, len);
			}
		} else {
			rc |= write_file(mdir, e->d_name, text, len, NULL, 0);
		}
		free(text);
	}
	closedir(d);
	return rc;
}

static int
data(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/base.fvecs", dir);
	FILE *f = fopen(path, "wb");
	cdx_rng rng;
	cdx_rng_seed(&rng, 7);
	int32_t dim = 8;
	for (int i = 0; i < 400 && f != NULL; i++) {
		fwrite(&dim, 4, 1, f);
		for (int j = 0; j < dim; j++) {
			float x = (float) ((i % 4) * 3 + cdx_rng_normal(&rng));
			fwrite(&x, 4, 1, f);
		}
	}
	if (f == NULL || fclose(f) != 0)
		return 1;
	snprintf(path, sizeof(path), "%s/keys.txt", dir);
	if ((f = fopen(path, "w")) == NULL)
		return 1;
	for (int i = 0; i < 400; i++)
		fprintf(f, "%s:%d\n", i % 3 ? "spotify:track" : "\xc3\xa9pisode", i);
	return fclose(f) != 0;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "request") == 0)
		return requests(argv[2]);
	if (argc == 4 && strcmp(argv[1], "files") == 0)
		return files(argv[2], argv[3]);
	if (argc == 3 && strcmp(argv[1], "data") == 0)
		return data(argv[2]);
	fprintf(stderr, "usage: make_seeds request DIR | files VERSION_DIR DIR | data DIR\n");
	return 2;
}
