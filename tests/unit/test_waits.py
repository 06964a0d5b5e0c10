"""kubelet/waits: the reasons a pod's containers show while they wait, and their holds."""

from __future__ import annotations

from typing import cast

from nodeagent.kubelet.podstatus import Waiting
from nodeagent.kubelet.waits import SANDBOX, ContainerWaits
from nodeagent.model.pod import Container


class Spec:
    name = "app"
    image = "busybox"


def test_a_failed_pull_seen_again_during_its_backoff_is_image_pull_backoff() -> None:
    waits = ContainerWaits()
    waits.waiting["app"] = Waiting("ErrImagePull", "not found")

    waits.still_held(cast(Container, Spec()))

    assert waits.waiting["app"] == Waiting(
        "ImagePullBackOff", 'Back-off pulling image "busybox": ErrImagePull: not found'
    )


def test_other_reasons_stay_as_they_are_while_held() -> None:
    waits = ContainerWaits()
    waits.waiting["app"] = Waiting("CreateContainerError", "bad")

    waits.still_held(cast(Container, Spec()))

    assert waits.reason("app") == "CreateContainerError"


def test_a_failed_sandbox_is_held_with_a_growing_backoff_and_its_reasons_cleared_once_made() -> (
    None
):
    waits = ContainerWaits()
    waits.hold_with_backoff(SANDBOX)
    first, first_delay = waits.hold[SANDBOX], waits.backoffs[SANDBOX].delay_s
    waits.hold_with_backoff(SANDBOX)

    assert waits.held(SANDBOX)
    assert waits.backoffs[SANDBOX].delay_s > first_delay and waits.hold[SANDBOX] > first

    waits.waiting = {"app": Waiting("ContainerCreating", "x"), "side": Waiting("ErrImagePull")}
    waits.sandbox_created()
    assert waits.waiting == {"side": Waiting("ErrImagePull")}


def test_a_started_container_neither_waits_nor_is_held() -> None:
    waits = ContainerWaits()
    waits.waiting["app"] = Waiting("RunContainerError", "x")
    waits.hold_with_backoff("app")

    waits.started("app")

    assert waits.reason("app") == "" and not waits.held("app")
