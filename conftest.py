"""Repository-level pytest configuration: what the doctest collection of the package skips.

``afs_continuous.integrations`` needs the ``openai`` extra; without it a plain ``pytest`` would stop at
collection, so its modules are left out of the doctest run (their tests skip on their own). Likewise the
dashboard's app (``afs_continuous._ui``) without the ``ui`` extra (FastAPI).
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("openai") is not None else ["afs_continuous/integrations/*"]
if importlib.util.find_spec("fastapi") is None:
    collect_ignore_glob.append("afs_continuous/_ui.py")
