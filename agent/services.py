"""The service container handed to every capability. Built once by ``agent.runtime``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.devicesecret import DeviceSecretProvider
from agent.state import StateDir

if TYPE_CHECKING:
    from agent.audit.log import AuditLog
    from agent.auth.sessions import SessionStore
    from agent.auth.users import UserStore
    from agent.identity.store import IdentityStore
    from agent.settings.store import SettingsStore


@dataclass
class Services:
    config: AgentConfig
    state: StateDir
    secret: DeviceSecretProvider
    audit: AuditLog
    users: UserStore
    sessions: SessionStore
    settings: SettingsStore
    identity: IdentityStore
    clock: Callable[[], float]  # wall clock (time.time); passed in so expiry logic is testable
