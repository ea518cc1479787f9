"""image -> ImageCheck: decode, detect, the one-face gate, align and embed, for many images fast.

Why the shape: decoding (libjpeg, in threads that release the GIL) overlaps with inference, and
accepted faces are embedded in batches because the recognizer's batch dimension is dynamic and a
batch of 16 costs far less than 16 single calls. Results still come out in input order.
"""

from __future__ import annotations

import io
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image

from facecli.errors import ConfigError, ReasonCode, Status, status_for
from facecli.imaging.decode import DecodedImage, DecodeFailure, DecodeLimits, decode_image
from facecli.imaging.encode import PayloadSpec, payload_jpeg
from facecli.imaging.phash import phash
from facecli.vision.align import align_face_scaled
from facecli.vision.detect import Detector, Face
from facecli.vision.embed import Recognizer
from facecli.vision.models import DEFAULT_DETECTOR, DEFAULT_RECOGNIZER, resolve_models
from facecli.vision.quality import GateResult, Thresholds, crop_measurements, explain, gate_crop, gate_faces
from facecli.vision.runtime import default_threads


class MultiFace(StrEnum):
    """What to do with a photo where another face competes with the main one (``--multi-face``)."""

    REJECT = "reject"  # MULTIPLE_FACES
    LARGEST = "largest"  # keep the largest face; accepted with MULTIPLE_FACES as a warning


MULTI_FACE_MODES = tuple(m.value for m in MultiFace)


@dataclass
class CheckConfig:
    """Everything the check stage needs; the CLI builds it from flags, env and config."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    models_dir: str | Path | None = None
    detector_path: str | Path | None = None
    recognizer_path: str | Path | None = None
    threads: int | None = None  # onnxruntime intra-op threads; default: the cores decoding leaves free
    device: str = "cpu"
    decode_workers: int | None = None  # default: one per core, at most 4
    embed_batch: int = 16
    #: Horizontal-flip test-time augmentation in the recognizer: one more recognizer pass per
    #: accepted face; better ranking on LFW (1:N top-1 +1.2 points) but no verification-accuracy
    #: gain at a DevTrain-chosen threshold, so off by default (README, "Accuracy on LFW").
    flip_tta: bool = False
    #: Keep the decoded image on each result (memory-hungry: for tests and library users only).
    keep_images: bool = False
    #: Encode this image of each accepted face at check time (upload payloads, stored thumbnails),
    #: so the decoded pixels can be dropped at once instead of being decoded again later.
    payload: PayloadSpec | None = None
    #: One of MULTI_FACE_MODES (FindFace's ``--mf-selector`` idea): "largest" suits sources such
    #: as press photos where the subject is the biggest face; the others are listed in the report.
    multi_face: str = "reject"

    def __post_init__(self) -> None:
        if self.multi_face not in MULTI_FACE_MODES:
            raise ConfigError(f"multi_face must be one of {', '.join(MULTI_FACE_MODES)}, got {self.multi_face!r}",
                              hint="--multi-face, or the config file key multi_face")


@dataclass
class ImageCheck:
    """The check stage's verdict on one image. Coordinates are original-image pixels."""

    path: str
    status: Status
    reasons: list[ReasonCode] = field(default_factory=list)
    message: str = ""
    faces: int = 0
    face: Face | None = None
    other_faces: list[Face] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    sha256: str | None = None
    phash: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    image: DecodedImage | None = None
    payload: bytes | None = field(default=None, repr=False)
    crop: np.ndarray | None = field(default=None, repr=False)
    #: Codes reported without changing the status (MULTIPLE_FACES under ``multi_face="largest"``).
    warnings: list[ReasonCode] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.status == Status.ACCEPTED

    def to_json(self) -> dict:
        """The report fields of DESIGN.md section 4 (without person-level keys)."""
        out: dict = {
            "path": self.path,
            "status": str(self.status),
            "reasons": [str(r) for r in self.reasons],
            "faces": self.faces,
            "box": None,
            "landmarks": None,
            "det_score": None,
            "quality": {k: round(v, 2) for k, v in self.quality.items()},
            "message": self.message,
            "warnings": [str(w) for w in self.warnings],
        }
        if self.face is not None:
            out.update(self.face.to_json())
        if self.other_faces:
            main = self.face.size if self.face is not None and self.face.size > 0 else None
            out["other_faces"] = [
                {"box": f.to_json()["box"], "det_score": round(f.score, 4)}
                | ({"size_ratio": round(f.size / main, 3)} if main else {})
                for f in self.other_faces
            ]
        out.update({"width": self.width, "height": self.height, "format": self.format, "sha256": self.sha256})
        return out


