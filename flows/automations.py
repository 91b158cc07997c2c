"""The stuck-run safety net for a self-hosted server: an automation that marks a flow run Crashed
when its heartbeats stop (its process died without reporting it: kill -9, a lost machine).

Flow runs send `prefect.flow-run.heartbeat` events every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds
(>= 30; unset: none) where they run. A RUNNING flow run that has sent a heartbeat, then neither
another heartbeat nor a terminal state within `window_s`, is set to Crashed. Install with
`decar safety-net` (idempotent: it replaces the automation of the same name).
"""
from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

NAME = "decar-crash-silent-flow-runs"
HEARTBEAT_S = 60  # what the README asks workers to set (PREFECT_FLOWS_HEARTBEAT_FREQUENCY)
WINDOW_S = 300  # five missed heartbeats: a busy machine's late heartbeat never crashes a live run


def crashed_run_automation(window_s: int = WINDOW_S) -> Automation:
    if window_s < 2 * 30:
        raise ValueError(f"window_s must be at least twice the shortest heartbeat interval (60 s), got {window_s}")
    return Automation(
        name=NAME,
        description=f"Mark a flow run Crashed when it sends no heartbeat for {window_s} s (its process died).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"No heartbeat for {window_s} s: the flow run's process died.")])


def install_crashed_run_automation(window_s: int = WINDOW_S) -> Automation:
    """Create the automation, replacing an earlier one of the same name."""
    automation = crashed_run_automation(window_s)
    try:
        Automation.read(name=NAME).delete()
    except ValueError:  # none yet
        pass
    return automation.create()
