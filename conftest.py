"""Repository-level pytest configuration: what the doctest collection of the package skips.

``afs_continuous.integrations`` needs the ``openai`` extra; without it a plain ``pytest`` would stop at
collection, so its modules are left out of the doctest run (their tests skip on their own).
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("openai") is not None else ["afs_continuous/integrations/*"]
