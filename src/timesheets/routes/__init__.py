"""The API's routes, grouped by URL segment."""

from ..api import Operation
from . import approvals, timesheets

OPERATIONS: tuple[Operation, ...] = (*timesheets.OPERATIONS, *approvals.OPERATIONS)
