"""A reservation: rate units taken by ``rate_limit(...)``. Nothing to release; settle it to the
true cost afterwards if the cost was only known after the call (LLM tokens: reserve 1000, used
730)."""

from __future__ import annotations

from typing import Any


class Reservation:
    """Units of the named limits' rates, taken at once. ``settle(n)`` corrects them to ``n``
    while the grant is still inside the window (afterwards it no longer counts anyway)."""

    def __init__(self, broker: Any, request_id: str, names: tuple[str, ...], units: int) -> None:
        self._broker = broker
        self.id = request_id
        self.names = names
        self.units = units

    def settle(self, units: int) -> bool:
        """Make this reservation count ``units`` (more or fewer). Fewer frees units at once for
        waiters; more delays later grants. False if its grant has left every window already."""
        ok: bool = self._broker.settle(self.names, self.id, self.units, units)
        if ok:
            self.units = units
        return ok

    def __repr__(self) -> str:
        return f"Reservation({', '.join(self.names)}, units={self.units}, id={self.id})"
