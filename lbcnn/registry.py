"""One small registry pattern for "which module handles this family".

A registry is owned by the layer that looks things up (models look up trainers,
the C / ONNX exporters look up a family's generator) and filled by the modules
that provide the implementations, so the owner never imports its providers and
no two providers import each other. ``providers`` names those modules as strings:
they are imported on the first lookup, which is what guarantees that
registration happened without an import edge back up the package.
"""
from __future__ import annotations

import importlib
from typing import Any, Hashable


class Registry:
    """Keys (a family name, or a class looked up along an object's MRO) -> implementations."""

    def __init__(self, what: str, providers: tuple[str, ...] = ()):
        self.what = what
        self.providers = tuple(providers)
        self._entries: dict[Hashable, Any] = {}
        self._providers_imported = False

    def register(self, key: Hashable, value: Any) -> Any:
        self._entries[key] = value
        return value

    def _import_providers(self) -> None:
        if self._providers_imported:
            return
        # set first: a provider that looks something up while it is being imported must not
        # re-enter this loop
        self._providers_imported = True
        try:
            for name in self.providers:
                importlib.import_module(name)
        except BaseException:
            self._providers_imported = False
            raise

    def get(self, key: Hashable, default: Any = None) -> Any:
        self._import_providers()
        return self._entries.get(key, default)

    def for_instance(self, obj: Any) -> Any:
        """The entry registered for ``type(obj)`` or its nearest base class, or None."""
        self._import_providers()
        for cls in type(obj).__mro__:
            if cls in self._entries:
                return self._entries[cls]
        return None

    def keys(self) -> list:
        self._import_providers()
        return list(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        self._import_providers()
        return key in self._entries

