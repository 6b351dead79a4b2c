/*
 * filter.c — the filter language of filter.h: a recursive-descent parser
 * into a flat array of nodes, and an evaluator that walks it with
 * short-circuit AND/OR. Every value is resolved at compile time (enum and
 * set values to codes and masks, groups to their hashes, IN lists sorted),
 * so evaluating a test is one column read and a compare.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "search/filter.h"

enum node_op {
	N_AND,
	N_OR,
	N_NOT,
	N_FALSE,   /* a test no item can pass (an unknown enum value) */
	N_CMP,     /* column op value, on cdx_attr_get */
	N_IN,      /* column value in a sorted list (int, group) */
	N_IN_MASK, /* enum code in a bitmap of codes */
	N_SET_ANY, /* (set & mask) != 0 */
	N_SET_ALL, /* (set & mask) == mask */
};

enum cmp_op { C_EQ, C_NE, C_LT, C_LE, C_GT, C_GE };

struct node {
	int op;
	int cmp;       /* N_CMP */
	uint32_t col;  /* tests */
	int32_t a, b;  /* children (N_AND, N_OR: both; N_NOT: a) */
	int64_t value; /* N_CMP; N_SET_*: the mask */
	uint32_t nlist;
	int64_t *list; /* N_IN: sorted; N_IN_MASK: bitmap words */
};

struct cdx_filter {
	struct node *nodes;
	uint32_t n;
	int32_t root;
};

/* ---- lexer ----------------------------------------------------------- */

enum tok_kind { T_END, T_WORD, T_STRING, T_LPAREN, T_RPAREN, T_COMMA, T_OP };

struct tok {
	int kind;
	const char *s;
	size_t len;
	int cmp; /* T_OP */
	size_t pos;
};

struct parser {
	const char *text;
	size_t pos;
	struct tok t; /* the current token */
	const struct cdx_attr_schema *schema;
	cdx_filter *f;
	int rc;
	int depth;
};

static int CDX_PRINTF(2, 3) fail(struct parser *p, const char *fmt, ...)
{
	if (p->rc != CDX_OK)
		return p->rc;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	p->rc = cdx_error(CDX_EINVAL, "filter: at character %zu: %s", p->t.pos + 1, msg);
	return p->rc;
}

static int
bare_char(char c)
{
	return c != '\0' && !isspace((unsigned char) c) && strchr("()=!<>,\"", c) == NULL;
}

static void
next(struct parser *p)
{
	const char *s = p->text;
	while (isspace((unsigned char) s[p->pos]))
		p->pos++;
	struct tok *t = &p->t;
	t->pos = p->pos;
	t->s = s + p->pos;
	t->len = 0;
	char c = s[p->pos];
	if (c == '\0') {
		t->kind = T_END;
	} else if (c == '(' || c == ')' || c == ',') {
		t->kind = c == '(' ? T_LPAREN : c == ')' ? T_RPAREN : T_COMMA;
		t->len = 1;
	} else if (c == '=' || c == '!' || c == '<' || c == '>') {
		char d = s[p->pos + 1];
		t->kind = T_OP;
		t->len = d == '=' ? 2 : 1;
		if (c == '=')
			t->cmp = C_EQ;
		else if (c == '!')
			t->cmp = C_NE;
		else if (c == '<')
			t->cmp = d == '=' ? C_LE : C_LT;
		else
			t->cmp = d == '=' ? C_GE : C_GT;
		if (c == '!' && d != '=') {
			fail(p, "'!' must be '!=' (write NOT for negation)");
			t->kind = T_END;
		}
	} else if (c == '"') {
		const char *end = strchr(s + p->pos + 1, '"');
		if (end == NULL) {
			fail(p, "unterminated \"string\"");
			t->kind = T_END;
			return;
		}
		t->kind = T_STRING;
		t->s = s + p->pos + 1;
		t->len = (size_t) (end - t->s);
		p->pos = (size_t) (end - s) + 1;
		return;
	} else {
		t->kind = T_WORD;
		while (bare_char(s[p->pos + t->len]))
			t->len++;
	}
	p->pos += t->len;
}

static int
is_kw(const struct tok *t, const char *kw)
{
	return t->kind == T_WORD && strlen(kw) == t->len && strncasecmp(t->s, kw, t->len) == 0;
}

/* ---- nodes ----------------------------------------------------------- */

