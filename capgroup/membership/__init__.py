"""Membership engine: the classic group protocol, run by capgroup itself."""
