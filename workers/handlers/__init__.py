"""Task handlers and their registry."""

from workers.handlers.registry import Handler, HandlerLoadError, Registry, handler

__all__ = ["Handler", "HandlerLoadError", "Registry", "handler"]
