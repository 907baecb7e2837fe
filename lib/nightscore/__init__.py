"""nightscore: nightly credit scoring and suitable product recommendation on Ray."""

__version__ = "0.1.0"  # the one place it is set; pyproject.toml reads it, so a source checkout on PYTHONPATH knows it too
