"""One module per pipeline family; ``FAMILIES`` maps the registry's names to them."""

from __future__ import annotations

from openletz.engines.diffusers.families import flux, pixart_sigma, sd, sdxl
from openletz.engines.diffusers.families.base import Call, Conditioning, Family

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in (sd, sdxl, pixart_sigma, flux)}

__all__ = ["FAMILIES", "Call", "Conditioning", "Family"]
