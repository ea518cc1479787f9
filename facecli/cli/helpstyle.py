"""How `--help` looks: one argument style, real choices, no type tags on flags, an example section.

Typer's own help prints ``<bool>`` after every flag, ``<str>`` / ``<list[str]>`` type tags, and
arguments as ``[path]`` or ``{image}``. The root group (:class:`FacecliGroup`, the app's ``cls``)
gives every command of the tree click's conventions instead, when Typer has built it:

- flags show no value; a value shows as ``TEXT``, ``INTEGER``, ``FLOAT``, ``FILE``, ``DIR``, ``PATH``
  or its own metavar (``NAME=VALUE``); an option with fixed choices (``Literal`` / ``Enum``) as
  ``[reject|warn]``;
- arguments in upper case: ``PATH`` when required, ``[PATH]`` when not, ``PERSON_ID...`` for many;
- help paragraphs re-flowed to the terminal's width (a ``\\b`` paragraph keeps its lines);
- an "Examples:" section from :data:`EXAMPLES` (tests/test_cli_help.py parses every line).
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

#: (what it does, the command line) per command path ("" is `facecli` itself). Every command line
#: must parse: the test runs it through the command's own parser.
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "": [
        ("Get the models, once (offline: facecli models import DIR)", "facecli models fetch"),
        ("Check the photos in ./photos (one sub-folder per person)", "facecli check ./photos"),
        ("Enroll them into the local gallery", "facecli enroll ./photos"),
        ("Who is this?", "facecli search visitor.jpg"),
    ],
    "check": [
        ("Check a folder: one sub-folder per person, or files named after the person",
         "facecli check ./photos"),
        ("Every verdict into a CSV file; list at most 50 problems", "facecli check ./photos --report check.csv --show 50"),
        ("A CSV manifest whose columns are named differently",
         "facecli check --manifest staff.csv --map person_id=EmployeeID --map image=Photo"),
        ("Keep the largest face of group photos; only warn about look-alike persons",
         "facecli check ./photos --multi-face largest --on-duplicate warn"),
        ("One JSON summary for a script (exit 1 when any photo is refused)", "facecli check ./photos --json"),
    ],
    "enroll": [
        ("Into the local gallery (collection 'default', made on first use)", "facecli enroll ./photos"),
        ("Say what would be created or updated, write nothing", "facecli enroll ./photos -c staff --dry-run"),
        ("Into a new collection, with a report of every photo",
         "facecli enroll ./photos -c staff --create-collection --report enroll.jsonl"),
        ("An OpenCV FR Server (the key from FACECLI_API_KEY)",
         "facecli enroll ./photos --to https://fr.example.com -c staff --preset opencv-fr"),
        ("Only the persons whose last attempt failed there",
         "facecli enroll ./photos --to https://fr.example.com -c staff --retry-failed"),
    ],
    "search": [
        ("The best matches in the local gallery's default collection", "facecli search visitor.jpg"),
        ("In collection staff, as JSON", "facecli search visitor.jpg -c staff --json"),
        ("Every face of a group photo, three persons each", "facecli search group.jpg --all-faces -k 3"),
        ("A whole folder in one process: CSV, and pictures with names drawn",
         "facecli search ./inbox -k 1 --csv --draw ./seen"),
    ],
    "compare": [
        ("Is the selfie the person on the ID card?", "facecli compare id_card.jpg selfie.jpg"),
        ("Several photos against the first, as JSON", "facecli compare a.jpg b.jpg c.jpg --json"),
    ],
    "calibrate": [
        ("Your own photos, a folder per person; plot the scores", "facecli calibrate ./labelled --plot scores.png"),
        ("An LFW-format pairs file; store the threshold for 1 false match in 10,000",
         "facecli calibrate --pairs pairs.txt --far 0.0001 --write-config"),
    ],
    "serve": [
        ("Try it out on this machine, without keys", "facecli serve --db gallery.db --no-auth"),
        ("For the network, keys from a file (put TLS in front)",
         "facecli serve --host 0.0.0.0 --port 8080 --db gallery.db --api-key-file keys.txt"),
    ],
    "collections": [
        ("Collections of the local gallery, with person and face counts", "facecli collections list"),
        ("A new collection", "facecli collections create staff"),
    ],
    "collections list": [
        ("Collections of the local gallery", "facecli collections list"),
        ("Of an OpenCV FR Server, as JSON", "facecli collections list --to https://fr.example.com --json"),
    ],
    "collections create": [("Already there: says so, exit 0", "facecli collections create staff")],
    "collections stats": [
        ("Persons, faces per person, the search bar and the look-alike tail", "facecli collections stats staff"),
        ("Of a PostgreSQL gallery, as JSON",
         "facecli collections stats staff --to postgresql://facecli@db.example.com/faces --json"),
    ],
    "collections delete": [("Without the question (scripts)", "facecli collections delete visitors --yes")],
    "collections copy": [
        ("One collection into PostgreSQL",
         "facecli collections copy staff --from local --to postgresql://facecli@db.example.com/faces"),
        ("Every collection of an old SQLite file into the local gallery",
         "facecli collections copy --from sqlite:///old.db --to local"),
    ],
    "persons": [
        ("The first 50 persons of collection staff", "facecli persons list -c staff"),
        ("One person's name, metadata and faces", "facecli persons get E1001 -c staff"),
    ],
    "persons list": [
        ("The third page of 50", "facecli persons list -c staff --limit 50 --offset 100"),
        ("All of them, as JSON", "facecli persons list -c staff --limit 0 --json"),
    ],
    "persons get": [("Exit 1 when not found", "facecli persons get E1001 -c staff")],
    "persons delete": [("Exit 1 if one was not found", "facecli persons delete E1001 E1002 -c staff")],
    "models": [
        ("Download and verify the default models", "facecli models fetch"),
        ("Which model files are present, missing or corrupt", "facecli models list"),
    ],
    "models list": [("Every known model file and where it is", "facecli models list"),
                    ("The same as JSON", "facecli models list --json")],
    "models fetch": [
        ("yunet and dlib-resnet into the user cache dir", "facecli models fetch"),
        ("The optional SFace recognizer", "facecli models fetch sface"),
        ("From an internal mirror of the same files", "facecli models fetch --mirror https://mirror.example.com/models"),
    ],
    "models import": [("Files carried over on a USB stick", "facecli models import /media/usb/models")],
    "models verify": [("Re-hash every model file", "facecli models verify")],
    "runs": [
        ("Recent runs: command, target, status, counts", "facecli runs list"),
        ("One run's refused photos (a unique run id prefix is enough)", "facecli runs show 20261122T2006 --failed"),
    ],
    "runs list": [("The last five runs", "facecli runs list --limit 5"),
                  ("For a script", "facecli runs list --json")],
    "runs show": [("One run's refused photos (a unique id prefix is enough)", "facecli runs show 20261122T2006 --failed")],
    "cache": [
        ("What is kept where, how much, how old", "facecli cache info"),
        ("Remove cached check results not used for 30 days", "facecli cache clear --older-than 30d"),
    ],
    "cache info": [("What is kept where, how much, how old", "facecli cache info"),
                   ("For a script", "facecli cache info --json")],
    "cache clear": [
        ("Cached check results (embeddings, face crops)", "facecli cache clear --yes"),
        ("Everything older than 30 days, from cron", "facecli cache clear --older-than 30d --all --yes --json"),
    ],
}


def examples_epilog(pairs: list[tuple[str, str]]) -> str:
    """The "Examples:" section: what each does, the command line indented below it."""
    lines = ["Examples:"]
    for what, command in pairs:
        lines.append(f"[dim]{escape(what)}{'' if what.endswith('?') else ':'}[/]")
        lines.append(f"  {escape(command)}")
    return "\n".join(lines)


def reflow(text: str | None) -> str | None:
    """Paragraphs joined into lines the terminal wraps (the help strings are wrapped for the source)."""
    if not text:
        return text
    paragraphs = text.split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(ln.strip() for ln in p.splitlines()) for p in paragraphs)


def value_metavar(param: TyperOption | TyperArgument) -> str:
    """What a parameter's value looks like: its metavar, ``[a|b]`` for choices, else its type in words."""
    if param.metavar is not None:
        return param.metavar
    desc = param.type_descriptor
    if desc.choices is not None:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
    if desc.is_path:
        return desc.path_type.upper()
    annotation = desc.annotation
    if desc.is_list:
        annotation = (getattr(annotation, "__args__", None) or (str,))[0]
    return {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}.get(annotation, "VALUE")


