"""A/B boot selection: the state, the pure transitions, and the storage interface.

The state is RAUC's U-Boot convention (so the board's boot script is the usual one):
``BOOT_ORDER="A B"`` and ``BOOT_A_LEFT`` / ``BOOT_B_LEFT`` attempt counters. The transitions are
pure functions; a backend stores a whole ``BootState`` in ONE atomic write, which is what RAUC's
boot-chooser does not do (it writes order and counters separately).

What the bootloader does each boot (``select_boot``): take the first slot in BOOT_ORDER whose
counter is > 0, decrement it, boot it. A slot whose counter reaches 0 without mark-good is skipped
from then on: that is the fallback. Other bootloaders (barebox's bootchooser, GRUB env, EFI
variables) implement ``BootChooser`` over their own storage with the same semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agent.ota.errors import OtaStateError
from agent.ota.ubootenv import UBootEnv

SLOTS = ("A", "B")
MAX_ATTEMPTS = 9


@dataclass(frozen=True)
class BootState:
    order: tuple[str, ...]
    left: dict[str, int] = field(default_factory=dict)

    def attempts(self, slot: str) -> int:
        return self.left.get(slot, 0)

    def to_json(self) -> dict[str, object]:
        return {"order": list(self.order), "left": dict(self.left)}


def initial_state(booted: str = "A", attempts: int = 3) -> BootState:
    return BootState((booted,), {s: (attempts if s == booted else 0) for s in SLOTS})


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise OtaStateError(f"unknown slot {slot!r}", code="ota.unknown_slot")


def mark_bad(state: BootState, slot: str) -> BootState:
    """Take ``slot`` out of the order and zero its counter (before writing into it)."""
    _check_slot(slot)
    return BootState(tuple(s for s in state.order if s != slot), {**state.left, slot: 0})


def activate(state: BootState, slot: str, attempts: int) -> BootState:
    """``slot`` first, the others after it, ``attempts`` tries for ``slot``."""
    _check_slot(slot)
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise OtaStateError("attempts out of range", code="ota.attempts")
    rest = tuple(s for s in state.order if s != slot)
    return BootState((slot, *rest), {**state.left, slot: attempts})


def mark_good(state: BootState, slot: str, attempts: int) -> BootState:
    """Confirm ``slot``: it stays first and gets its full counter back."""
    _check_slot(slot)
    rest = tuple(s for s in state.order if s != slot)
    return BootState((slot, *rest), {**state.left, slot: attempts})


def select_boot(state: BootState) -> tuple[str | None, BootState]:
    """The bootloader's step: (slot to boot or None, state with that slot's counter decremented)."""
    for slot in state.order:
        if state.attempts(slot) > 0:
            return slot, BootState(state.order, {**state.left, slot: state.attempts(slot) - 1})
    return None, state


def intended_slot(state: BootState) -> str | None:
    """The slot the bootloader was told to prefer (first in order), for mark-good's check."""
    return state.order[0] if state.order else None


class BootChooser(Protocol):
    def load(self) -> BootState | None: ...

    def store(self, state: BootState) -> None:
        """Persist the WHOLE state in one atomic operation."""
        ...


def state_to_env(state: BootState) -> dict[str, str]:
    env = {"BOOT_ORDER": " ".join(state.order)}
    for slot in SLOTS:
        env[f"BOOT_{slot}_LEFT"] = str(state.attempts(slot))
    return env


def state_from_env(env: dict[str, str]) -> BootState:
    order = tuple(env.get("BOOT_ORDER", "").split())
    if len(set(order)) != len(order) or any(s not in SLOTS for s in order):
        raise OtaStateError("BOOT_ORDER is invalid", code="ota.env_invalid")
    left = {}
    for slot in SLOTS:
        raw = env.get(f"BOOT_{slot}_LEFT", "0")
        if not raw.isdigit() or int(raw) > MAX_ATTEMPTS:
            raise OtaStateError(f"BOOT_{slot}_LEFT is invalid", code="ota.env_invalid")
        left[slot] = int(raw)
    return BootState(order, left)


class UBootEnvChooser:
    """Boot state in the U-Boot environment (both copies, one logical atomic update)."""

    def __init__(self, env: UBootEnv) -> None:
        self._env = env

    def load(self) -> BootState | None:
        env = self._env.read()
        if env is None or "BOOT_ORDER" not in env:
            return None
        return state_from_env(env)

    def store(self, state: BootState) -> None:
        env = self._env.read() or {}
        env.update(state_to_env(state))
        self._env.write(env)
