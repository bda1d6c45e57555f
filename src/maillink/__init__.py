"""maillink: sync a sales team's mailboxes into the CRM, linked by Pipedrive's auto-linking rules."""

__version__ = "0.1.0"
