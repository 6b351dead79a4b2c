/*
 * opt.c — option tables and strict numbers (see opt.h).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/opt.h"

/* ---- numbers ---------------------------------------------------------- */

static int
all_digits(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (!isdigit((unsigned char) *s))
			return 0;
	return 1;
}

int
cdx_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	if (s == NULL || !all_digits(s))
		return CDX_EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, NULL, 10);
	if (errno != 0 || v < min || v > max)
		return CDX_EINVAL;
	*out = v;
	return CDX_OK;
}

int
cdx_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
	if (s == NULL || !all_digits(s[0] == '-' ? s + 1 : s))
		return CDX_EINVAL;
	errno = 0;
	long long v = strtoll(s, NULL, 10);
	if (errno != 0 || v < min || v > max)
		return CDX_EINVAL;
	*out = v;
	return CDX_OK;
}

int
cdx_parse_double(const char *s, double min, double max, double *out)
{
	/* strtod also takes hex, "inf", "nan" and leading spaces: only plain
	 * decimal notation is a number here */
	if (s == NULL || *s == '\0' || strspn(s, "0123456789.eE+-") != strlen(s))
		return CDX_EINVAL;
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end != '\0' || errno != 0 || !isfinite(v) || v < min || v > max)
		return CDX_EINVAL;
	*out = v;
	return CDX_OK;
}

int
cdx_parse_list(const char *s, double lo, double hi, double *out, size_t cap, size_t *n)
{
	char buf[1024];
	*n = 0;
	if (snprintf(buf, sizeof(buf), "%s", s) >= (int) sizeof(buf))
		return cdx_error(CDX_EINVAL, "list too long");
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		if (*n >= cap)
			return cdx_error(CDX_EINVAL, "at most %zu values", cap);
		if (cdx_parse_double(tok, lo, hi, &out[*n]) != CDX_OK)
			return cdx_error(CDX_EINVAL, "'%s' is not a number in [%g, %g]", tok, lo, hi);
		(*n)++;
	}
	return *n > 0 ? CDX_OK : cdx_error(CDX_EINVAL, "an empty list");
}

int
cdx_parse_size(const char *s, uint64_t *out)
{
	if (s == NULL)
		return CDX_EINVAL;
	size_t digits = strspn(s, "0123456789");
	if (digits == 0 || digits > 20)
		return CDX_EINVAL;
	char num[24];
	memcpy(num, s, digits);
	num[digits] = '\0';
	uint64_t v;
	if (cdx_parse_u64(num, 1, UINT64_MAX, &v) != CDX_OK)
		return CDX_EINVAL;
	const char *suffix = s + digits;
	unsigned shift = 0;
	switch (toupper((unsigned char) *suffix)) {
	case '\0':
		break;
	case 'K':
		shift = 10;
		break;
	case 'M':
		shift = 20;
		break;
	case 'G':
		shift = 30;
		break;
	default:
		return CDX_EINVAL;
	}
	if (shift > 0) {
		suffix++;
		if (strcasecmp(suffix, "iB") != 0 && strcasecmp(suffix, "B") != 0 && *suffix != '\0')
			return CDX_EINVAL;
		if (v > (UINT64_MAX >> shift))
			return CDX_EINVAL;
		v <<= shift;
	}
	*out = v;
	return CDX_OK;
}

/* ---- option tables ------------------------------------------------------ */

int
cdx_opt_fail(const char *prog, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return cdx_error(CDX_EINVAL, "%s: %s; see %s --help", prog, msg, prog);
}

/* The range of an integer option: the table's, else the type's. */
static void
int_range(const struct cdx_opt *o, double type_min, double type_max, double *lo, double *hi)
{
	if (o->min == 0 && o->max == 0) {
		*lo = type_min;
		*hi = type_max;
	} else {
		*lo = o->min;
		*hi = o->max;
	}
}

static uint64_t
u64_bound(double v)
{
	return v >= 18446744073709551615.0 ? UINT64_MAX : v <= 0 ? 0 : (uint64_t) v;
}

static int64_t
i64_bound(double v)
{
	return v >= 9223372036854775807.0 ? INT64_MAX : v <= -9223372036854775808.0 ? INT64_MIN : (int64_t) v;
}

