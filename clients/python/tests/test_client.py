"""Tests of the pure-Python client against a live `candex serve` (tcp:// and
ipc://), and against small fake servers written here from docs/protocol.md
for what a real server does not do on demand (stay silent, answer late,
refuse with OVERLOADED).

Run by CTest (python_client_test) with PYTHONPATH holding clients/python and
the generated candex_pb2, and CANDEX_BIN the candex binary.
"""

import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import candex
from candex import pb

CANDEX = os.environ.get("CANDEX_BIN", "candex")
N, DIM = 3000, 16

tmp = None
vectors = []
server = None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """`candex serve` as a child process, on tcp:// and ipc:// plus an admin
    ipc:// listener."""

    def __init__(self, tag, port=None, index=None):
        self.index = index or os.path.join(tmp, "index")
        self.port = port or free_port()
        self.tcp = "tcp://127.0.0.1:%d" % self.port
        self.ipc = "ipc://%s/q-%s.ipc" % (tmp, tag)
        self.admin = "ipc://%s/admin-%s.ipc" % (tmp, tag)
        self.log = os.path.join(tmp, "serve-%s.log" % tag)
        self.proc = None

    def start(self):
        env = dict(os.environ, CANDEX_LOG_LEVEL="info")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [CANDEX, "serve", "--index-dir", self.index, "--listen", self.tcp,
                 "--listen", self.ipc, "--admin-listen", self.admin, "--threads", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(self.log) as f:
                if "SRV-READY" in f.read():
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        with open(self.log) as f:
            raise RuntimeError("candex serve did not start:\n" + f.read())

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None


def setUpModule():
    global tmp, vectors, server
    tmp = tempfile.mkdtemp(prefix="candex-py-")
    rnd = random.Random(42)
    centers = [[rnd.gauss(0, 1) for _ in range(DIM)] for _ in range(16)]
    vectors = []
    for i in range(N):
        c = centers[i % 16]
        vectors.append([c[j] + rnd.gauss(0, 0.3) for j in range(DIM)])
    with open(os.path.join(tmp, "items.fvecs"), "wb") as f:
        for v in vectors:
            f.write(struct.pack("<i%df" % DIM, DIM, *v))
    with open(os.path.join(tmp, "items.keys"), "w") as f:
        for i in range(N):
            f.write("item:%d\n" % i)
    subprocess.run([CANDEX, "build", "--quiet", "--input", os.path.join(tmp, "items.fvecs"),
                    "--keys", os.path.join(tmp, "items.keys"), "--collection", "items",
                    "--metric", "l2", "--refine", "fp16", "--no-tune", "--out", os.path.join(tmp, "index")],
                   check=True, stdout=subprocess.DEVNULL)
    server = Server("main").start()


def tearDownModule():
    if server is not None:
        server.stop()
    if tmp is not None and not os.environ.get("CANDEX_KEEP_TMP"):
        shutil.rmtree(tmp, ignore_errors=True)


def as_float32(v):
    return list(struct.unpack("<%df" % len(v), struct.pack("<%df" % len(v), *v)))


class LiveServer:
    """The tests that talk to the real server, once per transport."""

    url = None

    def client(self, **kw):
        kw.setdefault("timeout", 5.0)
        return candex.Client(getattr(server, self.url), **kw)

    def test_health_and_info(self):
        with self.client() as c:
            h = c.health()
            self.assertTrue(h.serving)
            self.assertEqual(h.collections, 1)
            info = c.info()
            self.assertTrue(info.server_version.startswith("candex "))
            self.assertEqual([x.name for x in info.collections], ["items"])
            self.assertEqual(info.collections[0].dim, DIM)
            self.assertEqual(info.collections[0].items, N)
            self.assertEqual(info.collections[0].metric, "l2")
            self.assertEqual(len(c.info("items").collections), 1)
            with self.assertRaises(candex.Error) as e:
                c.info("nope")
            self.assertEqual(e.exception.name, "NOT_FOUND")

    def test_search_vector_finds_itself(self):
        with self.client() as c:
            r = c.search("items", vectors=vectors[7], k=5)
            self.assertEqual(len(r.results), 1)
            hits = r.results[0].hits
            self.assertEqual(len(hits), 5)
            self.assertEqual((hits[0].id, hits[0].key), (7, "item:7"))
            self.assertEqual(r.metric, "l2")
            self.assertTrue(r.index_version.startswith("v"))
            scores = [h.score for h in hits]
            self.assertEqual(scores, sorted(scores))  # l2: lower is better

    def test_same_answer_as_candex_query(self):
        """The Python client and the C client library (candex query) get the
        same hits for the same vector."""
        with self.client() as c:
            r = c.search("items", vectors=[vectors[123]], k=10, nprobe=8)
        text = " ".join("%.9g" % x for x in vectors[123])
        out = subprocess.run([CANDEX, "query", "--url", getattr(server, self.url), "--collection", "items",
                              "--stdin", "-k", "10", "--nprobe", "8", "--json"],
                             input=text, capture_output=True, text=True, check=True).stdout
        want = json.loads(out)
        self.assertEqual([h.id for h in r.results[0].hits], [h["id"] for h in want["results"][0]["hits"]])
        for got, exp in zip(r.results[0].hits, want["results"][0]["hits"]):
            self.assertAlmostEqual(got.score, exp["score"], delta=1e-4 * (1 + abs(exp["score"])))
        self.assertEqual(r.nprobe, want["nprobe"])

    def test_batch(self):
        rows = [vectors[i] for i in (1, 50, 900, 1500, 2999)]
        with self.client() as c:
            r = c.search("items", vectors=rows, k=3)
            self.assertEqual(len(r.results), 5)
            for row, res in zip(rows, r.results):
                single = c.search("items", vectors=row, k=3)
                self.assertEqual([h.id for h in res.hits], [h.id for h in single.results[0].hits])
            self.assertEqual([res.hits[0].key for res in r.results],
                             ["item:1", "item:50", "item:900", "item:1500", "item:2999"])

    def test_keys_and_every_option(self):
        with self.client() as c:
            r = c.search("items", keys=["item:10", "item:11"], k=4)
            self.assertEqual([res.hits[0].key for res in r.results], ["item:10", "item:11"])
            ids = [h.id for h in r.results[0].hits]
            r2 = c.search("items", keys="item:10", k=4, exclude_ids=[ids[0]], exclude_keys=["item:%d" % ids[1]])
            got = [h.id for h in r2.results[0].hits]
            self.assertEqual(len(got), 4)
            self.assertNotIn(ids[0], got)
            self.assertNotIn(ids[1], got)
            r3 = c.search("items", keys="item:10", k=4, nprobe=3, refine_factor=2, request_id="py-opts",
                          timeout_ms=2000)
            self.assertEqual(r3.nprobe, 3)
            self.assertAlmostEqual(r3.refine_factor, 2.0)
            r4 = c.search("items", keys="item:10", k=4, recall_target=0.5)
            self.assertEqual(len(r4.results[0].hits), 4)
            with self.assertRaises(candex.Error) as e:
                c.search("items", keys="item:10", k=4, model_version="other-model", request_id="py-mv")
            self.assertEqual(e.exception.name, "MODEL_MISMATCH")
            self.assertEqual(e.exception.request_id, "py-mv")
            self.assertFalse(e.exception.retryable)

    def test_errors(self):
        with self.client() as c:
            cases = [
                (dict(collection="nope", keys=["a"], k=1), "NOT_FOUND", "unknown collection"),
                (dict(collection="items", vectors=[[1.0, 2.0]], k=1), "DIMENSION_MISMATCH", "dimension 2"),
                (dict(collection="items", keys=["item:1"], k=0), "INVALID_ARGUMENT", "k must be"),
                (dict(collection="items", keys=["no-such-key"], k=1), "NOT_FOUND", "no-such-key"),
                (dict(collection="items", vectors=[[float("nan")] * DIM], k=1), "NON_FINITE", "NaN"),
                (dict(collection="items", keys=["item:1"], k=100000), "LIMIT_EXCEEDED", "max-k"),
            ]
            for kwargs, name, text in cases:
                collection = kwargs.pop("collection")
                with self.assertRaises(candex.Error) as e:
                    c.search(collection, **kwargs)
                self.assertEqual(e.exception.name, name)
                self.assertIn(text, e.exception.message)
            # the connection is still good after errors
            self.assertTrue(c.health().serving)

    def test_reload_only_on_admin(self):
        with self.client() as c:
            with self.assertRaises(candex.Error) as e:
                c.reload()
            self.assertEqual(e.exception.name, "PERMISSION_DENIED")
        with candex.Client(server.admin, timeout=30) as admin:
            r = admin.reload()
            self.assertEqual([x.name for x in r.loaded], ["items"])


class Drop(unittest.TestCase):
    def test_drop(self):
        """An admin drop retires a collection whose CURRENT link is gone, and
        only then; on its own copy of the index."""
        index = os.path.join(tmp, "index-drop")
        shutil.copytree(os.path.join(tmp, "index"), index, symlinks=True)
        srv = Server("drop", index=index).start()
        try:
            with candex.Client(srv.tcp, timeout=5.0) as c:
                with self.assertRaises(candex.Error) as e:
                    c.drop("items")
                self.assertEqual(e.exception.name, "PERMISSION_DENIED")
            with candex.Client(srv.admin, timeout=30) as admin:
                with self.assertRaises(candex.Error) as e:
                    admin.drop("items")  # CURRENT is still there
                self.assertEqual(e.exception.name, "INVALID_ARGUMENT")
                self.assertIn("CURRENT", e.exception.message)
                with self.assertRaises(candex.Error) as e:
                    admin.drop("nope")
                self.assertEqual(e.exception.name, "NOT_FOUND")
                os.unlink(os.path.join(index, "items", "CURRENT"))
                self.assertEqual(list(admin.drop("items").serving), [])
                with self.assertRaises(candex.Error) as e:
                    admin.search("items", keys="item:1", k=1)
                self.assertEqual(e.exception.name, "NOT_FOUND")
        finally:
            srv.stop()


class TcpTest(LiveServer, unittest.TestCase):
    url = "tcp"


class IpcTest(LiveServer, unittest.TestCase):
    url = "ipc"


class Reconnect(unittest.TestCase):
    def test_server_restart(self):
        """A client keeps working across a server restart on the same
        addresses: the lost connection is reopened."""
        s = Server("restart").start()
        try:
            for url in (s.tcp, s.ipc):
                with candex.Client(url, timeout=5.0, retries=50, backoff=0.05) as c:
                    self.assertEqual(c.search("items", keys="item:3", k=1).results[0].hits[0].key, "item:3")
                    s.stop()
                    with self.assertRaises(candex.Error) as e:
                        candex.Client(url, timeout=0.5).health()
                    self.assertEqual(e.exception.name, "UNAVAILABLE")
                    s.start()
                    # the old connection is dead: the call reconnects (retrying
                    # while the server loads)
                    self.assertEqual(c.search("items", keys="item:4", k=1).results[0].hits[0].key, "item:4")
                    self.assertGreaterEqual(c.reconnects, 1)
        finally:
            s.stop()

    def test_no_server(self):
        path = os.path.join(tmp, "nobody.ipc")
        t0 = time.monotonic()
        with self.assertRaises(candex.Error) as e:
            candex.Client("ipc://" + path, timeout=1.0, retries=2, backoff=0.01).health()
        self.assertEqual(e.exception.name, "UNAVAILABLE")
        self.assertTrue(e.exception.retryable)
        self.assertLess(time.monotonic() - t0, 5)


class Tls(unittest.TestCase):
    def test_mutual_tls(self):
        """tls+tcp:// with a client certificate, as client_test does for C."""
        if shutil.which("openssl") is None:
            self.skipTest("no openssl CLI")
        d = os.path.join(tmp, "tls")
        os.makedirs(d, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)
        run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=candex-py-ca")
        with open(os.path.join(d, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for name in ("server", "client"):
            run("openssl", "req", *ec, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
            run("openssl", "x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "2",
                *(["-extfile", "san.ext"] if name == "server" else []))
        port = free_port()
        url = "tls+tcp://127.0.0.1:%d" % port
        log = open(os.path.join(d, "serve.log"), "w")
        proc = subprocess.Popen([CANDEX, "serve", "--index-dir", os.path.join(tmp, "index"), "--listen", url,
                                 "--threads", "1", "--tls-cert", os.path.join(d, "server.pem"),
                                 "--tls-key", os.path.join(d, "server.key"), "--tls-ca", os.path.join(d, "ca.pem")],
                                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, CANDEX_LOG_LEVEL="info"))
        try:
            deadline = time.monotonic() + 60
            def ready():
                with open(log.name) as f:
                    return "SRV-READY" in f.read()

            while not ready():
                self.assertIsNone(proc.poll())
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.02)
            good = dict(tls_ca_file=os.path.join(d, "ca.pem"), tls_cert_file=os.path.join(d, "client.pem"),
                        tls_key_file=os.path.join(d, "client.key"), tls_server_name="localhost")
            with candex.Client(url, timeout=5.0, **good) as c:
                self.assertEqual(c.search("items", keys="item:9", k=1).results[0].hits[0].key, "item:9")
            # the refusals are TLS_ERROR, as the C library reports them, and
            # are not retried
            refusals = [
                # without a client certificate the server refuses
                dict(tls_ca_file=good["tls_ca_file"]),
                # a server certificate that does not name the host is refused
                dict(good, tls_server_name="elsewhere"),
                # a CA that did not sign the server's certificate
                dict(good, tls_ca_file=os.path.join(d, "client.pem")),
            ]
            for opts in refusals:
                with candex.Client(url, timeout=10.0, retries=3, backoff=0.001, **opts) as c:
                    with self.assertRaises(candex.Error) as e:
                        c.health()
                    self.assertEqual(e.exception.name, "TLS_ERROR", (opts, str(e.exception)))
                    self.assertFalse(e.exception.retryable)
                    self.assertEqual(c.reconnects, 0)  # one attempt: not retried
            # no CA: refused unless tls_insecure, which then encrypts without verifying
            with self.assertRaises(ValueError):
                candex.Client(url)
            with candex.Client(url, timeout=5.0, tls_insecure=True, tls_cert_file=good["tls_cert_file"],
                               tls_key_file=good["tls_key_file"]) as c:
                self.assertTrue(c.health().serving)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()


# ---- fake servers, from docs/protocol.md --------------------------------------

HANDSHAKE_REP = b"\x00SP\x00\x00\x31\x00\x00"


class FakeServer:
    """A REP peer on tcp:// that answers with behave(request id, Request,
    connection) -> list of (id, Response) frames to send, or None to say
    nothing."""

    def __init__(self, behave):
        self.behave = behave
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = "tcp://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.requests = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def recv_exact(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def serve(self, conn):
        try:
            conn.sendall(HANDSHAKE_REP)
            assert self.recv_exact(conn, 8) == b"\x00SP\x00\x00\x30\x00\x00"
            while True:
                (length,) = struct.unpack(">Q", self.recv_exact(conn, 8))
                (rid,) = struct.unpack(">I", self.recv_exact(conn, 4))
                req = pb.Request()
                req.ParseFromString(self.recv_exact(conn, length - 4))
                self.requests.append((rid, req))
                for out_id, resp in self.behave(rid, req) or []:
                    body = resp.SerializeToString()
                    conn.sendall(struct.pack(">QI", 4 + len(body), out_id) + body)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def health_reply(req, serving=True):
    resp = pb.Response(request_id=req.request_id)
    resp.health.serving = serving
    resp.health.collections = 1
    return resp


class Protocol(unittest.TestCase):
    def test_request_framing(self):
        fake = FakeServer(lambda rid, req: [(rid, health_reply(req))])
        with candex.Client(fake.url, timeout=2.0) as c:
            c.health()
            c.health()
        fake.close()
        (id1, r1), (id2, r2) = fake.requests
        self.assertTrue(id1 & 0x80000000 and id2 & 0x80000000)
        self.assertNotEqual(id1, id2)
        self.assertEqual(r1.protocol_version, 1)
        self.assertEqual(r1.WhichOneof("body"), "health")
        self.assertNotEqual(r1.request_id, r2.request_id)

    def test_timeout_and_late_reply(self):
        """No answer: DEADLINE_EXCEEDED after the timeout; the late answer
        to that attempt, arriving first on the next call, is dropped by its
        request id."""
        held = []

        def behave(rid, req):
            if not held:
                held.append((rid, req))
                return None  # silence
            late_id, late_req = held[0]
            stale = health_reply(late_req, serving=False)
            return [(late_id, stale), (rid, health_reply(req))]

        fake = FakeServer(behave)
        with candex.Client(fake.url, timeout=0.3) as c:
            t0 = time.monotonic()
            with self.assertRaises(candex.Error) as e:
                c.health()
            took = time.monotonic() - t0
            self.assertEqual(e.exception.name, "DEADLINE_EXCEEDED")
            self.assertGreaterEqual(took, 0.29)
            self.assertLess(took, 2.0)
            self.assertTrue(c.health().serving)  # not the stale "false"
        fake.close()

    def test_retries_with_backoff(self):
        def overloaded_twice(rid, req):
            if len(fake.requests) <= 2:
                return [(rid, pb.Response(status=pb.OVERLOADED, message="busy", request_id=req.request_id))]
            return [(rid, health_reply(req))]

        fake = FakeServer(overloaded_twice)
        with candex.Client(fake.url, timeout=2.0, retries=1, backoff=0.01) as c:
            with self.assertRaises(candex.Error) as e:
                c.health()
            self.assertEqual(e.exception.name, "OVERLOADED")
        self.assertEqual(len(fake.requests), 2)
        with candex.Client(fake.url, timeout=2.0, retries=2, backoff=0.01) as c:
            self.assertTrue(c.health().serving)
        # every attempt of a call carries the same application request id
        self.assertEqual(len({req.request_id for _, req in fake.requests[:2]}), 1)
        fake.close()

    def test_unknown_status_is_an_error(self):
        fake = FakeServer(lambda rid, req: [(rid, pb.Response(status=77, message="new", request_id=req.request_id))])
        with candex.Client(fake.url, timeout=2.0, retries=3) as c:
            with self.assertRaises(candex.Error) as e:
                c.health()
            self.assertEqual(e.exception.status, 77)
            self.assertFalse(e.exception.retryable)
        self.assertEqual(len(fake.requests), 1)
        fake.close()

    def test_bad_urls(self):
        for url in ("http://x:1", "tcp://nohost", "tcp://:12", "ipc://"):
            with self.assertRaises(ValueError):
                candex.Client(url)


if __name__ == "__main__":
    unittest.main()
