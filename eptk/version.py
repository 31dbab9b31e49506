"""The eptk version, recorded in run configs and statistics metadata."""
__version__ = "0.1.0"
