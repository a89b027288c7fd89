"""The small shared core: config, logging, errors and status mapping, enum tables.

The edge and every service import it; it imports nothing of theirs.
"""
