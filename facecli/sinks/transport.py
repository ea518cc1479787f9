"""HTTP for remote targets: one httpx client per sink, with timeouts, retries and a retry budget.

Retries (tenacity): connect errors, timeouts, dropped connections, and the statuses a server uses
to say "later" (429, 500, 502, 503, 504). Waits follow full-jitter exponential backoff
(``uniform(0, min(max_wait, initial * 2**n))``) unless the server sends ``Retry-After``, which is
then obeyed (a Retry-After longer than ``max_retry_after_s`` ends the retries instead of
hammering the server early). A run-wide *retry budget* (a token bucket: each retry spends one
token, each success earns back ``budget_refill``) stops retry storms against a server that is
down: once it is spent, errors surface at once. ``Transport.retries`` counts every retry made,
for the run summary.

The API key is sent as the ``x-api-key`` header and nowhere else: it never appears in a URL,
an exception message or a log line made here.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from facecli import __version__
from facecli.errors import ConfigError

log = logging.getLogger("facecli.transport")

#: Statuses that mean "try again later" (the OpenCV FR Server documents 500 as "please retry").
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: Transport failures worth retrying: the request may not have reached the server, or its
#: answer was lost. Upserts are idempotent by person_id, so re-sending a batch is safe.
RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx.NetworkError,
                                                  httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one client tries. Defaults suit a bulk run against a busy server."""

    retries: int = 4  # per request, after the first attempt
    initial_s: float = 0.5  # first full-jitter window
    max_wait_s: float = 30.0  # cap on one computed wait
    max_retry_after_s: float = 120.0  # a longer Retry-After ends the retries
    budget: float = 100.0  # retries the whole client may spend ...
    budget_refill: float = 0.1  # ... plus this much per successful request


class RetryBudget:
    """Thread-safe token bucket shared by every request of one client."""

    def __init__(self, tokens: float, refill: float) -> None:
        self.capacity = self.tokens = float(tokens)
        self.refill = refill
        self._mu = threading.Lock()

    def spend(self) -> bool:
        with self._mu:
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False

    def earn(self) -> None:
        with self._mu:
            self.tokens = min(self.capacity, self.tokens + self.refill)


class RetryableStatus(Exception):
    """A response whose status says "later"; carries it so the last one can be returned."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after = parse_retry_after(response.headers.get("retry-after"))
        if self.retry_after is None and response.status_code == 429:  # IETF RateLimit fields (Persona)
            self.retry_after = parse_retry_after(response.headers.get("ratelimit-reset"))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds (fractions tolerated) or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, insecure: bool = False) -> httpx.URL:
    """Validate a server URL: http(s), a host, no credentials or query; plain http only to loopback
    unless ``insecure`` (the API key would travel in clear text)."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError(f"invalid server URL: {exc}") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise ConfigError(f"invalid server URL {url!r}: expected http(s)://HOST[:PORT][/PATH]")
    if u.userinfo:
        raise ConfigError("credentials in the server URL are not allowed",
                          hint="give the API key with --api-key or FACECLI_API_KEY")
    if u.query or u.fragment:
        raise ConfigError(f"the server URL must not have a query or fragment: {u.copy_with(query=None, fragment=None)}")
    if u.scheme == "http" and not is_loopback(u.host) and not insecure:
        raise ConfigError(
            f"refusing plain http:// to {u.host}: the API key and the face images would travel unencrypted",
            hint="use https://, or pass --insecure if this network is trusted",
        )
    return u


def display_url(u: httpx.URL) -> str:
    """The URL as it may be printed and reported (never credentials; there are none by then)."""
    return str(u).rstrip("/")


