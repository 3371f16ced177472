"""Makes the repository root importable for the tests (``import model``, ``import dataset``)."""
