"""GLSCL (global-local semantic consistent learning) for text-video retrieval, derived step by step in notebooks on
open_clip"""

__version__ = "0.0.1"
