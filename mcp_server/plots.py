"""Where plots go: one output folder, unique file names, absolute paths, and `lens://plots/...` URIs.

A tool that draws takes `plot` (False skips drawing, which is most of a small call's time) and
`plot_path` (a name or path inside the output folder; anything that resolves outside it is
refused). matplotlib is not thread-safe, and tools run on worker threads, so drawing is
serialised here.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from pydantic import Field

from mcp_server.schemas import Plot

URI_PREFIX = "lens://plots/"
PlotPath = Annotated[str | None, Field(max_length=300)]  # a PNG name inside the output folder
DrawPlot = bool  # False skips drawing (faster when only the numbers are needed)

_drawing = threading.Lock()


class PlotFolder:
    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()

    def path_for(self, kind: str, requested: str | None = None) -> Path:
        if requested is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            return self.root / f"{kind}-{stamp}-{uuid.uuid4().hex[:8]}.png"
        return self.inside(requested, "plot_path", suffix=".png")

    def inside(self, requested: str, argument: str, suffix: str | None = None) -> Path:
        """A file name or path the agent gave, resolved inside the folder (symlinks followed); anything
        that resolves outside it is refused. suffix: added when the name lacks it."""
        if "\x00" in requested or not requested.strip():
            raise ToolError(f"{argument} {requested!r} is not a usable file name")
        path = Path(requested).expanduser()
        path = (path if path.is_absolute() else self.root / path).resolve()
        if suffix is not None and path.suffix.lower() != suffix:
            path = path.with_name(path.name + suffix)
        if not path.is_relative_to(self.root) or path == self.root:
            raise ToolError(f"{argument} {requested!r} resolves to {path}, outside the output folder {self.root}; "
                            f"give a file name or a path inside that folder")
        return path

    def target(self, enabled: bool, kind: str, requested: str | None) -> Path | None:
        """Where a plot will go (checked before any work is done), or None when not drawing."""
        return self.path_for(kind, requested) if enabled else None

    def draw(self, draw: Callable[[Path], str], path: Path | None) -> Plot | None:
        """Draw with `draw(path) -> written path`; the absolute path and its resource URI."""
        if path is None:
            return None
        with _drawing:
            written = str(Path(draw(path)).resolve())
        return Plot(path=written, uri=self.uri(written))

    def uri(self, path: str) -> str:
        return URI_PREFIX + Path(path).relative_to(self.root).as_posix()

    def read(self, relative: str) -> bytes:
        """The bytes of a plot named by its path inside the folder (what a lens://plots/ URI carries)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise ResourceNotFoundError(f"no plot {relative!r} in {self.root}")
        return path.read_bytes()
