"""Child processes inside the enclave's trust domain (one per job), with crash isolation.

Code running in an enclave does::

    from libos import process

    with process.spawn("enclave_worker.job_process:job_main", payload, name="job-42") as child:
        child.send("chunk", data)              # any kind not starting with "libos/"
        for message in child.messages():       # until the child's target returns
            ...                                # message.kind, message.body
    # a crash raises ChildCrashedError, an exception in the target ChildFailedError
    # (or the child's own DetenteError subclass with its message, else ChildRefusedError)

and the child runs ``job_main(channel, payload)``, talking back with
``channel.send(kind, body)`` and ``channel.recv()``.

``framing`` holds the pipe protocol and the errors both sides share,
``parent`` the parent's side (:func:`spawn`, :class:`ChildHandle`), ``child``
the child's (:class:`Channel` and the start of a child process, whose command
line is ``python -m libos.process``: see ``__main__``).
"""

from libos.process.child import Channel
from libos.process.framing import (
    EXIT_ORPHANED,
    EXIT_REFUSED,
    MAX_BODY,
    ChildCrashedError,
    ChildError,
    ChildExit,
    ChildFailedError,
    ChildLimitError,
    ChildRefusedError,
    Message,
)
from libos.process.parent import DEFAULT_START_TIMEOUT, ChildHandle, spawn

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "EXIT_ORPHANED",
    "EXIT_REFUSED",
    "MAX_BODY",
    "Channel",
    "ChildCrashedError",
    "ChildError",
    "ChildExit",
    "ChildFailedError",
    "ChildHandle",
    "ChildLimitError",
    "ChildRefusedError",
    "Message",
    "spawn",
]
