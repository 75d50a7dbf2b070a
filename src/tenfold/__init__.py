"""tenfold: ten efficient deep-learning research methods in one library and one command line."""

__version__ = "0.1.0"
