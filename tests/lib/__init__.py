"""Tests of the library (lmdbio/*.py)."""
