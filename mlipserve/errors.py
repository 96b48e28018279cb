"""The error codes of mlipserve: one per problem, defined here once for the models, the server and the clients.

A code travels in every error body (``{"error": {"code", "message"}}``) and per-structure error entry. This module
imports nothing, so a model backend, the HTTP front end and a client may all use it.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """Short machine-readable reasons. The README's error table lists each one with when it happens."""

    # -- one structure (an error entry; the rest of the request goes on) --------------------------------------
    MALFORMED_STRUCTURE = "malformed_structure"
    UNPARSABLE_TEXT = "unparsable_text"
    UNKNOWN_ELEMENT = "unknown_element"  # a symbol or atomic number that is no element at all
    ELEMENT_NOT_COVERED = "element_not_covered"  # an element the model was not trained on
    NON_FINITE = "non_finite"
    NO_ATOMS = "no_atoms"
    ATOMS_TOO_CLOSE = "atoms_too_close"
    SINGULAR_CELL = "singular_cell"
    TOO_MANY_ATOMS = "too_many_atoms"
    ISOLATED_ATOM = "isolated_atom"
    MODEL_ERROR = "model_error"
    NON_FINITE_OUTPUT = "non_finite_output"
    WORKER_CRASHED = "worker_crashed"
    WORKER_FAILED = "worker_failed"
    # -- the whole request ------------------------------------------------------------------------------------
    TOO_MANY_STRUCTURES = "too_many_structures"
    NO_STRUCTURES = "no_structures"
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_JOBS = "too_many_jobs"
    BODY_TOO_LARGE = "body_too_large"
    BODY_TIMEOUT = "body_timeout"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_MODEL = "unknown_model"
    MODEL_NOT_SERVED = "model_not_served"
    MODEL_LOADING = "model_loading"
    MODEL_UNAVAILABLE = "model_unavailable"
    QUEUE_FULL = "queue_full"
    NO_WORKERS = "no_workers"
    REDIS_UNAVAILABLE = "redis_unavailable"
    TIMEOUT = "timeout"
    # -- raised by the clients alone (never sent by the server) ----------------------------------------------
    UNREACHABLE = "unreachable"
    NOT_READY = "not_ready"
    HTTP_ERROR = "http_error"
    JOB_FAILED = "job_failed"
    JOB_CANCELLED = "job_cancelled"
    INCOMPLETE_JOB = "incomplete_job"

    def __str__(self) -> str:
        return self.value