/* set_value stores value into the field of o; on a bad value it prints
 * the error (naming where, when not the command line) and returns CDX_EINVAL. */
static int
set_value(const char *prog, const struct cdx_opt *o, void *opts, const char *value, const char *where)
{
	char *field = (char *) opts + o->offset;
	char at[256] = "";
	double lo, hi;
	if (where != NULL)
		snprintf(at, sizeof(at), "%s: ", where);
	switch (o->type) {
	case CDX_OPT_FLAG:
		*(int *) field = 1;
		return CDX_OK;
	case CDX_OPT_STR:
		*(const char **) field = value;
		return CDX_OK;
	case CDX_OPT_STRDUP: {
		char *copy = strdup(value);
		if (copy == NULL)
			return cdx_error(CDX_ENOMEM, "%s: out of memory", prog);
		free(*(char **) field);
		*(char **) field = copy;
		return CDX_OK;
	}
	case CDX_OPT_U32:
	case CDX_OPT_U64:
	case CDX_OPT_SIZE_T: {
		double type_max = o->type == CDX_OPT_U32 ? (double) UINT32_MAX
		    : o->type == CDX_OPT_SIZE_T          ? (double) SIZE_MAX
		                                         : 18446744073709551615.0;
		int_range(o, 0, type_max, &lo, &hi);
		uint64_t v;
		if (cdx_parse_u64(value, u64_bound(lo), u64_bound(hi), &v) != CDX_OK) {
			cdx_opt_fail(prog, "%s--%s '%s': expected an integer in [%llu, %llu]", at, o->name,
			    value, (unsigned long long) u64_bound(lo), (unsigned long long) u64_bound(hi));
			return CDX_EINVAL;
		}
		if (o->type == CDX_OPT_U32)
			*(uint32_t *) field = (uint32_t) v;
		else if (o->type == CDX_OPT_SIZE_T)
			*(size_t *) field = (size_t) v;
		else
			*(uint64_t *) field = v;
		return CDX_OK;
	}
	case CDX_OPT_INT:
	case CDX_OPT_I64: {
		if (o->type == CDX_OPT_INT)
			int_range(o, (double) INT_MIN, (double) INT_MAX, &lo, &hi);
		else
			int_range(o, -9223372036854775808.0, 9223372036854775807.0, &lo, &hi);
		int64_t v;
		if (cdx_parse_i64(value, i64_bound(lo), i64_bound(hi), &v) != CDX_OK) {
			cdx_opt_fail(prog, "%s--%s '%s': expected an integer in [%lld, %lld]", at, o->name,
			    value, (long long) i64_bound(lo), (long long) i64_bound(hi));
			return CDX_EINVAL;
		}
		if (o->type == CDX_OPT_INT)
			*(int *) field = (int) v;
		else
			*(int64_t *) field = v;
		return CDX_OK;
	}
	case CDX_OPT_DOUBLE:
	case CDX_OPT_FLOAT: {
		lo = o->min == 0 && o->max == 0 ? -HUGE_VAL : o->min;
		hi = o->min == 0 && o->max == 0 ? HUGE_VAL : o->max;
		double v;
		if (cdx_parse_double(value, lo, hi, &v) != CDX_OK) {
			cdx_opt_fail(
			    prog, "%s--%s '%s': expected a number in [%g, %g]", at, o->name, value, lo, hi);
			return CDX_EINVAL;
		}
		if (o->type == CDX_OPT_FLOAT)
			*(float *) field = (float) v;
		else
			*(double *) field = v;
		return CDX_OK;
	}
	case CDX_OPT_BYTES: {
		uint64_t v;
		if (cdx_parse_size(value, &v) != CDX_OK) {
			cdx_opt_fail(prog,
			    "%s--%s '%s': expected a size in bytes like 16M (K, M, G suffixes)", at, o->name,
			    value);
			return CDX_EINVAL;
		}
		*(uint64_t *) field = v;
		return CDX_OK;
	}
	case CDX_OPT_LOGLEVEL:
		if (cdx_log_level_parse(value, (int *) field) != CDX_OK) {
			char why[512];
			snprintf(why, sizeof(why), "%s", cdx_last_error());
			cdx_opt_fail(prog, "%s--%s '%s': %s", at, o->name, value, why);
			return CDX_EINVAL;
		}
		return CDX_OK;
	case CDX_OPT_CALL: {
		cdx_error_clear();
		int rc = o->call(value, opts);
		if (rc != CDX_OK) {
			char why[512];
			snprintf(why, sizeof(why), "%s", cdx_last_error());
			cdx_opt_fail(prog, "%s--%s '%s': %s", at, o->name, value, why);
			return rc == CDX_ENOMEM ? rc : CDX_EINVAL;
		}
		return CDX_OK;
	}
	}
	return cdx_error(CDX_EINTERNAL, "%s: option --%s has no type", prog, o->name);
}

