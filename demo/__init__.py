"""Demo helpers: a generated audio pool laid out like AudioSet, and a loopback HTTP server."""
