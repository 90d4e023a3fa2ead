"""The FastAPI JSON gateway over LedgerService (see facade.http.gateway)."""

from facade.http.gateway import build_app

__all__ = ["build_app"]