static int32_t
add_node(struct parser *p, struct node nd)
{
	cdx_filter *f = p->f;
	if (f->n == CDX_FILTER_MAX_NODES) {
		fail(p, "more than %d tests and operators", CDX_FILTER_MAX_NODES);
		free(nd.list);
		return -1;
	}
	if ((f->n & (f->n - 1)) == 0) { /* grow at powers of two */
		struct node *grown = realloc(f->nodes, (f->n ? f->n * 2 : 8) * sizeof(*grown));
		if (grown == NULL) {
			p->rc = cdx_error(CDX_ENOMEM, "filter");
			free(nd.list);
			return -1;
		}
		f->nodes = grown;
	}
	f->nodes[f->n] = nd;
	return (int32_t) f->n++;
}

/* value_of turns a value token into what cdx_attr_get returns for col;
 * *known is 0 for an enum/set value no item has. */
static int
value_of(struct parser *p, const struct cdx_attr_column *col, const struct tok *t, int64_t *out, int *known)
{
	*known = 1;
	if (t->kind != T_WORD && t->kind != T_STRING)
		return fail(p, "expected a value for %s", col->name);
	switch (col->type) {
	case CDX_ATTR_INT: {
		char tmp[32], *end;
		if (t->len == 0 || t->len >= sizeof(tmp))
			return fail(p, "%s is an int: '%.*s' is not one", col->name, (int) t->len, t->s);
		memcpy(tmp, t->s, t->len);
		tmp[t->len] = '\0';
		errno = 0;
		long long v = strtoll(tmp, &end, 10);
		if (errno != 0 || *end != '\0')
			return fail(p, "%s is an int: '%s' is not one", col->name, tmp);
		*out = v;
		return CDX_OK;
	}
	case CDX_ATTR_BOOL:
		if (t->len == 4 && strncasecmp(t->s, "true", 4) == 0)
			*out = 1;
		else if (t->len == 5 && strncasecmp(t->s, "false", 5) == 0)
			*out = 0;
		else
			return fail(p, "%s is a bool: compare it with true or false, not '%.*s'", col->name,
			    (int) t->len, t->s);
		return CDX_OK;
	case CDX_ATTR_GROUP:
		*out = (int64_t) cdx_attr_group_hash(t->s, t->len);
		return CDX_OK;
	default: {
		int code = cdx_attr_value_code(col, t->s, t->len);
		*known = code >= 0;
		*out = code >= 0 ? code : 0;
		return CDX_OK;
	}
	}
}

static const struct cdx_attr_column *
column_of(struct parser *p, int *colp)
{
	if (p->t.kind != T_WORD)
		return fail(p, "expected an attribute name"), NULL;
	int col = cdx_attr_find(p->schema, p->t.s, p->t.len);
	if (col < 0) {
		char names[256] = "";
		size_t used = 0;
		for (uint32_t c = 0; p->schema != NULL && c < p->schema->ncols && used + 40 < sizeof(names);
		     c++)
			used += (size_t) snprintf(names + used, sizeof(names) - used, "%s%s", c ? ", " : "",
			    p->schema->cols[c].name);
		fail(p, "unknown attribute '%.*s' (%s%s)", (int) CDX_MIN(p->t.len, (size_t) 64), p->t.s,
		    names[0] ? "attributes: " : "the collection was built without --attrs", names);
		return NULL;
	}
	*colp = col;
	return &p->schema->cols[col];
}

/* value_list parses '(' VALUE, ... ')' into values (malloc'd), leaving
 * out values no item has (*dropped counts them). */
static int
value_list(
    struct parser *p, const struct cdx_attr_column *col, int64_t **values, uint32_t *n, uint32_t *dropped)
{
	*values = NULL;
	*n = 0;
	*dropped = 0;
	if (p->t.kind != T_LPAREN)
		return fail(p, "expected '(' and a list of values");
	next(p);
	int64_t *v = NULL;
	uint32_t cap = 0;
	while (p->rc == CDX_OK) {
		int64_t x;
		int known;
		if (value_of(p, col, &p->t, &x, &known) != CDX_OK)
			break;
		*dropped += !known;
		if (known) {
			if (*n == cap) {
				cap = cap ? cap * 2 : 8;
				int64_t *grown
				    = cap <= CDX_FILTER_MAX_TEXT ? realloc(v, cap * sizeof(int64_t)) : NULL;
				if (grown == NULL) {
					p->rc = cdx_error(CDX_ENOMEM, "filter");
					break;
				}
				v = grown;
			}
			v[(*n)++] = x;
		}
		next(p);
		if (p->t.kind == T_RPAREN) {
			next(p);
			*values = v;
			return CDX_OK;
		}
		if (p->t.kind != T_COMMA)
			fail(p, "expected ',' or ')' in the list of values");
		else
			next(p);
	}
	free(v);
	*n = 0;
	return p->rc;
}

