"""`detente party …`: the data owner's commands, wired here from one module per group of verbs.

Each verb is small and calls the party library (:mod:`party_client`). Errors,
exit codes, ``--json`` and the SIMULATION warning follow
:mod:`protocols.cli_convention`.
"""

from __future__ import annotations

from party_client.cli import audit, consent, data, doctor, jobs, models, propose, review, setup
from protocols.cli_convention import command_group

app = command_group("Contribute data, approve jobs and collect results as a party.")
# In the order `detente party --help` lists them: the flow of a job.
app.command()(setup.init)
app.command()(doctor.doctor)
app.command()(data.attest)
app.command()(data.upload)
app.command()(propose.propose)
app.command()(review.show)
app.command()(consent.approve)
app.command()(review.reject)
app.command()(jobs.status)
app.command()(jobs.jobs)
app.command()(jobs.cancel)
app.command()(jobs.retry)
app.command()(setup.parties)
app.command()(setup.pin)
app.command()(jobs.results)
app.command()(models.predict)
app.command()(models.models)
app.command()(models.retire)
app.command()(data.datasets)
app.command()(data.withdraw)
app.command()(audit.audit)
