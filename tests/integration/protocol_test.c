/*
 * protocol_test.c — docs/protocol.md against the code and the wire:
 *  - the status table of the page, the Status enum of proto/candex.proto,
 *    CDX_ERRORS of include/candex/err.h and the gateway's HTTP statuses
 *    agree, row by row;
 *  - the byte examples of the page decode as the page says, and are what
 *    protobuf-c packs for the messages they show;
 *  - bytes captured between the C client library and a live server, on
 *    tcp:// and on ipc://, decode with the page's rules (handshake, length,
 *    ipc type byte, request id with the high bit, echoed id, envelope).
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "srvtest.h"
#include "wire/wire.h"

static char *dir;
static char *doc; /* docs/protocol.md */
static struct st_server srv;
static int server_port;

static int
setup(void **state)
{
	(void) state;
	size_t len;
	char *path = tu_path(CANDEX_SOURCE_DIR, "docs/protocol.md");
	assert_int_equal(cdx_read_file(path, &doc, &len), CDX_OK);
	free(path);
	dir = tu_tmpdir("protocol");
	assert_non_null(dir);
	free(st_build(dir, "tracks", 1200, 8, 11, "l2", "track:", NULL));
	server_port = st_free_port();
	char extra[128];
	snprintf(extra, sizeof(extra), "--threads 1 --listen tcp://127.0.0.1:%d", server_port);
	assert_int_equal(st_start(&srv, dir, "proto", extra), 0);
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	st_stop(&srv, SIGTERM);
	tu_rmdir(dir);
	free(doc);
	return 0;
}

/* ---- reading the page ----------------------------------------------------- */

/* doc_bytes returns the bytes of the example marked "<!-- bytes: name -->":
 * the hex pairs of its fenced block, each line up to a '#'. */
static size_t
doc_bytes(const char *name, uint8_t *out, size_t cap)
{
	char marker[128];
	snprintf(marker, sizeof(marker), "<!-- bytes: %s -->", name);
	const char *p = strstr(doc, marker);
	if (p == NULL)
		fail_msg("docs/protocol.md has no example '%s'", name);
	p = strstr(p, "```text\n");
	assert_non_null(p);
	p += 8;
	const char *end = strstr(p, "```");
	assert_non_null(end);
	size_t n = 0;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t) (end - p));
		const char *hash = memchr(p, '#', (size_t) ((eol ? eol : end) - p));
		const char *stop = hash ? hash : eol ? eol : end;
		for (const char *q = p; q < stop;) {
			if (*q == ' ') {
				q++;
				continue;
			}
			unsigned v;
			if (stop - q < 2 || sscanf(q, "%2x", &v) != 1)
				fail_msg("example '%s': '%.20s' is not a hex byte", name, q);
			assert_true(n < cap);
			out[n++] = (uint8_t) v;
			q += 2;
		}
		p = eol ? eol + 1 : end;
	}
	return n;
}

/* ---- decoding by the page's rules ----------------------------------------- */

struct frame {
	uint32_t id;          /* the request id (payload bytes 0..3) */
	const uint8_t *proto; /* the protobuf after it */
	size_t len;
};

static uint64_t
be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* decode_frames splits a stream (after the handshake) into messages: on
 * ipc a type byte 01, then an 8-byte big-endian length, then the payload:
 * a 4-byte big-endian request id with the high bit set, then protobuf. */
static size_t
decode_frames(const uint8_t *p, size_t len, int ipc, struct frame *f, size_t max)
{
	size_t off = 0, n = 0;
	while (off < len) {
		if (ipc) {
			assert_int_equal(p[off], 0x01);
			off++;
		}
		assert_true(off + 8 <= len);
		uint64_t plen = be64(p + off);
		off += 8;
		assert_true(plen >= 4 && off + plen <= len);
		assert_true(n < max);
		f[n].id = (uint32_t) p[off] << 24 | (uint32_t) p[off + 1] << 16 | (uint32_t) p[off + 2] << 8
		    | p[off + 3];
		assert_true(f[n].id & 0x80000000u); /* the high bit */
		f[n].proto = p + off + 4;
		f[n].len = (size_t) plen - 4;
		off += (size_t) plen;
		n++;
	}
	return n;
}

