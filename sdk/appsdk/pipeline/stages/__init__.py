"""The build stages, each a function of paths and small frozen records."""
