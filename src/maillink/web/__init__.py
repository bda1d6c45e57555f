"""The web app of `maillink serve`: sign in, connect mailboxes, choose the item of waiting threads.

`maillink.web.factory.create_app` builds it; `maillink.web.commands` holds the CLI commands and
imports nothing but click, so that registering them costs the other commands nothing.
"""