/* ---- the status table ---------------------------------------------------- */

static void
test_status_enum_matches_err_h(void **state)
{
	(void) state;
	const ProtobufCEnumDescriptor *d = &candex__v1__status__descriptor;
	size_t ncodes = 0;
#define COUNT(name, num, desc)                                                                         \
	do {                                                                                           \
		ncodes++;                                                                              \
		if (protobuf_c_enum_descriptor_get_value(d, num) == NULL)                              \
			fail_msg("CDX_" #name " = %d has no Status value in proto/candex.proto", num); \
	} while (0);
	CDX_ERRORS(COUNT)
#undef COUNT
	assert_int_equal(d->n_values, ncodes);
	for (unsigned i = 0; i < d->n_values; i++)
		if (strcmp(cdx_errname(d->values[i].value), "EUNKNOWN") == 0)
			fail_msg("Status %s = %d has no code in candex/err.h", d->values[i].name,
			    d->values[i].value);
}

static void
test_status_table_of_the_page(void **state)
{
	(void) state;
	const ProtobufCEnumDescriptor *d = &candex__v1__status__descriptor;
	int seen[64] = { 0 };
	size_t rows = 0;
	for (const char *line = doc; line != NULL && *line;
	     line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		int num, http;
		char name[64], cname[64];
		if (sscanf(line, "| %d | `%63[A-Z_]` | `%63[A-Z_]` | %d |", &num, name, cname, &http) != 4)
			continue;
		rows++;
		assert_true(num >= 0 && num < 64);
		seen[num]++;
		const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, num);
		if (v == NULL || strcmp(v->name, name) != 0)
			fail_msg("protocol.md: status %d is %s, the proto says %s", num, name,
			    v ? v->name : "(none)");
		char want[80];
		snprintf(want, sizeof(want), "CDX_%s", cdx_errname(num));
		if (strcmp(cname, want) != 0)
			fail_msg("protocol.md: status %d is %s, err.h says %s", num, cname, want);
		if (http != cdx_wire_http_status(num))
			fail_msg("protocol.md: status %d is HTTP %d, the gateway answers %d", num, http,
			    cdx_wire_http_status(num));
	}
	assert_int_equal(rows, d->n_values);
	for (unsigned i = 0; i < d->n_values; i++)
		assert_int_equal(seen[d->values[i].value], 1);
}

/* ---- the examples ---------------------------------------------------------- */

static void
test_examples_of_the_page(void **state)
{
	(void) state;
	uint8_t tcp[256], ipc[256], resp[256], packed[256];
	size_t ntcp = doc_bytes("tcp-health-request", tcp, sizeof(tcp));
	size_t nipc = doc_bytes("ipc-health-request", ipc, sizeof(ipc));
	size_t nresp = doc_bytes("tcp-health-response", resp, sizeof(resp));
	struct frame f[2], g[2];
	assert_int_equal(decode_frames(tcp, ntcp, 0, f, 2), 1);
	assert_int_equal(decode_frames(ipc, nipc, 1, g, 2), 1);
	assert_int_equal(f[0].id, 0x80000001u);
	assert_int_equal(g[0].id, f[0].id);
	assert_int_equal(g[0].len, f[0].len);
	assert_memory_equal(g[0].proto, f[0].proto, f[0].len);

	/* the example is what protobuf-c packs for the message it shows */
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__HealthRequest hr = CANDEX__V1__HEALTH_REQUEST__INIT;
	req.protocol_version = 1;
	req.request_id = (char *) "doc-1";
	req.body_case = CANDEX__V1__REQUEST__BODY_HEALTH;
	req.health = &hr;
	size_t n = candex__v1__request__pack(&req, packed);
	assert_int_equal(n, f[0].len);
	assert_memory_equal(packed, f[0].proto, n);
	Candex__V1__Request *r = candex__v1__request__unpack(NULL, f[0].len, f[0].proto);
	assert_non_null(r);
	assert_int_equal(r->protocol_version, 1);
	assert_string_equal(r->request_id, "doc-1");
	assert_int_equal(r->body_case, CANDEX__V1__REQUEST__BODY_HEALTH);
	candex__v1__request__free_unpacked(r, NULL);

	assert_int_equal(decode_frames(resp, nresp, 0, f, 2), 1);
	assert_int_equal(f[0].id, 0x80000001u);
	Candex__V1__Response *rs = candex__v1__response__unpack(NULL, f[0].len, f[0].proto);
	assert_non_null(rs);
	assert_int_equal(rs->status, CANDEX__V1__STATUS__OK);
	assert_string_equal(rs->request_id, "doc-1");
	assert_int_equal(rs->body_case, CANDEX__V1__RESPONSE__BODY_HEALTH);
	assert_true(rs->health->serving);
	assert_int_equal(rs->health->collections, 2);
	candex__v1__response__free_unpacked(rs, NULL);
}

