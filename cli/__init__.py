"""The click command line (lives in the top-level cli/ folder)."""
