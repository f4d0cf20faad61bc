"""Integrations with client libraries; each is imported on its own (``afs_continuous.integrations.openai``).

Importing this package imports nothing else: the third-party client a module wraps is loaded only
when that module is imported.
"""
