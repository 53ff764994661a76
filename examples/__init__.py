"""Example capgroup consumers; run them from the repository root with ``capgroup run``."""