/* ---- captured bytes ---------------------------------------------------------- */

/* A one-connection proxy that records both directions. */
struct proxy {
	int listen_fd;
	int ipc;
	char upstream[4200];
	cdx_buf up, down; /* client -> server, server -> client */
	pthread_t thread;
	int failed;
};

static int
connect_upstream(const struct proxy *px)
{
	int ipc;
	return st_sp_connect(px->upstream, &ipc);
}

static void *
proxy_main(void *arg)
{
	struct proxy *px = arg;
	struct pollfd lp = { .fd = px->listen_fd, .events = POLLIN };
	if (poll(&lp, 1, 10000) != 1) {
		px->failed = 1;
		return NULL;
	}
	int c = accept(px->listen_fd, NULL, NULL), s = connect_upstream(px);
	if (c < 0 || s < 0) {
		px->failed = 1;
		return NULL;
	}
	uint64_t until = cdx_now_us() + 20000000u;
	for (int open = 1; open && cdx_now_us() < until;) {
		struct pollfd p[2] = { { .fd = c, .events = POLLIN }, { .fd = s, .events = POLLIN } };
		if (poll(p, 2, 100) <= 0)
			continue;
		for (int i = 0; i < 2 && open; i++) {
			if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			char buf[65536];
			ssize_t got = read(p[i].fd, buf, sizeof(buf));
			if (got <= 0) {
				open = 0;
				break;
			}
			cdx_buf_append(i == 0 ? &px->up : &px->down, buf, (size_t) got);
			if (send(i == 0 ? s : c, buf, (size_t) got, MSG_NOSIGNAL) != got)
				open = 0;
		}
	}
	close(c);
	close(s);
	return NULL;
}

static void
proxy_start(struct proxy *px, int ipc, char *url, size_t urlsize)
{
	memset(px, 0, sizeof(*px));
	px->ipc = ipc;
	if (ipc) {
		snprintf(px->upstream, sizeof(px->upstream), "%s", srv.url);
		struct sockaddr_un u = { .sun_family = AF_UNIX };
		snprintf(u.sun_path, sizeof(u.sun_path), "%.90s/proxy.ipc", dir);
		unlink(u.sun_path);
		px->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
		assert_int_equal(bind(px->listen_fd, (struct sockaddr *) &u, sizeof(u)), 0);
		snprintf(url, urlsize, "ipc://%s", u.sun_path);
	} else {
		snprintf(px->upstream, sizeof(px->upstream), "tcp://127.0.0.1:%d", server_port);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t alen = sizeof(a);
		px->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
		assert_int_equal(bind(px->listen_fd, (struct sockaddr *) &a, sizeof(a)), 0);
		assert_int_equal(getsockname(px->listen_fd, (struct sockaddr *) &a, &alen), 0);
		snprintf(url, urlsize, "tcp://127.0.0.1:%d", ntohs(a.sin_port));
	}
	assert_int_equal(listen(px->listen_fd, 4), 0);
	assert_int_equal(pthread_create(&px->thread, NULL, proxy_main, px), 0);
}

