"""uvicorn's supervisor for `errorgraph serve --workers N`, in a process of its own.

`serve` sets up in the CLI's process (migrations, the demo project), which imports the
whole app; kept as uvicorn's supervisor, that process held ~90 MiB for the server's
lifetime, though the supervisor only starts, watches and stops the workers. With more
than one worker `serve` replaces itself (exec) with this module, which imports uvicorn
and the logging set-up alone: each worker imports the app for itself.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import uvicorn

APP = "app.main:app"


def run(options: dict[str, Any]) -> None:
    uvicorn.run(APP, **options)


def main(argv: list[str] | None = None) -> None:
    """`python -m app.supervisor '<uvicorn.run options as JSON>'`."""
    run(orjson.loads((argv if argv is not None else sys.argv[1:])[0]))


if __name__ == "__main__":
    main()
