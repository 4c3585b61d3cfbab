"""Tests of the study (lmdbio/study/)."""
