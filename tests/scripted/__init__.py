"""Scripted protocol peers for deterministic tests (no broker, no sleeps)."""

from tests.scripted.coordinator import (
    Api,
    Commit,
    Gate,
    Logged,
    ScriptedCoordinator,
    ScriptedTransport,
)

__all__ = ["Api", "Commit", "Gate", "Logged", "ScriptedCoordinator", "ScriptedTransport"]
