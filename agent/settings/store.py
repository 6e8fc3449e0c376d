"""Settings persistence: validate all, write atomically, then notify - all or nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent.errors import StateError
from agent.settings.model import DEFAULTS, Settings, merge, validate
from agent.state import StateDir, atomic_write_json, read_json

log = logging.getLogger(__name__)
Listener = Callable[[Settings, Settings], Awaitable[None]]


class SettingsStore:
    def __init__(self, state: StateDir, overrides: Mapping[str, Any] | None = None) -> None:
        self._file = state.settings_file
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        try:
            doc = read_json(self._file, max_bytes=256 * 1024)
        except FileNotFoundError:
            doc = merge(DEFAULTS, overrides or {})
            atomic_write_json(self._file, doc)
        try:
            self._settings = validate(doc)
        except Exception as exc:
            raise StateError(f"stored settings are invalid: {exc}", code="state.settings") from exc

    def current(self) -> Settings:
        return self._settings

    def subscribe(self, cb: Listener) -> None:
        self._listeners.append(cb)

    async def apply(self, patch: Mapping[str, Any]) -> tuple[Settings, Settings]:
        """Merge, validate the whole result, persist, then notify. Returns (old, new)."""
        async with self._lock:
            old = self._settings
            doc = merge(old.to_json(), patch)
            new = validate(doc)
            atomic_write_json(self._file, new.to_json())
            self._settings = new
        for cb in list(self._listeners):
            try:
                await cb(old, new)
            except Exception:  # a capability failing to apply must not undo the stored change
                log.exception("settings listener failed")
        return old, new

    def reset(self) -> None:
        atomic_write_json(self._file, DEFAULTS)
        self._settings = validate(DEFAULTS)
