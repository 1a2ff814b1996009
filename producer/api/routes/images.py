"""Indexed images by id: a JPEG thumbnail, or the image full size. The path read comes from
the collection, never from the request, and must still be one the API may open."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response

from ris.common.errors import AccessError, CollectionNotFoundError, ImageError
from ris.producer.api.deps import AccessDep, Collection, ProducerDep, SettingsDep
from ris.producer.api.imaging import full_size, thumbnail

log = logging.getLogger("ris.api")
router = APIRouter()

IMAGE_HEADERS = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
IMAGE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: {"description": "the indexed path is outside the allowed roots/prefixes"},
    404: {"description": "id not in the collection, or its file is gone"},
}


def indexed_image(
    image_id: int, producer: ProducerDep, access: AccessDep, collection: Collection = None
) -> bytes:
    """The bytes of indexed image ``image_id`` (404 for an unknown collection or id)."""
    # Opening a store creates a missing collection: a read must not.
    if collection and not producer.store.client.has_collection(collection):
        raise CollectionNotFoundError(f"no collection {collection!r}")
    fields = producer.store_for(collection).resolve([image_id])
    if image_id not in fields:
        raise HTTPException(404, f"id {image_id} is not in the collection")
    path = str(fields[image_id]["path"])
    try:
        return access.read(path)
    except AccessError as exc:
        log.warning("image %d refused: %s", image_id, exc)
        raise


IndexedImage = Annotated[bytes, Depends(indexed_image)]


@router.get(
    "/images/{image_id}/thumbnail",
    response_class=Response,
    summary="A JPEG thumbnail of an indexed image",
    responses={200: {"content": {"image/jpeg": {}}}, **IMAGE_RESPONSES},
)
def get_thumbnail(data: IndexedImage, settings: SettingsDep) -> Response:
    """Upright, RIS_API_THUMBNAIL_PX on its longer side."""
    try:
        jpeg = thumbnail(data, settings.api_thumbnail_px, settings.max_image_pixels)
    except ImageError as exc:
        # 415, not ImageError's 422: the request is fine, the stored file is no usable image.
        raise HTTPException(415, str(exc)) from None
    return Response(jpeg, media_type="image/jpeg", headers=IMAGE_HEADERS)


@router.get(
    "/images/{image_id}",
    response_class=Response,
    summary="An indexed image, full size",
    responses={200: {"content": {"image/*": {}}}, **IMAGE_RESPONSES},
)
def get_image(data: IndexedImage, settings: SettingsDep) -> Response:
    """The original bytes for JPEG, PNG, GIF and WebP; other formats as PNG."""
    try:
        body, media_type = full_size(data, settings.max_image_pixels)
    except ImageError as exc:
        # 415, not ImageError's 422: the request is fine, the stored file is no usable image.
        raise HTTPException(415, str(exc)) from None
    return Response(body, media_type=media_type, headers=IMAGE_HEADERS)
