"""The state table's reads that return a list must read every result page, not only DynamoDB's first."""

from __future__ import annotations

from typing import Any

from conftest import create_state_table

from spotkeeper.records import PendingLaunch
from spotkeeper.state import StateStore

GROUP = "spotkeeper-tgi"


class PagedTable:
    """The Table resource, with every query limited to ``page`` items, so a handful of records spans several pages
    (as thousands would at DynamoDB's 1 MB page size); moto honours Limit and returns LastEvaluatedKey."""

    def __init__(self, table: Any, page: int) -> None:
        self.table, self.page, self.queries = table, page, 0

    def query(self, **kwargs: Any) -> dict[str, Any]:
        self.queries += 1
        return self.table.query(**kwargs, Limit=self.page)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


def test_waiting_launches_reads_every_page(aws: Any) -> None:
    table = PagedTable(create_state_table(aws, "state"), page=2)
    store = StateStore(table)
    ids = [f"i-{n:017x}" for n in range(7)]
    for n, instance_id in enumerate(ids):
        assert store.put_pending_launch(GROUP, PendingLaunch(instance_id, "launch-hook", f"token-{n}", n, n + 900.0))
    # Completed launches stay recorded among the waiting ones (the first page holds only completed ones)
    for instance_id in ids[:2] + ids[4:5]:
        store.complete_launch(GROUP, instance_id)
    table.queries = 0

    waiting = store.waiting_launches(GROUP)

    assert sorted(launch.instance_id for launch in waiting) == ids[2:4] + ids[5:]
    assert {launch.token for launch in waiting} == {"token-2", "token-3", "token-5", "token-6"}
    assert table.queries == 4  # 7 records, 2 a page: the last page has 1 and no LastEvaluatedKey
