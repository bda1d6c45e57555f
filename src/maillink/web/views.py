"""The pages: Mailboxes (with a connected mailbox's sync progress) and Waiting for your choice.

A rep sees and acts on their own mailboxes and threads only (403 otherwise); an admin on all.
Choosing and unlinking go through `maillink.choices`, the same code as `maillink choose`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from maillink.choices import choose_item, parse_item, unlink_thread
from maillink.crm.base import CRMError
from maillink.errors import ConfigError
from maillink.explain import explain, pending
from maillink.store import accounts as store_accounts
from maillink.store import mail, users
from maillink.store.accounts import Account
from maillink.web.auth import require_user, signed_in
from maillink.web.connect import microsoft_problem
from maillink.web.context import web_context
from maillink.web.mailboxes import Mailbox, item_titles, last_dates, summaries, visible_accounts

bp = Blueprint("views", __name__)
log = logging.getLogger(__name__)


@bp.get("/")
def index() -> Response:
    return redirect(url_for("views.mailboxes"), code=303)


@bp.get("/mailboxes")
@signed_in
def mailboxes() -> str:
    user = require_user()
    context = web_context()
    with context.app.store.engine.connect() as conn:
        shown = summaries(
            conn, visible_accounts(conn, user), context.jobs, with_owner=user.is_admin
        )
    return render_template("mailboxes.html", mailboxes=shown, microsoft_problem=microsoft_problem())


def _visible_account(account_id: int) -> Account:
    user = require_user()
    with web_context().app.store.engine.connect() as conn:
        account = store_accounts.get_by_id(conn, account_id)
        if account is None:
            abort(404)
        if not users.can_see_account(conn, user, account_id):
            abort(403)
    return account


def _summary(account: Account) -> Mailbox:
    context = web_context()
    with context.app.store.engine.connect() as conn:
        (found,) = summaries(conn, [account], context.jobs)
    return found


@bp.get("/mailboxes/<id:account_id>")
@signed_in
def mailbox(account_id: int) -> str:
    return render_template("mailbox.html", mailbox=_summary(_visible_account(account_id)))


@bp.get("/mailboxes/<id:account_id>/progress")
def progress(account_id: int) -> Response:
    """The mailbox's state and counts, polled by its page while it syncs."""
    require_user()
    found = _summary(_visible_account(account_id))
    return jsonify(found.as_json())


# -- waiting threads ----------------------------------------------------------------------------


@bp.get("/waiting")
@signed_in
def waiting() -> str:
    user = require_user()
    with web_context().app.store.engine.connect() as conn:
        ids = users.visible_account_ids(conn, user)
        rows = pending(conn, ids)
        latest = last_dates(conn, [row["thread"] for row in rows])
    for row in rows:
        newest = latest.get(row["thread"])
        row["last_at"] = newest.isoformat() if newest else None
    return render_template("waiting.html", threads=rows, show_account=user.is_admin)


def _visible_thread(thread_id: int) -> mail.StoredThread:
    """The thread, if the signed-in user may see it: 404 when there is none, 403 when not theirs."""
    user = require_user()
    with web_context().app.store.engine.connect() as conn:
        thread = mail.get_thread(conn, thread_id)
        if thread is None:
            abort(404)
        if not users.can_see_account(conn, user, thread.account_id):
            abort(403)
    return thread


@bp.get("/threads/<id:thread_id>")
@signed_in
def thread(thread_id: int) -> str:
    found = _visible_thread(thread_id)
    with web_context().app.store.engine.connect() as conn:
        details = explain(conn, str(found.id), [found.account_id])
        if details is None:
            abort(404)
        persons = {p for m in details["messages"] for p in m["person_ids"]}
        titles = item_titles(conn, [details["linked"]] if details["linked"] else [], persons)
    return render_template("thread.html", thread=details, titles=titles)


def _back(thread_id: int) -> Response:
    if request.form.get("back") == "thread":
        return redirect(url_for("views.thread", thread_id=thread_id), code=303)
    return redirect(url_for("views.waiting"), code=303)


def _apply(thread_id: int, action: Any) -> None:
    try:
        flash(action())
    except (ConfigError, CRMError) as error:
        log.warning("choice on thread %s failed: %s", thread_id, error)
        flash(f"Thread {thread_id} could not be updated: {error}", "error")


@bp.post("/threads/<id:thread_id>/choose")
@signed_in
def choose(thread_id: int) -> Response:
    """Link the thread to an item (a candidate, or another item of its persons typed as deal:ID…);
    rule 5. Ill-formed ids and items of other persons are refused with a message."""
    _visible_thread(thread_id)
    text = request.form.get("item", "").strip()
    try:
        item = parse_item(text, web_context().app.settings.crm.kind)
    except ValueError as error:
        flash(str(error), "error")
        return _back(thread_id)
    _apply(thread_id, lambda: choose_item(web_context().app, thread_id, item))
    return _back(thread_id)


@bp.post("/threads/<id:thread_id>/unlink")
@signed_in
def unlink(thread_id: int) -> Response:
    """Link the thread's messages to their persons only."""
    _visible_thread(thread_id)
    _apply(thread_id, lambda: unlink_thread(web_context().app, thread_id))
    return _back(thread_id)
