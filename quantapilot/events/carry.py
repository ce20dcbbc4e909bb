"""Run events carried by the run's next activity: the names the workflows and the worker's interceptor share.

A run workflow under the ``events-carried`` patch does not record each event by an activity of its own: it keeps
the events it emitted (numbered and stamped as always) and the next activity it schedules carries them in the
:data:`EVENTS_HEADER` header; the worker's interceptor (:mod:`activities.event_carry`) records them, idempotently
by event id, before that activity's body runs. Where no activity follows soon (a gate, a pause, the run's end) the
workflow records what it holds with one :data:`RECORD_EVENTS` activity.
"""

from __future__ import annotations

# The activity header holding the carried events (a list of EventRecord, by the workflow's payload converter).
EVENTS_HEADER = "qp-events"
# The activity recording a batch of events in order (runs under the patch; record_event stays for older runs).
RECORD_EVENTS = "record_events"
# The error type of an activity whose carried events could not be recorded: its body did not run, the workflow
# records the events itself (retrying while the database is away) and schedules the activity again.
EVENTS_NOT_RECORDED = "EVENTS_NOT_RECORDED"
