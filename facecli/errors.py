"""Per-item reason codes, item statuses, exit codes and the fatal error hierarchy.

One place for these facts: reports, the CLI and the sinks all import from here, so a code's
spelling (which scripts parse) can never drift between modules.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Status(StrEnum):
    """Final state of one image or one person in a run."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"
    ENROLLED = "enrolled"


class ReasonCode(StrEnum):
    """Why an item is not simply fine. Stable strings: scripts and reports depend on them."""

    # reading the file
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    UNREADABLE = "UNREADABLE"
    DECODE_ERROR = "DECODE_ERROR"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    IMAGE_TOO_SMALL = "IMAGE_TOO_SMALL"
    # the one-face gate
    NO_FACE = "NO_FACE"
    MULTIPLE_FACES = "MULTIPLE_FACES"
    FACE_TOO_SMALL = "FACE_TOO_SMALL"
    LOW_CONFIDENCE = "LOW_CONFIDENCE"
    LOW_SHARPNESS = "LOW_SHARPNESS"
    LOW_BRIGHTNESS = "LOW_BRIGHTNESS"
    OVEREXPOSED = "OVEREXPOSED"
    EXTREME_POSE = "EXTREME_POSE"
    FACE_TRUNCATED = "FACE_TRUNCATED"
    # per-person checks
    DUPLICATE_IMAGE = "DUPLICATE_IMAGE"
    DUPLICATE_PERSON = "DUPLICATE_PERSON"
    #: A warning, never a rejection: looks like another person of the run or of the gallery at a
    #: score below the rejection level (the report names the other person and the score).
    POSSIBLE_DUPLICATE = "POSSIBLE_DUPLICATE"
    IDENTITY_MISMATCH = "IDENTITY_MISMATCH"
    TOO_MANY_IMAGES = "TOO_MANY_IMAGES"
    NO_ACCEPTED_IMAGE = "NO_ACCEPTED_IMAGE"
    INVALID_ROW = "INVALID_ROW"
    # runs and targets
    UNCHANGED = "UNCHANGED"
    SERVER_REJECTED = "SERVER_REJECTED"
    SERVER_ERROR = "SERVER_ERROR"
    AUTH_ERROR = "AUTH_ERROR"
    NETWORK_ERROR = "NETWORK_ERROR"
    INTERNAL_ERROR = "INTERNAL_ERROR"


#: Reasons meaning "we could not process this item" (status failed) rather than
#: "we processed it and it does not meet the bar" (status rejected).
FAILURE_REASONS: frozenset[ReasonCode] = frozenset(
    {
        ReasonCode.FILE_NOT_FOUND,
        ReasonCode.UNREADABLE,
        ReasonCode.DECODE_ERROR,
        ReasonCode.UNSUPPORTED_FORMAT,
        ReasonCode.INVALID_ROW,
        ReasonCode.SERVER_ERROR,
        ReasonCode.AUTH_ERROR,
        ReasonCode.NETWORK_ERROR,
        ReasonCode.INTERNAL_ERROR,
    }
)

REASON_HELP: dict[ReasonCode, str] = {
    ReasonCode.FILE_NOT_FOUND: "the file does not exist (or vanished during the run)",
    ReasonCode.UNREADABLE: "the file exists but cannot be read (permissions, I/O error)",
    ReasonCode.DECODE_ERROR: "the file is corrupt, truncated or empty",
    ReasonCode.UNSUPPORTED_FORMAT: "not an image format facecli reads",
    ReasonCode.IMAGE_TOO_LARGE: "more pixels or bytes than allowed (decompression-bomb guard)",
    ReasonCode.IMAGE_TOO_SMALL: "image sides below the minimum",
    ReasonCode.NO_FACE: "no face found",
    ReasonCode.MULTIPLE_FACES: "another face competes with the main one (similar size, inside the image, not behind it)",
    ReasonCode.FACE_TOO_SMALL: "face box or distance between the eyes below the minimum",
    ReasonCode.LOW_CONFIDENCE: "detector score below the acceptance minimum",
    ReasonCode.LOW_SHARPNESS: "aligned face too blurred (variance of the Laplacian)",
    ReasonCode.LOW_BRIGHTNESS: "face too dark",
    ReasonCode.OVEREXPOSED: "face too bright",
    ReasonCode.EXTREME_POSE: "head turned or tilted too far (yaw, pitch or roll)",
    ReasonCode.FACE_TRUNCATED: "face box crosses or comes too close to the image border",
    ReasonCode.DUPLICATE_IMAGE: "the same (or a near-identical) image appears elsewhere in the run; one copy is kept",
    ReasonCode.DUPLICATE_PERSON: "the same face is filed under another person_id (of the run or of the gallery), "
                                 "at a score a different person reaches with probability below the budget",
    ReasonCode.POSSIBLE_DUPLICATE: "warning: looks like another person (run or gallery) below the rejection level; "
                                   "review the pair",
    ReasonCode.IDENTITY_MISMATCH: "this image does not match the person's other images",
    ReasonCode.TOO_MANY_IMAGES: "more images than --max-images-per-person; lower-quality ones skipped",
    ReasonCode.NO_ACCEPTED_IMAGE: "none of the person's images was accepted",
    ReasonCode.INVALID_ROW: "manifest row is invalid",
    ReasonCode.UNCHANGED: "already sent with the same content; skipped",
    ReasonCode.SERVER_REJECTED: "the target refused this person",
    ReasonCode.SERVER_ERROR: "the target failed (after retries)",
    ReasonCode.AUTH_ERROR: "the target refused the API key",
    ReasonCode.NETWORK_ERROR: "the target could not be reached (after retries)",
    ReasonCode.INTERNAL_ERROR: "unexpected error in facecli while processing this item (a bug: please report)",
}


def status_for(reasons: list[ReasonCode]) -> Status:
    """The status an item with these reasons ends in, before any sink is involved."""
    if not reasons:
        return Status.ACCEPTED
    if any(r in FAILURE_REASONS for r in reasons):
        return Status.FAILED
    return Status.REJECTED


class ExitCode(IntEnum):
    """Process exit codes (DESIGN.md section 4); cron and CI branch on these."""

    OK = 0
    ITEMS = 1
    USAGE = 2
    TARGET = 3
    INTERRUPTED = 130


class FacecliError(Exception):
    """A fatal, run-wide condition. Only the CLI turns it into a message and an exit code."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(FacecliError):
    """Bad options, config file or environment."""

    exit_code = ExitCode.USAGE


class ModelError(FacecliError):
    """A model file is missing, corrupt or unusable."""

    exit_code = ExitCode.USAGE


class TargetError(FacecliError):
    """The target (local engine or server) refused the run: auth, unreachable, collection missing."""

    exit_code = ExitCode.TARGET


class CollectionMissing(TargetError):
    """The collection does not exist at the target (a dry run with --create-collection is fine)."""
