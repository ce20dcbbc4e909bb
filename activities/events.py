"""The ``record_event`` activity: store a run event durably and fan it out to webhooks and AMQP.

One transaction stores the event (:mod:`quantapilot.events.log`) and its webhook deliveries (one per matching
endpoint of the run's workspace); after the commit the activity wakes the worker's outbox dispatcher
(:mod:`quantapilot.webhooks.dispatcher`; with ``QP_WEBHOOK_DISPATCH=workflow`` it starts one delivery workflow per
delivery instead) and, with ``QP_AMQP_URL`` set, starts one AMQP publication workflow per event. That is all the
run waits for: the deliveries themselves are made elsewhere, so a run never waits on a consumer. A crash between
the commit and the starts is healed by the activity's retry: the insert is a no-op the second time and the starts
are idempotent (workflow ids derived from the delivery and event ids, duplicates rejected); outbox deliveries are
committed with the event, so nothing needs starting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity

from quantapilot.db import one_writer
from quantapilot.events.carry import RECORD_EVENTS
from quantapilot.events.envelope import EventEnvelope, envelope_of_record
from quantapilot.events.log import add_event
from quantapilot.events.metrics import count_event
from quantapilot.events.record import EventRecord
from quantapilot.runs.contracts import RECORD_EVENT
from quantapilot.settings import Settings
from quantapilot.webhooks.fanout import fan_out_run_event, pending_deliveries
from quantapilot.webhooks.outbox_store import Lease, StoredEvent, store_outbox_event
from quantapilot.webhooks.starts import PendingDelivery, start_amqp_publish, start_delivery_workflows


def store_event_with_deliveries(
    engine: Engine, event: EventRecord, *, outbox: bool = False
) -> tuple[bool, list[PendingDelivery]]:
    """Insert an event and its deliveries in one transaction; a redo with the same id inserts nothing.

    With ``outbox`` the deliveries go to the outbox (the dispatcher makes them) and none waits for a workflow:
    stored on one Core connection (:func:`~quantapilot.webhooks.outbox_store.store_outbox_event`).

    Returns:
        Whether this call inserted the event, and the event's deliveries still pending (on a redo too, so
        the caller can start workflows a crashed attempt did not).
    """
    if outbox:
        if store_outbox_event(engine, event) is not None:
            # Every delivery this call made is in the outbox, for the dispatcher: none waits for a workflow, so
            # the lookup is skipped. A redo still looks: its first attempt may have run in the workflow mode.
            return True, []
        return False, pending_of(engine, event.id)
    # SQLite: behind this process's other writers (the dispatcher's claims and records), not in its busy handler.
    with one_writer(engine), Session(engine, expire_on_commit=False) as session:
        inserted = add_event(session, event)
        if inserted:
            fan_out_run_event(session, event)
            session.commit()
        pending = pending_deliveries(session, event.id)
    return inserted, pending


def pending_of(engine: Engine, event_id: str) -> list[PendingDelivery]:
    """The event's deliveries still waiting for their workflows (see :func:`pending_deliveries`)."""
    with Session(engine) as session:
        return pending_deliveries(session, event_id)


class Handoff(Protocol):
    """This process's outbox dispatcher as a store sees it (:class:`quantapilot.webhooks.dispatcher.Dispatcher`)."""

    def lease(self) -> Lease | None:
        """A claim for the deliveries about to be stored (None: leave them all to the claim loop)."""
        ...

    def adopt(self, lease: Lease | None, stored: StoredEvent | None, envelope: EventEnvelope | None) -> None:
        """Send what the store handed over claimed; wake the claim loop for the rest."""
        ...


async def record_outbox_event(engine: Engine, event: EventRecord, handoff: Handoff) -> bool:
    """Store an event in the outbox mode and hand its healthy endpoints' deliveries to this process's dispatcher.

    The deliveries are stored already claimed under the dispatcher's lease and sent without a claim query (see
    :mod:`quantapilot.webhooks.outbox_store`); the rest, and a redo's, are left to its claim loop, which it wakes.

    Returns:
        Whether this call inserted the event (False: a redo, nothing added).
    """
    lease = handoff.lease()
    storing = asyncio.ensure_future(asyncio.to_thread(store_outbox_event, engine, event, lease=lease))

    def adopt(done: asyncio.Future[StoredEvent | None]) -> None:
        stored = None if done.cancelled() or done.exception() is not None else done.result()
        handoff.adopt(lease, stored, envelope_of_record(event) if stored is not None and stored.handed else None)

    # Adopted when the store finishes, even if this caller is cancelled meanwhile (an activity cancelled while
    # its thread commits): the handed deliveries are sent now, not once their lease has run out.
    storing.add_done_callback(adopt)
    stored = await asyncio.shield(storing)
    return stored is not None


class EventActivities:
    """Event activities, built with the database engine and the settings.

    Args:
        engine: Database engine holding ``run_events`` and the webhook tables.
        settings: Service settings (delivery timeouts and retry scale, the AMQP sink, the dispatch mode).
        wake: Wakes this worker's outbox dispatcher once an event's deliveries are committed.
        handoff: This worker's outbox dispatcher, handed the deliveries it stores (:func:`record_outbox_event`);
            instead of ``wake``.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        wake: Callable[[], None] | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._wake = wake
        self._handoff = handoff

    @activity.defn(name=RECORD_EVENT)
    async def record_event(self, event: EventRecord) -> None:
        """Write the event to the run's log, then start its deliveries (idempotent by event id)."""
        outbox = self._settings.webhook_dispatch == "outbox"
        if outbox and self._handoff is not None:
            inserted = await record_outbox_event(self._engine, event, self._handoff)
            # A redo looks for deliveries its first attempt may have left to workflows (the workflow mode).
            pending = [] if inserted else await asyncio.to_thread(pending_of, self._engine, event.id)
        else:
            inserted, pending = await asyncio.to_thread(store_event_with_deliveries, self._engine, event, outbox=outbox)
            if outbox and self._wake is not None:
                self._wake()
        if inserted:  # a redo must not count twice
            await asyncio.to_thread(count_event, self._engine, event)
        if not pending and not self._settings.amqp_url:
            return
        client = activity.client()
        task_queue = activity.info().task_queue
        if pending:
            await start_delivery_workflows(client, task_queue=task_queue, settings=self._settings, deliveries=pending)
        if self._settings.amqp_url:
            await start_amqp_publish(client, task_queue=task_queue, envelope=envelope_of_record(event))

    @activity.defn(name=RECORD_EVENTS)
    async def record_events(self, events: list[EventRecord]) -> None:
        """Record events in their order, each as :meth:`record_event` does (idempotent by event id).

        One event is committed before the next is written, so the log never holds a later event of the run
        without the earlier ones this call was given.
        """
        for event in events:
            await self.record_event(event)
