"""The domain's views are the API's answers: one definition per view, the JSON the contract has always had.

api/schemas names each domain view under its contract name through a subclass that adds no field; these tests keep
it so (a field declared again in api/ would be a second definition) and check that the answers of the routes, on
each of their serialisation paths (FastAPI's response model, the hot read's direct JSON), carry exactly the fields
of the OpenAPI snapshot, never a view's internal `patient_id`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pathlib
import pkgutil

import api.schemas
from api.schemas import contract
from tests.helpers import login, png_bytes, register, upload

SNAPSHOT = json.loads(pathlib.Path(__file__).with_name("openapi_snapshot.json").read_text())["components"]["schemas"]


def _contract_types() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(api.schemas.__path__):
        module = importlib.import_module(f"api.schemas.{info.name}")
        found += [obj for obj in vars(module).values()
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__]
    return found


def _fields(name: str) -> set[str]:
    return set(SNAPSHOT[name]["properties"])


def test_every_contract_type_is_a_domain_view_with_no_field_of_its_own() -> None:
    types = _contract_types()
    assert {t.__name__ for t in types} >= {"RecordOut", "AccountOut", "GrantOut", "KeyStatusOut", "RotationOut",
                                           "TrendPointOut", "PatientOut", "ConsentItemOut", "AccessEntryOut"}
    contract_names = {t.__name__ for t in types}
    for cls in types:
        view = cls.__mro__[1]
        assert view.__module__.startswith("vault."), cls
        assert [f.name for f in dataclasses.fields(cls)] == [f.name for f in dataclasses.fields(view)], cls
        # A field is declared again only to name a nested view's contract type (KeyStatusOut).
        for name, annotation in inspect.get_annotations(cls).items():
            assert any(n in str(annotation) for n in contract_names), (cls, name)


def test_contract_converts_nested_views() -> None:
    from api.schemas.keys import KeyStatusOut, RootVersionOut
    from vault.keys import status as keyops

    status = keyops.KeyStatus(provider="local", suite=1, current_root_version=2,
                              root_versions=[keyops.RootVersionStatus(version=2, current=True, patient_keks=1,
                                                                      service_keys=3)],
                              kek_versions=[], keks_under_old_root=0, service_keys_under_old_root=0,
                              deks_under_old_kek=0, deks_unreadable=0, pending_rotations=0, rewrap_job=None)
    out = contract(KeyStatusOut, status)
    assert isinstance(out.root_versions[0], RootVersionOut)
    assert dataclasses.asdict(out) == dataclasses.asdict(status)


def test_answers_carry_exactly_the_contract_fields(client) -> None:
    register(client, username="contract")
    headers = login(client, "contract")
    created = upload(client, headers, png_bytes(b"contract"), category="exam_report", title="x-ray")
    assert created.status_code == 201, created.text
    record_id = created.json()["record_id"]
    record_fields = _fields("RecordOut")
    assert "patient_id" not in record_fields
    assert set(created.json()) == record_fields                                   # response model (upload)
    listed = client.get("/v1/records", headers=headers).json()
    assert [set(item) for item in listed["items"]] == [record_fields]            # page envelope
    read = client.get(f"/v1/records/{record_id}", headers=headers)
    assert read.headers["content-type"] == "application/json"
    assert set(read.json()) == record_fields                                       # the hot read's own JSON
    assert read.json() == created.json()

    assert set(client.get("/v1/patients/me", headers=headers).json()) == _fields("PatientOut")
    consents = client.get("/v1/patients/me/consents", headers=headers).json()
    assert set(consents) == _fields("ConsentStateOut")
    assert {item for entry in consents["history"] for item in entry} == _fields("ConsentItemOut")
    log = client.get("/v1/patients/me/access-log", headers=headers).json()
    assert log["items"] and all(set(entry) == _fields("AccessEntryOut") for entry in log["items"])
