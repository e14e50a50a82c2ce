"""Who am I, and key management (admin): create, list, revoke API keys without a restart."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from starlette.responses import Response

from flowrelay_api.auth import ApiKey, Principal, Scope, principal, require
from flowrelay_api.context import ApiContext, get_context
from flowrelay_api.errors import ApiError
from flowrelay_api.schemas import (
    AUTH_ERRORS,
    BODY_ERRORS,
    ErrorResponse,
    Identity,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyView,
    ValidationErrorResponse,
    json_response,
)
from flowrelay_contracts.tenants import TENANT_PATTERN

router = APIRouter(responses=AUTH_ERRORS)

Context = Annotated[ApiContext, Depends(get_context)]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]


class KeyNotFound(ApiError):
    status_code = 404

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id} not found")


@router.get("/auth/me", response_model=Identity, tags=["auth"], summary="Who the credential says you are")
async def me(caller: Annotated[Principal, Depends(principal)]) -> Response:
    return json_response(Identity(
        key_id=caller.key_id, tenant=caller.tenant, scopes=sorted(s.value for s in caller.scopes),
        name=caller.name, via=caller.via,
    ))


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    tags=["keys"],
    summary="Create an API key (admin)",
    description="The key is in the answer once and stored only as a hash: keep it. Without `scopes` it "
    "may submit, read and cancel runs of its tenant.",
    responses={**BODY_ERRORS, 422: {"model": ValidationErrorResponse, "description": "Malformed body."}},
)
async def create_key(body: KeyCreate, ctx: Context, caller: Admin) -> Response:
    record, key = await ctx.keys.create(
        tenant=body.tenant, scopes=[Scope(s) for s in dict.fromkeys(body.scopes)], name=body.name,
        by=caller.key_id or caller.name or caller.via,
    )
    return json_response(KeyCreated(key=key, **_view(record).model_dump()), 201)


@router.get("/keys", response_model=KeyList, tags=["keys"], summary="List API keys (admin)")
async def list_keys(
    ctx: Context,
    caller: Admin,
    tenant: Annotated[
        str | None, Query(pattern=f"^{TENANT_PATTERN.pattern}$", description="Only this tenant's keys.")
    ] = None,
) -> Response:
    keys = [k for k in await ctx.keys.list() if tenant is None or k.tenant == tenant]
    return json_response(KeyList(keys=[_view(k) for k in keys]))


@router.delete(
    "/keys/{key_id}",
    response_model=KeyView,
    tags=["keys"],
    summary="Revoke an API key (admin)",
    description="Every API process stops accepting it within FLOWRELAY_KEY_CACHE_S seconds. The record "
    "stays, marked revoked, so it can never come back.",
    responses={404: {"model": ErrorResponse, "description": "No such key."}},
)
async def revoke_key(
    ctx: Context, caller: Admin, key_id: Annotated[str, Path(max_length=12, pattern=r"^[a-z2-7]{1,12}$")]
) -> Response:
    record = await ctx.keys.revoke(key_id)
    if record is None:
        raise KeyNotFound(key_id)
    return json_response(_view(record))


def _view(key: ApiKey) -> KeyView:
    return KeyView(
        key_id=key.key_id, tenant=key.tenant, scopes=[s.value for s in key.scopes], name=key.name,
        created_at=key.created_at, created_by=key.created_by, revoked_at=key.revoked_at,
    )
