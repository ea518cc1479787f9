"""Shared plumbing of the seed-API adapters (OpenCV FR cloud, Verifik, Persona).

Each adapter is a Sink over one ``Transport`` (sinks/transport.py: retries, backoff, Retry-After,
retry budget); this module only holds what all three need on top: the base URL (the documented one,
or an override from an environment variable for tests and proxies), the request wrapper that turns
"unreachable" into a run-ending TargetError, and a per-person fan-out for APIs without bulk calls.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from facecli.errors import CollectionMissing, ConfigError, ReasonCode, Status, TargetError
from facecli.sinks.base import ItemOutcome, PersonPayload, check_collection_name, invalid_id_outcome
from facecli.sinks.transport import RemoteClient, RetryPolicy, Transport, check_base_url, display_url, error_body

log = logging.getLogger("facecli.seed")

DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT = 60.0


def base_url(env_var: str, default: str, insecure: bool) -> httpx.URL:
    """``default`` (the service's documented URL) unless ``env_var`` names another base URL."""
    override = os.environ.get(env_var)
    return check_base_url(override or default, insecure)


class SeedClient(RemoteClient):
    """The part of every seed adapter that talks HTTP."""

    name = "seed"
    service = "the service"

    def __init__(self, base: httpx.URL, api_key: str | None, *, auth_header: str, auth_scheme: str | None,
                 concurrency: int | None, timeout: float | None, policy: RetryPolicy | None,
                 verify: bool | str | None, transport: httpx.BaseTransport | None = None) -> None:
        concurrency = DEFAULT_CONCURRENCY if concurrency is None else concurrency
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if concurrency < 1 or timeout <= 0:
            raise ConfigError("concurrency and timeout must be positive")
        if not api_key:
            raise ConfigError(f"{self.service} needs an API key",
                              hint="give it with --api-key, FACECLI_API_KEY, or api_key / api_key_env in the config file")
        self.base = base
        self.target = display_url(base)
        self.concurrency = concurrency
        self.http = Transport(base, api_key, timeout=timeout, policy=policy, verify=True if verify is None else verify,
                              max_connections=concurrency + 2, transport=transport, auth_header=auth_header,
                              auth_scheme=auth_scheme)

    def _auth_error(self, status: int, detail: str) -> TargetError:
        if status == 401:
            return TargetError(f"{self.service} refused the request (401 {detail}): no valid API key",
                               hint="give the key with --api-key, FACECLI_API_KEY, or api_key / api_key_env in the config file")
        return TargetError(f"{self.service} refused the API key (403 {detail}): wrong, expired or not allowed here",
                           hint="check --api-key / FACECLI_API_KEY")

    @staticmethod
    def _error_parts(resp: httpx.Response) -> tuple[str, str]:
        """(code, message) of an error response; adapters with another error shape override it."""
        return error_body(resp)

    def _fatal(self, resp: httpx.Response, what: str) -> TargetError:
        """A response that ends the run: auth problems get their own message, the rest say what failed."""
        code, message = self._error_parts(resp)
        if resp.status_code in (401, 403):
            return self._auth_error(resp.status_code, code or message)
        detail = " ".join(x for x in (code, message) if x)
        return TargetError(f"{what} failed on {self.target}: HTTP {resp.status_code}" + (f" {detail}" if detail else ""))

    def _per_person(self, persons: Sequence[PersonPayload],
                    one: Callable[[PersonPayload], ItemOutcome]) -> list[ItemOutcome]:
        """``one`` for every person, ``concurrency`` in flight; transport failures fail that person."""

        def safe(p: PersonPayload) -> ItemOutcome:
            refused = invalid_id_outcome(p.person_id)  # before any URL or body is built from it
            if refused is not None:
                return refused
            if not any(f.jpeg for f in p.faces):
                return ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_REJECTED,
                                   message="no face image to send (payload not encoded)")
            try:
                return one(p)
            except httpx.TransportError as exc:
                return ItemOutcome(p.person_id, Status.FAILED, ReasonCode.NETWORK_ERROR,
                                   message=f"{type(exc).__name__} after {self.http.policy.retries} retries")

        if self.concurrency == 1 or len(persons) <= 1:
            return [safe(p) for p in persons]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(persons)), thread_name_prefix="upload")
        try:
            return list(pool.map(safe, persons))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.http.close()


class NamedCollections:
    """For targets that give collections ids of their own: found by name (``_find_collection``),
    created on request (``_create_collection``), and the id cached for the run."""

    _collections: dict[str, str]
    target: str

    def _find_collection(self, name: str) -> str | None:
        raise NotImplementedError

    def _create_collection(self, name: str) -> str:
        raise NotImplementedError

    def ensure_collection(self, collection: str, create: bool) -> None:
        check_collection_name(collection)
        if collection in self._collections:
            return
        cid = self._find_collection(collection)
        if cid is None:
            if not create:
                raise CollectionMissing(f"collection {collection!r} does not exist on {self.target}",
                                  hint="create it with --create-collection")
            cid = self._create_collection(collection)
        self._collections[collection] = cid

    def _collection_id(self, collection: str) -> str:
        if collection not in self._collections:
            self.ensure_collection(collection, create=False)
        return self._collections[collection]
