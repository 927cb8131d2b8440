"""Internal helpers shared by the library: parameter documentation and validation."""
