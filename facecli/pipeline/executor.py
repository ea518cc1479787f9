"""Where the check stage runs (decode -> detect -> gate -> align -> embed): local threads or Ray Data;
and ``--shard I/N``, the split of a run by person_id for jobs that run side by side without Ray.

The rest of a run stays on the driver whatever the executor: per-person checks, the ledger, batches
and the sink see the same ``ImageCheck`` stream, in source order, from either executor.

- ``local`` (default): :meth:`FaceChecker.check_paths` in this process (decode threads overlapped
  with onnxruntime), fed lazily, so results stream out as photos are checked.
- ``ray``: a Ray Data pipeline, ``from_items(paths) -> map_batches(_CheckActor)`` over a fixed pool of
  actors; each actor loads the two ONNX sessions once (``FaceChecker.open``) with onnxruntime, decode
  and OpenCV threads set to the CPUs it reserves, so actors never oversubscribe a node's cores.
  Workers read the photos themselves from the paths the driver lists: the paths (and the models
  dir) must resolve on every node, i.e. shared storage mounted at the same place. Results stream
  back in order (``iter_batches`` with ``preserve_order``), each ``ImageCheck`` pickled whole
  (embedding as its float32 array, payload JPEG as bytes): the driver gets exactly what the local
  executor would have produced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from facecli.errors import ConfigError
from facecli.pipeline.check import CheckConfig, FaceChecker, ImageCheck
from facecli.sources.spec import Discovery

if TYPE_CHECKING:
    from facecli.pipeline.enroll import CheckedPerson

EXECUTORS = ("local", "ray")
RAY_ADDRESS_ENV = "RAY_ADDRESS"
RAY_EXTRA_HINT = "install the extra: pip install 'facecli[ray]'"


class Executor(Protocol):
    """Checks photos; results come out in input order."""

    name: str
    #: Whether cached check results (the run ledger) are used: only where the driver can merge them
    #: into the stream without restarting the work (local; a Ray pipeline is planned once per run).
    reads_cache: bool

    def check(self, paths: Iterable[str]) -> Iterator[ImageCheck]: ...
    def close(self) -> None: ...


class LocalExecutor:
    name = "local"
    reads_cache = True

    def __init__(self, checker: FaceChecker) -> None:
        self.checker = checker

    def check(self, paths: Iterable[str]) -> Iterator[ImageCheck]:
        return self.checker.check_paths(paths)

    def close(self) -> None:
        pass


# -- the stream of persons through an executor ----------------------------------------------------

_FRESH = object()  # an entry whose result comes from the executor


def check_stream(persons: Iterable[CheckedPerson], executor: Executor,
                 lookup: Callable[[str], ImageCheck | None] | None = None,
                 store: Callable[[ImageCheck], None] | None = None) -> Iterator[tuple[CheckedPerson, list[ImageCheck]]]:
    """Each person with the checks of its photos (in order), as soon as its last photo is checked.

    ``persons`` is read lazily, as far ahead as the executor's window. ``lookup`` returns a cached
    check (or None), ``store`` keeps a fresh one. A cached photo ends the executor's current
    segment (the photos before it are finished first), so cached results, which carry their payload,
    are never queued behind the executor: what waits is bounded by the executor's window.
    """
    flat = ((cp, img) for cp in persons for img in (cp.spec.images or [None]))
    order: deque[tuple[CheckedPerson, Any]] = deque()  # entries pulled, in input order
    ended = False
    cur: CheckedPerson | None = None
    checks: list[ImageCheck] = []

    def segment() -> Iterator[str]:
        nonlocal ended
        for cp, img in flat:
            hit = lookup(str(img)) if img is not None and lookup is not None else None
            order.append((cp, None if img is None else _FRESH if hit is None else hit))
            if hit is not None:
                return  # finish the segment before this cached result
            if img is not None:
                yield str(img)
        ended = True

    def take(cp: CheckedPerson, check: ImageCheck | None) -> tuple[CheckedPerson, list[ImageCheck]] | None:
        nonlocal cur, checks
        if cp is not cur:
            cur, checks = cp, []
        if check is not None:
            checks.append(check)
        if len(checks) < len(cp.spec.images):
            return None
        done, cur, checks = (cp, checks), None, []
        return done

    while True:
        for result in executor.check(segment()):
            if store is not None:
                store(result)
            while True:
                cp, hit = order.popleft()
                if (done := take(cp, result if hit is _FRESH else hit)) is not None:
                    yield done
                if hit is _FRESH:
                    break
        while order:  # the cached result (or photo-less persons) that ended the segment
            cp, hit = order.popleft()
            if hit is _FRESH:
                raise RuntimeError(f"the executor returned no result for a photo of {cp.spec.person_id}")
            if (done := take(cp, hit)) is not None:
                yield done
        if ended:
            return


# -- Ray Data ----------------------------------------------------------------------------------------

def _actor_config(config: CheckConfig, cpus: int) -> CheckConfig:
    """One actor's settings: every thread pool sized to the CPUs the actor reserves."""
    return replace(config, threads=cpus, decode_workers=cpus, keep_images=False)


class _CheckActor:
    """A Ray Data actor: loads the models once, then checks batches of paths."""

    def __init__(self, config: CheckConfig, cpus: int) -> None:
        import cv2

        cv2.setNumThreads(cpus)
        self.checker = FaceChecker.open(_actor_config(config, cpus))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        checks = list(self.checker.check_paths([str(p) for p in batch["path"]]))
        wire = np.empty(len(checks), dtype=object)
        wire[:] = [pickle.dumps(c, protocol=5) for c in checks]
        return {"i": np.asarray(batch["i"], dtype=np.int64), "check": wire}


