/*
 * names.c — the names of metrics, part kinds and refine kinds as they
 * appear in manifests, logs and the CLI.
 */
#include <string.h>

#include "shard/shard.h"

static const char *const metric_names[] = { "l2", "ip", "cos" };
static const char *const refine_names[] = { "none", "fp32", "fp16", "sq8" };
static const char *const transform_names[] = { "none", "mips-l2" };

const char *
cdx_metric_name(int metric)
{
	if (metric < 0 || (size_t) metric >= CDX_ARRAY_LEN(metric_names))
		return "unknown";
	return metric_names[metric];
}

int
cdx_metric_parse(const char *name, int *metric)
{
	for (size_t i = 0; name != NULL && i < CDX_ARRAY_LEN(metric_names); i++) {
		if (strcmp(name, metric_names[i]) == 0) {
			*metric = (int) i;
			return CDX_OK;
		}
	}
	return cdx_error(CDX_EINVAL, "unknown metric '%s' (expected l2, ip or cos)", name ? name : "(null)");
}

const char *
cdx_transform_name(int transform)
{
	if (transform < 0 || (size_t) transform >= CDX_ARRAY_LEN(transform_names))
		return "unknown";
	return transform_names[transform];
}

int
cdx_transform_parse(const char *name, int *transform)
{
	for (size_t i = 0; name != NULL && i < CDX_ARRAY_LEN(transform_names); i++) {
		if (strcmp(name, transform_names[i]) == 0) {
			*transform = (int) i;
			return CDX_OK;
		}
	}
	return cdx_error(
	    CDX_EINVAL, "unknown transform '%s' (expected none or mips-l2)", name ? name : "(null)");
}

const char *
cdx_part_name(int kind)
{
	switch (kind) {
	case CDX_PART_FAISS:
		return "faiss";
	case CDX_PART_IDS:
		return "ids";
	case CDX_PART_KEYS:
		return "keys";
	case CDX_PART_REFINE:
		return "refine";
	case CDX_PART_ATTRS:
		return "attrs";
	default:
		return "unknown";
	}
}

const char *
cdx_refine_name(int kind)
{
	if (kind < 0 || (size_t) kind >= CDX_ARRAY_LEN(refine_names))
		return "unknown";
	return refine_names[kind];
}

int
cdx_refine_parse(const char *name, int *kind)
{
	for (size_t i = 0; name != NULL && i < CDX_ARRAY_LEN(refine_names); i++) {
		if (strcmp(name, refine_names[i]) == 0) {
			*kind = (int) i;
			return CDX_OK;
		}
	}
	return cdx_error(CDX_EINVAL, "unknown refine kind '%s' (expected none, fp32, fp16 or sq8)",
	    name ? name : "(null)");
}

size_t
cdx_refine_bytes_per_vector(int kind, uint32_t dim)
{
	switch (kind) {
	case CDX_REFINE_FP32:
		return (size_t) dim * 4;
	case CDX_REFINE_FP16:
		return (size_t) dim * 2;
	case CDX_REFINE_SQ8:
		return (size_t) dim;
	default:
		return 0;
	}
}
