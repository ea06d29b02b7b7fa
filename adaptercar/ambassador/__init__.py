"""The ambassador: outbound calls from the legacy app, with discovery, retries and breakers.

`selection`, `policy` and `discovery` are sans-IO so their rules can be property-tested;
the other modules are thin Twisted shells around them.
"""
