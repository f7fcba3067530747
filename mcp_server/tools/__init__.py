"""The tools, one module per topic; each module lists its (function, annotations) pairs in TOOLS."""

from mcp_server.tools import (
    cache,
    circuits,
    datasets,
    features,
    generation,
    heads,
    interventions,
    models,
    reading,
    steering,
)

MODULES = (models, cache, reading, heads, interventions, steering, generation, datasets, features, circuits)
