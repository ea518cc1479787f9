"""What every source produces: persons with their images, and problems found while reading."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facecli.errors import ReasonCode


@dataclass
class PersonSpec:
    """One person to check or enroll. ``person_id`` is case-sensitive and unique per source."""

    person_id: str
    person_name: str
    images: list[Path] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    gender: str | None = None
    date_of_birth: str | None = None
    nationality: str | None = None
    notes: str | None = None


@dataclass
class SourceProblem:
    """Something the source could not turn into a person or an image (becomes a report item)."""

    path: str
    reason: ReasonCode
    message: str
    person_id: str | None = None
    line: int | None = None


@dataclass
class Discovery:
    persons: list[PersonSpec] = field(default_factory=list)
    problems: list[SourceProblem] = field(default_factory=list)
    #: Entries passed over on purpose (no image extension, symbolic links without --follow-symlinks,
    #: folders without images, a second path to one file): counted and listed, not items.
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def image_count(self) -> int:
        return sum(len(p.images) for p in self.persons)
