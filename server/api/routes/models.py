"""``GET /v1/models``: every registered model, whether it is installed and served, and every card that failed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..context import AppState


def create_router(state: AppState) -> APIRouter:
    router = APIRouter(tags=["models"])

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """Every registered model, whether it is installed, and whether (and by which workers) it is served.

        `card_errors` names each model card in the model directory that could not be used, and why.
        """
        statuses = await state.directory.statuses()
        models = []
        for card in state.registry.cards():
            entry = state.registry.summary(card)
            status = statuses.get(card.name)
            entry["served"] = status is not None
            if status is not None:
                entry |= {"state": status.state.value, "error": status.error, "workers": status.workers}
            models.append(entry)
        return {"default": state.default_model, "models": models, "card_errors": dict(state.registry.problems)}

    return router
