"""Key status and root rotation at the edge: the answers are the domain's views of vault/keys (status, rotation,
rewrap) under their contract names; `KeyStatusOut` names its nested views' contract types (the only fields it
declares)."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, Field

from api.schemas import Input
from vault.keys import rewrap, rotation
from vault.keys import status as keystatus


@dataclasses.dataclass(frozen=True)
class RootVersionOut(keystatus.RootVersionStatus):
    """A root-key version and what it wraps."""


@dataclasses.dataclass(frozen=True)
class KekVersionOut(keystatus.KekVersionStatus):
    """A patient-KEK version and what it wraps."""


@dataclasses.dataclass(frozen=True)
class RewrapJobOut(rewrap.RewrapJobView):
    """Progress of the latest rewrap job."""


@dataclasses.dataclass(frozen=True)
class KeyStatusOut(keystatus.KeyStatus):
    """Root and KEK versions with what each wraps, what waits for a rewrap, and the latest rewrap job."""

    # Narrowed to the contract types (the dataclasses are frozen: nobody appends a parent-typed item).
    root_versions: list[RootVersionOut]  # type: ignore[assignment]
    kek_versions: list[KekVersionOut]  # type: ignore[assignment]
    rewrap_job: RewrapJobOut | None


class RotationRequestIn(Input):
    target: str = Field(default="root", pattern="^root$", description="only root rotations need two people")


@dataclasses.dataclass(frozen=True)
class RotationOut(rotation.RotationView):
    """A two-person root rotation request and where it stands."""


class RotationPage(BaseModel):
    items: list[RotationOut]
