"""TransformerLens's `utils` module under lens's name (`import lens.utils as utils`); see lens/compat/utils.py."""

from lens.compat.utils import *  # noqa: F401,F403
from lens.compat.utils import __all__  # noqa: F401
