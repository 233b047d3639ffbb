"""The base of every settings section (processors/settings.py, gateway/settings.py, a source's
`poll:` in processors/reconcile/pollsettings.py): unknown keys are errors, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