static int32_t parse_expr(struct parser *p);

static int32_t
parse_test(struct parser *p)
{
	int col;
	const struct cdx_attr_column *c = column_of(p, &col);
	if (c == NULL)
		return -1;
	struct node nd = { .col = (uint32_t) col, .a = -1, .b = -1 };
	const struct node none = { .op = N_FALSE, .a = -1, .b = -1 };
	uint32_t n, dropped;
	next(p);
	int known = 1;
	if (is_kw(&p->t, "has")) {
		if (c->type != CDX_ATTR_SET)
			return fail(p, "HAS applies to set attributes; %s is %s", c->name,
			           cdx_attr_type_name(c->type)),
			       -1;
		next(p);
		int all = is_kw(&p->t, "all");
		if (all || is_kw(&p->t, "any")) {
			next(p);
			int64_t *codes;
			if (value_list(p, c, &codes, &n, &dropped) != CDX_OK)
				return -1;
			nd.op = all ? N_SET_ALL : N_SET_ANY;
			for (uint32_t i = 0; i < n; i++)
				nd.value |= (int64_t) ((uint64_t) 1 << codes[i]);
			free(codes);
			/* ALL of a list with a value no item has: nothing passes */
			return add_node(p, all && dropped > 0 ? none : nd);
		}
		int64_t code;
		if (value_of(p, c, &p->t, &code, &known) != CDX_OK)
			return -1;
		next(p);
		if (!known)
			return add_node(p, none);
		nd.op = N_SET_ANY;
		nd.value = (int64_t) ((uint64_t) 1 << code);
		return add_node(p, nd);
	}
	if (is_kw(&p->t, "in")) {
		if (c->type == CDX_ATTR_SET || c->type == CDX_ATTR_BOOL)
			return fail(p, "IN applies to int, enum and group attributes; %s is %s", c->name,
			           cdx_attr_type_name(c->type)),
			       -1;
		next(p);
		int64_t *values;
		if (value_list(p, c, &values, &n, &dropped) != CDX_OK)
			return -1;
		if (c->type == CDX_ATTR_ENUM) {
			uint32_t words = (c->nvalues + 63) / 64;
			nd.op = N_IN_MASK;
			nd.list = calloc(words ? words : 1, sizeof(int64_t));
			if (nd.list == NULL) {
				free(values);
				p->rc = cdx_error(CDX_ENOMEM, "filter");
				return -1;
			}
			for (uint32_t i = 0; i < n; i++)
				nd.list[values[i] / 64] |= (int64_t) ((uint64_t) 1 << (values[i] % 64));
			free(values);
		} else {
			qsort(values, n, sizeof(int64_t), cdx_cmp_i64);
			nd.op = N_IN;
			nd.list = values;
			nd.nlist = n;
		}
		return add_node(p, nd);
	}
	if (p->t.kind != T_OP)
		return fail(p, "expected =, !=, <, <=, >, >=, IN or HAS after %s", c->name), -1;
	nd.op = N_CMP;
	nd.cmp = p->t.cmp;
	if (c->type == CDX_ATTR_SET)
		return fail(p, "%s is a set: test it with HAS, HAS ANY (...) or HAS ALL (...)", c->name), -1;
	if (c->type != CDX_ATTR_INT && nd.cmp != C_EQ && nd.cmp != C_NE)
		return fail(p, "%s is %s: only = and != compare it", c->name, cdx_attr_type_name(c->type)),
		       -1;
	next(p);
	if (value_of(p, c, &p->t, &nd.value, &known) != CDX_OK)
		return -1;
	next(p);
	if (known)
		return add_node(p, nd);
	/* an enum value no item has: = matches nothing, != everything */
	int32_t id = add_node(p, none);
	return nd.cmp == C_EQ || id < 0 ? id : add_node(p, (struct node) { .op = N_NOT, .a = id, .b = -1 });
}

static int32_t
parse_unary(struct parser *p)
{
	if (++p->depth > 64) {
		fail(p, "nested too deeply");
		return -1;
	}
	int32_t r;
	if (is_kw(&p->t, "not")) {
		next(p);
		int32_t a = parse_unary(p);
		r = a < 0 ? -1 : add_node(p, (struct node) { .op = N_NOT, .a = a, .b = -1 });
	} else if (p->t.kind == T_LPAREN) {
		next(p);
		r = parse_expr(p);
		if (r >= 0 && p->t.kind != T_RPAREN)
			r = (fail(p, "expected ')'"), -1);
		else if (r >= 0)
			next(p);
	} else {
		r = parse_test(p);
	}
	p->depth--;
	return p->rc == CDX_OK ? r : -1;
}

