"""Worker scripts, run by file path with a toolchain environment's python (never imported by vncompile)."""
