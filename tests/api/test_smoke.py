from ..conftest import ENTRY


def test_create_then_list_own_entry(client, ann):
    created = client.post("/timesheets", json=ENTRY, headers=ann)
    assert created.status_code == 201
    listed = client.get("/timesheets", headers=ann)
    assert listed.json() == [created.json()]
