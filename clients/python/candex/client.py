"""The candex client: requests and replies of proto/candex.proto over the
transport of sp.py, with timeouts, retries and reconnection as
docs/protocol.md, section 5, recommends.

A Client holds one connection, opened on first use and reopened after a
failure. Calls on one Client are serialised (a lock); use one Client per
thread to send requests in parallel.
"""

import random
import ssl
import threading
import time

from . import sp
from ._pb import pb

PROTOCOL_VERSION = 1

# Statuses a retry can fix (docs/protocol.md, section 4).
RETRYABLE = frozenset([pb.OVERLOADED, pb.UNAVAILABLE, pb.DEADLINE_EXCEEDED])


class Error(Exception):
    """A call that failed: the server's status and message, or a transport
    failure mapped to DEADLINE_EXCEEDED (no reply in time), UNAVAILABLE
    (no connection) or TLS_ERROR (a failed TLS handshake)."""

    def __init__(self, status, message, request_id=""):
        self.status = int(status)
        try:
            self.name = pb.Status.Name(self.status)
        except ValueError:
            self.name = "UNKNOWN_%d" % self.status
        self.message = message
        self.request_id = request_id
        super().__init__("%s: %s" % (self.name, message))

    @property
    def retryable(self):
        return self.status in RETRYABLE


def _flatten(vectors, dim):
    """Rows of floats (lists, tuples, a numpy array, or one flat vector)
    as (flat list, dim, rows)."""
    if hasattr(vectors, "tolist"):
        vectors = vectors.tolist()
    rows = list(vectors)
    if not rows:
        return [], dim or 0, 0
    if isinstance(rows[0], (int, float)):
        rows = [rows]
    width = dim if dim else len(rows[0])
    flat = []
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != width:
            raise ValueError("query %d has %d values, expected %d" % (i, len(row), width))
        flat.extend(float(x) for x in row)
    return flat, width, len(rows)


