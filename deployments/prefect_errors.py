"""Prefect failing to answer, or refusing a request, as our typed errors (clipgen/errors.py): each says
what failed, the likely cause and what to do, for the CLI to print instead of a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx

from clipgen.errors import OperationalError, PrefectRefused, PrefectUnavailable
from deployments.temporary_server import TemporaryServer


@contextlib.contextmanager
def prefect_errors_explained(server: TemporaryServer | None) -> Iterator[None]:
    """Prefect failing to answer or refusing a request, raised as PrefectUnavailable / PrefectRefused.
    Anything else goes through as it is: the flow's own failures come back as its state, not raised."""
    try:
        yield
    except Exception as exc:
        error = _explained(exc, server)
        if error is None:
            raise
        raise error from exc


def _explained(exc: BaseException, server: TemporaryServer | None) -> OperationalError | None:
    where = _api_description(server)
    for link in _chain(exc):
        if isinstance(link, httpx.HTTPStatusError):
            return _status_error(link, where)
        if isinstance(link, httpx.TransportError):
            return _unreachable(link, where, server)
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _api_description(server: TemporaryServer | None) -> str:
    if server is not None:
        return f"the temporary Prefect server (state in {server.home})"
    from prefect.settings import get_current_settings

    return f"the Prefect API at {get_current_settings().api.url} (PREFECT_API_URL)"


def _unreachable(exc: httpx.TransportError, where: str, server: TemporaryServer | None) -> OperationalError:
    if server is not None:
        return PrefectUnavailable(
            f"{where} stopped answering ({type(exc).__name__}).",
            cause=f"the server process ended or is overloaded; its log is {server.log}",
            remedy="run the same job again (stored clips are reused), or use a Prefect server of your own "
            "(`prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api).",
        )
    return PrefectUnavailable(
        f"Nothing answers at {where}: {exc or type(exc).__name__}.",
        cause="no Prefect server runs at that address (not started, stopped, or another port or host)",
        remedy="start it (`prefect server start`), or correct PREFECT_API_URL, or unset it so that the "
        "command starts a temporary server of its own.",
    )


def _status_error(exc: httpx.HTTPStatusError, where: str) -> OperationalError:
    status, path = exc.response.status_code, exc.request.url.path
    detail = _detail(exc.response)
    if status >= 500:
        return PrefectUnavailable(
            f"{where} failed a request: {status} for {path}: {detail}.",
            cause="the Prefect server has a problem of its own; its logs say which",
            remedy="look at the server's logs, then run the same job again (stored clips are reused).",
        )
    cause, remedy = _REFUSALS.get(status, _OTHER_REFUSAL)
    return PrefectRefused(
        f"{where} refused a request: {status} for {path}: {detail}.", cause=cause, remedy=remedy
    )


_CREDENTIALS = "set the credential this server expects, or point PREFECT_API_URL at another server."
_REFUSALS = {
    401: (
        "the server needs credentials: PREFECT_API_KEY (Prefect Cloud) or PREFECT_API_AUTH_STRING",
        _CREDENTIALS,
    ),
    403: ("the credentials (PREFECT_API_KEY or PREFECT_API_AUTH_STRING) do not allow this", _CREDENTIALS),
    404: (
        "PREFECT_API_URL does not point at a Prefect API: another service, or a path without the final "
        "/api (it looks like http://HOST:4200/api)",
        "correct PREFECT_API_URL, or unset it so that the command starts a temporary server of its own.",
    ),
}
_OTHER_REFUSAL = (
    "the server does not accept the request as sent: a flow run's parameters must stay under 512 KB, and a "
    "server of another Prefect version may expect other fields",
    "when the detail is about size, make the job smaller (serve its images over https, or split it); "
    "otherwise run a Prefect server of the client's version. Running the job again resumes it.",
)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no detail"
    detail = body.get("detail") if isinstance(body, dict) else None
    text = str(detail if detail is not None else body)
    return text if len(text) <= 300 else f"{text[:300]}..."