class RayExecutor:
    """The check stage on Ray Data (``pip install 'facecli[ray]'``).

    ``address``: a running cluster (``ray://host:10001``, ``auto``) or None for ``RAY_ADDRESS``, else
    a local Ray on this machine's cores. ``cpus_per_actor``: the threads each actor runs (its
    onnxruntime, decode and OpenCV pools); ``actors``: the pool size (default: the cluster's CPUs
    divided by ``cpus_per_actor``). A Ray started elsewhere in the process (``ray.init(...)``) is used
    as it is.
    """

    name = "ray"
    reads_cache = False

    def __init__(self, config: CheckConfig, address: str | None = None, cpus_per_actor: int = 1,
                 actors: int | None = None, batch_size: int = 16) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray, which is not installed", hint=RAY_EXTRA_HINT) from None
        self.ray = ray
        # the workers start elsewhere: every path they get is absolute (as the driver sees it)
        self.config = replace(config, **{k: Path(v).absolute() for k in ("models_dir", "detector_path", "recognizer_path")
                                         if (v := getattr(config, k)) is not None})
        self.cpus_per_actor = max(1, int(cpus_per_actor))
        self.batch_size = max(1, int(batch_size))
        self._started = False
        if not ray.is_initialized():
            address = address or os.environ.get(RAY_ADDRESS_ENV) or None
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}",
                                  hint="check --ray-address / RAY_ADDRESS, or leave both unset for a local Ray") from None
            self._started = True
        self.actors = actors or max(1, self._cluster_cpus() // self.cpus_per_actor)

    def _cluster_cpus(self, wait: float = 10.0) -> int:
        """The cluster's CPUs (a node that has just started may not have reported them yet)."""
        deadline = time.monotonic() + wait
        while True:
            cpus = int(self.ray.cluster_resources().get("CPU", 0))
            if cpus or time.monotonic() > deadline:
                return max(cpus, 1)
            time.sleep(0.2)

    def check(self, paths: Iterable[str]) -> Iterator[ImageCheck]:
        given = [str(p) for p in paths]  # results carry the path as given, as the local executor's do
        items = [{"i": n, "path": os.path.abspath(p)} for n, p in enumerate(given)]
        if not items:
            return
        from ray.data import ActorPoolStrategy, DataContext, from_items

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # facecli's own progress and summary speak
        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        rows = max(1, min(self.batch_size, -(-len(items) // self.actors)))  # a few photos still reach every actor
        blocks = max(1, min(-(-len(items) // rows), 4096))
        ds = from_items(items, override_num_blocks=blocks).map_batches(
            _CheckActor, fn_constructor_kwargs={"config": self.config, "cpus": self.cpus_per_actor},
            batch_size=rows, batch_format="numpy", num_cpus=self.cpus_per_actor,
            compute=ActorPoolStrategy(size=self.actors), udf_modifying_row_count=False)
        held: dict[int, ImageCheck] = {}  # results that arrived ahead of their turn (none with preserve_order)
        want = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, blob in zip(batch["i"], batch["check"]):
                check = held[int(i)] = pickle.loads(blob)
                n = int(i)
                if check.path != given[n]:  # e.g. "no such file: PATH" names the path as given
                    check.message = check.message.replace(check.path, given[n])
                    check.path = given[n]
            while want in held:
                yield held.pop(want)
                want += 1
        if want != len(items):  # never hand on a stream with holes: the persons would be misassembled
            raise RuntimeError(f"the Ray pipeline returned {want} of {len(items)} results")

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def open_executor(name: str, checker: FaceChecker, ray_address: str | None = None, **ray_options: Any) -> Executor:
    if name == "local":
        return LocalExecutor(checker)
    if name == "ray":
        return RayExecutor(checker.config, ray_address, **ray_options)
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")


# -- --shard I/N ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count): the persons whose id hashes to it.

    The hash is sha256 of the UTF-8 person_id, read as a big integer, modulo ``count``: the same on
    every machine, Python version and run (Python's ``hash()`` is salted per process)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            i, n = (int(x) for x in text.strip().split("/"))
        except ValueError:
            raise ConfigError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"--shard {text}: need N >= 1 and 0 <= I < N (shards are numbered from 0)")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, person_id: str | None) -> bool:
        """Problems without a person (an unreadable folder, a row without an id) go to shard 0."""
        if person_id is None:
            return self.index == 0
        return shard_of(person_id, self.count) == self.index

    def select(self, discovery: Discovery) -> Discovery:
        return Discovery([p for p in discovery.persons if self.owns(p.person_id)],
                         [p for p in discovery.problems if self.owns(p.person_id)],
                         discovery.ignored if self.index == 0 else [])

    def journal_path(self, path: Path | None = None) -> Path:
        """The shard's own ledger beside ``path`` (default: the default ledger):
        ``journal.db`` -> ``journal.shard-0-of-4.db``."""
        from facecli.pipeline.journal import default_journal_path

        path = path or default_journal_path()
        return path.with_name(f"{path.stem}.shard-{self.index}-of-{self.count}{path.suffix}")


def shard_of(person_id: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(person_id.encode("utf-8")).digest(), "big") % count
