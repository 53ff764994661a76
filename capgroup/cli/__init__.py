"""The ``capgroup`` command line."""
