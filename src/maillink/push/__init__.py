"""Push: the subscriptions maillink keeps at the providers so that new mail wakes its mailbox."""
