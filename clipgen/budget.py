"""The job's budget while it runs: no new paid request once what is spent and committed would pass it.

Up front, planning refuses a job whose estimate exceeds `budget_usd`. Retries spend more than the estimate,
so the running check counts every paid request of the job (this run's and earlier runs', from the ledger)
at its price the moment it is created, plus requests about to be created, and refuses the next one that
would not fit. A refused clip fails permanently: waiting would not make the money come back.
"""

from __future__ import annotations

import threading

from clipgen.errors import PermanentError


class BudgetExceeded(PermanentError):
    """Creating this request would take the job past its budget."""


class Budget:
    """Thread-safe: the clip tasks of one run share it. `limit_usd=None` means no budget."""

    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0) -> None:
        self.limit_usd = limit_usd
        self._committed = spent_usd
        self._lock = threading.Lock()

    @property
    def committed_usd(self) -> float:
        with self._lock:
            return self._committed

    def reserve(self, amount_usd: float, what: str) -> None:
        """Take `amount_usd` out of what is left, or raise BudgetExceeded naming `what`."""
        with self._lock:
            if self.limit_usd is not None and self._committed + amount_usd > self.limit_usd + 1e-9:
                raise BudgetExceeded(
                    f"{what} needs ${amount_usd:.2f}, but ${self._committed:.2f} of the budget of "
                    f"${self.limit_usd:.2f} is spent or committed; not creating it"
                )
            self._committed += amount_usd

    def release(self, amount_usd: float) -> None:
        """Give back a reservation whose request was never created."""
        with self._lock:
            self._committed = max(0.0, self._committed - amount_usd)
