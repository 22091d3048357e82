"""Generated data sets (built offline from text that ships with Python)."""
