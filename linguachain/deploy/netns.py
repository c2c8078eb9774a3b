"""Private network namespaces that stand in for separate hosts on one machine.

`HostNetwork` creates one Linux network namespace per host and a bridge
inside the first one (the SuperLink host). Every other namespace gets a veth
pair to that bridge. All addresses come from a private IPv4 /24 that exists
only inside these namespaces, and the machine's own interfaces are not
changed. Creating namespaces
needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip` command.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

BRIDGE = "lcbr0"


def namespaces_unavailable_reason() -> str | None:
    """Return why network namespaces cannot be created here, or None if they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"lc-probe-{os.getpid()}-{secrets.token_hex(2)}"
    result = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None


@dataclass
class HostNetwork:
    """Network namespaces for `num_hosts` hosts; host 0 carries the bridge."""

    num_hosts: int
    prefix: str = field(default_factory=lambda: f"lc{secrets.token_hex(3)}")
    subnet: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network(
            f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24"
        )
    )
    created: list[str] = field(default_factory=list)

    def namespace(self, host: int) -> str:
        """Return the namespace name of host `host`."""
        return f"{self.prefix}-h{host}"

    def address(self, host: int) -> str:
        """Return the IPv4 address of host `host` inside the private subnet."""
        return str(self.subnet.network_address + host + 1)

    def command_prefix(self, host: int) -> list[str]:
        """Return the argv prefix that runs a command on host `host`."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def create(self) -> None:
        """Create the namespaces, the bridge and the veth pairs."""
        if not 2 <= self.num_hosts <= 200:
            raise ValueError(
                f"num_hosts must be between 2 and 200, got {self.num_hosts}."
            )
        hub = self.namespace(0)
        length = self.subnet.prefixlen
        for host in range(self.num_hosts):
            self._ip("netns", "add", self.namespace(host))
            self.created.append(self.namespace(host))
            self._ip("-n", self.namespace(host), "link", "set", "lo", "up")
        self._ip("-n", hub, "link", "add", BRIDGE, "type", "bridge")
        self._ip("-n", hub, "addr", "add", f"{self.address(0)}/{length}", "dev", BRIDGE)
        self._ip("-n", hub, "link", "set", BRIDGE, "up")
        for host in range(1, self.num_hosts):
            # Both ends are created directly inside the namespaces.
            hub_end, host_end = f"vh{host}", f"vn{host}"
            self._ip(
                "link", "add", hub_end, "netns", hub, "type", "veth",
                "peer", "name", host_end, "netns", self.namespace(host),
            )  # fmt: skip
            self._ip("-n", hub, "link", "set", hub_end, "master", BRIDGE)
            self._ip("-n", hub, "link", "set", hub_end, "up")
            self._ip(
                "-n", self.namespace(host), "addr", "add",
                f"{self.address(host)}/{length}", "dev", host_end,
            )  # fmt: skip
            self._ip("-n", self.namespace(host), "link", "set", host_end, "up")
        logger.info(
            "Created %d network namespaces (%s-h*) on %s",
            self.num_hosts,
            self.prefix,
            self.subnet,
        )

    def delete(self) -> None:
        """Delete every namespace this object created; their veths go with them."""
        for name in reversed(self.created):
            result = subprocess.run(
                ["ip", "netns", "delete", name], capture_output=True, text=True
            )
            if result.returncode != 0:
                logger.error(
                    "Failed to delete network namespace %s: %s", name, result.stderr
                )
        self.created.clear()

    def __enter__(self) -> "HostNetwork":
        try:
            self.create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    @staticmethod
    def _ip(*args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