const struct cdx_opt *
cdx_opt_find(const struct cdx_opt *table, size_t n, const char *name, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (table[i].type != CDX_OPT_SECTION && strlen(table[i].name) == len
		    && strncmp(table[i].name, name, len) == 0)
			return &table[i];
	return NULL;
}

int
cdx_opt_set(const char *prog, const struct cdx_opt *table, size_t n, void *opts, const char *name,
    const char *value, const char *where)
{
	const struct cdx_opt *o = cdx_opt_find(table, n, name, strlen(name));
	if (o == NULL) {
		cdx_opt_fail(prog, "%s%sunknown option %s", where ? where : "", where ? ": " : "", name);
		return CDX_EINVAL;
	}
	if (o->type == CDX_OPT_FLAG && *value != '\0' && strcmp(value, "true") != 0
	    && strcmp(value, "1") != 0) {
		cdx_opt_fail(prog, "%s%s--%s takes no value", where ? where : "", where ? ": " : "", o->name);
		return CDX_EINVAL;
	}
	return set_value(prog, o, opts, value, where);
}

int
cdx_opt_parse(const char *prog, const struct cdx_opt *table, size_t n, void *opts, int argc, char **argv,
    int *help, const char **positional, size_t max_positional, size_t *npositional)
{
	int only_positional = 0;
	if (npositional != NULL)
		*npositional = 0;
	if (help != NULL)
		*help = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (only_positional || a[0] != '-' || a[1] == '\0') {
			if (positional == NULL || npositional == NULL || *npositional >= max_positional) {
				cdx_opt_fail(prog, "unexpected argument '%s'", a);
				return CDX_EINVAL;
			}
			positional[(*npositional)++] = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			only_positional = 1;
			continue;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			if (help != NULL)
				*help = 1;
			continue;
		}
		const struct cdx_opt *o = NULL;
		const char *value = NULL;
		if (a[1] == '-') {
			const char *name = a + 2, *eq = strchr(name, '=');
			o = cdx_opt_find(table, n, name, eq ? (size_t) (eq - name) : strlen(name));
			if (o == NULL) {
				cdx_opt_fail(prog, "unknown option --%.*s",
				    eq ? (int) (eq - name) : (int) strlen(name), name);
				return CDX_EINVAL;
			}
			if (eq != NULL) {
				if (o->type == CDX_OPT_FLAG) {
					cdx_opt_fail(prog, "--%s takes no value", o->name);
					return CDX_EINVAL;
				}
				value = eq + 1;
			}
		} else {
			for (size_t j = 0; j < n && o == NULL; j++)
				if (table[j].type != CDX_OPT_SECTION && table[j].short_name != 0
				    && a[1] == table[j].short_name && a[2] == '\0')
					o = &table[j];
			if (o == NULL) {
				cdx_opt_fail(prog, "unknown option %s", a);
				return CDX_EINVAL;
			}
		}
		if (o->type != CDX_OPT_FLAG && value == NULL) {
			if (i + 1 >= argc) {
				cdx_opt_fail(
				    prog, "--%s needs a value (%s)", o->name, o->arg ? o->arg : "VALUE");
				return CDX_EINVAL;
			}
			value = argv[++i];
		}
		int rc = set_value(prog, o, opts, value ? value : "", NULL);
		if (rc != CDX_OK)
			return rc;
	}
	return CDX_OK;
}

