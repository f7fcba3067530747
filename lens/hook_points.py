"""TransformerLens's `hook_points` module under lens's name: `from lens.hook_points import HookPoint`."""

from lens.hooks import HookPoint

__all__ = ["HookPoint"]
