"""The test suite: ``lib/`` tests the library, ``study/`` the study, ``torture/`` holds the
fault-injection drivers (``make torture``) and their short pytest versions."""