/* default_text writes the default of o held in defaults, or "" if unset. */
static void
default_text(const struct cdx_opt *o, const void *defaults, char *out, size_t size)
{
	const char *field = (const char *) defaults + o->offset;
	out[0] = '\0';
	switch (o->type) {
	case CDX_OPT_STR:
	case CDX_OPT_STRDUP: {
		const char *s = *(const char *const *) field;
		if (s != NULL && *s != '\0')
			snprintf(out, size, "%s", s);
		break;
	}
	case CDX_OPT_U32:
		snprintf(out, size, "%u", *(const uint32_t *) field);
		break;
	case CDX_OPT_U64:
	case CDX_OPT_BYTES:
		snprintf(out, size, "%llu", (unsigned long long) *(const uint64_t *) field);
		break;
	case CDX_OPT_SIZE_T:
		snprintf(out, size, "%zu", *(const size_t *) field);
		break;
	case CDX_OPT_I64:
		snprintf(out, size, "%lld", (long long) *(const int64_t *) field);
		break;
	case CDX_OPT_INT:
		snprintf(out, size, "%d", *(const int *) field);
		break;
	case CDX_OPT_DOUBLE:
		snprintf(out, size, "%g", *(const double *) field);
		break;
	case CDX_OPT_FLOAT:
		snprintf(out, size, "%g", (double) *(const float *) field);
		break;
	default:
		break;
	}
}

/* option_head writes "-k, --name ARG" for o. */
static void
option_head(const struct cdx_opt *o, char *head, size_t size)
{
	if (o->short_name != 0)
		snprintf(head, size, "-%c, --%s%s%s", o->short_name, o->name, o->arg ? " " : "",
		    o->arg ? o->arg : "");
	else
		snprintf(head, size, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
}

void
cdx_opt_usage(FILE *out, const struct cdx_opt *table, size_t n, const void *defaults)
{
	/* help texts start in one column: after the longest name, up to 34 */
	int width = 20;
	char head[96];
	for (size_t i = 0; i < n; i++) {
		if (table[i].type == CDX_OPT_SECTION)
			continue;
		option_head(&table[i], head, sizeof(head));
		int len = (int) strlen(head) + 2;
		if (len > width && len <= 34)
			width = len;
	}
	for (size_t i = 0; i < n; i++) {
		const struct cdx_opt *o = &table[i];
		if (o->type == CDX_OPT_SECTION) {
			fprintf(out, "%s%s\n", i > 0 ? "\n" : "", o->name);
			continue;
		}
		option_head(o, head, sizeof(head));
		char def[128] = "";
		if (defaults != NULL)
			default_text(o, defaults, def, sizeof(def));
		/* the help text may span lines: the first follows the name (or the
		 * next line when the name is long), the rest are indented under it */
		const char *h = o->help ? o->help : "";
		if ((int) strlen(head) + 2 > width)
			fprintf(out, "  %s\n%*s", head, width + 2, "");
		else
			fprintf(out, "  %-*s", width, head);
		for (;;) {
			const char *nl = strchr(h, '\n');
			int len = nl ? (int) (nl - h) : (int) strlen(h);
			fprintf(out, "%.*s", len, h);
			if (nl == NULL)
				break;
			fprintf(out, "\n%*s", width + 2, "");
			h = nl + 1;
		}
		if (def[0] != '\0')
			fprintf(out, " [%s]", def);
		fputc('\n', out);
	}
	fprintf(out, "  %-*s%s\n", width, "-h, --help", "show this help");
}

/* ---- whole command lines --------------------------------------------------- */

void
cdx_opt_command_usage(FILE *out, const struct cdx_opt_command *cmd)
{
	fputs(cmd->head, out);
	fputc('\n', out);
	cdx_opt_usage(out, cmd->opts, cmd->nopts, NULL);
	if (cmd->tail != NULL) {
		fputc('\n', out);
		fputs(cmd->tail, out);
	}
}

int
cdx_opt_command_parse(const struct cdx_opt_command *cmd, void *opts, int argc, char **argv, const char **pos,
    size_t maxpos, size_t *npos)
{
	int help = 0;
	if (cdx_opt_parse(cmd->prog, cmd->opts, cmd->nopts, opts, argc, argv, &help, pos, maxpos, npos)
	    != CDX_OK) {
		fprintf(stderr, "%s\n", cdx_last_error());
		return 2;
	}
	if (help) {
		cdx_opt_command_usage(stdout, cmd);
		return 0;
	}
	return -1;
}

int
cdx_opt_command_fail(const struct cdx_opt_command *cmd, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s: %s; see %s --help\n", cmd->prog, msg, cmd->prog);
	return 2;
}