def _failure(path: str, reason: ReasonCode, message: str) -> ImageCheck:
    return ImageCheck(path=path, status=status_for([reason]), reasons=[reason], message=message)


class FaceChecker:
    """Loads the two models once; checks images one by one or as an ordered, overlapped stream."""

    def __init__(self, detector: Detector, recognizer: Recognizer, config: CheckConfig) -> None:
        self.detector = detector
        self.recognizer = recognizer
        self.config = config

    @classmethod
    def open(cls, config: CheckConfig | None = None) -> FaceChecker:
        """Load both models. Threads: decoding and inference run as two overlapped streams, so by
        default they split the cores rather than each asking for all of them."""
        config = config or CheckConfig()
        cores = os.cpu_count() or 1
        if config.decode_workers is None:
            config.decode_workers = max(1, min(4, cores))
        # Decoding (libjpeg releases the GIL) is the slower stream here, so it gets a thread per
        # core and inference half the cores (measured on 2 cores: 2 decode + 1 onnxruntime thread
        # beat 1 + 1, 1 + 2 and 2 + 2; bench/check_throughput.py --threads/--decode-workers).
        threads = config.threads or max(1, min(default_threads(), cores // 2))
        det_model, rec_model = resolve_models([(DEFAULT_DETECTOR, config.detector_path),
                                               (DEFAULT_RECOGNIZER, config.recognizer_path)], config.models_dir)
        det = Detector(
            det_model,
            threads=threads,
            device=config.device,
            score_threshold=config.thresholds.detection_score,
        )
        rec = Recognizer(rec_model,
                         threads=threads, device=config.device, flip=config.flip_tta)
        return cls(det, rec, config)

    @property
    def thresholds(self) -> Thresholds:
        return self.config.thresholds

    # -- single images -------------------------------------------------------------------------

    def check_path(self, path: str | Path) -> ImageCheck:
        return next(self.check_paths([path]))

    def check_decoded(self, image: DecodedImage, path: str = "<memory>") -> ImageCheck:
        item = self._gate(path, image, 0.0)
        self._embed([item])
        return item

    # -- streams -------------------------------------------------------------------------------

    def check_paths(
        self, paths: Iterable[str | Path], on_result: Callable[[ImageCheck], None] | None = None
    ) -> Iterator[ImageCheck]:
        """Check many files; yields results in input order. Decoding runs ahead in threads."""
        cfg = self.config
        window = max(2, cfg.decode_workers * 2)
        with ThreadPoolExecutor(max_workers=max(1, cfg.decode_workers), thread_name_prefix="decode") as pool:
            inflight: deque[tuple[str, Future]] = deque()
            pending: list[ImageCheck] = []
            it = iter(paths)
            exhausted = False
            while True:
                while not exhausted and len(inflight) < window:
                    try:
                        p = str(next(it))
                    except StopIteration:
                        exhausted = True
                        break
                    inflight.append((p, pool.submit(_timed_decode, p, cfg.limits)))
                if not inflight:
                    break
                path, fut = inflight.popleft()
                pending.append(self._from_decode(path, fut))
                if sum(1 for r in pending if r.crop is not None) >= cfg.embed_batch or not inflight:
                    self._embed(pending)
                    for r in pending:
                        if on_result:
                            on_result(r)
                        yield r
                    pending = []

    # -- stages --------------------------------------------------------------------------------

    def _from_decode(self, path: str, fut: Future) -> ImageCheck:
        try:
            image, decode_s = fut.result()
        except DecodeFailure as exc:
            return _failure(path, exc.reason, exc.message)
        except Exception as exc:  # never let one file end the run
            return _failure(path, ReasonCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        try:
            return self._gate(path, image, decode_s)
        except Exception as exc:
            return _failure(path, ReasonCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _gate(self, path: str, image: DecodedImage, decode_s: float) -> ImageCheck:
        t = self.thresholds
        item = ImageCheck(
            path=path,
            status=Status.ACCEPTED,
            sha256=image.sha256,
            phash=phash(image.rgb),
            width=image.source_width,
            height=image.source_height,
            format=image.format,
            image=image if self.config.keep_images else None,
            timings={"decode": decode_s},
        )
        messages = list(image.warnings)
        t0 = time.perf_counter()
        faces_work = self.detector.detect(image.rgb)  # in decoded pixels
        item.timings["detect"] = time.perf_counter() - t0
        scale = image.scale
        faces = [f.scaled(scale) for f in faces_work] if scale != 1.0 else faces_work
        gate = gate_faces(faces, image.source_width, image.source_height, t)
        item.faces = len([f for f in faces if f.score >= t.detection_score])
        item.face, item.other_faces = gate.main, gate.others
        item.quality = dict(gate.measurements)
        reasons = gate.reasons
        if ReasonCode.MULTIPLE_FACES in reasons and self.config.multi_face == MultiFace.LARGEST:
            reasons.remove(ReasonCode.MULTIPLE_FACES)
            item.warnings.append(ReasonCode.MULTIPLE_FACES)
        if gate.main is not None:
            t1 = time.perf_counter()
            crop, upscale = align_face_scaled(image.rgb, gate.main.landmarks / scale)
            item.quality.update(crop_measurements(crop, upscale))
            reasons += gate_crop(item.quality, t)
            item.timings["align"] = time.perf_counter() - t1
            if not reasons:
                item.crop = crop
                if self.config.payload is not None:
                    item.payload, why = self._payload(image.rgb, gate.main.box / scale)
                    if why:
                        reasons.append(why[0])
                        messages.append(why[1])
                        item.payload = None
        if gate.message:
            messages.append(gate.message + ("; kept the largest" if item.warnings else ""))
        messages += [e for r in reasons if (e := explain(r, item.quality, t, image.source_width,
                                                         image.source_height, gate.main))]
        item.reasons = reasons
        item.status = status_for(reasons)
        item.message = "; ".join(messages)
        return item

    def _payload(self, rgb: np.ndarray, box: np.ndarray) -> tuple[bytes | None, tuple[ReasonCode, str] | None]:
        """The image the target gets, verified to hold exactly the accepted face.

        Why: a target re-detects faces in what it is sent, at the crop's own resolution, where a
        neighbour's face can be found or weighed differently than in the whole photo (issue 15:
        1.5% of LFW crops were refused by ``facecli serve`` as ERR_MULTIPLE_FACES_DETECTED). So the
        crop is run through the same detector and one-face rule ``facecli serve`` applies
        (``one_face_gate``); when it fails, a tighter crop is tried; when every crop fails the
        image is refused here, not by the target.
        """
        spec = self.config.payload
        if spec is None or spec.kind != "face":
            return (payload_jpeg(rgb, box, spec) if spec is not None else None), None
        verdict = None
        for fraction in dict.fromkeys((spec.face_fraction, *PAYLOAD_TIGHTER_FRACTIONS)):
            if fraction < spec.face_fraction:
                continue
            data = payload_jpeg(rgb, box, replace(spec, face_fraction=fraction))
            verdict = one_face_gate(self.detector, self.thresholds, _jpeg_rgb(data))[1]
            if verdict is None:
                return data, None
        assert verdict is not None
        return None, (verdict[0], f"the face crop for the target: {verdict[1]} (tried crops with the face at "
                                  f"{spec.face_fraction:.0%} to {PAYLOAD_TIGHTER_FRACTIONS[-1]:.0%} of the width)")

    def _embed(self, items: list[ImageCheck]) -> None:
        todo = [r for r in items if r.crop is not None]
        if not todo:
            return
        t0 = time.perf_counter()
        embeddings = self.recognizer.embed(np.stack([r.crop for r in todo]))
        per = (time.perf_counter() - t0) / len(todo)
        for r, e in zip(todo, embeddings):
            r.embedding = e
            r.crop = None
            r.timings["embed"] = per


#: Face fractions tried, in order, when the default face crop lets another face in.
PAYLOAD_TIGHTER_FRACTIONS = (0.55, 0.7)


def one_face_gate(detector: Detector, thresholds: Thresholds, rgb: np.ndarray, scale: float = 1.0,
                  size: tuple[int, int] | None = None) -> tuple[GateResult, tuple[ReasonCode, str] | None]:
    """Detect and gate ``rgb`` by the enrollment rule: the gate, and None when it holds one usable
    face, else (reason, message). ``facecli serve`` judges uploads with this same function, and
    the client judges the face crop it is about to send with it. ``scale``/``size``: ``rgb`` is a
    reduced copy of an image of ``size`` (width, height)."""
    faces = detector.detect(rgb)
    if scale != 1.0:
        faces = [f.scaled(scale) for f in faces]
    w, h = size or (rgb.shape[1], rgb.shape[0])
    gate = gate_faces(faces, w, h, thresholds)
    if gate.main is None:
        return gate, (ReasonCode.NO_FACE, "no face detected")
    if gate.comparable:
        return gate, (ReasonCode.MULTIPLE_FACES, f"{gate.comparable + 1} faces of similar size")
    return gate, None


def _jpeg_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _timed_decode(path: str, limits: DecodeLimits) -> tuple[DecodedImage, float]:
    t0 = time.perf_counter()
    image = decode_image(path, limits)
    return image, time.perf_counter() - t0

