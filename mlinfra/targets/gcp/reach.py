"""Can this machine reach the nodes' serve port? Said before any apply, decided again at verify.

The firewall admits the serve port from ``serve.allow_cidrs`` only (default 10.0.0.0/8). What
a node sees as "this machine" is its public address behind any NAT, which cannot be learnt
offline: ``MLINFRA_CLIENT_IP`` states it. Without it mlinfra says what it can tell for sure
(the nodes are reached on external addresses and only private ranges are allowed: nobody
outside the VPC gets in) and otherwise that it does not know.

Where the latency check cannot run from here, the gate measures it on the node (server time,
without the network) from the node's own report; gpu and health always come from that report.
IAP TCP forwarding reaches the port from Google's range 35.235.240.0/20
(https://cloud.google.com/iap/docs/using-tcp-forwarding: "allow ingress traffic from the IP
range 35.235.240.0/20 ... This range contains all IP addresses that IAP uses for TCP forwarding").
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

IAP_RANGE = "35.235.240.0/20"
CLIENT_IP_ENV = "MLINFRA_CLIENT_IP"
ALLOWED, BLOCKED, UNKNOWN = "allowed", "blocked", "unknown"


@dataclass(frozen=True)
class Reach:
    state: str  # ALLOWED, BLOCKED or UNKNOWN
    reason: str


def client_address() -> str:
    """This machine's address as the nodes see it, when the user said it (MLINFRA_CLIENT_IP); else ""."""
    value = os.environ.get(CLIENT_IP_ENV, "").strip()
    try:
        return str(ipaddress.ip_address(value)) if value else ""
    except ValueError:
        return ""


def assess(spec) -> Reach:
    serve = spec.serve
    if serve.public:
        return Reach(ALLOWED, "serve.public = true opens the port to everyone")
    cidrs = ", ".join(serve.allow_cidrs) or "nothing"
    networks = [ipaddress.ip_network(c) for c in serve.allow_cidrs]
    address = client_address()
    if address:
        ip = ipaddress.ip_address(address)
        if any(ip in network for network in networks):
            return Reach(ALLOWED, f"this machine ({address}, {CLIENT_IP_ENV}) is in serve.allow_cidrs")
        return Reach(BLOCKED, f"this machine ({address}, {CLIENT_IP_ENV}) is not in serve.allow_cidrs ({cidrs})")
    if spec.gcp.public_ip and not any(network.is_global for network in networks):
        return Reach(
            BLOCKED,
            f"the nodes are reached on their external addresses and serve.allow_cidrs ({cidrs}) admits "
            "only ranges that are not on the internet (private), so no machine outside the VPC reaches port "
            f"{serve.port}",
        )
    stated = os.environ.get(CLIENT_IP_ENV, "").strip()
    if stated:  # set, but not an address: say so rather than guess
        return Reach(UNKNOWN, f"{CLIENT_IP_ENV}={stated!r} is not an IP address, so mlinfra cannot tell")
    return Reach(
        UNKNOWN,
        f"mlinfra cannot tell offline whether this machine's public address is in serve.allow_cidrs ({cidrs}); "
        f"set {CLIENT_IP_ENV}=ADDRESS to say it",
    )


def warning(spec) -> str | None:
    """The note `check`, `plan` and `up` show before applying, or None when latency runs from here."""
    found = assess(spec)
    if found.state == ALLOWED:
        return None
    port = spec.serve.port
    lead = "the latency check cannot run from this machine" if found.state == BLOCKED else "latency from here"
    return (
        f"warning: {lead}: {found.reason}. "
        + ("If it cannot, the" if found.state == UNKNOWN else "The")
        + " gate measures latency on each node instead (server time, without the network), and reads gpu "
        "and health from the node's own report (a guest attribute: no ingress needed). To measure from here: "
        f"add this machine's address to serve.allow_cidrs (and set {CLIENT_IP_ENV}), or, with gcloud, use "
        f"IAP: add {IAP_RANGE} to serve.allow_cidrs and run `gcloud compute start-iap-tunnel INSTANCE {port} "
        f"--local-host-port=localhost:{port} --zone ZONE`"
    )
