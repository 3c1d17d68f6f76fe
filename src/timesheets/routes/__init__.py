"""The API's routes, grouped by URL segment."""

from ..api import Operation
from . import approvals, reports, timesheets

# Reports first: /timesheets/summary must not be read as /timesheets/{entry_id}.
OPERATIONS: tuple[Operation, ...] = (
    *reports.OPERATIONS,
    *timesheets.OPERATIONS,
    *approvals.OPERATIONS,
)
