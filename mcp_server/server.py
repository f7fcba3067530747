"""The MCP server: lens's analyses as tools, plots as resources, models and caches in the lifespan state.

    from mcp_server.server import create_server
    server = create_server(Settings(out_dir="plots"), models={"tiny": model})  # in-memory models: tests
    server.run()  # stdio
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer

from lens import HookedTransformer
from mcp_server.definitions import definition
from mcp_server.plots import URI_PREFIX, PlotFolder
from mcp_server.state import Settings, State
from mcp_server.tools import MODULES

INSTRUCTIONS = """\
Mechanistic interpretability of transformer language models with lens (TransformerLens hook names).
Typical flow: load_model → tokenize (check answers are single tokens) → run_with_cache / logit_lens /
logit_attribution to see what the model does → patch / attribution_patch / ablate / path_patch for
causal evidence → attention_pattern on the heads found. Results are compact summaries with a one-line
interpretation that leads with the finding; plots are PNG paths (also resources under lens://plots/).
Arguments the tools share: model (a handle or alias; default: the model load_model returned last, the
default model on first use); top_k (entries returned); detail (every entry instead of a window: a
larger answer); plot (False skips drawing) and plot_path (a PNG name inside the output folder).
Positions and layers count from 0, negative ones from the end (-1 = last); a list left out means all.
Answers are single tokens, usually with their leading space (' Mary'); baseline is the competing
token. corrupted: the clean prompt with the key information changed, same token count. metric:
logit_diff (logit(answer) - logit(baseline), at the last token), probability (p(answer)), or loss
(mean next-token loss of the prompt's own tokens over span = [first, last] predicting position).
Claims over many prompts: the prompt arguments (clean, corrupted, prompt, answer, baseline) also take
lists, one entry per row (answer and baseline may stay one string for all rows), or dataset=<handle
from the dataset tool>; positions may then name a position of every row ('S2', 'END'). Results give
means with their spread (95% interval, how many rows agree in sign) and the rows used and dropped."""


def create_server(settings: Settings | None = None, models: dict[str, HookedTransformer] | None = None) -> MCPServer:
    """A server over lens. `models`: in-memory models loadable by name (they are not copied)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[State]:
        state = State(settings, registered=models)
        try:
            yield state
        finally:
            state.close()

    tools = [definition(fn, hints) for module in MODULES for fn, hints in module.TOOLS]
    server = MCPServer("lens", instructions=INSTRUCTIONS, lifespan=lifespan, tools=tools)

    folder = PlotFolder(settings.out_dir)

    @server.resource(URI_PREFIX + "{+path}", name="plot", mime_type="image/png",
                     description="a PNG a tool wrote; its path inside the output folder")
    def plot(path: str) -> bytes:
        return folder.read(path)

    return server
