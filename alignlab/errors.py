"""Errors alignlab reports to the user as one clear line (no traceback)."""


class AlignlabError(Exception):
    """Base of every user-facing alignlab error."""


class ConfigError(AlignlabError, ValueError):
    """A configuration that composes but cannot run (unknown node, cycle, bad value)."""


class ModelLoadError(AlignlabError, OSError):
    """A model or adapter that cannot be found or loaded."""


class TrainingDivergedError(AlignlabError):
    """A loss or trainable weight became NaN/inf; the node is not published, its last checkpoint kept."""


class TrainingCollapsedError(AlignlabError):
    """Training collapsed without NaN (uniform outputs, zero gradients); the node is not published."""
