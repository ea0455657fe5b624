"""Keel: an AI-native model platform in one package.

Importing ``keel`` does nothing but define names; backends open when first used.
"""

from __future__ import annotations

from keel.config import Settings
from keel.errors import KeelError

__all__ = ["KeelError", "Settings", "__version__"]

__version__ = "0.1.0"
