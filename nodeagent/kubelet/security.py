"""Effective security settings of a container, and the runAsNonRoot check, as the kubelet
computes them. Pure functions of the pod spec (and of the image's user for the check).

A container's securityContext wins over the pod's for the fields both have (runAsUser,
runAsGroup, runAsNonRoot, seccompProfile); the pod alone gives supplementalGroups and
fsGroup, which every container gets as supplemental groups (fsGroup first).
``allowPrivilegeEscalation: false`` is the only thing that sets no_new_privs; unset leaves the
kernel default. An unset seccomp profile is Unconfined, the kubelet's default.
"""

from __future__ import annotations

from nodeagent.model.pod import Container, Pod, SeccompProfile
from nodeagent.runtime.base import ContainerSecurity, SandboxSecurity


def _seccomp(container: SeccompProfile, pod: SeccompProfile) -> str:
    chosen = container if container is not SeccompProfile.UNSET else pod
    effective = chosen if chosen is not SeccompProfile.UNSET else SeccompProfile.UNCONFINED
    return str(effective.value)


def _groups(pod: Pod) -> tuple[int, ...]:
    psc = pod.spec.security_context
    first = (psc.fs_group,) if psc.fs_group is not None else ()
    return first + psc.supplemental_groups


def container_security(pod: Pod, container: Container) -> ContainerSecurity:
    psc, sc = pod.spec.security_context, container.security_context
    return ContainerSecurity(
        run_as_user=sc.run_as_user if sc.run_as_user is not None else psc.run_as_user,
        run_as_group=sc.run_as_group if sc.run_as_group is not None else psc.run_as_group,
        supplemental_groups=_groups(pod),
        privileged=sc.privileged,
        readonly_rootfs=sc.read_only_root_filesystem,
        no_new_privs=sc.allow_privilege_escalation is False,
        capabilities_add=sc.capabilities.add,
        capabilities_drop=sc.capabilities.drop,
        seccomp=_seccomp(sc.seccomp, psc.seccomp),
    )


def sandbox_security(pod: Pod) -> SandboxSecurity:
    psc = pod.spec.security_context
    return SandboxSecurity(
        run_as_user=psc.run_as_user,
        run_as_group=psc.run_as_group,
        supplemental_groups=_groups(pod),
        # containerd refuses a privileged container in a sandbox that is not privileged.
        privileged=any(c.security_context.privileged for c in pod.all_containers()),
        seccomp=_seccomp(SeccompProfile.UNSET, psc.seccomp),
    )


def image_uid(user: str) -> tuple[int | None, str]:
    """(uid, username) of an image's USER ("1000", "app", "1000:50", ""): one of them set.

    An image without a user runs as root, so "" reads as uid 0, as the kubelet reads it.
    """
    name = user.split(":", 1)[0]
    if not name:
        return 0, ""
    if name.isdigit():
        return int(name), ""
    return None, name


def wants_non_root(pod: Pod, container: Container) -> bool:
    """Whether runAsNonRoot applies, so the image's user must be looked at."""
    sc = container.security_context
    if sc.run_as_non_root is not None:
        return sc.run_as_non_root
    return bool(pod.spec.security_context.run_as_non_root)


def run_as_non_root_error(pod: Pod, container: Container, image_user: str) -> str:
    """The kubelet's CreateContainerConfigError message when runAsNonRoot fails; "" if fine."""
    psc, sc = pod.spec.security_context, container.security_context
    if not wants_non_root(pod, container):
        return ""
    where = f"(pod: {pod.name}_{pod.namespace}({pod.uid}), container: {container.name})"
    user = sc.run_as_user if sc.run_as_user is not None else psc.run_as_user
    if user is not None:
        return f"container's runAsUser breaks non-root policy {where}" if user == 0 else ""
    uid, name = image_uid(image_user)
    if uid == 0:
        return f"container has runAsNonRoot and image will run as root {where}"
    if uid is None:
        return (
            f"container has runAsNonRoot and image has non-numeric user ({name}), "
            f"cannot verify user is non-root {where}"
        )
    return ""
