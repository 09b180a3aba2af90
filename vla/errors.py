"""Errors with one clear line: what went wrong and where.

Scripts catch ``VLAError`` at the top, print its message and exit non-zero.
"""


class VLAError(Exception):
    """Base class: the message is meant for the user, as is."""


class ConfigError(VLAError):
    """A config value that is wrong or missing."""


class DataError(VLAError):
    """A dataset that is missing, broken, or lacks a column a stage needs."""


class ShapeError(VLAError):
    """Shapes that disagree between a policy, a dataset, an env or a robot."""


class CheckpointError(VLAError):
    """A checkpoint that is missing, incomplete or from another architecture."""
