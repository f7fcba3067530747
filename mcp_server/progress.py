"""Progress of long sweeps, reported to the client as MCP progress notifications.

lens's patching engine batches many patched copies per forward and shows a tqdm bar; the
server counts instead the rows that pass the last layer (one row per patched copy of a
one-prompt input, plus the clean and base runs), with a hook that reads nothing but the
batch size. Tools run on worker threads: a report is recorded on the call, and the event loop sends
the latest every half second (mcp_server/calls.py), so the work never waits on the client.
"""

from __future__ import annotations

from contextlib import contextmanager

from mcp_server.calls import current_call


@contextmanager
def forward_progress(ctx, model, total: int, what: str):
    """While open, report rows done out of `total` as forwards pass the model's last layer."""
    done = 0

    def count(resid, point):
        nonlocal done
        done += resid.shape[0]
        report(ctx, min(done, total), total, what)
    with model.hooks(fwd_hooks=[(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", count)]):
        yield
    report(ctx, total, total, what)


def report(ctx, done: float, total: float, message: str) -> None:
    """Record the progress of the tool call running on this thread (sent by the event loop)."""
    call = current_call()
    if call is not None:
        call.progress = (done, total, message)
