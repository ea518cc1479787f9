"""Real HTTP servers for the remote-mode tests: uvicorn in a thread on 127.0.0.1, a fault-injecting
ASGI middleware (500s, 429 + Retry-After, 412 for chosen persons) and a TCP proxy that drops
connections after the server has answered. Everything is bounded: no test can hang on these."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from typing import Any

import uvicorn


class LiveServer:
    """Serve an ASGI app on 127.0.0.1:<free port> from a daemon thread."""

    def __init__(self, app: Any) -> None:
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets (else a 40 ms Nagle stall)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class Faults:
    """ASGI middleware: fail a share of matching requests before the app sees them.

    ``rate_500`` / ``rate_429`` are probabilities per request; ``reject_ids`` makes any
    PUT /persons (or /person) whose body names one of them answer 412 as a whole. Counts what it did.
    """

    def __init__(self, app: Any, seed: int = 7) -> None:
        self.app = app
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.reset()

    def reset(self, rate_500: float = 0.0, rate_429: float = 0.0, retry_after: str = "0.05",
              reject_ids: set[str] | None = None, methods: tuple[str, ...] = ("PUT",)) -> None:
        self.rate_500, self.rate_429, self.retry_after = rate_500, rate_429, retry_after
        self.reject_ids = set(reject_ids or ())
        self.methods = methods
        self.counts: Counter = Counter()
        self.seen_ids: Counter = Counter()  # person_ids in requests that reached the app
        self.inflight = self.max_inflight = 0

    async def _send_json(self, send: Any, status: int, body: dict, headers: list | None = None) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                    + (headers or [])})
        await send({"type": "http.response.body", "body": data})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:  # read (drain) the whole body first, as a real server would
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        with self.lock:
            roll = self.rng.random()
        if roll < self.rate_500:
            self.counts["500"] += 1
            await self._send_json(send, 500, {"code": "ERR_DATABASE_ERROR", "message": "injected: please retry"})
            return
        if roll < self.rate_500 + self.rate_429:
            self.counts["429"] += 1
            await self._send_json(send, 429, {"code": "ERR_TOO_MANY_REQUESTS", "message": "injected: slow down"},
                                  [(b"retry-after", self.retry_after.encode())])
            return
        ids = []
        try:
            data = json.loads(body)
            ids = [p.get("person_id") for p in data.get("persons", [])] if "persons" in data else [data.get("person_id")]
        except (ValueError, AttributeError):
            pass
        if self.reject_ids & set(ids):
            self.counts["412"] += 1
            bad = sorted(self.reject_ids & set(ids))[0]
            await self._send_json(send, 412, {"code": "ERR_UNPROCESSABLE_CONTENT",
                                              "message": f"injected: person {bad} is not acceptable"})
            return
        with self.lock:
            self.seen_ids.update(i for i in ids if i)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.app(scope, replay, send)
        finally:
            with self.lock:
                self.inflight -= 1


class DropProxy:
    """TCP proxy to 127.0.0.1:``upstream``: with probability ``rate`` per request, forwards the request
    but closes the client's connection when the answer starts (the server did the work; the client
    never hears). Threads, sockets and waits are all bounded."""

    def __init__(self, upstream: int, rate: float, seed: int = 11) -> None:
        self.upstream, self.rate = upstream, rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.dropped = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DropProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
        except OSError:
            client.close()
            return
        state = {"phase": "request", "doomed": False}
        mu = threading.Lock()

        def close_both() -> None:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        def up() -> None:  # client -> server
            while not self.stopping.is_set():
                try:
                    data = client.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                with mu:
                    if state["phase"] == "response":  # a new request on a kept-alive connection
                        state["phase"] = "request"
                        state["doomed"] = False
                    if not state["doomed"] and state["phase"] == "request" and data[:4] in (b"PUT ", b"POST"):
                        with self.lock:
                            state["doomed"] = self.rng.random() < self.rate
                try:
                    server.sendall(data)
                except OSError:
                    break
            close_both()

        def down() -> None:  # server -> client
            while not self.stopping.is_set():
                try:
                    data = server.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                with mu:
                    state["phase"] = "response"
                    if state["doomed"]:
                        with self.lock:
                            self.dropped += 1
                        close_both()
                        return
                try:
                    client.sendall(data)
                except OSError:
                    break
            close_both()

        client.settimeout(60)
        server.settimeout(60)
        threading.Thread(target=up, daemon=True).start()
        down()
