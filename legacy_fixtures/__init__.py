"""Small legacy programs that the demo and the tests run adaptercar against.

They stand in for software adaptercar must not change, so each one is standalone (standard
library only) and behaves the way its real-world counterpart would, quirks included.
"""
