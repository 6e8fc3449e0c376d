"""Factory state of the device: the mutual-TLS provisioning endpoint and the lock.

``is_factory_state(state)`` is what the core's HTTPS middleware asks before serving any API.
"""

from agent.factory.session import is_factory_state

__all__ = ["is_factory_state"]
