"""The cuttable loopback TCP proxy (it lives in loadtest/: the bank workload's nemesis uses it)."""

from loadtest.tcp_proxy import TcpProxy

__all__ = ["TcpProxy"]