class Client:
    """A connection to one candex server.

    url: tcp://HOST:PORT, ipc:///PATH or tls+tcp://HOST:PORT.
    timeout: seconds per attempt (connect, send and receive).
    retries: extra attempts after OVERLOADED, UNAVAILABLE, DEADLINE_EXCEEDED,
        a timeout or a lost connection; backoff: the first pause in seconds,
        doubled after each attempt.
    max_message: the largest reply accepted, in bytes.
    tls_*: for tls+tcp://: the CA that must have signed the server's
        certificate (required unless tls_insecure), this client's
        certificate and key (mutual TLS), the name the server's certificate
        must carry (None: not checked); tls_insecure=True without a CA:
        encrypt, but do not verify who answers. A failed handshake raises
        Error TLS_ERROR, which is not retried.
    """

    def __init__(self, url, timeout=5.0, retries=0, backoff=0.02, max_message=64 << 20,
                 tls_ca_file=None, tls_cert_file=None, tls_key_file=None, tls_server_name=None,
                 tls_insecure=False):
        sp.parse_url(url)  # a bad URL fails here, not at the first call
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.url = url
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_message = int(max_message)
        self._tls = None
        self._server_name = tls_server_name
        if url.startswith("tls+tcp://"):
            # as the C library: with a CA the server's certificate must be
            # signed by it (and name tls_server_name, if given); without
            # one, only if asked for, the connection is encrypted but the
            # server unverified
            if not tls_ca_file and not tls_insecure:
                raise ValueError("%s: a tls+tcp:// client needs a CA to verify the server "
                                 "(tls_ca_file), or tls_insecure=True to skip verification" % url)
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if tls_ca_file:
                self._tls.load_verify_locations(cafile=tls_ca_file)
                self._tls.check_hostname = tls_server_name is not None
            else:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
            if tls_cert_file:
                self._tls.load_cert_chain(tls_cert_file, tls_key_file)
        self._conn = None
        self._lock = threading.Lock()
        rnd = random.SystemRandom()
        self._next_id = rnd.getrandbits(31)
        self._id_prefix = "py-%08x" % rnd.getrandbits(32)
        self._seq = 0
        self._opened = False
        self.reconnects = 0  # connections opened after the first

    def close(self):
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- calls ------------------------------------------------------------

    def search(self, collection, vectors=None, keys=None, k=10, nprobe=0, refine_factor=0.0,
               recall_target=0.0, exclude_ids=(), exclude_keys=(), model_version="",
               request_id=None, timeout_ms=0, dim=None):
        """Top-k of one query or a batch: vectors (rows of floats) or keys
        (stored items' keys). Returns the SearchResponse: results[i].hits[j]
        has id, key and score, in query order, best first."""
        if (vectors is None) == (keys is None):
            raise ValueError("give vectors or keys, not both or neither")
        req = pb.Request(protocol_version=PROTOCOL_VERSION, timeout_ms=int(timeout_ms))
        s = req.search
        s.collection = collection
        if vectors is not None:
            flat, width, _ = _flatten(vectors, dim)
            s.dim = width
            s.vectors.extend(flat)
        else:
            if isinstance(keys, str):
                keys = [keys]
            s.query_keys.extend(keys)
        s.k = int(k)
        s.nprobe = int(nprobe)
        s.refine_factor = float(refine_factor)
        s.recall_target = float(recall_target)
        s.exclude_ids.extend(int(i) for i in exclude_ids)
        s.exclude_keys.extend(exclude_keys)
        s.model_version = model_version or ""
        return self._call(req, request_id, timeout_ms, "search").search

    def info(self, collection=""):
        """The served collections (InfoResponse), or one of them."""
        req = pb.Request(protocol_version=PROTOCOL_VERSION)
        req.info.collection = collection or ""
        return self._call(req, None, 0, "info").info

    def health(self):
        """HealthResponse: serving (>= 1 collection, not stopping) and the
        number of collections."""
        req = pb.Request(protocol_version=PROTOCOL_VERSION)
        req.health.SetInParent()
        return self._call(req, None, 0, "health").health

    def reload(self, collection=""):
        """Ask an admin listener to reload; returns the ReloadResponse."""
        req = pb.Request(protocol_version=PROTOCOL_VERSION)
        req.reload.collection = collection or ""
        # loading a big index takes a while: wait longer than for a search
        return self._call(req, None, 0, "reload", min_timeout=120.0).reload

    def drop(self, collection):
        """Ask an admin listener to stop serving collection, whose CURRENT
        link is gone (a reload keeps serving it); returns the DropResponse
        (what is served after the drop)."""
        req = pb.Request(protocol_version=PROTOCOL_VERSION)
        req.drop.collection = collection
        return self._call(req, None, 0, "drop", min_timeout=120.0).drop

    # ---- the exchange -------------------------------------------------------

    def _transport_id(self):
        self._next_id = (self._next_id + 1) & 0x7FFFFFFF
        return self._next_id | sp.ID_HIGH_BIT

    def _call(self, req, request_id, timeout_ms, body, min_timeout=0.0):
        with self._lock:
            if request_id is None:
                self._seq += 1
                request_id = "%s-%d" % (self._id_prefix, self._seq)
            req.request_id = request_id
            payload = req.SerializeToString()
            # leave the server's deadline room to answer before ours fires
            wait = max(self.timeout, min_timeout, timeout_ms / 1000.0 + 0.1 if timeout_ms else 0)
            pause = self.backoff
            for attempt in range(self.retries + 1):
                try:
                    resp = self._attempt(payload, wait)
                except Error as e:
                    err = e
                else:
                    if resp.status == pb.OK:
                        if resp.WhichOneof("body") != body:
                            raise Error(pb.MALFORMED, "the server answered %s without a %s body"
                                        % (body, body), request_id)
                        return resp
                    err = Error(resp.status, resp.message or pb.Status.Name(resp.status),
                                resp.request_id)
                err.request_id = request_id
                if not err.retryable or attempt == self.retries:
                    raise err
                time.sleep(pause)
                pause *= 2

    def _attempt(self, payload, wait):
        deadline = time.monotonic() + wait
        try:
            if self._conn is None:
                if self._opened:
                    self.reconnects += 1
                self._conn = sp.Connection(self.url, wait, self._tls, self._server_name)
                self._opened = True
            tid = self._transport_id()
            self._conn.send(tid, payload, deadline)
            reply = self._conn.recv(tid, deadline, self.max_message)
        except sp.Timeout:
            # the connection stays: a late reply will be dropped by its id
            raise Error(pb.DEADLINE_EXCEEDED, "no reply from %s within %.0f ms" % (self.url, wait * 1000))
        except sp.TransportError as e:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise Error(pb.TLS_ERROR if isinstance(e, sp.TlsError) else pb.UNAVAILABLE, str(e))
        resp = pb.Response()
        try:
            resp.ParseFromString(reply)
        except Exception:  # the protobuf library's DecodeError
            raise Error(pb.MALFORMED, "malformed response from %s" % self.url)
        return resp
