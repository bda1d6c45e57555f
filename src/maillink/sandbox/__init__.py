"""Local, stateful stand-ins of Google, Microsoft, Pipedrive and HubSpot, as real HTTP servers
on 127.0.0.1.

Used by `maillink demo` and the tests. Nothing in the product knows it is talking to them: the
product reaches them only through the endpoints in its configuration.
"""