class Transport:
    """An httpx client with the retry loop around every request."""

    def __init__(
        self,
        base_url: httpx.URL | str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        policy: RetryPolicy | None = None,
        verify: bool | str = True,
        max_connections: int = 8,
        transport: httpx.BaseTransport | None = None,
        auth_header: str = "x-api-key",
        auth_scheme: str | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.budget = RetryBudget(self.policy.budget, self.policy.budget_refill)
        self._retries = 0
        self._mu = threading.Lock()
        headers = {"user-agent": f"facecli/{__version__}", "accept": "application/json"}
        if api_key:  # x-api-key by default; e.g. auth_header="authorization", auth_scheme="Bearer"
            headers[auth_header] = f"{auth_scheme} {api_key}" if auth_scheme else api_key
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        if transport is None:  # TCP_NODELAY: no Nagle stall between a request's header and body writes
            transport = httpx.HTTPTransport(verify=verify, limits=limits,
                                            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.client = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            follow_redirects=False,  # a redirect could carry the key to another host
        )
        self._wait_jitter = wait_random_exponential(multiplier=self.policy.initial_s, max=self.policy.max_wait_s)

    @property
    def retries(self) -> int:
        return self._retries

    # -- the retry loop ------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableStatus) and exc.retry_after is not None:
            return exc.retry_after
        return self._wait_jitter(state)

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number > self.policy.retries:
            return True
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableStatus) and exc.retry_after is not None \
                and exc.retry_after > self.policy.max_retry_after_s:
            return True  # the server asks for a long pause: give up now rather than ignore it
        return not self.budget.spend()

    def _before_sleep(self, state: RetryCallState) -> None:
        with self._mu:
            self._retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info("retry %d after %s (waiting %.2fs)", state.attempt_number, _describe(exc),
                 state.next_action.sleep if state.next_action else 0.0)

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                content: bytes | None = None) -> httpx.Response:
        """Send with retries. Returns the last response (possibly a 429/5xx after the retries);
        raises the last ``httpx.TransportError`` when the server could not be reached or answered.
        ``content`` (a prebuilt body, e.g. multipart) and extra ``headers`` (e.g. its content-type,
        Idempotency-Key) are sent unchanged on every attempt."""
        headers = dict(headers) if headers else None
        if json_body is not None:
            content = encode_json(json_body)
            headers = (headers or {}) | {"content-type": "application/json"}

        def once() -> httpx.Response:
            resp = self.client.request(method, path, content=content, headers=headers, params=params)
            if resp.status_code in RETRY_STATUSES:
                resp.read()
                raise RetryableStatus(resp)
            return resp

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, (RetryableStatus, *RETRY_EXCEPTIONS))),
            stop=self._stop,
            wait=self._wait,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            resp = retrying(once)
        except RetryableStatus as exc:
            return exc.response
        self.budget.earn()
        return resp

    def close(self) -> None:
        self.client.close()


class RemoteClient:
    """What every remote sink shares on top of its ``Transport``: the retry counter the run summary
    reports, and a request wrapper that turns "unreachable after retries" into a run-ending error."""

    http: Transport
    target: str

    @property
    def retries(self) -> int:
        return self.http.retries

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        from facecli.errors import TargetError

        try:
            return self.http.request(method, path, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TargetError(f"cannot reach {self.target} ({type(exc).__name__})",
                              hint="is the URL right and the server up? (retried with backoff)") from None


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "?"
    if isinstance(exc, RetryableStatus):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


#: What a hostile or broken answer can raise while parsed: not JSON, not UTF-8, or nested deeper
#: than the parser's recursion limit (RecursionError).
_BAD_JSON = (ValueError, UnicodeDecodeError, RecursionError)


def json_or_none(resp: httpx.Response) -> Any:
    """The answer's JSON, or None when it is not (readable) JSON."""
    try:
        return resp.json()
    except _BAD_JSON:
        return None


def error_body(resp: httpx.Response) -> tuple[str, str]:
    """(code, message) of an error response; tolerant of non-JSON bodies (proxies, gateways)."""
    try:
        data = resp.json()
    except _BAD_JSON:
        text = resp.text.strip().replace("\n", " ")
        return "", text[:200]
    if isinstance(data, dict):
        code = data.get("code") or data.get("error") or ""
        message = data.get("message") or data.get("detail") or ""
        return str(code), message if isinstance(message, str) else json.dumps(message)[:300]
    return "", str(data)[:200]
