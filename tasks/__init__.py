"""Prefect tasks: thin shells around clipgen functions. Retry policy lives here."""
