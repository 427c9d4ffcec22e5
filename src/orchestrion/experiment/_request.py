"""The one request model: what a user asks of one run of a library experiment.

The CLI, the shell, the Python client, the API server and job submission all build a
`RunRequest`; the plan that the queue server sees takes the same fields as keyword
arguments (`RunRequest.plan_kwargs`), builtin-typed so that it stays introspectable.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from orchestrion.errors import InputError


def first_error(exc: ValidationError) -> str:
    """One line naming the first wrong field of a pydantic validation error."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "request"
    return f"{where}: {error['msg']}"


class RunRequest(BaseModel):
    """One run of a library experiment, as asked (checked against the library by `prepare_run`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = Field(description="Name of the experiment in the library")
    scan: tuple[str, ...] | None = Field(
        None,
        description='Scans as "ID=START:STOP:NUM" or "ID=V1,V2,..."; several make a grid. None: the default scan',
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Values for this run only, by parameter id; the stored values stay"
    )
    shots: StrictInt | None = Field(None, description="Shots per point (default: the experiment's)")
    repetitions: StrictInt = Field(1, description="How many times the whole scan is repeated")
    pattern: str = Field("linear", description='"linear", "shuffled" or "centred"')
    md: dict[str, Any] = Field(default_factory=dict, description="Metadata added to the run's start document")

    @classmethod
    def build(cls, **fields: Any) -> Self:
        """The request, or one `InputError` naming the field that is wrong."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise InputError(first_error(exc)) from None

    def plan_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the experiment's plan (what a queue item carries)."""
        kwargs: dict[str, Any] = {"repetitions": self.repetitions, "pattern": self.pattern}
        if self.scan is not None:
            kwargs["scan"] = list(self.scan)
        if self.parameters:
            kwargs["parameters"] = dict(self.parameters)
        if self.shots is not None:
            kwargs["shots"] = self.shots
        if self.md:
            kwargs["md"] = dict(self.md)
        return kwargs
