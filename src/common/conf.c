/*
 * conf.c — config files of "option = value" lines (candex serve --config,
 * candex route --config): one reader, so that every program takes the same
 * syntax and reports a bad line the same way.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

static char *
trim(char *s)
{
	while (isspace((unsigned char) *s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char) e[-1]))
		*--e = '\0';
	return s;
}

int
cdx_conf_read(const char *path, int (*set)(void *arg, const char *name, const char *value, const char *where),
    void *arg)
{
	char *text = NULL, *next, where[600];
	size_t len;
	int rc = cdx_read_file(path, &text, &len);
	unsigned lineno = 0;
	for (char *line = text; rc == CDX_OK && line != NULL; line = next) {
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		lineno++;
		char *hash = strchr(line, '#');
		if (hash != NULL)
			*hash = '\0';
		line = trim(line);
		if (*line == '\0')
			continue;
		snprintf(where, sizeof(where), "%s:%u", path, lineno);
		char *eq = strchr(line, '=');
		if (eq == NULL) {
			rc = cdx_error(CDX_EINVAL, "%s: expected 'option = value', got '%s'", where, line);
			break;
		}
		*eq = '\0';
		char *name = trim(line), *value = trim(eq + 1);
		while (*name == '-')
			name++;
		rc = set(arg, name, value, where);
	}
	free(text);
	return rc;
}
