"""soft-dist: distributed SOFT training for facial-expression recognition under noisy labels."""

__version__ = "0.1.0"
