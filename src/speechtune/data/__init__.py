"""Data preparation: input readers, reject checks, splits, and the `prepare` recipe."""
from .checks import REASONS
from .prepare import PrepareConfig, prepare

__all__ = ["REASONS", "PrepareConfig", "prepare"]
