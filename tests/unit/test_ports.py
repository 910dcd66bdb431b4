"""Test and chaos clusters take their ports below the kernel's ephemeral range, where no
outgoing connection can take one before the node binds it."""

from __future__ import annotations

import socket

from paxoslog.chaos.cluster import _below_ephemeral, allocate_ports, reserve_ports


def test_ports_are_distinct_free_and_below_the_ephemeral_range():
    low, high = _below_ephemeral()
    ports = allocate_ports(20)
    assert len(set(ports)) == 20
    if high > low:
        assert all(low <= port < high for port in ports)
    for port in ports:                  # released: a node can bind each of them
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        finally:
            s.close()


def test_reserved_ports_stay_taken_until_released():
    ports, sockets = reserve_ports(3)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            try:
                s.bind(("127.0.0.1", ports[0]))
                taken = False
            except OSError:
                taken = True
        finally:
            s.close()
        assert taken
    finally:
        for s in sockets:
            s.close()