static void
proxy_stop(struct proxy *px)
{
	pthread_join(px->thread, NULL);
	close(px->listen_fd);
	assert_false(px->failed);
}

/* capture runs three calls of the C client through a proxy and checks the
 * recorded bytes with the page's rules. */
static void
capture(int ipc)
{
	struct proxy px;
	char url[4300];
	proxy_start(&px, ipc, url, sizeof(url));
	cdx_client *c = st_client(url, 5000, 0);
	struct cdx_client_error err;
	assert_int_equal(cdx_client_health(c, &err), CDX_OK);
	const char *keys[] = { "track:5" };
	struct cdx_query q
	    = { .collection = "tracks", .keys = keys, .nkeys = 1, .k = 3, .request_id = "cap-1" };
	cdx_result_free(st_search(c, &q));
	char *json = NULL;
	assert_int_equal(cdx_client_info(c, "tracks", &json, &err), CDX_OK);
	free(json);
	cdx_client_close(c); /* closes the connection: the proxy stops */
	proxy_stop(&px);

	uint8_t hs_req[8], hs_rep[8];
	assert_int_equal(doc_bytes("handshake-req", hs_req, 8), 8);
	assert_int_equal(doc_bytes("handshake-rep", hs_rep, 8), 8);
	assert_true(px.up.len > 8 && px.down.len > 8);
	assert_memory_equal(px.up.data, hs_req, 8);
	assert_memory_equal(px.down.data, hs_rep, 8);

	struct frame up[8], down[8];
	size_t nup = decode_frames((const uint8_t *) px.up.data + 8, px.up.len - 8, ipc, up, 8);
	size_t ndown = decode_frames((const uint8_t *) px.down.data + 8, px.down.len - 8, ipc, down, 8);
	assert_int_equal(nup, 3);
	assert_int_equal(ndown, 3);
	int kinds[3] = { CANDEX__V1__REQUEST__BODY_HEALTH, CANDEX__V1__REQUEST__BODY_SEARCH,
		CANDEX__V1__REQUEST__BODY_INFO };
	for (size_t i = 0; i < 3; i++) {
		Candex__V1__Request *r = candex__v1__request__unpack(NULL, up[i].len, up[i].proto);
		assert_non_null(r);
		assert_int_equal(r->protocol_version, 1);
		assert_int_equal(r->body_case, kinds[i]);
		/* one call at a time here, so the replies come in order */
		assert_int_equal(down[i].id, up[i].id);
		if (i > 0)
			assert_int_not_equal(up[i].id, up[i - 1].id); /* a fresh id per request */
		Candex__V1__Response *rs = candex__v1__response__unpack(NULL, down[i].len, down[i].proto);
		assert_non_null(rs);
		assert_int_equal(rs->status, CANDEX__V1__STATUS__OK);
		assert_string_equal(rs->request_id, r->request_id);
		assert_int_equal((int) rs->body_case, kinds[i]); /* the oneof numbers match */
		if (i == 1) {
			assert_string_equal(r->request_id, "cap-1");
			assert_int_equal(rs->search->n_results, 1);
			assert_string_equal(rs->search->results[0]->hits[0]->key, "track:5");
		}
		candex__v1__response__free_unpacked(rs, NULL);
		candex__v1__request__free_unpacked(r, NULL);
	}
	cdx_buf_fini(&px.up);
	cdx_buf_fini(&px.down);
}

static void
test_captured_tcp(void **state)
{
	(void) state;
	capture(0);
}

static void
test_captured_ipc(void **state)
{
	(void) state;
	capture(1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status_enum_matches_err_h),
		cmocka_unit_test(test_status_table_of_the_page),
		cmocka_unit_test(test_examples_of_the_page),
		cmocka_unit_test(test_captured_tcp),
		cmocka_unit_test(test_captured_ipc),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
