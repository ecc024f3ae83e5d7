"""Revoking the IVS viewers of a session that left its course's channel. No Flask here.

On a course's channel (``channel_scope`` "course") a playback token is bound to the channel,
not the session, and a player already playing keeps playing after its token expires. So when
a session stops being the one on the channel — it ends while holding it, or another session
claims the channel before it ended — its viewers' IVS sessions are revoked
(``StartViewerSessionRevocation``) up to the session's viewer-session version
(:func:`~kalpla_streaming.channels.viewer_version`), which its tokens carry: the next
session's tokens carry a higher one and are untouched.

The viewers are the viewer ids Kalpla put in the session's tokens: user ids, each of which
has an attendance row of the session (a token is issued as a join). The calls run in a job
queued in the caller's transaction, handed to a worker after its commit: in batches of
``BATCH`` viewers read in a short transaction each, every call retried by botocore's standard
retries. A call that still fails is logged, and the job fails naming how many failed.

Self-hosted (rtmp) sessions need none of this: the media server asks Kalpla about every
reader's connection, and only a token of the session on the path now is accepted.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.orm import Session

from kalpla_core.toolkit import JobContext, JobError, JobSpec
from kalpla_streaming.channels import viewer_version
from kalpla_streaming.models import Attendance, Channel, LiveSession

log = logging.getLogger("kalpla_streaming.revocation")

JOB = "streaming.revoke_viewers"
BATCH = 100


def queue(session: Session, kalpla: Any, live: LiveSession, channel: Channel) -> bool:
    """Queue the revocation of ``live``'s viewers on its course's ``channel`` (IVS only);
    it starts after the caller's commit, never after a rollback. False when there is
    nothing to revoke (another provider, or no IVS channel or claim)."""
    if live.provider != "ivs" or channel.channel_arn is None or live.claimed_at is None:
        return False
    kalpla.jobs.enqueue(session, JOB, {"session_id": live.id,
                                       "channel_arn": channel.channel_arn,
                                       "version": viewer_version(live)},
                        None, live.institution_id)
    return True


def viewers(session: Session, session_id: str, after: str, limit: int) -> list[str]:
    """The viewer ids of the session after ``after``, in order, at most ``limit``."""
    return list(session.scalars(select(Attendance.user_id).where(
        Attendance.session_id == session_id, Attendance.user_id > after)
        .order_by(Attendance.user_id).limit(limit)))


def revoke_viewers(ctx: JobContext, session_id: str, channel_arn: str,
                   version: int) -> dict[str, Any]:
    """The job: revoke every viewer of the session on the channel, up to ``version``."""
    from kalpla_streaming.providers import PORT

    provider = ctx.app.extensions["kalpla"].providers.get(PORT, "ivs", ctx.app)
    revoked = failed = 0
    after = ""
    while True:
        with ctx.session() as session:  # no transaction stays open during the calls
            batch = viewers(session, session_id, after, BATCH)
        for viewer_id in batch:
            try:
                if not provider.revoke_viewer(channel_arn, viewer_id, version):
                    log.info("IVS channel %s is gone: no viewer of session %s to revoke",
                             channel_arn, session_id)
                    return {"revoked": revoked, "channel_gone": True}
                revoked += 1
            except (ClientError, BotoCoreError) as exc:
                failed += 1
                code = exc.response.get("Error", {}).get("Code", "") \
                    if isinstance(exc, ClientError) else type(exc).__name__
                log.error("IVS viewer %s of session %s on %s not revoked: %s", viewer_id,
                          session_id, channel_arn, code)
        if len(batch) < BATCH:
            break
        after = batch[-1]
    if failed:
        raise JobError(f"{failed} of {revoked + failed} viewer(s) of session {session_id} "
                       "could not be revoked on its course's IVS channel.")
    return {"revoked": revoked, "channel_gone": False}


# Revoking again what is revoked already does no harm: a lost run may run again.
JOBS = {JOB: JobSpec(revoke_viewers, retry_safe=True)}
