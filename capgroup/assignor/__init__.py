"""Capacity-aware cooperative assignor: a pure function of plain data, plus an aiokafka adapter."""
