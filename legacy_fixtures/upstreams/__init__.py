"""Controllable upstreams for ambassador tests: HTTP and TCP servers, and a DNS server."""
