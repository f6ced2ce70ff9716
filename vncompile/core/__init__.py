"""The bottom layer: errors, hashing, atomic I/O and locks, units, host facts, declared schemas.

Nothing here imports another vncompile package, torch or a runtime.
"""
