"""clipsift's orchestrating side: config, session, I/O and the score / select jobs."""

__version__ = "0.1.0"
