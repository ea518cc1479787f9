"""facecli: bulk-enroll people into face-recognition systems.

The library API lives in the stage packages (``facecli.sources``, ``facecli.imaging``,
``facecli.vision``, ``facecli.pipeline``, ``facecli.sinks``, ``facecli.engine``); the
Typer CLI in ``facecli.cli`` only parses, prints and maps outcomes to exit codes.
"""

__version__ = "0.1.0"
