/*
 * text.c — vectors as text (candex query --stdin): one vector a line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "input/input_int.h"

int
cdx_vecs_read_text(struct cdx_vecs *v, FILE *f, const char *name)
{
	char *line = NULL;
	size_t cap = 0, n = 0, dim = 0;
	cdx_buf vals = { 0 };
	unsigned lineno = 0;
	int rc = CDX_OK;

	memset(v, 0, sizeof(*v));
	while (getline(&line, &cap, f) >= 0) {
		lineno++;
		size_t cnt = 0;
		char *p = line, *end;
		for (;;) {
			while (*p == ' ' || *p == '\t' || *p == ',' || *p == '\n' || *p == '\r')
				p++;
			if (*p == '\0' || *p == '#')
				break;
			errno = 0;
			float x = strtof(p, &end);
			if (end == p || errno == ERANGE || !isfinite(x)
			    || (*end != '\0' && *end != ' ' && *end != '\t' && *end != ',' && *end != '\n'
			        && *end != '\r')) {
				int len = (int) CDX_MIN(strcspn(p, " \t,\r\n"), (size_t) 40);
				rc = cdx_error(CDX_EINVAL, "%s line %u: '%.*s' is not a finite number", name,
				    lineno, len, p);
				goto done;
			}
			if ((rc = cdx_buf_append(&vals, &x, sizeof(x))) != CDX_OK)
				goto done;
			cnt++;
			p = end;
		}
		if (cnt == 0)
			continue;
		if (dim == 0)
			dim = cnt;
		if (cnt != dim) {
			rc = cdx_error(CDX_EDIM, "%s line %u has %zu values, the first vector had %zu", name,
			    lineno, cnt, dim);
			goto done;
		}
		if (dim > CDX_INPUT_MAX_DIM) {
			rc = cdx_error(CDX_EINVAL, "%s line %u: %zu values, more than %d", name, lineno, dim,
			    CDX_INPUT_MAX_DIM);
			goto done;
		}
		n++;
	}
	if (ferror(f)) {
		rc = cdx_error_errno(CDX_EIO, "reading %s", name);
		goto done;
	}
	if (n == 0) {
		rc = cdx_error(CDX_EEMPTY, "no vector on %s", name);
		goto done;
	}
	v->x = (float *) vals.data;
	vals.data = NULL;
	v->n = n;
	v->dim = (uint32_t) dim;
done:
	free(line);
	cdx_buf_fini(&vals);
	return rc;
}