class FacecliOption(TyperOption):
    """A Typer option shown the click way: nothing after a flag, ``[a|b]`` for choices."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return value_metavar(self) + ("..." if self.nargs != 1 else "")


class FacecliArgument(TyperArgument):
    """A Typer argument shown the click way: ``PATH``, ``[PATH]``, ``PERSON_ID...``; no type tag."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return value_metavar(self) if self.type_descriptor.choices is not None else None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def _restyle_params(params: list[Any]) -> list[Any]:
    for p in params:
        if type(p) is TyperOption:
            p.__class__ = FacecliOption
        elif type(p) is TyperArgument:
            p.__class__ = FacecliArgument
            if p.metavar is None and p.name:
                p.metavar = p.name.upper()
    return params


class FacecliCommand(TyperCommand):
    """Every parameter (the help option included) restyled when used."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _restyle_params(super().get_params(ctx))


class FacecliGroup(TyperGroup):
    """The root group (and, re-classed, every sub-group): when Typer has built the tree, restyle it
    (see the module docstring); parameters, the help and completion options included, when used."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _restyle_tree(self, "")

    def get_params(self, ctx: Any) -> list[Any]:
        return _restyle_params(super().get_params(ctx))


def _restyle_tree(cmd: Any, path: str) -> None:
    """Re-class Typer's objects as the subclasses above (methods only, no state) down the tree, re-flow
    help texts and add each command's examples."""
    if type(cmd) is TyperCommand:
        cmd.__class__ = FacecliCommand
    elif type(cmd) is TyperGroup:
        cmd.__class__ = FacecliGroup
    _restyle_params(cmd.params)
    cmd.help = reflow(cmd.help)
    if cmd.epilog is None and path in EXAMPLES:
        cmd.epilog = examples_epilog(EXAMPLES[path])
    for name, sub in getattr(cmd, "commands", {}).items():
        _restyle_tree(sub, f"{path} {name}".strip())


#: The root app's context settings; sub-commands inherit them.
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
