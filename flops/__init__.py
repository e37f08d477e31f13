"""FLOPs: counting conventions and primitives (conventions), the per-component table (report), and
the budget ledger (ledger). `conventions` imports nothing of the project; `report` reads the models'
own `flops()` methods."""

from .conventions import COURSEWORK, CONVENTIONS, EXACT, Convention, Cost, get_convention, linear_flops
from .ledger import BudgetExceeded, Ledger

__all__ = ["COURSEWORK", "CONVENTIONS", "EXACT", "Convention", "Cost", "get_convention", "linear_flops",
           "BudgetExceeded", "Ledger"]