static int32_t
parse_term(struct parser *p)
{
	int32_t a = parse_unary(p);
	while (a >= 0 && is_kw(&p->t, "and")) {
		next(p);
		int32_t b = parse_unary(p);
		a = b < 0 ? -1 : add_node(p, (struct node) { .op = N_AND, .a = a, .b = b });
	}
	return a;
}

static int32_t
parse_expr(struct parser *p)
{
	int32_t a = parse_term(p);
	while (a >= 0 && is_kw(&p->t, "or")) {
		next(p);
		int32_t b = parse_term(p);
		a = b < 0 ? -1 : add_node(p, (struct node) { .op = N_OR, .a = a, .b = b });
	}
	return a;
}

int
cdx_filter_compile(cdx_filter **fp, const char *expr, const struct cdx_attr_schema *schema)
{
	*fp = NULL;
	if (strlen(expr) > CDX_FILTER_MAX_TEXT)
		return cdx_error(
		    CDX_EINVAL, "filter: %zu characters, at most %d", strlen(expr), CDX_FILTER_MAX_TEXT);
	cdx_filter *f = calloc(1, sizeof(*f));
	if (f == NULL)
		return cdx_error(CDX_ENOMEM, "filter");
	struct parser p = { .text = expr, .schema = schema, .f = f, .rc = CDX_OK };
	next(&p);
	if (p.t.kind == T_END && p.rc == CDX_OK)
		fail(&p, "empty filter");
	int32_t root = p.rc == CDX_OK ? parse_expr(&p) : -1;
	if (p.rc == CDX_OK && p.t.kind != T_END)
		fail(&p, "unexpected '%.*s' (expected AND, OR or the end)",
		    (int) CDX_MIN(p.t.len, (size_t) 32), p.t.s);
	if (p.rc != CDX_OK || root < 0) {
		int rc = p.rc != CDX_OK ? p.rc : cdx_error(CDX_EINVAL, "filter: cannot parse");
		cdx_filter_free(f);
		return rc;
	}
	f->root = root;
	*fp = f;
	return CDX_OK;
}

void
cdx_filter_free(cdx_filter *f)
{
	if (f == NULL)
		return;
	for (uint32_t i = 0; i < f->n; i++)
		free(f->nodes[i].list);
	free(f->nodes);
	free(f);
}

static int
eval(const struct node *nodes, int32_t i, const struct cdx_attr_table *t, uint64_t row)
{
	const struct node *nd = &nodes[i];
	switch (nd->op) {
	case N_AND:
		return eval(nodes, nd->a, t, row) && eval(nodes, nd->b, t, row);
	case N_OR:
		return eval(nodes, nd->a, t, row) || eval(nodes, nd->b, t, row);
	case N_NOT:
		return !eval(nodes, nd->a, t, row);
	case N_FALSE:
		return 0;
	case N_CMP: {
		int64_t v = cdx_attr_get(t, nd->col, row);
		switch (nd->cmp) {
		case C_EQ:
			return v == nd->value;
		case C_NE:
			return v != nd->value;
		case C_LT:
			return v < nd->value;
		case C_LE:
			return v <= nd->value;
		case C_GT:
			return v > nd->value;
		default:
			return v >= nd->value;
		}
	}
	case N_IN: {
		int64_t v = cdx_attr_get(t, nd->col, row);
		return nd->nlist > 0
		    && bsearch(&v, nd->list, nd->nlist, sizeof(int64_t), cdx_cmp_i64) != NULL;
	}
	case N_IN_MASK: {
		uint64_t v = (uint64_t) cdx_attr_get(t, nd->col, row);
		return ((uint64_t) nd->list[v / 64] >> (v % 64)) & 1;
	}
	case N_SET_ANY:
		return ((uint64_t) cdx_attr_get(t, nd->col, row) & (uint64_t) nd->value) != 0;
	default: /* N_SET_ALL */
		return ((uint64_t) cdx_attr_get(t, nd->col, row) & (uint64_t) nd->value)
		    == (uint64_t) nd->value;
	}
}

int
cdx_filter_match(const cdx_filter *f, const struct cdx_attr_table *t, uint64_t row)
{
	return eval(f->nodes, f->root, t, row);
}
