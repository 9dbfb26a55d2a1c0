"""Who listens on a node's port, asked of the kernel: sock_diag first, /proc/net/tcp* as the fallback.

Both must name the same socket: a wrong inode would make every node look like a squatter on its
own port (or a squatter look like the node)."""

from __future__ import annotations

import socket
import struct

import pytest

from mlinfra.targets.local import process


def _socket_inode(sock: socket.socket) -> str:
    import os

    return os.readlink(f"/proc/self/fd/{sock.fileno()}").removeprefix("socket:[").removesuffix("]")


@pytest.fixture
def listener():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_sock_diag_names_the_listening_socket(listener):
    port = listener.getsockname()[1]
    assert process._sock_diag_listening(port) == {_socket_inode(listener)}


def test_a_bound_socket_that_does_not_listen_is_no_holder():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert process._sock_diag_listening(port) == set()
        assert process._listening_inodes(port) == set()


def test_without_sock_diag_the_proc_tables_give_the_same_answer(listener, monkeypatch):
    port = listener.getsockname()[1]

    def refused(port):
        raise struct.error("no netlink here")

    monkeypatch.setattr(process, "_sock_diag_listening", refused)
    assert process._listening_inodes(port) == {_socket_inode(listener)}
    import os

    assert process._holders(process._listening_inodes(port), [os.getpid()]) == [os.getpid()]
