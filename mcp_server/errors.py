"""Turning every failure inside a tool into a ToolError the agent can read.

Every tool runs through `tool`: the call is registered with the server's state, waits (without a
thread) for the model it names (its `model` argument, or the model of its `cache`), and runs on a
worker thread under a lens guard, so it can be cancelled and its memory is budgeted
(mcp_server/calls.py).

The SDK reports a ToolError's text to the agent but hides the text of any other exception
("Error executing tool X"). lens raises errors that already say what was wrong and what is
valid (an unknown hook lists the nearest names, a multi-token answer shows its split), so
`tool` passes those on as ToolErrors; anything unexpected is logged with its traceback to
stderr and returned as a ToolError carrying the exception's type and text. Either way the
server stays up.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Annotated

from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.context_injection import find_context_parameter
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, ValidationError

from lens.errors import LensError
from mcp_server.calls import Call, run_guarded
from mcp_server.state import state_of

log = logging.getLogger("mcp_server")

# Mistakes in what the agent asked for: lens and torch raise these for bad arguments.
ANTICIPATED = (LensError, ValueError, KeyError, IndexError, TypeError, MemoryError)


def message(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text or type(error).__name__


def tool(fn):
    """Wrap a tool function: it runs as a guarded call (see the module docstring), errors become
    ToolErrors, and the result goes out as compact JSON (the SDK would indent it) with the same
    structured content and output schema."""
    context_kwarg = find_context_parameter(fn)
    if context_kwarg is None:
        raise TypeError(f"tool {fn.__name__} has no ctx: Context parameter; every lens tool takes one (it carries "
                        f"the server's state)")
    parameters = inspect.signature(fn).parameters

    @functools.wraps(fn)
    async def wrapper(**kwargs):
        ctx = kwargs[context_kwarg]
        state = state_of(ctx)
        call = Call(fn.__name__, report=ctx.report_progress)
        needs_model, ref = "model" in parameters or "cache" in parameters, kwargs.get("model")
        if "cache" in parameters and "model" not in parameters:
            ref = state.cache(kwargs["cache"]).model_handle
        try:
            async with state.calling(call, needs_model, ref):  # may load the model: its errors as the tool's
                result = await run_guarded(call, lambda: translated(fn, kwargs), state.threads)
        except ToolError:
            raise
        except Exception as error:
            raise as_tool_error(error, fn.__name__) from error
        return compact(result)

    signature = inspect.signature(fn, eval_str=True)
    wrapper.__signature__ = signature.replace(
        return_annotation=Annotated[CallToolResult, signature.return_annotation])
    return wrapper


def translated(fn, kwargs: dict):
    """fn(**kwargs), its errors as ToolErrors."""
    try:
        return fn(**kwargs)
    except ToolError:
        raise
    except Exception as error:
        raise as_tool_error(error, fn.__name__) from error


def as_tool_error(error: Exception, name: str) -> ToolError:
    if isinstance(error, ValidationError):  # a result model built from a bad value: a bug here, not the agent's
        log.error("tool %s built an invalid result", name, exc_info=error)
        return ToolError(f"internal error in {name}: {error}")
    if isinstance(error, ANTICIPATED):  # the SDK logs the ToolError at INFO
        return ToolError(message(error))
    # the server must stay up; the agent gets the text
    log.error("tool %s raised an unexpected exception", name, exc_info=error)
    return ToolError(f"unexpected {type(error).__name__} in {name}: {message(error)}")


def compact(result: BaseModel) -> CallToolResult:
    structured = result.model_dump(mode="json")
    text = result.model_dump_json()
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)
