"""The one error table: every error class Valora raises has an HTTP status and a problem body."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import invoicing
import streams
from schemas.errors import InvalidInput, InvalidParameter, ValoraError
from valora.problems import TABLE, InternalError, cli_line, kind_for_class, problem

# Errors that never reach the API: the worker's own crash (a process exit) is a 500 there too.
NOT_API = {"WorkerCrashed", "OffsetsOutOfRange"}  # worker-only errors, never raised by the API


def _all_error_classes() -> set[type[ValoraError]]:
    for package in (invoicing, streams):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".migrations" not in info.name:
                importlib.import_module(info.name)
    found: set[type[ValoraError]] = set()
    todo = [ValoraError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_error_class_has_its_own_entry_or_a_listed_parent() -> None:
    missing = sorted(
        cls.__name__ for cls in _all_error_classes()
        if cls.__name__ not in NOT_API and cls.__module__.split(".")[0] in ("schemas", "invoicing", "streams")
        and kind_for_class(cls).status == 500
    )
    assert not missing, f"add these to valora.problems.TABLE: {missing}"


def test_codes_are_unique_and_stable_strings() -> None:
    codes = [cls.code for cls in _all_error_classes()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert all(code.replace("_", "").isalpha() and code.islower() for code in codes)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (InvalidInput("bad"), 422, "invalid_input"),
        (InvalidParameter("limit", "too big"), 422, "invalid_parameter"),
        (InternalError("x"), 500, "internal_error"),
        (RuntimeError("secret detail"), 500, "internal_error"),
    ],
)
def test_problem_bodies(exc: BaseException, status: int, code: str) -> None:
    body = problem(exc)
    assert (body["status"], body["code"], body["type"]) == (status, code, f"urn:valora:problem:{code}")
    assert "secret detail" not in str(body)
    if isinstance(exc, InvalidParameter):
        assert body["field"] == "limit" and body["detail"] == "limit: too big"


def test_cli_line_is_one_line() -> None:
    assert cli_line(InvalidInput("first\nsecond")) == "valora: error: first"
    assert ValoraError in TABLE
