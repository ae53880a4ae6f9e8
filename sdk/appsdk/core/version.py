"""The package version, in core so that every layer can name it (build.json, the release
manifest) without importing the package root."""

__version__ = "0.1.0"
