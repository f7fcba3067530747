"""TransformerLens's names over lens's own functions, so TransformerLens code runs with its import changed.

Everything here is a thin alias or adapter; the engine keeps one vocabulary. The modules are re-exported
where TransformerLens has them: `lens.utils`, `lens.hook_points`, `lens.head_detector`,
`lens.SVDInterpreter`, `lens.HookedTransformerConfig` (and `lens.config.HookedTransformerConfig`).
references/porting.md says what is the same, what differs and why.
"""
